"""From the model name a client sends to the provider that will answer.

Everything here is computed once per configuration: upstream URLs, auth and
fixed headers, and one dict from every name a client may use to its target.
A request does a single dict lookup.
"""
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError, GatewayError


@dataclass(frozen=True)
class Target:
    """One configured model at one provider, ready to be called."""
    name: str
    model: str
    provider: str         # rules/providers/<provider>.yaml
    dialect: str
    url: str
    count_tokens_url: str | None
    headers: dict         # auth + fixed headers, computed at load
    forward_headers: tuple
    rename: dict
    missing_key: str | None  # the unset $VAR that should have held the key


def upstream_url(rule, cfg, model_id, path):
    """The provider's default base URL, with the config's `base_url` laid over
    it: its host always, its path (when it has one) as the new path prefix."""
    default = urlsplit(rule.base_url or "")
    given = urlsplit(cfg.base_url or "")
    scheme, host = (given.scheme, given.netloc) if given.netloc else (default.scheme, default.netloc)
    prefix = given.path.rstrip("/") if given.netloc and given.path.strip("/") else default.path.rstrip("/")
    params = {**rule.params, **cfg.extra, "model": model_id}
    try:
        path = path.format(**params)
    except KeyError as e:
        raise ConfigError([f"{cfg.where}.{e.args[0]}: required for provider {rule.name!r}"]) from None
    return f"{scheme}://{host}{prefix}{path}"


def provider_of(cfg, rules):
    """(rule, model id) for a config entry: `openai/gpt-4o` names its provider;
    an unknown prefix needs `provider_interface` (`my_llm/x` + `openai`)."""
    prefix, slash, model_id = cfg.model.partition("/")
    if slash and prefix in rules:
        return rules[prefix], model_id
    if cfg.interface in rules:
        return rules[cfg.interface], model_id if slash else cfg.model
    return None, None


def make_target(cfg, rule, model_id):
    if not cfg.base_url and rule.base_url_required:
        raise ConfigError([f"{cfg.where}.base_url: required for provider {rule.name!r}"])
    headers = dict(rule.headers)
    if rule.auth and cfg.access_key:
        headers[rule.auth["header"]] = rule.auth["value"].format(key=cfg.access_key)
    return Target(name=cfg.name, model=model_id, provider=rule.name, dialect=rule.dialect,
                  url=upstream_url(rule, cfg, model_id, rule.path),
                  count_tokens_url=rule.count_tokens_path and upstream_url(rule, cfg, model_id, rule.count_tokens_path),
                  headers=headers, forward_headers=tuple(rule.forward_headers),
                  rename=rule.rename, missing_key=cfg.missing_var)


class Routes:
    """Model name -> Target. Precedence (DESIGN.md): alias, provider `name`,
    full `provider/model` string, bare model id; built by laying each level
    over the one below it."""

    def __init__(self, targets, aliases):
        table = {}
        for t in reversed(targets):  # the first entry wins a shared bare id
            table[t.model] = t
        for t in targets:
            table[f"{t.provider}/{t.model}"] = t
            table[t.name] = t
        problems = []
        for alias, target in aliases.items():
            if target in table:
                table[alias] = table[target]
            else:
                problems.append(f"model_aliases.{alias}.target: {target!r} is not a configured model")
        if problems:
            raise ConfigError(problems)
        self.table = table
        self.targets = targets
        self.aliases = aliases

    def resolve(self, name):
        target = self.table.get(name)
        if target is None:
            raise GatewayError(404, f"The model '{name}' does not exist or is not served by this gateway. "
                                    f"Available models: {', '.join(self.names())}", "model")
        return target

    def names(self):
        return sorted({*self.aliases, *(t.name for t in self.targets), *(t.model for t in self.targets)})
