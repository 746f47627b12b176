"""One routing decision per request: which targets to try, and why.

In order: the global routing rules (the config's, then the rules
directories'), then the rules of the alias the request names (or the rule
chose), then the name's route. Each step that changed something adds a short
reason, so `x-arch-route`, the access log, traces and metrics can say what
decided.
"""
from dataclasses import dataclass

from arch.errors import ConfigError, GatewayError
from arch.route.balance import Pool
from arch.route.facts import Facts
from arch.route.rules import compile_rules, first_match


@dataclass
class Decision:
    route: tuple        # targets to try, in order
    name: str           # the name that was resolved (after the rules)
    alias: str | None   # the alias it went through, if any
    why: str            # for x-arch-route and the log: "rule long-prompts -> gemini-pro"
    decided_by: str | None  # the rule that decided (a metric label), None when only the name did


class Router:
    def __init__(self, routes, config, rules):
        self.routes = routes
        problems = []

        def compiled(specs, where):
            found, broken = compile_rules(specs, where)
            problems.extend(broken)
            for rule in found:
                try:
                    routes.resolve(rule.target)
                except GatewayError:
                    problems.append(f"{rule.where}.target: {rule.target!r} is not a configured model or alias")
            return found

        specs, source = rules.routing
        self.rules = (compiled(config.routing_rules, f"{config.path}: routing_rules")
                      + compiled(specs, f"{source}: routing_rules"))
        self.alias_rules = {alias: compiled(found, f"{config.path}: model_aliases.{alias}.routing_rules")
                            for alias, found in config.alias_rules.items()}
        if problems:
            raise ConfigError(problems)
        # deployment -> (its State, its pool's Settings): what the handler reports each attempt to
        self.tracked = {t: (state, pool.settings) for pool in routes.pools
                        for t, state in zip(pool.targets, pool.states)}

    def decide(self, body, headers, dialect):
        """The Decision for a request; a name nothing serves is a 404."""
        name, alias, decided_by, why = body.get("model"), None, None, []
        facts = Facts(body, headers, dialect) if self.rules or self.alias_rules else None
        rule = self.rules and first_match(self.rules, facts)
        if rule:
            name, decided_by = rule.target, rule.name
            why.append(f"rule {rule.name}")
        alias_rules = self.alias_rules.get(name)
        if alias_rules is not None:
            alias = name
            rule = first_match(alias_rules, facts)
            if rule:
                name, decided_by = rule.target, f"{alias}: {rule.name}"
                why.append(f"{alias} rule {rule.name}")
            else:
                why.append(f"{alias} default")
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
