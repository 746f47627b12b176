"""Rate limits: which counters a request moves, by how much, and how a refusal reads.

Every limit is a fixed window: a counter per calendar second, minute, hour or
day (UTC, the same on every replica), named by the window it counts, expiring
with it. A request is admitted only if every counter it touches stays within
its limit; tokens are reserved from an estimate first and corrected with the
provider's reported usage afterwards. Fixed windows cost one counter per limit
whatever the limit, are exact within a window across any number of replicas,
reconcile by adding to the very counter that was reserved, and have one clear
reset time for `retry-after` and the rate-limit headers. The price: a client
can spend a window's limit at its end and the next one's at the start of the
next (documented in the README).
"""
import functools
import hashlib
import math
import time
from dataclasses import dataclass

from arch.rules.functions import estimate_tokens

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
OUTPUT_RESERVE = 1024  # tokens reserved for the answer when the request sets no max_tokens


@dataclass(frozen=True)
class Limit:
    bucket: str   # the counter's name without its window
    kind: str     # requests | tokens
    limit: int
    unit: str
    what: str     # for the message: "key 'team-a'", "model 'gpt-4o' (x-team: a)"

    @property
    def period(self):
        return UNITS[self.unit]


def key_limits(key):
    """The limits of a gateway key's `limits:` (max_parallel_requests is not a window)."""
    out = []
    for setting, limit in key.limits.items():
        kind, _, unit = setting.partition("_per_")
        if unit in UNITS:
            out.append(Limit(f"k:{key.name}:{kind}:{unit}", kind, limit, unit, f"key '{key.name}'"))
    return tuple(out)


@dataclass(frozen=True)
class Rule:
    """One `ratelimits` entry: a limit on a model, for everyone or per selector header value."""
    index: int
    model: str
    header: str | None
    value: str | None      # "*": one bucket per value
    kind: str
    limit: int
    unit: str

    def applies(self, headers):
        """The Limit for this request, or None when its selector does not match."""
        if self.header is None:
            return Limit(f"r{self.index}", self.kind, self.limit, self.unit, f"model '{self.model}'")
        got = headers.get(self.header)
        if got is None or (self.value != "*" and got != self.value):
            return None
        # a client picks the value: long ones are hashed so a counter name stays small
        tag = got if len(got) <= 64 else hashlib.sha256(got.encode()).hexdigest()
        return Limit(f"r{self.index}:{tag}", self.kind, self.limit, self.unit,
                     f"model '{self.model}' ({self.header}: {got[:64]})")


def ratelimit_rules(entries, routes):
    """served name -> its Rules: a rule for model M covers every name that reaches M
    (the name itself, an alias of it, its provider/model form)."""
    rules = []
    for n, e in enumerate(entries):
        selector = e.get("selector") or {}
        limit = e["limit"]
        for kind in ("requests", "tokens"):
            if kind in limit:
                rules.append(Rule(n, e["model"], selector.get("key"), selector.get("value"), kind,
                                  limit[kind], limit["unit"]))
    by_name = {}
    for name, targets in routes.table.items():
        names = served_names(name, targets[0])
        matched = tuple(r for r in rules if r.model in names)
        if matched:
            by_name[name] = matched
    return by_name


def served_names(name, first):
    """A served name and what its deployments are called: a key's `models` or a limit's
    `model` may name any of them."""
    names = [name]
    for t in getattr(first, "targets", (first,)):  # balanced deployments, or one target
        names += [t.name, t.model, f"{t.provider}/{t.model}"]
    return tuple(dict.fromkeys(names))


def estimate(body):
    """Tokens to reserve: the prompt's estimate plus the most the answer may use."""
    out = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    return estimate_tokens(body) + (out if isinstance(out, int) and out > 0 else OUTPUT_RESERVE)


def window(limit, now):
    """(counter name suffix, reset time) of the window `now` falls in."""
    n = int(now // limit.period)
    return n, (n + 1) * limit.period


def _duration(seconds):
    """Time to a window's end as OpenAI writes it: "0.5s", "12s", "6m0s", "1h0m0s"."""
    seconds = max(seconds, 0)
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 1 else f"{math.ceil(seconds)}s"
    m, s = divmod(math.ceil(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


@functools.lru_cache(maxsize=256)  # a window's end is the same for every request in it
def _rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def limit_headers(dialect, rows, now):
    """The client dialect's rate-limit headers (names in rules/dialects/*.yaml) for rows of
    (Limit, remaining, reset time): per kind, the limit with the least left."""
    tightest = {}
    for row in rows:
        if row[0].kind not in tightest or row[1] < tightest[row[0].kind][1]:
            tightest[row[0].kind] = row
    headers = {}
    for kind, (limit, remaining, reset_at) in tightest.items():
        names = dialect.ratelimit_names.get(kind)
        if names:
            headers[names[0]], headers[names[1]] = str(limit.limit), str(max(remaining, 0))
            headers[names[2]] = _duration(reset_at - now) if dialect.ratelimit_reset == "duration" else _rfc3339(reset_at)
    return headers


def refusal_headers(dialect, limit, used, reset_at, now):
    """`retry-after` and the client dialect's rate-limit headers for a refused request."""
    return {"retry-after": str(max(1, math.ceil(reset_at - now))),
            **limit_headers(dialect, [(limit, limit.limit - used, reset_at)], now)}
