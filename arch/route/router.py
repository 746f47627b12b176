"""One routing decision per request: which targets to try, and why.

In order: the global routing rules (the config's, then the rules
directories'), then the rules of the alias the request names (or the rule
chose), then the name's route; a request without a model, or for an alias
that routes by preferences, then asks the router model (`prefer`). Each step
that changed something adds a short reason, so `x-arch-route`, the access
log, traces and metrics can say what decided.
"""
from dataclasses import dataclass, field

from arch.errors import ConfigError, GatewayError
from arch.route import balance, prefer
from arch.route.balance import Pool
from arch.route.facts import facts
from arch.route.resolve import first_target
from arch.route.rules import compile_list, compile_rules


@dataclass(slots=True)
class Decision:
    route: tuple        # targets to try, in order
    name: str           # the name that was resolved (after the rules)
    alias: str | None   # the alias it went through, if any
    why: str            # for x-arch-route and the log: "rule long-prompts -> gemini-pro"
    decided_by: str | None  # the rule that decided (a metric label), None when only the name did
    pending: bool = field(default=False)  # the router model is still to be asked (`Router.prefer`)


class Router:
    def __init__(self, routes, config, rules):
        self.routes = routes
        problems = []

        def compiled(specs, where):
            found, broken = compile_rules(specs, where)
            problems.extend(broken)
            for rule in found:
                if not self._serves(rule.target) and rule.target not in self.preferences:
                    problems.append(f"{rule.where}.target: {rule.target!r} is not a configured model, alias"
                                    " or routing preference")
            return found

        self.preferences, self.warnings = {}, []
        for n, spec in enumerate(config.preferences):
            missing = [m for m in spec["models"] if not self._serves(m)]
            problems += [f"{config.path}: routing_preferences[{n}].models: {m!r} is not a configured model"
                         for m in missing]
            self.preferences[spec["name"]] = prefer.Preference(spec["name"], spec["description"],
                                                               tuple(spec["models"]), spec["prefer"])
        self.preference_aliases = set(config.preference_aliases)
        self.router_target = self.default = None
        self.router_timeout, self.translation = config.router["timeout"], None
        self.cache, self.prices, self.models = prefer.Cache(), rules.prices, rules.models
        if self.preferences or self.preference_aliases:
            model = config.router["model"]
            if model and self._serves(model):
                self.router_target = first_target(routes.resolve(model)[0])
                self.translation = rules.translation("openai", self.router_target.dialect)
            else:
                self.warnings.append(f"routing.model: {model!r} is not a configured model; requests routed by"
                                     " preference go to the default target" if model else
                                     "routing_preferences: no router model (routing.model); requests routed by"
                                     " preference go to the default target")
            default = config.router["default"] or next((p.name for p in config.providers if p.default), None) \
                or (config.providers[0].name if config.providers else None)
            if default and not self._serves(default):
                problems.append(f"{config.path}: routing.default: {default!r} is not a configured model")
            self.default = default

        specs, source = rules.routing
        self.rules = (compiled(config.routing_rules, f"{config.path}: routing_rules")
                      + compiled(specs, f"{source}: routing_rules"))
        self.alias_rules = {alias: compiled(found, f"{config.path}: model_aliases.{alias}.routing_rules")
                            for alias, found in config.alias_rules.items()}
        if problems:
            raise ConfigError(problems)
        self.first = compile_list(self.rules, self._model_facts) if self.rules else None
        self.alias_first = {alias: compile_list(found, self._model_facts) for alias, found in self.alias_rules.items()}
        self.alias_default = {alias: f"{alias} default" for alias in self.alias_rules}
        # deployment -> (its State, its first pool's Settings): what the handler reports each attempt to
        self.tracked = {}
        for pool in routes.pools:
            for t, state in zip(pool.targets, pool.states):
                self.tracked.setdefault(t, (state, pool.settings))

    def _model_facts(self, root, raw):
        """rules/models.yaml's view of the model the request names, or None (a computed fact)."""
        try:
            facts = self.models.get(first_target(self.routes.resolve(root["model"])[0]).model)
        except GatewayError:
            return None
        return facts and facts.view

    def _serves(self, name):
        try:
            self.routes.resolve(name)
            return True
        except GatewayError:
            return False

    def decide(self, body, headers, dialect, raw):
        """The Decision for a request (`raw`: its body's bytes); a name nothing serves is a 404."""
        name, alias, decided_by, why = body.get("model"), None, None, []
        root = rule = None
        if self.first is not None:
            root = facts(body, headers, dialect)
            rule = self.first(root, raw)
            if rule:
                name, decided_by = rule.target, rule.name
                why.append(f"rule {rule.name}")
        alias_first = self.alias_first.get(name)
        if alias_first is not None:
            alias = name
            rule = alias_first(root or facts(body, headers, dialect), raw)
            if rule:
                name, decided_by = rule.target, f"{alias}: {rule.name}"
                why.append(f"{alias} rule {rule.name}")
            else:
                why.append(self.alias_default[alias])
        if name is None or name in self.preference_aliases:  # the router model decides (see prefer)
            if not self.preferences:
                raise GatewayError(400, "model: a model is required (no routing_preferences are configured)",
                                   "model")
            alias = name
            why += [name] if name else []
            route = self.routes.resolve(name or self.default)
            return Decision(route, name, alias, " ".join(why), decided_by, pending=True)
        if name in self.preferences and not self._serves(name):  # a rule chose a route by its name
            route, chosen = self._preferred(self.preferences[name], body, headers)
            why.append(f"preference {name} -> {chosen}")
            return Decision(route, name, alias, " ".join(why), decided_by or name)
        route = self.routes.resolve(name)
        if alias is None and name in self.routes.aliases:
            alias = name
        if route.balanced:
            route = self._choose(route, body, headers, why)
        else:
            why.append(f"-> {route[0].name}")
        return Decision(route, name, alias, " ".join(why), decided_by)

    @staticmethod
    def _choose(route, body, headers, why):
        """The targets of a route with Pools in it: each Pool's choice, then its other deployments."""
        if len(route) == 1 and isinstance(route[0], Pool):  # one Pool, no fallbacks
            targets, chosen = route[0].order(body, headers)
            why.append("-> " + chosen)
            return targets
        out = []
        for step in route:
            if isinstance(step, Pool):
                targets, chosen = step.order(body, headers)
                if not out:
                    why.append(f"-> {chosen}")
                out.extend(t for t in targets if t not in out)
            elif step not in out:
                if not out:
                    why.append(f"-> {step.name}")
                out.append(step)
        return out

    def _preferred(self, preference, body, headers):
        """(targets, the first one's name): the preference's models in its selection order."""
        names = list(preference.models)
        if preference.prefer == "cheapest":
            def price(name):
                p = self.prices.get(first_target(self.routes.resolve(name)[0]).model) or {}
                return (p.get("input", 0) + p.get("output", 0)) if p else float("inf")
            names.sort(key=price)
        elif preference.prefer == "fastest":
            # by measured time to first byte; a model not measured yet first (in the listed order,
            # so before any measurement the order is as listed), so each is measured once
            def latency(name):
                measured = balance.LATENCY.get(first_target(self.routes.resolve(name)[0]).name)
                return (measured is not None, measured or 0.0)
            names.sort(key=latency)
        steps = [step for n in names for step in self.routes.resolve(n)]
        why = []
        route = self._choose(steps, body, headers, why)
        return route, why[0][3:]

    async def prefer(self, decision, body, headers, pool, request_id):
        """Finish a pending Decision: the router model's route, or the default target when
        it gives none (timeout, error, unreadable, `other`). Never raises."""
        key = prefer.Cache.key(body)
        name, how = self.cache.get(key), "cached"
        if name is None:
            if self.router_target is None:
                name, how = None, "no router model"
            else:
                name, how = await prefer.ask(pool, self.router_target, self.translation,
                                             list(self.preferences.values()), body, self.router_timeout, request_id)
                how = how or "router"
                if name is not None:
                    self.cache.put(key, name)
        why = [decision.why] if decision.why else []
        if name in self.preferences:
            route, chosen = self._preferred(self.preferences[name], body, headers)
            why.append(f"preference {name} ({how}) -> {chosen}")
            return Decision(route, decision.name, decision.alias, " ".join(why), f"preference {name}")
        route = decision.route
        if route.balanced:
            route = self._choose(route, body, headers, [])
        why.append(f"preference {name or 'none'} ({how}) -> default {route[0].name}")
        return Decision(route, decision.name, decision.alias, " ".join(why), "preference default")
