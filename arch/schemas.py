"""JSON Schemas from `schemas/`, and their verdicts as readable problem lines."""
from functools import lru_cache
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


def violations(schema_name, data):
    """Every schema violation in `data` as (path parts, message)."""
    found = []
    for error in sorted(validator(schema_name).iter_errors(data), key=lambda e: list(map(str, e.path))):
        if error.context:  # oneOf/anyOf: name the field inside the closest branch, not the whole subtree
            error = jsonschema.exceptions.best_match([error])
        found.append((list(error.absolute_path), error.message))
    return found


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
    better message, only on a body that failed it."""
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object")
    try:
        compiled(schema_name)(body)
        return
    except fastjsonschema.JsonSchemaValueException as e:
        fallback = e.message
    errors = validator(schema_name).iter_errors(body)
    error = min(errors, key=lambda e: (len(e.path), list(map(str, e.path))), default=None)
    if error is None:
        raise GatewayError(400, fallback)
    path = list(error.path)
    if error.validator == "required":
        path.append(error.message.split("'")[1])
    param = json_path(path)
    raise GatewayError(400, f"{param}: {error.message}" if param else error.message, param or None)
