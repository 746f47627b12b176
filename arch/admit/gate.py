"""Whether a request may go on: its key, its model, its limits, its budget.

Built once per configuration (keys hashed, patterns matched against every
served name, limits grouped per name), so a request does dict lookups and one
call to the state backend. A configuration with no gateway keys, no
`ratelimits` and no Redis has no Admission at all: requests pay nothing.

`admit` returns a Ticket (what was reserved, and the client dialect's
rate-limit headers for its answer); `settle` corrects it with what the provider
reported, after the answer, without the client waiting.
"""
import logging
import time

from prometheus_client import Counter

from arch.admit.budget import budget_window
from arch.admit.keys import Keys
from arch.admit.limits import (estimate, key_limits, limit_headers, ratelimit_rules, refusal_headers, served_names,
                               window)
from arch.errors import GatewayError
from arch.state.redis import StateError

log = logging.getLogger("arch")
STATE_ERRORS = Counter("arch_state_errors_total", "Shared state (Redis) calls that failed", ["stage", "policy"])
REFUSED = Counter("arch_admission_refused_total", "Requests refused by a limit or budget", ["key", "reason"])
PARALLEL_TTL = 3600.0  # a parallel slot a crashed replica never gave back frees itself after this


class Ticket:
    __slots__ = ("key", "tokens", "reserved", "parallel", "rid", "budget", "headers")

    def __init__(self, key, tokens, reserved, parallel, rid, budget, headers):
        self.key, self.tokens, self.reserved = key, tokens, reserved
        self.parallel, self.rid, self.budget = parallel, rid, budget
        self.headers = headers  # the rate-limit headers of the answer


class Admission:
    def __init__(self, config, routes, state):
        served = {n: (n,) if n in routes.aliases else served_names(n, t[0]) for n, t in routes.table.items()}
        self.keys = Keys(config.gateway_keys, served, config.admin_key) if config.gateway_keys is not None else None
        self.rules = ratelimit_rules(config.ratelimits, routes)
        self.limits = {} if self.keys is None else {k: key_limits(k) for k in self.keys.by_digest.values()}
        self.state = state
        state.on_error = self._settle_failed  # the backend outlives reloads: the newest Admission logs
        self.fail_open = config.fail_open
        self._state_down = False

    def authenticate(self, headers):
        """The caller's GatewayKey (401 if it has none that is valid); None when keys are off."""
        return None if self.keys is None else self.keys.authenticate(headers)

    def require_admin(self, headers):
        if self.keys is not None:
            self.keys.require_admin(headers)

    async def admit(self, key, name, body, headers, dialect, rid):
        """Check and reserve; a 403/429/503 GatewayError when the request may not go on.
        `dialect`: the client's Dialect, whose rate-limit headers the answer carries."""
        if key is not None:
            self.keys.permit(key, name)
        limits = [*self.limits.get(key, ()), *filter(None, (r.applies(headers) for r in self.rules.get(name, ())))]
        now = time.time()
        tokens = estimate(body) if any(lim.kind == "tokens" for lim in limits) else 0
        counters, windows = [], []
        for lim in limits:
            n, reset_at = window(lim, now)
            cost = 1 if lim.kind == "requests" else min(tokens, lim.limit)  # one request always fits an empty window
            counters.append((f"w:{lim.bucket}:{n}", lim.limit, cost, reset_at))
            windows.append(reset_at)
        parallel = budget = None
        most = key is not None and key.limits.get("max_parallel_requests")
        if most:
            parallel = (f"p:{key.name}", most, rid, now + PARALLEL_TTL)
        if key is not None and key.budget:
            budget_name, budget_reset = budget_window(key.budget["per"], now)
            budget = (f"b:{key.name}:{budget_name}", key.budget["usd"])
        try:
            code, value = await self.state.admit(counters, parallel, budget, now)
        except StateError as e:
            return self._state_failed(e, key, rid)
        if self._state_down:
            self._state_down = False
            log.warning("shared state is back: limits and budgets are enforced again")
        if code > 0:
            lim = limits[code - 1]
            REFUSED.labels(key.name if key else "", lim.kind).inc()
            raise GatewayError(429, f"rate limit reached for {lim.what}: {lim.limit} {lim.kind} per {lim.unit}",
                               headers=refusal_headers(dialect, lim, value, windows[code - 1], now))
        if code == -1:
            REFUSED.labels(key.name, "parallel").inc()
            raise GatewayError(429, f"too many parallel requests for key '{key.name}' (at most {most})",
                               headers={"retry-after": "1"})
        if code == -2:
            REFUSED.labels(key.name, "budget").inc()
            error = GatewayError(429, f"key '{key.name}' has spent its budget of ${key.budget['usd']:g} per "
                                      f"{key.budget['per']} (spent ${value:.6g}); it resets at "
                                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(budget_reset))}",
                                 headers={"retry-after": str(max(1, int(budget_reset - now)))})
            error.kind = "insufficient_quota"
            raise error
        token_counters = [c[0] for c, lim in zip(counters, limits) if lim.kind == "tokens"]
        reserved = [c[2] for c, lim in zip(counters, limits) if lim.kind == "tokens"]
        # what is left after this request, from the counts the check read: no extra round trip
        rows = [(lim, lim.limit - used - c[2], c[3]) for lim, c, used in zip(limits, counters, value)]
        return Ticket(key, token_counters, reserved, parallel and parallel[0], rid,
                      budget and (budget[0], budget_reset), limit_headers(dialect, rows, now) if rows else {})

    def _state_failed(self, error, key, rid):
        policy = "fail_open" if self.fail_open else "fail_closed"
        STATE_ERRORS.labels("admit", policy).inc()
        if not self._state_down:
            self._state_down = True
            log.error("shared state unreachable (%s): %s", error,
                      "admitting requests WITHOUT limits or budgets until it is back" if self.fail_open
                      else "refusing requests with 503 until it is back")
        if not self.fail_open:
            raise GatewayError(503, "the gateway cannot check rate limits right now (its shared state is "
                                    "unreachable); try again shortly", headers={"retry-after": "1"})
        return Ticket(key, (), (), None, rid, None, {})  # nothing reserved, usage still recorded if it can be

    def settle(self, ticket, record, usd):
        """Correct the reservation with the reported usage; free the parallel slot; add spend and usage."""
        usage = record["usage"]
        if usage:
            actual = (usage.get("input") or 0) + (usage.get("output") or 0)
        else:  # none reported: a refused or failed call used nothing; an answer (or a stream the
            # client left) of unknown size keeps its reservation
            actual = 0 if record["status"] >= 400 and record["status"] != 499 else None
        deltas = [(name, actual - r) for name, r in zip(ticket.tokens, ticket.reserved)] if actual is not None else []
        fields = (ticket.key.name if ticket.key else "", record["model"] or "", record["alias"] or "",
                  record["provider"] or "")
        rows = [((*fields, "requests"), 1)]
        if usage:
            rows += [((*fields, kind), usage[kind]) for kind in ("input", "output", "cached") if usage.get(kind)]
        if usd:
            rows.append(((*fields, "cost_usd"), usd))
        budget = ticket.budget and (ticket.budget[0], usd or 0, ticket.budget[1])
        parallel = ticket.parallel and (ticket.parallel, ticket.rid)
        self.state.settle(deltas, parallel, budget, rows)  # sent later, nobody waits for it

    def _settle_failed(self, error):
        STATE_ERRORS.labels("settle", "fail_open" if self.fail_open else "fail_closed").inc()
        if not self._state_down:  # while it is down, said once by admit()
            log.warning("shared state: could not record the usage of answers (%s)", error)
