"""JMESPath expressions compiled to Python, once, at load.

jmespath evaluates by walking its syntax tree for every call: a method lookup
and a frame per node. The rules run a few dozen expressions per translated
request and several per stream event, so here each tree is turned once into
the source of one Python function with the same semantics as jmespath's
TreeInterpreter (which this follows node for node). Node kinds the rules do
not use fall back to that interpreter, so every valid expression still works.
"""
import operator

from jmespath.visitor import _is_comparable, _is_special_number_case

_CHECKED = {"number", "array-number", "expref"}  # argument types whose functions keep jmespath's checks
_ORDER = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


def is_false(value):
    # JMESPath falsehood: "", [], {}, null and false; 0 is true (Python's without the numbers).
    return not value and value.__class__ is not int and value.__class__ is not float


def _equals(x, y):
    if x.__class__ is y.__class__:  # the usual case; only mixed types can be a boolean and a number
        return x == y
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
    """A function of the current value that evaluates `node` (a jmespath AST).

    The tree becomes the source of one Python function, compiled once: no call
    per node, temporaries held in the expression itself (`:=`), and a lookup
    from the top (`e.choices[0].delta`) that several parts share made once, up
    front (a lookup has no effects and cannot fail, so making it early changes
    nothing). What it cannot express (expref, and node kinds newer than these)
    is evaluated by jmespath's own interpreter from inside it."""
    gen = _Source(interpreter)
    try:
        gen.share(node)
        body = gen.expr(node, "v")
        lines = [f"    {name} = {code}" for name, code in gen.hoisted]
        exec("\n".join(["def _rule(v):", *lines, f"    return {body}"]), gen.names)  # noqa: S102 - from the AST
        return gen.names["_rule"]
    except (SyntaxError, RecursionError, MemoryError):  # nested past what Python compiles: interpret it
        return lambda v: interpreter.visit(node, v)


def _top_lookups(node, top, found):
    """The steps of each lookup made from the top value (`top`: `node` is evaluated on it)."""
    kind, children = node["type"], node.get("children", ())
    steps = _steps(node) if kind in ("field", "subexpression", "index_expression") else None
    if steps is not None:
        if top:
            found.append(tuple(steps))
    elif kind in ("subexpression", "index_expression", "pipe", "projection", "value_projection",
                  "filter_projection"):  # the first child on this value, the rest on what it gives
        _top_lookups(children[0], top, found)
        for child in children[1:]:
            _top_lookups(child, False, found)
    elif kind in _SAME_VALUE:
        for child in children:
            _top_lookups(child, top, found)


_SAME_VALUE = {"comparator", "or_expression", "and_expression", "not_expression", "function_expression",
               "multi_select_dict", "multi_select_list", "key_val_pair", "flatten"}


