"""A request body from bytes to a checked dict, or a 400 that says why.

JSON has no NaN or Infinity (RFC 8259), and `1e999` parses to Python's inf,
which `json.dumps` would write back as `Infinity`: a body a provider cannot
read. Such numbers are refused here, naming the field, so that no rewritten
body ever carries one.
"""
import json

from arch import schemas
from arch.errors import GatewayError

# Bodies larger than this are parsed and checked off the event loop (arch/http/handlers.py).
LARGE_BODY = 1 << 20


class _NonFinite(ValueError):
    pass


def _finite(text):
    value = float(text)
    if value - value != 0:  # inf - inf and nan - nan are nan
        raise _NonFinite(text)
    return value


def _refuse(constant):
    raise _NonFinite(constant)


class _Mark:
    """Where a non-finite number was, on the second (error-only) pass."""

    def __init__(self, text):
        self.text = text


# Built once: json.loads with hooks would build a decoder per call (~20 us here).
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_refuse)


def _first_mark(tree):
    """(path, text) of the first _Mark in document order."""
    stack = [((), tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Mark):
            return list(path), node.text
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend(reversed([((*path, k), v) for k, v in children]))
    return [], "?"


def _mark_non_finite(text):
    value = float(text)
    return value if value - value == 0 else _Mark(text)


def _non_finite_error(text):
    marks = json.loads(text, parse_float=_mark_non_finite, parse_constant=_Mark)
    path, number = _first_mark(marks)
    param = schemas.json_path(path) or None
    where = f"{param}: " if param else ""
    return GatewayError(400, f"{where}{number[:40]} is not a finite number (JSON has no NaN or Infinity)", param)


def loads(raw, content_type):
    """The body as JSON; every failure is a 400 in words a client can act on."""
    try:
        text = raw.decode("utf-8")
        return _DECODER.decode(text)
    except _NonFinite:
        raise _non_finite_error(text) from None
    except RecursionError:
        raise GatewayError(400, "the request body is nested too deeply") from None
    except ValueError as e:
        raise GatewayError(400, f"the request body is not valid JSON ({e}; content-type: {content_type[:100]})") from None
