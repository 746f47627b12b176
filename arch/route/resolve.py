"""From the model name a client sends to the provider that will answer.

Everything here is computed once per configuration: upstream URLs, auth and
fixed headers, and one dict from every name a client may use to its target.
A request does a single dict lookup.
"""
import random
from functools import partial
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import urlsplit

from arch import __version__
from arch.errors import ConfigError, GatewayError, clip
from arch.route.balance import Pool, Settings
from arch.route.patterns import Patterns, is_pattern
from arch.upstream.client import Limits, Timeouts

USER_AGENT = f"archgw/{__version__}"
MAX_LISTED = 20  # names a 404 lists at most
MAX_RETRY_WAIT = 30.0  # a provider asking for a longer pause gets no retry: the next fallback is better


@dataclass(frozen=True)
class Policy:
    """Timeouts, retries and response limits for one target."""
    timeouts: Timeouts
    max_retries: int
    retry_backoff: float
    limits: Limits

    @classmethod
    def from_config(cls, p):
        return cls(Timeouts(connect=p["connect_timeout"], first_byte=p["idle_timeout"], idle=p["idle_timeout"],
                            total=p["timeout"]), p["max_retries"], p["retry_backoff"],
                   Limits(head=p["max_response_head"], body=p["max_response_body"], event=p["max_stream_event"]))

    def backoff(self, attempt, headers):
        """Seconds before retry number `attempt + 1`: the provider's own hint
        when it gave one, else exponential with jitter; None means don't."""
        if headers.get("x-should-retry") == "false":
            return None
        hint = retry_after(headers)
        if hint is not None:
            return hint if hint <= MAX_RETRY_WAIT else None
        return min(self.retry_backoff * 2 ** attempt, 8.0) * random.uniform(0.5, 1.0)


def retry_after(headers):
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(float(value), 0.0)
            except ValueError:
                return max(parsedate_to_datetime(value).timestamp() - time(), 0.0)
    except (TypeError, ValueError):
        pass
    return None


@dataclass(frozen=True, eq=False)
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
    policy: Policy
    fallbacks: tuple         # names to try after this one
    native: dict = None      # other dialects the provider serves as they are: {dialect: (url, compact url)}
    weight: float = 1.0      # its share among the entries that share its name
    patterns: tuple = ()     # a wildcard entry (`openai/*`): the names it serves
    serve: object = None     # a wildcard entry: model id -> the Target for that id


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
    wild = {}
    if is_pattern(model_id):  # `openai/*`: any id at that provider, forwarded as the client gave it
        bare = rule.models if model_id == "*" else (model_id,)
        wild = {"patterns": tuple(dict.fromkeys((cfg.name, f"{rule.name}/{model_id}", *bare))),
                "serve": partial(make_target, cfg, rule)}
    # ours unless the rules set one, or forward the client's (`forward_headers: [user-agent]`)
    headers = {} if any(h.lower() == "user-agent" for h in rule.headers) else {"user-agent": USER_AGENT}
    headers.update(rule.headers)
    if rule.auth and cfg.access_key:
        headers[rule.auth["header"]] = rule.auth["value"].format(key=cfg.access_key)
    return Target(name=cfg.name, model=model_id, provider=rule.name, dialect=rule.dialect,
                  url=upstream_url(rule, cfg, model_id, rule.path),
                  count_tokens_url=rule.count_tokens_path and upstream_url(rule, cfg, model_id, rule.count_tokens_path),
                  headers=headers, forward_headers=tuple(rule.forward_headers),
                  rename=rule.rename, missing_key=cfg.missing_var, policy=Policy.from_config(cfg.policy),
                  fallbacks=cfg.fallbacks,
                  native={dialect: (upstream_url(rule, cfg, model_id, spec["path"]),
                                    spec.get("compact_path") and upstream_url(rule, cfg, model_id, spec["compact_path"]))
                          for dialect, spec in rule.also.items()},
                  weight=cfg.weight, **wild)


MAX_CACHED = 4096  # names resolved through a pattern, kept per snapshot (clients choose them: bounded)


class Route(tuple):
    """The steps to try in order: Targets, and Pools that choose one of their deployments
    per request (`balanced` says whether there is any, so most requests skip choosing)."""
    balanced = False


def route_of(steps):
    route = Route(dict.fromkeys(steps))
    route.balanced = any(isinstance(s, Pool) for s in route)
    return route


def first_target(step):
    return step.targets[0] if isinstance(step, Pool) else step


