"""Routing rules: an ordered list of `when` (JMESPath over the request and its
facts, see `facts.py`) and `target` (a model, an alias or a preference route);
the first rule whose `when` holds decides.

Every request runs the list, usually to its end (most requests match no rule),
so at load the whole list becomes the source of one Python function, made by
the translation rules' compiler (`arch/rules/jmes.py`) with the root's fields
as locals: a fact, a header or a computed fact, is read once, just before the
first rule that needs it, so a request pays only for the facts of the rules it
reaches.
"""
from dataclasses import dataclass

import jmespath
from jmespath.exceptions import JMESPathError

from arch.route.facts import COMPUTED, computed, header, reads
from arch.rules import jmes
from arch.rules.dialects import rule_interpreter

_INTERPRETER = rule_interpreter({})
ROOT = ("model", "body", "headers", "dialect", "stream")  # what `facts.facts` puts in every root
MAX_DEPTH = 300  # levels of a `when`: within what the compilers recurse through


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


class _Source(jmes._Source):
    """The JMESPath compiler, with the fields of the root (`v`) read into locals."""

    types = {"stream": bool, "has_images": bool, "has_tools": bool, "has_thinking": bool, "input_tokens": int}

    def __init__(self, model_facts):
        super().__init__(_INTERPRETER)
        self.names.update(_computed=computed, _header=header, _failed=(JMESPathError, TypeError))
        self.compute = {**COMPUTED, "model_facts": model_facts}
        self.headers = {}  # header name -> the local it is read into
        self.needed = {}   # local -> how it is read, for the rule being compiled

    def use(self, local, load):
        self.needed.setdefault(local, load)
        return local

    def root_field(self, field):
        if field in self.compute:
            return self.use(f"f_{field}", f"_computed(v, raw, {field!r}, {self.name(self.compute[field])})")
        if field in ROOT:
            return self.use(f"f_{field}", f"v[{field!r}]")
        return None  # the root has no such field

    def top(self, steps):
        """The local a header, a fact or a computed fact is read into, and the steps left."""
        first = steps[0]  # a field of the root, or an index (null: the root is an object)
        if first == "headers" and len(steps) > 1 and steps[1].__class__ is str:  # a header by its name
            local = self.headers.setdefault(steps[1], f"h_{len(self.headers)}")
            return self.use(local, f"_header(v['headers'].source, {steps[1]!r})"), steps[2:]
        local = self.root_field(first)
        return (local, steps[1:]) if local else ("None", ())


def compile_list(rules, model_facts):
    """One function `(root, raw body bytes) -> the first Rule that holds, or None`. A rule a
    request makes fail (a function given the wrong type by an odd body) does not hold: a
    client's bytes never turn a rule into a 500."""
    source = _Source(model_facts)
    lines = ["def first(v, raw):"]
    loaded = set()
    for n, rule in enumerate(rules):
        source.needed = {}
        for fact in sorted(rule.reads):  # what reads from the root (`@`, jmespath's own nodes) finds there
            source.root_field(fact)
        try:
            test = source.truth(rule.when, "v")
            compile(test, "<routing rule>", "eval")
        except (SyntaxError, RecursionError, MemoryError):  # nested deeper than Python's parser goes
            test = source.truthy(f"{source.name(jmes.compile_node(rule.when, _INTERPRETER))}(v)")[1]
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
