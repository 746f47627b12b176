"""Model-name patterns: `openai/*`, `claude-*`, `*-latest`.

Only `*` is special (any run of characters, `/` included). Names the gateway
cannot predict (a provider's new model, whatever id an agent sends) still
route: exact names are looked up first, then the patterns, most specific
first. Specificity is the number of literal characters, so `claude-3-*` beats
`claude-*`; among equally specific patterns the one declared first wins, and
`overlaps` lets `validate` say so.
"""
import re
from functools import lru_cache

def is_pattern(name):
    return "*" in name


def compile_glob(pattern):
    return re.compile("(.*)".join(map(re.escape, pattern.split("*"))), re.S).fullmatch


def specificity(pattern):
    return len(pattern) - pattern.count("*"), -pattern.count("*")


def intersect(a, b):
    """Whether some name matches both patterns."""

    @lru_cache(maxsize=None)
    def f(i, j):
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return f(i + 1, j) or (j < len(b) and f(i, j + 1))
        if j < len(b) and b[j] == "*":
            return f(i, j + 1) or (i < len(a) and f(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and f(i + 1, j + 1)

    return f(0, 0)


class Patterns:
    """(pattern, value) pairs, most specific first; `match(name)` -> (value, text the first `*` matched)."""

    def __init__(self, entries):
        ordered = sorted(enumerate(entries), key=lambda e: (specificity(e[1][0]), -e[0]), reverse=True)
        self.entries = [pattern_value for _, pattern_value in ordered]
        self._compiled = [(compile_glob(p), v) for p, v in self.entries]

    def __bool__(self):
        return bool(self.entries)

    def match(self, name):
        for fullmatch, value in self._compiled:
            m = fullmatch(name)
            if m:
                return value, m.group(1) if m.groups() else name
        return None

    def overlaps(self, label):
        """One sentence per pair of patterns some name matches both of, naming the winner;
        `label(value)` says whose pattern it is."""
        out = []
        for i, (a, x) in enumerate(self.entries):
            for b, y in self.entries[i + 1:]:
                if intersect(a, b):
                    why = "more specific" if specificity(a) != specificity(b) else "declared first"
                    out.append(f"patterns {a!r} ({label(x)}) and {b!r} ({label(y)}) overlap:"
                               f" a name matching both goes to {label(x)} ({why})")
        return out