class _Source:
    """Python source for jmespath AST nodes. `cur` is always a plain name (the
    current value, `v` at the top); a value used twice is bound to a new name first.
    The routing rules' compiler (`arch/route/rules.py`) is this one with its own `top`."""

    types = {}  # field of the top value -> the type it always has: no checks where that is known

    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.names = {"_get": _get, "_index": _index, "_slice": _slice, "_flatten": _flatten, "_equals": _equals,
                      "_order": _order, "_is_comparable": _is_comparable, "_nothing": _NOTHING}
        self.count = 0
        self.shared = {}   # steps from the top, looked up once -> the name holding the value
        self.hoisted = []  # (name, code), in order

    def share(self, node):
        """Name the lookups from the top that two or more parts of `node` make (or begin with)."""
        found, uses = [], {}
        _top_lookups(node, True, found)
        for steps in found:
            for k in range(1, len(steps) + 1):
                uses[steps[:k]] = uses.get(steps[:k], 0) + 1
        for steps in sorted((p for p, n in uses.items() if n > 1), key=len):
            code = self.lookup(steps, "v")
            self.count += 1
            self.shared[steps] = name = f"_h{self.count}"
            self.hoisted.append((name, code))

    def top(self, steps):
        """(a name, the steps left) for `steps` looked up from the top: from the longest prefix already named."""
        for k in range(len(steps), 0, -1):
            if steps[:k] in self.shared:
                return self.shared[steps[:k]], steps[k:]
        return "v", steps

    def typed(self, node, cur):
        """The type `node`'s value always has, or None."""
        return self.types.get(node["value"]) if cur == "v" and node["type"] == "field" else None

    def lookup(self, steps, cur):
        """Code for `steps` looked up from `cur` (from the top: where `top` says)."""
        if cur == "v":
            cur, steps = self.top(steps)
        code = cur
        for step in steps:
            if step.__class__ is str:
                t, bound = (code, code) if code == cur else self.bind(code)
                code = f"({t}.get({step!r}) if {bound}.__class__ is dict else _get({t}, {step!r}))"
            else:
                code = f"_index({code}, {step!r})"
        return code

    def const(self, value):
        if value is None or value.__class__ in (bool, int, str) or (value.__class__ is float and value == value
                                                                   and abs(value) != float("inf")):
            return repr(value)
        return self.name(value)

    def name(self, value):
        self.count += 1
        name = f"_k{self.count}"
        self.names[name] = value
        return name

    def temp(self):
        self.count += 1
        return f"_t{self.count}"

    def bind(self, code):
        """(name, code that binds it): `code`'s value kept in a name for the code around it."""
        t = self.temp()
        return t, f"({t} := {code})"

    def truthy(self, code):
        """(a name holding `code`'s value, code whose truth is its JMESPath truth: Python's, but 0 is true)."""
        t, bound = self.bind(code)
        return t, f"({bound} or {t}.__class__ is int or {t}.__class__ is float)"

    def truth(self, node, cur):
        """Code whose truth is `node`'s JMESPath truth: where only that counts, cheaper than its value."""
        kind = node["type"]
        if kind in ("and_expression", "or_expression"):
            a, b = (self.truth(c, cur) for c in node["children"])
            return f"({a} {'and' if kind == 'and_expression' else 'or'} {b})"
        if kind == "not_expression":
            return f"(not {self.truth(node['children'][0], cur)})"
        if kind == "comparator" or self.typed(node, cur) is bool:  # true, false or null
            return self.expr(node, cur)
        return self.truthy(self.expr(node, cur))[1]

    def on(self, node, code):
        """`node` evaluated with `code`'s value as the current value."""
        t, bound = self.bind(code)
        return f"({self.expr(node, t)} if {bound} is not _nothing else None)"

    def expr(self, node, cur):
        kind, children = node["type"], node.get("children", ())
        steps = _steps(node) if kind in ("field", "subexpression", "index_expression") else None
        if steps is not None:  # a.b[0].c: one lookup per step, inline
            return self.lookup(tuple(steps), cur)
        if kind in ("subexpression", "index_expression", "pipe"):
            code = self.expr(children[0], cur)
            for child in children[1:]:
                code = self.on(child, code)
            return code
        if kind in ("current", "identity"):
            return cur
        if kind == "literal":
            return self.const(node["value"])
        if kind == "key_val_pair":
            return self.expr(children[0], cur)
        if kind == "index":
            return f"_index({cur}, {node['value']!r})"
        if kind == "slice":
            return f"_slice({cur}, {self.name(slice(*children))})"
        if kind == "comparator":
            return self.comparator(node, cur)
        if kind in ("or_expression", "and_expression"):
            t, true = self.truthy(self.expr(children[0], cur))
            other = self.expr(children[1], cur)
            return f"({t} if {true} else {other})" if kind == "or_expression" else f"({other} if {true} else {t})"
        if kind == "not_expression":
            return self.truth(node, cur)
        if kind == "function_expression":
            args = ", ".join(self.expr(c, cur) for c in children)
            return f"{self.name(self.function(node['value']))}({args})"
        if kind == "multi_select_dict":
            pairs = ", ".join(f"{c['value']!r}: {self.expr(c, cur)}" for c in children)
            return f"(None if {cur} is None else {{{pairs}}})"
        if kind == "multi_select_list":
            return f"(None if {cur} is None else [{', '.join(self.expr(c, cur) for c in children)}])"
        if kind == "flatten":
            return f"_flatten({self.expr(children[0], cur)})"
        if kind in ("projection", "value_projection", "filter_projection"):
            t, bound = self.bind(self.expr(children[0], cur))
            e, r = self.temp(), self.temp()
            keep = f"{self.truth(children[2], e)} and " if kind == "filter_projection" else ""
            each = f"({r} := {self.expr(children[1], e)}) is not None"
            if kind == "value_projection":
                return f"([{r} for {e} in {t}.values() if {keep}{each}] if isinstance({bound}, dict) else None)"
            return f"([{r} for {e} in {t} if {keep}{each}] if isinstance({bound}, list) else None)"
        return f"{self.name(lambda v: self.interpreter.visit(node, v))}({cur})"  # expref and anything newer

    def comparator(self, node, cur):
        op, (left, right) = node["value"], node["children"]
        a = self.expr(left, cur)
        if op in ("eq", "ne") and _plain_literal(right):  # e.type == 'text': no number rules apply
            return f"({a} {'==' if op == 'eq' else '!='} {self.const(right['value'])})"
        const = right["value"] if right["type"] == "literal" else None
        if type(const) in (int, float) and op in ("eq", "ne"):  # a number never equals a boolean
            t, bound = self.bind(a)
            same = f"({bound} == {self.const(const)} and {t}.__class__ is not bool)"
            return same if op == "eq" else f"(not {same})"
        if type(const) in (int, float, str) and op in _ORDER:  # `x > `100``, `x < 'b'`: the common case first
            symbol = {"lt": "<", "gt": ">", "lte": "<=", "gte": ">="}[op]
            if self.typed(left, cur) is int:  # comparable, as the literal is (a string: TypeError, as in jmespath)
                return f"({a} {symbol} {self.const(const)})"
            t, bound = self.bind(a)
            return (f"(({t} {symbol} {self.const(const)}) if {bound}.__class__ is int or {t}.__class__ is float "
                    f"or _is_comparable({t}) else None)")
        b = self.expr(right, cur)
        if op == "eq":
            return f"_equals({a}, {b})"
        if op == "ne":
            return f"(not _equals({a}, {b}))"
        return f"_order({self.name(_ORDER[op])}, {a}, {b})"

    def function(self, name):
        functions = self.interpreter._functions
        call, spec = functions.call_function, functions.FUNCTION_TABLE.get(name)
        if spec is None or _CHECKED & {t for arg in spec["signature"] for t in arg["types"]}:
            return lambda *args: call(name, list(args))
        fn = spec["function"]

        def direct(*args):
            # The arguments are checked only when the call fails: a wrong type or count then
            # gets jmespath's own error. (Number-typed functions are always checked: Python
            # would take true for 1 where JMESPath refuses it.)
            try:
                return fn(functions, *args)
            except Exception:
                return call(name, list(args))
        return direct


_NOTHING = object()  # never a value: `x is not _nothing` binds x and is always true


def _get(value, key):
    """A name looked up in anything but a dict (which the code tests first): a mapping with .get, or null."""
    if value is None:
        return None
    try:
        return value.get(key)
    except AttributeError:
        return None


def _index(value, i):
    if not isinstance(value, list):
        return None
    try:
        return value[i]
    except IndexError:
        return None


def _slice(value, s):
    return value[s] if isinstance(value, list) else None


def _flatten(value):
    if not isinstance(value, list):
        return None
    out = []
    for e in value:
        if isinstance(e, list):
            out.extend(e)
        else:
            out.append(e)
    return out


def _order(op, a, b):
    return op(a, b) if _is_comparable(a) and _is_comparable(b) else None
