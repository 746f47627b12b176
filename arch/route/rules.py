"""Routing rules: an ordered list of `when` (JMESPath over the request and its
facts, see `facts.py`) and `target` (a model, an alias or a preference route);
the first rule whose `when` holds decides.

Every request runs the list, usually to its end (most requests match no rule),
so at load the whole list becomes the source of one Python function: the
common expressions (paths, comparisons with a literal, `&&`, `||`, `!`) as
inline Python with JMESPath's semantics, any other node through the function
the translation rules' compiler (`arch/rules/jmes.py`) makes of it. A fact, a header or
a computed fact, is read once, just before the first rule that needs it, so a
request pays only for the facts of the rules it reaches.
"""
import math
from dataclasses import dataclass

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.visitor import _is_comparable

from arch.route.facts import COMPUTED, computed, header, reads
from arch.rules.dialects import rule_interpreter
from arch.rules.jmes import _equals, _steps, compile_node

_INTERPRETER = rule_interpreter({})
ROOT = ("model", "body", "headers", "dialect", "stream")  # what `facts.facts` puts in every root
_ORDER = {"lt": "<", "gt": ">", "lte": "<=", "gte": ">="}
MAX_DEPTH = 300  # levels of a `when`: within what the compilers recurse through
TYPES = {"stream": bool, "has_images": bool, "has_tools": bool, "has_thinking": bool, "input_tokens": int}


def _typed(node):
    """The type every request gives this node (a fact such as `has_images`), or None."""
    return TYPES.get(node["value"]) if node["type"] == "field" else None


@dataclass(frozen=True)
class Rule:
    name: str
    when: dict     # the JMESPath syntax tree
    target: str
    where: str     # file and path, for messages
    reads: frozenset  # the computed facts its `when` names


def compile_rules(specs, where):
    """([Rule], problems) from the YAML list at `where`: every broken rule is reported at once."""
    rules, problems = [], []
    for n, spec in enumerate(specs or ()):
        here, when = f"{where}[{n}]", spec["when"]
        if isinstance(when, str):
            try:
                tree = jmespath.compile(when).parsed
            except (JMESPathError, RecursionError) as e:
                problems.append(f"{here}.when: invalid JMESPath {when!r}: {e}")
                continue
            if _depth(tree) > MAX_DEPTH:
                problems.append(f"{here}.when: nested more than {MAX_DEPTH} levels deep")
                continue
        else:  # a YAML constant
            tree = {"type": "literal", "value": when, "children": []}
        rules.append(Rule(spec.get("name") or here.rpartition(": ")[2], tree, spec["target"], here,
                          frozenset(reads(tree))))
    return rules, problems


def _depth(tree):
    depth, level = 0, [tree]
    while level:
        depth += 1
        level = [c for node in level for c in node.get("children", ()) if isinstance(c, dict)]
    return depth


def _literal_source(value):
    """Python source for a JSON scalar, or None when it needs a name."""
    if value is None or type(value) in (str, bool, int) or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return None


