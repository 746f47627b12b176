"""Compiles the JMESPath in rules YAML, once, into plain callables.

Three shapes appear in the rules files:
- an expression: a JMESPath string (a YAML number or boolean is a constant);
- a mapping: `{output field: expression or nested mapping}`; a field whose
  value comes out null is left out, so optional fields stay absent (a field
  written as YAML `null` is always present, as null);
- steps (for stream state machines): a list of `{if, set, emit, use, end}`,
  where `use` runs a named procedure (a list of steps) of the same file.
Every expression is compiled here at load; requests only call the results.
"""
import jmespath
from jmespath.exceptions import JMESPathError

from arch.errors import ConfigError
from arch.rules.jmes import compile_node, is_false


def compile_expr(text, interpreter, where):
    if not isinstance(text, str):
        return lambda root, constant=text: constant
    try:
        ast = jmespath.compile(text).parsed
    except JMESPathError as e:
        raise ConfigError([f"{where}: invalid JMESPath {text!r}: {e}"]) from None
    return compile_node(ast, interpreter)


def compile_mapping(spec, interpreter, where):
    if not isinstance(spec, dict):
        return compile_expr(spec, interpreter, where)
    fields = [(key, compile_mapping(value, interpreter, f"{where}.{key}"), value is None) for key, value in spec.items()]

    def apply(root):
        out = {}
        for key, fn, always in fields:
            value = fn(root)
            if value is not None or always:
                out[key] = value
        return out

    return apply


class Step:
    """One step of a stream rule: if `cond`, set state, then emit events.

    `set` runs before `emit`, so an emitted event sees the state it created
    (open a block with index `s.i + 1`, then say so)."""

    __slots__ = ("cond", "sets", "emits", "end", "use")

    def __init__(self, cond, sets=(), emits=(), end=False, use=None):
        self.cond, self.sets, self.emits, self.end, self.use = cond, sets, emits, end, use


def compile_steps(steps, interpreter, procedures, where):
    compiled = []
    for n, step in enumerate(steps or ()):
        here = f"{where}[{n}]"
        cond = compile_expr(step["if"], interpreter, f"{here}.if") if "if" in step else None
        if "use" in step:
            if step["use"] not in procedures:
                raise ConfigError([f"{here}.use: no procedure named {step['use']!r}"])
            compiled.append(Step(cond, use=procedures[step["use"]]))
            continue
        emits = step.get("emit", [])
        emits = emits if isinstance(emits, list) else [emits]
        compiled.append(Step(
            cond=cond,
            sets=[(k, compile_expr(v, interpreter, f"{here}.set.{k}")) for k, v in (step.get("set") or {}).items()],
            emits=[compile_expr(e, interpreter, f"{here}.emit") for e in emits],
            end=bool(step.get("end")),
        ))
    return compiled


def run_steps(steps, root, out):
    """Run steps over `root` ({e, s, c}); append emitted events to `out`.
    Returns True when a step ended the stream."""
    state = root["s"]
    for step in steps:
        if step.cond is not None and not truthy(step.cond(root)):
            continue
        if step.use is not None:
            if run_steps(step.use, root, out):
                return True
            continue
        for key, fn in step.sets:
            state[key] = fn(root)
        for fn in step.emits:
            event = fn(root)
            if type(event) is list:  # an expression that makes several events (or none)
                out.extend(event)
            elif event is not None:
                out.append(event)
        if step.end:
            return True
    return False


def truthy(value):
    return not is_false(value)
