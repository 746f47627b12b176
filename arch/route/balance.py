"""Several deployments behind one name: which one a request goes to.

A `Pool` holds the deployments (the same model at several keys, hosts or
providers) with their weights and a strategy:

    weighted          random, in proportion to the weights (the default)
    round_robin       smooth weighted round robin: the weights' proportions, evenly spread
    least_inflight    fewest requests in flight per unit of weight; ties broken by weighted
                      random, so idle deployments share the load instead of the first taking it all
    lowest_latency    lowest moving average of time to first byte; deployments not measured
                      yet go first, and 1 request in 20 is weighted random so the averages stay fresh

Outlier ejection, per deployment and per process: `consecutive_failures` 5xx,
connect errors or timeouts in a row eject it for `base_ejection` times the
number of times it was ejected (up to `max_ejection`); a 429 with a
retry-after cools it for that long. Ejected deployments are skipped; when all
are, the least bad (the one coming back soonest) is tried rather than none.
Session affinity (a header such as `x-session-id`, or a hash of the
conversation's first messages) keeps a conversation on one deployment, for
the provider's prompt cache, by rendezvous hashing: when a deployment is
ejected only its own conversations move.

One State per deployment, shared by every pool it is in (its name's, and each
alias balanced over it): what one pool's requests learn, the others see. It
outlives reloads: a deployment keeps its numbers as long as its name,
provider, model, URL and headers (its key) stay the same.
"""
import json
import logging
import math
import random
import time
import zlib
from bisect import bisect
from dataclasses import dataclass

from arch.observe import report

log = logging.getLogger("arch")

STRATEGIES = ("weighted", "round_robin", "least_inflight", "lowest_latency")
EWMA_ALPHA = 0.3
EXPLORE = 0.05
PREFIX_CHARS = 4096  # how much of the conversation's start the prefix affinity hashes
FAILURE_STATUSES = frozenset((500, 502, 503, 504, 529))


@dataclass(frozen=True)
class Settings:
    strategy: str = "weighted"
    affinity: str | None = None       # a header name, or "prefix"
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0