class _Source:
    """The source of one rule list's function, and the names it uses."""

    def __init__(self, model_facts):
        self.names = {"_equals": _equals, "_is_comparable": _is_comparable, "_computed": computed,
                      "_header": header, "_failed": (JMESPathError, TypeError)}
        self.compute = {**COMPUTED, "model_facts": model_facts}
        self.headers = {}  # header name -> the local it is read into
        self.needed = {}   # local -> how it is read, for the rule being compiled
        self.n = 0

    def name(self, value, prefix="_k"):
        self.n += 1
        self.names[f"{prefix}{self.n}"] = value
        return f"{prefix}{self.n}"

    def temp(self):
        self.n += 1
        return f"_t{self.n}"

    def use(self, local, load):
        self.needed.setdefault(local, load)
        return local

    def root_field(self, field):
        if field in self.compute:
            return self.use(f"f_{field}", f"_computed(root, raw, {field!r}, {self.name(self.compute[field], '_f')})")
        if field in ROOT:
            return self.use(f"f_{field}", f"root[{field!r}]")
        return None  # the root has no such field

    def truth(self, node):
        """Python whose truth is the node's JMESPath truth."""
        kind = node["type"]
        if kind in ("and_expression", "or_expression"):
            a, b = (self.truth(c) for c in node["children"])
            return f"({a} {'and' if kind == 'and_expression' else 'or'} {b})"
        if kind == "not_expression":
            return f"(not {self.truth(node['children'][0])})"
        if kind == "comparator" or _typed(node) is bool:  # true, false or null
            return self.value(node)
        return self.truthy(self.value(node))

    def truthy(self, value):
        t = self.temp()
        return f"(({t} := {value}) or {t}.__class__ in (int, float))"  # 0 is true in JMESPath

    def value(self, node):
        """Python for the node's value, the root being the current node."""
        kind = node["type"]
        steps = _steps(node) if kind in ("field", "subexpression", "index_expression") else None
        if steps and all(isinstance(s, str) for s in steps):
            return self.path(steps)
        if kind == "literal":
            source = _literal_source(node["value"])
            return source if source is not None else self.name(node["value"])
        if kind == "comparator":
            compared = self.compare(node)
            if compared is not None:
                return compared
        if kind in ("and_expression", "or_expression"):
            a, b = (self.value(c) for c in node["children"])
            t = self.temp()
            false = f"not (({t} := {a}) or {t}.__class__ in (int, float))"
            # `a && b` is a when a is false, else b; `a || b` is b when a is false, else a
            return f"({t} if {false} else {b})" if kind == "and_expression" else f"({b} if {false} else {t})"
        if kind == "not_expression":  # true or false
            return self.truth(node)
        return self.compiled(node)

    def compiled(self, node):
        """The node compiled by `arch/rules/jmes.py`, called on the root (which holds every computed fact it names)."""
        return f"{self.name(compile_node(node, _INTERPRETER))}(root)"

    def path(self, steps):
        first, rest = steps[0], steps[1:]
        if first == "headers" and rest:  # a header by its name, read once per request
            header = rest.pop(0)
            local = self.headers.setdefault(header, f"h_{len(self.headers)}")
            source = self.use(local, f"_header(root['headers'].source, {header!r})")
        else:
            source = self.root_field(first)
            if source is None:
                return "None"
        for step in rest:  # only a JSON object has fields
            t = self.temp()
            source = f"({t}.get({step!r}) if ({t} := {source}).__class__ is dict else None)"
        return source

    def compare(self, node):
        """A comparison with a literal on the right, inline; None for the others."""
        op, (left, right) = node["value"], node["children"]
        a = self.value(left)
        if right["type"] != "literal":
            if op in ("eq", "ne"):
                b = self.value(right)
                return f"_equals({a}, {b})" if op == "eq" else f"(not _equals({a}, {b}))"
            return None
        const = right["value"]
        source = _literal_source(const)
        if source is None:
            source = self.name(const)
        if op in ("eq", "ne") and (const is None or isinstance(const, str)):
            return f"({a} {'==' if op == 'eq' else '!='} {source})"
        t = self.temp()
        if op in ("eq", "ne") and type(const) in (int, float):  # a number never equals a boolean
            same = f"(({t} := {a}) == {source} and {t}.__class__ is not bool)"
            return same if op == "eq" else f"(not {same})"
        if op in ("eq", "ne"):
            return f"_equals({a}, {source})" if op == "eq" else f"(not _equals({a}, {source}))"
        if _typed(left) is int and type(const) in (int, float):
            return f"({a} {_ORDER[op]} {source})"
        if type(const) in (int, float) or isinstance(const, str):
            return (f"({t} {_ORDER[op]} {source} if ({t} := {a}).__class__ in (int, float) or _is_comparable({t})"
                    f" else None)")
        return None


def compile_list(rules, model_facts):
    """One function `(root, raw body bytes) -> the first Rule that holds, or None`. A rule a
    request makes fail (a function given the wrong type by an odd body) does not hold: a
    client's bytes never turn a rule into a 500."""
    source = _Source(model_facts)
    lines = ["def first(root, raw):"]
    loaded = set()
    for n, rule in enumerate(rules):
        source.needed = {}
        for fact in sorted(rule.reads):  # compiled nodes read computed facts from the root: there first
            source.root_field(fact)
        try:
            test = source.truth(rule.when)
            compile(test, "<routing rule>", "eval")
        except (SyntaxError, RecursionError, MemoryError):  # nested deeper than Python's parser goes
            test = source.truthy(source.compiled(rule.when))
        for local, load in source.needed.items():
            if local not in loaded:
                loaded.add(local)
                lines.append(f"    {local} = {load}")
        lines += ["    try:", f"        if {test}:", f"            return _rules[{n}]",
                  "    except _failed:", "        pass"]
    lines.append("    return None")
    source.names["_rules"] = tuple(rules)
    code = "\n".join(lines)
    exec(compile(code, "<routing rules>", "exec"), source.names)  # noqa: S102 - our own source, from the ASTs
    return source.names["first"]
