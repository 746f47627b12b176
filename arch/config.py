"""Reads `arch_config.yaml` into a plain, checked `Config`.

The original Arch gateway's files load as they are: the v0.1 form
(`listeners.egress_traffic`, `llm_providers`) and the newer one (a listener
list, `model_providers`). Keys this gateway does not implement are reported
as warnings by name, never dropped silently. `$VAR` and `${VAR}` are read from
the environment or from a `.env` file beside the config.
"""
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dotenv import dotenv_values

from arch import schemas
from arch.errors import ConfigError

VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
UNSUPPORTED = ("agents", "endpoints", "system_prompt", "prompt_targets", "prompt_guards",
               "mode", "state_storage", "state_storage_v1_responses")
# provider_interface values of the original Arch schema that name a provider differently here
INTERFACE_ALIASES = {"claude": "anthropic", "arch": "openai_compatible", "openai": "openai_compatible"}


RESPONSE_LIMITS = ("max_response_head", "max_response_body", "max_stream_event")
PROVIDER_KEYS = {"model", "name", "weight", "access_key", "base_url", "default", "provider_interface", "fallbacks",
                 "routing_preferences", "http_host", "timeout", "connect_timeout", "idle_timeout",
                 "max_retries", "retry_backoff", *RESPONSE_LIMITS}
# Long enough for agents and tool use: minutes for a whole answer, seconds to connect.
# What a provider may send is bounded too, generously: a head, a whole (non-stream) body, one stream event.
DEFAULT_POLICY = {"timeout": 1800.0, "connect_timeout": 10.0, "idle_timeout": 300.0,
                  "max_retries": 2, "retry_backoff": 0.5,
                  "max_response_head": 64 << 10, "max_response_body": 64 << 20, "max_stream_event": 16 << 20}
DEFAULT_MAX_BODY = "32MB"
# Below the idle timeouts of common load balancers and NATs (60 s and up), so that we
# close an idle provider connection before a middlebox forgets it without telling us.
DEFAULT_KEEPALIVE = 50.0
DEFAULT_MAX_HEADER = "64KB"
# Headers must arrive within header_timeout (also how long an idle keep-alive connection is kept);
# a body within body_timeout. A stalled client is dropped, not held.
DEFAULT_HEADER_TIMEOUT = 60.0
DEFAULT_BODY_TIMEOUT = 300.0
# What a browser may send on a CORS preflight when `cors` does not say (`*` ends a prefix).
CORS_HEADERS = ("authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta",
                "anthropic-dangerous-direct-browser-access", "x-request-id", "traceparent", "openai-organization",
                "openai-project", "x-stainless-*")
ENTRY_LISTS = ("llm_providers", "model_providers", "model_aliases")


@dataclass(frozen=True)
class ProviderConfig:
    where: str           # "<file>: llm_providers[2]", for messages
    name: str            # what clients may call it (defaults to the `model` string)
    model: str           # `provider/model-id` as written
    interface: str | None  # provider_interface: which rules to use for a provider not in the catalogue
    access_key: str | None
    missing_var: str | None  # the $VAR that was unset, if the key came from one
    base_url: str | None
    fallbacks: tuple     # names to try, in order, when this model fails
    weight: float        # its share among entries with the same name
    default: bool        # `default: true`: where preference routing goes when no route fits
    policy: dict         # timeouts, retries, response limits (see DEFAULT_POLICY)
    extra: dict          # provider-specific settings (api_version, ...)


