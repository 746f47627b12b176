"""Reads `arch_config.yaml` into a plain, checked `Config`.

The original Arch gateway's files load as they are: the v0.1 form
(`listeners.egress_traffic`, `llm_providers`) and the newer one (a listener
list, `model_providers`). Keys this gateway does not implement are reported
as warnings by name, never dropped silently. `$VAR` and `${VAR}` are read from
the environment or from a `.env` file beside the config.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import schemas
from .errors import ConfigError

VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
UNSUPPORTED = ("agents", "endpoints", "overrides", "system_prompt", "prompt_targets", "prompt_guards",
               "ratelimits", "routing", "mode", "state_storage", "state_storage_v1_responses")
# provider_interface values of the original Arch schema that name a provider differently here
INTERFACE_ALIASES = {"claude": "anthropic", "arch": "openai"}


PROVIDER_KEYS = {"model", "name", "access_key", "base_url", "default", "provider_interface",
                 "routing_preferences", "http_host"}


@dataclass(frozen=True)
class ProviderConfig:
    where: str           # "<file>: llm_providers[2]", for messages
    name: str            # what clients may call it (defaults to the `model` string)
    model: str           # `provider/model-id` as written
    interface: str | None  # provider_interface: which rules to use for a provider not in the catalogue
    access_key: str | None
    missing_var: str | None  # the $VAR that was unset, if the key came from one
    base_url: str | None
    default: bool
    extra: dict          # provider-specific settings (api_version, ...)


@dataclass(frozen=True)
class Config:
    path: Path
    address: str
    port: int
    timeout: float | None
    providers: list
    aliases: dict                     # alias -> target name
    rules_dirs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def read_dotenv(path):
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.removeprefix("export ").partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def expand(text, env):
    """`text` with $VAR/${VAR} replaced; also the names that were not set."""
    missing = []

    def sub(m):
        name = m.group(1) or m.group(2)
        if name in env:
            return env[name]
        missing.append(name)
        return ""

    return VAR.sub(sub, text), missing


def parse_duration(value):
    """'30s', '5m', '1500ms', '1h' or a number of seconds -> seconds."""
    if value is None or isinstance(value, (int, float)):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use 30s, 5m, 1500ms)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def load_config(path):
    """Parse and check a config file; raise ConfigError listing every problem."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"{where}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML: {e}"]) from None
    problems = schemas.problems("config.schema.yaml", raw, where)
    if problems:
        raise ConfigError(problems)

    env = {**read_dotenv(path.parent / ".env"), **os.environ}
    warnings = [f"{where}: {key}: not supported yet (ignored)" for key in UNSUPPORTED if key in raw]
    if "tracing" in raw:
        warnings.append(f"{where}: tracing: not supported yet (ignored)")

    address, port, timeout = _listener(raw["listeners"])
    try:
        timeout = parse_duration(timeout)
    except ValueError as e:
        problems.append(f"{where}: listeners: timeout: {e}")

    entries = raw.get("model_providers") or raw.get("llm_providers") or []
    key = "model_providers" if raw.get("model_providers") else "llm_providers"
    providers = []
    for n, entry in enumerate(entries):
        for k in ("routing_preferences", "http_host"):
            if k in entry:
                warnings.append(f"{where}: {key}[{n}].{k}: not supported yet (ignored)")
        access_key, missing = (expand(entry["access_key"], env) if "access_key" in entry else (None, []))
        providers.append(ProviderConfig(
            where=f"{where}: {key}[{n}]", name=entry.get("name") or entry["model"], model=entry["model"],
            interface=INTERFACE_ALIASES.get(entry.get("provider_interface"), entry.get("provider_interface")),
            access_key=access_key or None, missing_var=missing[0] if missing else None,
            base_url=expand(entry["base_url"], env)[0] if entry.get("base_url") else None,
            default=bool(entry.get("default")),
            extra={k: v for k, v in entry.items() if k not in PROVIDER_KEYS}))

    aliases = {name: spec["target"] for name, spec in (raw.get("model_aliases") or {}).items()}
    if problems:
        raise ConfigError(problems)
    return Config(path=path, address=address, port=port, timeout=timeout, providers=providers,
                  aliases=aliases, rules_dirs=[str((path.parent / d).resolve()) for d in raw.get("rules") or ()],
                  warnings=warnings)


def _listener(listeners):
    """(address, port, timeout) of the model listener, from either form."""
    if isinstance(listeners, dict):
        spec = listeners.get("egress_traffic") or {}
    else:
        spec = next((item for item in listeners if item.get("type") == "model"), {})
    return spec.get("address", "0.0.0.0"), spec.get("port", 12000), spec.get("timeout")
