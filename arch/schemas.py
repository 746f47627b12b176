"""JSON Schemas from `schemas/`, and their verdicts as readable problem lines."""
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


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


def problems(schema_name, data, where):
    """Every schema violation in `data`, each as '<where>: <path>: <message>'."""
    found = []
    for error in sorted(validator(schema_name).iter_errors(data), key=lambda e: list(map(str, e.path))):
        path = json_path(error.path) or "(top level)"
        found.append(f"{where}: {path}: {error.message}")
    return found
