"""One immutable snapshot of everything a request needs: config, compiled
rules, routes. Built whole at start-up and on reload, then swapped in one
assignment, so a request holds the snapshot it started with to its end and a
broken edit never replaces a working snapshot."""
import ipaddress
import os
from dataclasses import dataclass

from arch import state
from arch.admit.gate import Admission
from arch.config import Config, load_config
from arch.errors import ConfigError
from arch.route.resolve import Routes, make_target, provider_of
from arch.route.router import Router
from arch.rules.load import RuleSet, load_rules
from arch.upstream.client import proxy_problems
from arch.upstream.redact import Redactor


@dataclass(frozen=True)
class Runtime:
    config: Config
    rules: RuleSet
    routes: Routes
    router: Router
    warnings: list
    admission: Admission | None  # None: no keys, limits or shared state, nothing to check
    redact: Redactor  # scrubs the configured provider keys from what providers send back


def _loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def build(config_path, rules_dirs=(), shares=1):
    """Everything a request needs; `shares` is the number of worker processes (see arch/state/memory.py)."""
    config = load_config(config_path)
    rules = load_rules([*config.rules_dirs, *rules_dirs])
    targets, warnings, unserved = [], list(config.warnings), set()
    problems = [*config.problems, *proxy_problems(os.environ)]
    for cfg in config.providers:
        rule, model_id = provider_of(cfg, rules.providers)
        if rule is None and cfg.interface:
            problems.append(f"{cfg.where}.provider_interface: no provider rules named {cfg.interface!r}"
                            f" (known: {', '.join(sorted(rules.providers))})")
            continue
        if rule is None:
            prefix = cfg.model.partition("/")[0]
            warnings.append(f"{cfg.where}.model: provider {prefix!r} is not supported (no rules/providers/{prefix}.yaml"
                            " and no provider_interface): this entry is not served")
            unserved.update((cfg.name, cfg.model, cfg.model.partition("/")[2]))
            continue
        try:
            targets.append(make_target(cfg, rule, model_id))
        except ConfigError as e:
            problems.extend(e.problems)
        if cfg.missing_var:
            warnings.append(f"{cfg.where}.access_key: environment variable {cfg.missing_var} is not set;"
                            f" requests to {cfg.name} will fail until it is")
    routes = router = None
    try:
        routes = Routes(targets, config.aliases, unserved, config.alias_fallbacks, config.balancing, config.list_models)
        warnings.extend(f"{config.path}: {w}" for w in routes.warnings)
    except ConfigError as e:
        problems.extend(f"{config.path}: {p}" for p in e.problems)
    if routes is not None:
        try:
            router = Router(routes, config, rules)
            warnings.extend(f"{config.path}: {w}" for w in router.warnings)
        except ConfigError as e:
            problems.extend(e.problems)
    admission = None
    if not problems and (config.gateway_keys is not None or config.ratelimits or config.state.get("redis")):
        admission = Admission(config, routes, state.backend(config.state, shares))
        if admission.keys is not None:
            problems.extend(admission.keys.problems)
            if admission.keys.admin is None:
                warnings.append(f"{config.path}: gateway_keys without admin_key: /metrics and /v1/usage are refused")
    if config.gateway_keys is None and not _loopback(config.address):
        warnings.append(f"{config.path}: no gateway_keys: anyone who can reach {config.address}:{config.port} "
                        "may use the configured providers (add gateway_keys, or listen on 127.0.0.1)")
    if problems:
        raise ConfigError(problems)
    return Runtime(config=config, rules=rules, routes=routes, router=router, warnings=warnings,
                   admission=admission, redact=Redactor(p.access_key for p in config.providers))