@dataclass(frozen=True)
class Config:
    path: Path
    address: str
    port: int
    max_body_bytes: int
    drain_seconds: float
    keepalive_seconds: float
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int | None       # None: from the file-descriptor limit (arch/http/listen.py)
    allowed_hosts: frozenset | None   # Host header names accepted (no port); None: any
    list_models: bool                 # a 404 for an unknown model lists the served names
    anthropic_betas: tuple | None     # anthropic-beta values passed on (`*` ends a prefix); None: all
    cors: dict | None                 # {"origins": set, "headers": tuple, "max_age": int}; None: no browsers
    tracing: dict | None
    access_log_file: str | None
    log_content: bool
    providers: list
    aliases: dict                     # alias -> ((name, weight), ...): one target, or deployments to balance
    alias_fallbacks: dict = field(default_factory=dict)  # alias -> names to try when its target fails
    balancing: dict = field(default_factory=dict)        # load_balancing, with each alias's strategy/affinity
    preferences: list = field(default_factory=list)      # routing_preferences: {name, description, models, prefer}
    router: dict = field(default_factory=dict)           # {model, timeout, default}: the router model and its limits
    preference_aliases: tuple = ()                       # aliases that route by the preferences
    alias_rules: dict = field(default_factory=dict)   # alias -> its routing_rules, as written
    routing_rules: list = field(default_factory=list)  # the global ones, as written
    rules_dirs: list = field(default_factory=list)
    gateway_keys: list | None = None  # entries as written, `key` expanded, `where` added; None: no keys, open
    admin_key: str | None = None
    state: dict = field(default_factory=dict)   # {responses: {...}, redis, prefix, timeout}; no redis: in memory
    fail_open: bool = True                             # on_state_error
    ratelimits: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # broken entries left out; build() reports them with the rest


def read_dotenv(path):
    """The variables a `.env` file sets, read by python-dotenv the way other tools
    read it (quotes, `export`, trailing `# comments`, multi-line quoted values)."""
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


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
    """'30s', '5m', '1500ms', '1h' or a number of seconds -> seconds (the schema checked the form)."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_size(value):
    """'32MB', '512KB', '1GB' or a number of bytes -> bytes (the schema checked the form)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB|GB)?\s*", value, re.I)
    return int(m.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, None: 1}[(m.group(2) or "B").upper()]


def _policy(spec, inherited):
    """Timeouts, retries and response limits: the listener's (or the defaults) under a provider's own."""
    out = dict(inherited)
    for key in ("timeout", "connect_timeout", "idle_timeout", "retry_backoff"):
        if key in spec:
            out[key] = parse_duration(spec[key])
    for key in RESPONSE_LIMITS:
        if key in spec:
            out[key] = parse_size(spec[key])
    if "max_retries" in spec:
        out["max_retries"] = spec["max_retries"]
    return out


