"""JMESPath expressions compiled to Python closures, once, at load.

jmespath evaluates by walking its syntax tree for every call: a method lookup
and a frame per node. The rules run a few dozen expressions per translated
request and several per stream event, so here each tree is turned once into
nested closures with the same semantics as jmespath's TreeInterpreter (which
this follows node for node). Node kinds the rules do not use fall back to that
interpreter, so every valid expression still works.
"""
import operator

from jmespath.visitor import _is_actual_number, _is_comparable, _is_special_number_case

_ORDER = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


def is_false(value):
    # JMESPath falsehood: "", [], {}, null and false; 0 is true.
    return value is None or value is False or value == "" or value == [] or value == {}


def _equals(x, y):
    return False if _is_special_number_case(x, y) else x == y


def _steps(node):
    """`a.b[0].c` as ['a', 'b', 0, 'c']: names and indexes only; else None."""
    kind = node["type"]
    if kind == "field":
        return [node["value"]]
    if kind == "index":
        return [node["value"]]
    if kind in ("subexpression", "index_expression"):
        steps = [_steps(c) for c in node["children"]]
        return None if None in steps else [s for part in steps for s in part]
    return None


def compile_path(steps):
    """Names and indexes in a row, as one function. A name on anything without .get (list,
    string, number, null) gives null: only JSON objects have .get here, so the exception
    is the rare case and cheaper than a type check per step. An index applies to lists only."""
    if len(steps) == 1 and isinstance(steps[0], str):
        (key,) = steps

        def field(v):
            try:
                return v.get(key)
            except AttributeError:
                return None
        return field

    def path(v):
        try:
            for step in steps:
                if step.__class__ is str:
                    v = v.get(step)
                elif isinstance(v, list):
                    v = v[step]
                else:
                    return None
        except (AttributeError, IndexError):
            return None
        return v
    return path


def _plain_literal(node):
    """A literal that equals only values of its own type: a string or null (numbers and
    booleans need jmespath's rule that 0 is not false)."""
    return node["type"] == "literal" and (node["value"] is None or isinstance(node["value"], str))


def compile_node(node, interpreter):
    """A function of the current value that evaluates `node` (a jmespath AST)."""
    kind, children = node["type"], node.get("children", ())
    sub = [compile_node(c, interpreter) for c in children] if kind not in ("slice", "expref") else ()

    steps = _steps(node) if kind in ("field", "subexpression", "index_expression") else None
    if steps is not None:
        return compile_path(steps)  # a.b[0].c: one function, not one per step
    if kind in ("subexpression", "index_expression", "pipe"):
        if len(sub) == 2:
            first, second = sub
            return lambda v: second(first(v))

        def chain(v):
            for step in sub:
                v = step(v)
            return v
        return chain
    if kind in ("current", "identity"):
        return lambda v: v
    if kind == "literal":
        value = node["value"]
        return lambda v: value
    if kind == "key_val_pair":
        return sub[0]
    if kind == "index":
        i = node["value"]

        def index(v):
            if not isinstance(v, list):
                return None
            try:
                return v[i]
            except IndexError:
                return None
        return index
    if kind == "slice":
        s = slice(*children)
        return lambda v: v[s] if isinstance(v, list) else None
    if kind == "comparator":
        left, right = sub
        op = node["value"]
        if op in ("eq", "ne") and _plain_literal(children[1]):  # e.type == 'text': no number rules apply
            value, negate = children[1]["value"], op == "ne"
            return lambda v: (left(v) == value) is not negate
        const = children[1]["value"] if children[1]["type"] == "literal" else None
        if type(const) in (int, float) and op in ("eq", "ne"):  # a number never equals a boolean

            def same(v):
                a = left(v)
                return a == const and type(a) is not bool
            return same if op == "eq" else lambda v: not same(v)
        if type(const) in (int, float) and op in _ORDER:  # `x > `100``: the common case first
            order = _ORDER[op]

            def against(v):
                a = left(v)
                return order(a, const) if type(a) in (int, float) or _is_comparable(a) else None
            return against
        if op == "eq":
            return lambda v: _equals(left(v), right(v))
        if op == "ne":
            return lambda v: not _equals(left(v), right(v))
        order = _ORDER[op]

        def compare(v):
            a, b = left(v), right(v)
            return order(a, b) if _is_comparable(a) and _is_comparable(b) else None
        return compare
    if kind == "or_expression":
        a, b = sub

        def either(v):
            m = a(v)
            return b(v) if is_false(m) else m
        return either
    if kind == "and_expression":
        a, b = sub

        def both(v):
            m = a(v)
            return m if is_false(m) else b(v)
        return both
    if kind == "not_expression":
        (a,) = sub

        def negate(v):
            r = a(v)
            return False if _is_actual_number(r) and r == 0 else not r
        return negate
    if kind == "function_expression":
        name, call = node["value"], interpreter._functions.call_function
        return lambda v: call(name, [arg(v) for arg in sub])
    if kind == "multi_select_dict":
        pairs = [(c["value"], f) for c, f in zip(children, sub)]
        return lambda v: None if v is None else {k: f(v) for k, f in pairs}
    if kind == "multi_select_list":
        return lambda v: None if v is None else [f(v) for f in sub]
    if kind == "flatten":
        (base,) = sub

        def flatten(v):
            b = base(v)
            if not isinstance(b, list):
                return None
            out = []
            for e in b:
                if isinstance(e, list):
                    out.extend(e)
                else:
                    out.append(e)
            return out
        return flatten
    if kind in ("projection", "value_projection", "filter_projection"):
        base, each = sub[0], sub[1]
        keep = sub[2] if kind == "filter_projection" else None
        values = kind == "value_projection"

        def project(v):
            b = base(v)
            if values:
                if not isinstance(b, dict):
                    return None
                b = b.values()
            elif not isinstance(b, list):
                return None
            out = []
            for e in b:
                if keep is None or not is_false(keep(e)):
                    r = each(e)
                    if r is not None:
                        out.append(r)
            return out
        return project
    return lambda v: interpreter.visit(node, v)  # expref and anything newer: the interpreter's way