class State:
    """What one process knows about one deployment."""

    latest = 0.0  # when the latest ejection of any deployment ends (0: none to check)

    __slots__ = ("label", "inflight", "failures", "ejections", "ejected_until", "reason", "ttfb")

    def __init__(self, label):
        self.label = label
        self.inflight = self.failures = self.ejections = 0
        self.ejected_until = 0.0
        self.reason = None
        self.ttfb = None     # EWMA of seconds to the provider's first byte

    def ejected(self, now):
        return self.ejected_until > now

    def eject(self, seconds, reason):
        self.ejected_until = max(self.ejected_until, time.monotonic() + seconds)
        self.reason = reason
        State.latest = max(State.latest, self.ejected_until)

    def record(self, settings, ttfb=None, status=None, retry_after=None):
        """One finished attempt: ttfb on success, else its status (a connect error is a
        502, a timeout a 504). Returns a reason when it ejected the deployment."""
        if status is None:
            if ttfb is not None:
                self.ttfb = ttfb if self.ttfb is None else self.ttfb + EWMA_ALPHA * (ttfb - self.ttfb)
            self.failures = 0
            if self.ejections and not self.ejected(time.monotonic()):
                self.ejections -= 1  # healthy again: the next ejection, if any, is shorter
            return None
        if status == 429 and retry_after:
            self.eject(retry_after, f"429, cooling {retry_after:g}s")
            return self.reason
        if status in FAILURE_STATUSES:
            self.failures += 1
            if self.failures >= settings.consecutive_failures:
                self.ejections += 1
                self.failures = 0
                seconds = min(settings.base_ejection * self.ejections, settings.max_ejection)
                self.eject(seconds, f"{settings.consecutive_failures} failures in a row (last {status}),"
                                    f" ejected {seconds:g}s")
                return self.reason
        return None

    def snapshot(self, now):
        return {"deployment": self.label, "inflight": self.inflight,
                "ejected_for_s": round(self.ejected_until - now, 3) if self.ejected(now) else 0,
                "reason": self.reason if self.ejected(now) else None,
                "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000, 2)}


LATENCY = {}  # target name -> EWMA of seconds to the first byte, for `prefer: fastest`


class Attempt:
    """One call to a target, as its State (when it is a balanced deployment) and the
    latency table see it: in flight until `close`."""

    __slots__ = ("tracked", "name", "started", "outcome")

    def __init__(self, tracked, name):
        self.tracked, self.name, self.outcome = tracked, name, None
        self.started = time.monotonic()
        if tracked is not None:
            tracked[0].inflight += 1

    def ok(self, head_at):
        if head_at:
            ttfb, last = head_at - self.started, LATENCY.get(self.name)
            LATENCY[self.name] = ttfb if last is None else last + EWMA_ALPHA * (ttfb - last)
        self.outcome = {"ttfb": head_at and head_at - self.started} if self.tracked else None

    def failed(self, error, retry_after):
        self.outcome = {"status": error.status, "retry_after": retry_after} if self.tracked else None

    def close(self):
        if self.tracked is None:
            return
        state, settings = self.tracked
        self.tracked = None
        state.inflight -= 1
        if self.outcome is not None:  # None: the client left; says nothing about the deployment
            reason = state.record(settings, **self.outcome)
            if reason:
                log.warning("deployment %s: %s", state.label, reason)
                report.EJECTIONS.labels(state.label).inc()


def refresh_gauges(states):
    """Set arch_deployment_ejected for each deployment (at a scrape: ejections end by themselves)."""
    now = time.monotonic()
    for state in states:
        report.EJECTED.labels(state.label).set(1 if state.ejected(now) else 0)


_STATES = {}  # deployment -> State, shared by its pools and by the snapshots a reload replaces


class Pool:
    """The deployments behind one name and how to choose among them."""

    def __init__(self, name, targets, weights, settings):
        self.name, self.targets, self.settings = name, tuple(targets), settings
        self.weights = tuple(float(w) for w in weights)
        self.states = []
        for i, t in enumerate(self.targets):
            key = (t.name, t.provider, t.model, t.url, tuple(sorted(t.headers.items())))
            state = _STATES.get(key)
            if state is None:  # named after the first pool that has it (its name's, when it has one)
                state = _STATES[key] = State(f"{name}[{i}] {t.provider}/{t.model}")
            self.states.append(state)
        self.current = [0.0] * len(self.targets)  # smooth round robin's running weights
        self._pick = getattr(self, "_" + settings.strategy)
        self.all = tuple(range(len(self.targets)))
        self.why = {how: [f"{s.label} ({how})" for s in self.states] for how in (settings.strategy, "affinity")}
        # for a pick among all of them (the common case): cumulative weights, and each order
        self.cumulative = [sum(self.weights[:i + 1]) for i in self.all]
        self.inverse = tuple(1 / w for w in self.weights)
        self.orders = [(self.targets[i], *(self.targets[j] for j in self.all if j != i)) for i in self.all]

    def order(self, body, headers):
        """(the targets to try, in order, and a short reason): the chosen deployment first,
        then the other healthy ones; when every one is ejected, the least bad first."""
        healthy = self.all
        if State.latest:  # some deployment was ejected: is any of these still?
            now = time.monotonic()
            if State.latest <= now:
                State.latest = 0.0  # every ejection is over: no more clock reads until the next
            elif any(s.ejected_until > now for s in self.states):
                healthy = [i for i, s in enumerate(self.states) if not s.ejected(now)]
        if not healthy:
            ranked = sorted(range(len(self.states)), key=lambda i: self.states[i].ejected_until)
            return [self.targets[i] for i in ranked], f"{self.states[ranked[0]].label} (all ejected, least bad)"
        key = self._affinity_key(body, headers) if self.settings.affinity is not None else None
        if key is not None:
            first, how = self._rendezvous(healthy, key), "affinity"
        else:
            first, how = (healthy[0] if len(healthy) == 1 else self._pick(healthy)), self.settings.strategy
        if healthy is self.all:
            return self.orders[first], self.why[how][first]
        targets = [self.targets[first]]
        targets += [self.targets[i] for i in healthy if i != first]
        return targets, self.why[how][first]

    def _affinity_key(self, body, headers):
        affinity = self.settings.affinity
        if affinity != "prefix":
            value = headers.get(affinity)
            return value.encode()[:256] if value else None
        start = [body.get("system"), *(body.get("messages") or ())[:2]]
        return json.dumps(start, ensure_ascii=False, default=str)[:PREFIX_CHARS].encode()

    def _rendezvous(self, healthy, key):
        """Weighted rendezvous hashing: the same key picks the same deployment while it is healthy."""
        def score(i):
            h = (zlib.crc32(self.states[i].label.encode(), zlib.crc32(key)) + 1) / 4294967297
            return -self.weights[i] / math.log(h)
        return max(healthy, key=score)

    def _weighted(self, healthy):
        if len(healthy) == len(self.all):  # all of them: O(log n)
            return min(bisect(self.cumulative, random.random() * self.cumulative[-1]), len(self.all) - 1)
        total = sum(self.weights[i] for i in healthy)
        r = random.random() * total
        for i in healthy:
            r -= self.weights[i]
            if r < 0:
                return i
        return healthy[-1]

    def _round_robin(self, healthy):
        total, best, current = 0.0, None, self.current
        for i in healthy:
            current[i] += self.weights[i]
            total += self.weights[i]
            if best is None or current[i] > current[best]:
                best = i
        current[best] -= total
        return best

    def _least_inflight(self, healthy):
        states, inverse = self.states, self.inverse
        low, tied = math.inf, []
        for i in healthy:
            load = states[i].inflight * inverse[i]
            if load < low:
                low, tied = load, [i]
            elif load == low:
                tied.append(i)
        return self._weighted(tied)

    def _lowest_latency(self, healthy):
        unmeasured = [i for i in healthy if self.states[i].ttfb is None]
        if unmeasured:
            return random.choice(unmeasured)
        if random.random() < EXPLORE:
            return self._weighted(healthy)
        return min(healthy, key=lambda i: self.states[i].ttfb)