class Routes:
    """Model name -> Route. Name precedence: alias, provider `name`, full
    `provider/model` string, bare model id, each level laid over the one
    below; then patterns (`openai/*` entries, aliases like `claude-*`), the
    most specific first. Entries sharing a `name`, and aliases with several
    targets, are Pools of deployments."""

    def __init__(self, targets, aliases, unserved=(), alias_fallbacks=None, balancing=None, list_names=True):
        balancing = balancing or {}
        settings = {name: Settings(**spec) for name, spec in balancing.items()}
        default = settings.get("", Settings())
        named = {}
        exact = [t for t in targets if t.serve is None]
        for t in reversed(exact):  # the first entry wins a shared bare id
            named[t.model] = t
        for t in exact:
            named[f"{t.provider}/{t.model}"] = t
        shared = {}
        for t in exact:
            shared.setdefault(t.name, []).append(t)
        for name, group in shared.items():
            named[name] = group[0] if len(group) == 1 else Pool(name, group, [t.weight for t in group], default)
        self.wildcards = Patterns([(p, t) for t in targets if t.serve for p in t.patterns])
        self._cache = {}
        problems, self.warnings = [], []

        def target(name):
            if name in named:
                return named[name]
            hit = self.wildcards.match(name)
            return hit and self._serve(hit[0], name)

        def chain(names, where):
            """The steps for these names, each followed by its own fallbacks, once each."""
            route = []
            for name in names:
                if name in unserved:  # its provider is not supported: said once already, not fatal
                    self.warnings.append(f"{where}: {name!r} is not served (unsupported provider)")
                    continue
                first = target(name)
                if first is None:
                    problems.append(f"{where}: {name!r} is not a configured model")
                    continue
                route.append(first)
                route.extend(t for t in map(target, first_target(first).fallbacks) if t is not None)
            return route_of(route)

        def balanced(alias, members):
            """A Pool over the deployments of these (name, weight)s; a member that is a
            Pool itself gives its weight to its deployments, in their proportions."""
            deployments, weights = [], []
            for name, weight in members:
                step = target(name)
                if step is None:
                    if name not in unserved:
                        problems.append(f"model_aliases.{alias}: {name!r} is not a configured model")
                    continue
                group = step.targets if isinstance(step, Pool) else (step,)
                shares = step.weights if isinstance(step, Pool) else (1.0,)
                deployments += group
                weights += [weight * w / sum(shares) for w in shares]
            return Pool(alias, deployments, weights, settings.get(alias, default)) if deployments else None

        table = {name: chain([name], f"{first_target(step).name}.fallbacks") for name, step in named.items()}
        for t in targets:
            for f in t.fallbacks:
                if target(f) is None:
                    problems.append(f"{t.name}: fallbacks: {f!r} is not a configured model")
        patterns, self.aliases = [], {}
        for alias, members in aliases.items():
            fallbacks = (alias_fallbacks or {}).get(alias, ())
            # its own Pool (its strategy and affinity) over several targets, or over one that is balanced
            pool = balanced(alias, members) if len(members) > 1 or isinstance(target(members[0][0]), Pool) else None
            if pool is not None:
                route = route_of([pool, *chain(fallbacks, f"model_aliases.{alias}")])
            else:
                route = chain([members[0][0], *fallbacks], f"model_aliases.{alias}")
            if route and is_pattern(alias):
                patterns.append((alias, route))
            elif route:
                table[alias] = route
                self.aliases[alias] = members[0][0] if pool is None else ", ".join(n for n, _ in members)
        if problems:
            raise ConfigError(sorted(set(problems)))
        # one list, aliases first: between equally specific patterns the user's alias wins
        self.by_pattern = Patterns([(p, (p, route)) for p, route in patterns] + self.wildcards.entries)
        self.warnings += self.by_pattern.overlaps(lambda v: v.name if isinstance(v, Target) else f"alias {v[0]}")
        self.table = table
        self.targets = exact
        self.patterns = {p: v if isinstance(v, Target) else first_target(v[1][0])
                         for p, v in reversed(self.by_pattern.entries)}
        self.pools = list({id(s): s for route in [*table.values(), *(r for _, r in patterns)]
                           for s in route if isinstance(s, Pool)}.values())
        self.states = list({id(s): s for pool in self.pools for s in pool.states}.values())  # each deployment once
        names = self.names()
        self._listed = ""
        if list_names:  # said once, at load: which names are served (listener list_models_in_errors)
            more = f" and {len(names) - MAX_LISTED} more (GET /v1/models)" if len(names) > MAX_LISTED else ""
            self._listed = f" Available models: {', '.join(names[:MAX_LISTED])}{more}"

    @staticmethod
    def _serve(wildcard, name):
        """The Target for `name` at a wildcard entry: the id is the name less a `provider/` prefix."""
        prefix, slash, rest = name.partition("/")
        model_id = rest if slash and any(p.startswith(prefix + "/") for p in wildcard.patterns) else name
        return wildcard.serve(model_id)

    def resolve(self, name):
        route = self.table.get(name) if isinstance(name, str) else None
        if route is None and isinstance(name, str):
            route = self._cache.get(name) or self._match(name)
        if not route:
            raise GatewayError(404, f"The model '{clip(str(name), 100)}' does not exist or is not served by this "
                                    f"gateway.{self._listed}", "model")
        return route

    def _match(self, name):
        """A name no entry spells out, through the patterns: an alias pattern's route, or a
        wildcard entry's target for that id followed by its fallbacks; remembered (bounded)."""
        hit = self.by_pattern.match(name)
        if hit is None:
            return None
        route = hit[0] if isinstance(hit[0], Target) else hit[0][1]
        if isinstance(route, Target):
            first = self._serve(route, name)
            steps = [first]
            for f in first.fallbacks:
                try:
                    steps.append(self.resolve(f)[0])
                except GatewayError:  # an unserved fallback, reported at load
                    pass
            route = route_of(steps)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[name] = route
        return route

    def names(self):
        return sorted({*self.aliases, *(t.name for t in self.targets), *(t.model for t in self.targets),
                       *self.patterns})