def load_config(path):
    """Parse and check a config file; raise ConfigError listing every problem."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"{where}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML: {_yaml_problem(e)}"]) from None
    # A broken provider or alias entry is left out and reported with the rest, so that one
    # `archgw validate` lists every problem; anything else broken stops here.
    found = schemas.violations("config.schema.yaml", raw)
    problems = [f"{where}: {schemas.json_path(path) or '(top level)'}: {message}" for path, message in found]
    entries_only = all(len(path) >= 2 and path[0] in ENTRY_LISTS for path, _ in found)
    if found and not entries_only:
        raise ConfigError(problems)
    broken = {tuple(path[:2]) for path, _ in found}

    env = {**read_dotenv(path.parent / ".env"), **os.environ}
    warnings = [f"{where}: {key}: not supported yet (ignored)" for key in UNSUPPORTED if key in raw]
    if "trace_arch_internal" in (raw.get("tracing") or {}):
        warnings.append(f"{where}: tracing.trace_arch_internal: not supported yet (ignored)")
    listener = _listener(raw["listeners"], warnings, where)
    listener_policy = _policy(listener, DEFAULT_POLICY)

    entries = raw.get("model_providers") or raw.get("llm_providers") or []
    key = "model_providers" if raw.get("model_providers") else "llm_providers"
    providers, unset, inline = [], [], []
    for n, entry in enumerate(entries):
        if (key, n) in broken:
            continue
        if "http_host" in entry:
            warnings.append(f"{where}: {key}[{n}].http_host: not supported yet (ignored)")
        if entry.get("routing_preferences"):
            warnings.append(f"{where}: {key}[{n}].routing_preferences: the inline (v0.3) form, read as top-level"
                            " routing_preferences with this model; write it there to silence this")
            inline.extend({"name": p["name"], "description": p.get("description", ""),
                           "models": [entry.get("name") or entry["model"]]} for p in entry["routing_preferences"])
        access_key, missing = (expand(entry["access_key"], env) if "access_key" in entry else (None, []))
        base_url, base_missing = expand(entry["base_url"], env) if entry.get("base_url") else (None, [])
        if base_missing:  # never fall back to the provider's default host (a key could go to the wrong place)
            unset.append(f"{where}: {key}[{n}].base_url: environment variable {base_missing[0]} is not set")
        providers.append(ProviderConfig(
            where=f"{where}: {key}[{n}]", name=entry.get("name") or entry["model"], model=entry["model"],
            interface=INTERFACE_ALIASES.get(entry.get("provider_interface"), entry.get("provider_interface")),
            access_key=access_key or None, missing_var=missing[0] if missing else None,
            base_url=base_url or None,
            fallbacks=tuple(entry.get("fallbacks") or ()), weight=float(entry.get("weight", 1)),
            default=bool(entry.get("default")), policy=_policy(entry, listener_policy),
            extra={k: v for k, v in entry.items() if k not in PROVIDER_KEYS}))

    # configured but all unusable (unset $VARs) is [] and refuses everyone, never None (open)
    gateway_keys = [] if "gateway_keys" in raw else None
    for n, entry in enumerate(raw.get("gateway_keys") or ()):
        entry = {**entry, "where": f"{where}: gateway_keys[{n}]"}
        if "key" in entry:
            entry["key"], missing = expand(entry["key"], env)
            if missing:
                warnings.append(f"{entry['where']}.key: environment variable {missing[0]} is not set;"
                                f" key {entry['name']!r} is refused until it is")
                continue
        gateway_keys.append(entry)
    admin_key = None
    if "admin_key" in raw:
        admin_key, missing = expand(raw["admin_key"], env)
        if missing:
            warnings.append(f"{where}: admin_key: environment variable {missing[0]} is not set;"
                            " /metrics and /v1/usage are refused until it is")
    state = _state(raw.get("state") or {})
    if "redis" in state:
        state["redis"], missing = expand(state["redis"], env)
        if missing:
            unset.append(f"{where}: state.redis: environment variable {missing[0]} is not set")
    state["timeout"] = parse_duration(state.get("timeout", "250ms"))
    if unset:
        raise ConfigError(unset)
    access = raw.get("access_log") or {}
    address = listener.get("address", "0.0.0.0")
    loopback = is_loopback(address)
    hosts = listener.get("allowed_hosts")
    if hosts is None and loopback:  # a DNS-rebinding page names its own host: refused
        hosts = ["localhost", "127.0.0.1", "::1", address]
    cors = raw.get("cors")
    alias_specs = {name: spec for name, spec in (raw.get("model_aliases") or {}).items()
                   if ("model_aliases", name) not in broken}
    aliases = {name: _alias_targets(spec) for name, spec in alias_specs.items()}
    balancing = {"": _balancing(raw.get("load_balancing") or {})}
    balancing.update((name, {**balancing[""], **_balancing(spec)}) for name, spec in alias_specs.items())
    return Config(path=path, address=address, port=listener.get("port", 12000),
                  max_body_bytes=parse_size(listener.get("max_body_size", DEFAULT_MAX_BODY)),
                  drain_seconds=parse_duration(listener.get("drain_timeout", 30)),
                  keepalive_seconds=parse_duration(listener.get("keepalive_timeout", DEFAULT_KEEPALIVE)),
                  header_timeout=parse_duration(listener.get("header_timeout", DEFAULT_HEADER_TIMEOUT)),
                  body_timeout=parse_duration(listener.get("body_timeout", DEFAULT_BODY_TIMEOUT)),
                  max_header_bytes=parse_size(listener.get("max_header_size", DEFAULT_MAX_HEADER)),
                  max_connections=listener.get("max_connections"),
                  allowed_hosts=None if hosts is None or "*" in hosts else frozenset(h.lower().strip("[]") for h in hosts),
                  list_models=listener.get("list_models_in_errors", loopback),
                  anthropic_betas=None if listener.get("anthropic_betas") is None else tuple(listener["anthropic_betas"]),
                  cors=cors and {"origins": frozenset(o.rstrip("/").lower() for o in cors["origins"]),
                                 "headers": tuple(h.lower() for h in cors.get("headers", CORS_HEADERS)),
                                 "max_age": int(parse_duration(cors.get("max_age", 600)))},
                  tracing=raw.get("tracing"), access_log_file=access.get("file") and str(path.parent / access["file"]), log_content=bool(access.get("content")),
                  providers=providers, aliases=aliases, balancing=balancing,
                  alias_fallbacks={name: tuple(spec.get("fallbacks") or ()) for name, spec in alias_specs.items()},
                  preferences=[{"name": p["name"], "description": p.get("description", ""), "models": p["models"],
                                "prefer": (p.get("selection_policy") or {}).get("prefer", "none")}
                               for p in [*(raw.get("routing_preferences") or ()), *inline]],
                  router=_router(raw, warnings, where),
                  preference_aliases=tuple(n for n, spec in alias_specs.items() if spec.get("routing_preferences")),
                  alias_rules={name: spec["routing_rules"] for name, spec in alias_specs.items() if spec.get("routing_rules")},
                  routing_rules=raw.get("routing_rules") or [],
                  rules_dirs=[str((path.parent / d).resolve()) for d in raw.get("rules") or ()], warnings=warnings,
                  gateway_keys=gateway_keys, admin_key=admin_key or None, state=state,
                  fail_open=raw.get("on_state_error", "fail_open") == "fail_open", ratelimits=raw.get("ratelimits") or [],
                  problems=problems)


def _alias_targets(spec):
    """((name, weight), ...) from any of the forms: `target: x`, `target: [x, y]` (equal
    weights), `targets: [{model, weight}]`."""
    if "targets" in spec:
        return tuple((t["model"], float(t.get("weight", 1))) for t in spec["targets"])
    target = spec["target"]
    return tuple((name, 1.0) for name in ([target] if isinstance(target, str) else target))


def _router(raw, warnings, where):
    """The router model's settings: `routing:`, or Plano's `overrides.llm_routing_model`."""
    routing, overrides = dict(raw.get("routing") or {}), raw.get("overrides") or {}
    model = routing.get("model") or routing.get("llm_provider") or overrides.get("llm_routing_model")
    for key in sorted(set(overrides) - {"llm_routing_model"}):
        warnings.append(f"{where}: overrides.{key}: not supported yet (ignored)")
    return {"model": model, "timeout": parse_duration(routing.get("timeout", 10)), "default": routing.get("default")}


def _balancing(spec):
    out = {k: spec[k] for k in ("strategy", "affinity", "consecutive_failures") if k in spec}
    out.update((k, parse_duration(spec[k])) for k in ("base_ejection", "max_ejection") if k in spec)
    return out


def is_loopback(address):
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _yaml_problem(error):
    """What is wrong and where, without PyYAML's quote of the line (which may hold a key)."""
    parts = []
    for what, mark in (("context", "context_mark"), ("problem", "problem_mark")):
        text, mark = getattr(error, what, None), getattr(error, mark, None)
        if text:
            parts.append(f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text)
    return "; ".join(parts) or type(error).__name__


def _listener(listeners, warnings, where):
    """The model listener's settings, from either form; other listeners are reported."""
    if isinstance(listeners, dict):
        if "ingress_traffic" in listeners:
            warnings.append(f"{where}: listeners.ingress_traffic: prompt listeners are not supported yet (ignored)")
        return listeners.get("egress_traffic") or {}
    for n, item in enumerate(listeners):
        if item.get("type", "model") != "model":
            warnings.append(f"{where}: listeners[{n}]: {item.get('type')} listeners are not supported yet (ignored)")
    return next((item for item in listeners if item.get("type", "model") == "model"), {})


def _state(spec):
    """`state:` with sizes and durations as numbers."""
    out = dict(spec)
    if "responses" in out:
        stored = dict(out["responses"])
        if "max_bytes" in stored:
            stored["max_bytes"] = parse_size(stored["max_bytes"])
        if "ttl" in stored:
            stored["ttl"] = parse_duration(stored["ttl"])
        out["responses"] = stored
    return out
