"""JSON Schemas from `schemas/`, and their verdicts as readable problem lines."""
from functools import lru_cache
from itertools import islice
from pathlib import Path

import fastjsonschema
import jsonschema
import yaml

from arch.errors import GatewayError

PACKAGE = Path(__file__).resolve().parent


def data_dir(name):
    """The built-in `rules` or `schemas` directory: inside the installed package
    (`arch/builtin_<name>`, see setup.py), else at the top of a source checkout
    (an editable install or `python -m arch` from the repository)."""
    installed = PACKAGE / f"builtin_{name}"
    return installed if installed.is_dir() else PACKAGE.parent / name


SCHEMAS = data_dir("schemas")
# A body may hold a million bad fields: the message is chosen among the first few, never all.
MAX_ERRORS_SEEN = 20


@lru_cache(maxsize=None)
def load_schema(name):
    return yaml.safe_load((SCHEMAS / name).read_text())


@lru_cache(maxsize=None)
def validator(name):
    schema = load_schema(name)
    return jsonschema.validators.validator_for(schema)(schema)


def json_path(parts):
    """['llm_providers', 1, 'model'] -> 'llm_providers[1].model'"""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


SECRET_FIELDS = {"access_key"}


def violations(schema_name, data):
    """Every schema violation in `data` as (path parts, message)."""
    found = []
    for error in sorted(validator(schema_name).iter_errors(data), key=lambda e: list(map(str, e.path))):
        if error.context:  # oneOf/anyOf: name the field inside the closest branch, not the whole subtree
            error = jsonschema.exceptions.best_match([error])
        found.append((list(error.absolute_path), _message(error)))
    return found


def _message(error):
    """jsonschema's message, without the value when it is a key field's or an
    object or list (which may hold one): a key must never be printed."""
    instance = error.instance
    if not instance:  # an empty object or list, a zero, an empty string: nothing to hide
        return error.message
    if isinstance(instance, dict):
        return error.message.replace(repr(instance), "this object")
    if isinstance(instance, list):
        return error.message.replace(repr(instance), "this list")
    if SECRET_FIELDS.intersection(map(str, error.absolute_path)):
        return error.message.replace(repr(instance), "the value")
    return error.message


def problems(schema_name, data, where):
    """Every schema violation in `data`, each as '<where>: <path>: <message>'."""
    return [f"{where}: {json_path(path) or '(top level)'}: {message}" for path, message in violations(schema_name, data)]


@lru_cache(maxsize=None)
def compiled(name):
    """A request schema compiled to Python (fastjsonschema): ~25x faster than
    interpreting it, which matters because every request is checked."""
    return fastjsonschema.compile(load_schema(name))


def check(schema_name, body):
    """Raise a 400 naming the first offending field of a request body. The
    compiled check runs on every request; jsonschema, slower but with the
    better message, only on a body that failed it, and only on the part
    that failed (a body of a million valid messages and one bad one must not
    be walked again, interpreted)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object")
    try:
        compiled(schema_name)(body)
        return
    except fastjsonschema.JsonSchemaValueException as e:
        fallback, where = e.message.removeprefix("data.").removeprefix("data "), e.path[1:]
    part, key, index = _narrowed(body, where)
    errors = (x for x in islice(validator(schema_name).iter_errors(part), MAX_ERRORS_SEEN)
              if (list(x.path)[:1] == [key] if key is not None else not x.path))
    error = min(errors, key=lambda e: (len(e.path), list(map(str, e.path))), default=None)
    if error is None:
        raise GatewayError(400, fallback)
    path = list(error.path)
    if index is not None:  # back to the item's place in the whole body
        path[1] = index
    if error.validator == "required":
        path.append(error.message.split("'")[1])
    param = json_path(path)
    raise GatewayError(400, f"{param}: {error.message}" if param else error.message, param or None)


def _narrowed(body, where):
    """(the part of `body` to explain, its top-level key, the index of the item kept):
    the failing top-level field alone, and of a list only the failing item; for an
    error about the body itself, its keys alone."""
    if not where or where[0] not in body:
        return {k: None for k in body}, None, None
    key, value = where[0], body[where[0]]
    if isinstance(value, list) and len(where) > 1 and str(where[1]).isdigit() and int(where[1]) < len(value):
        return {key: [value[int(where[1])]]}, key, int(where[1])
    return {key: value}, key, None
