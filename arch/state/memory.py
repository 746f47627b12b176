"""Limits, parallel requests and budgets in this process's memory.

Exact for one process: the checks and the increments of one admission run
without an await between them, so nothing else interleaves. Under
`--workers N` each worker holds its own counters and enforces a share of
every limit and budget (1/N, rounded up): workers share nothing, so the
kernel's spreading of connections decides how close the total comes to the
limit. For limits exact across workers or replicas, use Redis (`shared.py`).
Usage by key is not kept here: the Prometheus counters have it (summed over
workers).
"""
import math
import time

SWEEP_EVERY = 4096  # admissions between sweeps of expired counters


class MemoryState:
    def __init__(self, shares=1):
        self.shares = max(1, shares)
        self.counters = {}   # name -> [value, expires_at]
        self.parallel = {}   # name -> {request id: expires_at}
        self.spent = {}      # name -> [usd, expires_at]
        self._admitted = 0

    def _share(self, limit):
        return math.ceil(limit / self.shares)

    async def admit(self, counters, parallel, budget, now):
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            self._sweep(time.time())
        used = []
        for i, (name, limit, cost, _expires) in enumerate(counters):
            entry = self.counters.get(name)
            value = entry[0] if entry is not None and entry[1] > now else 0
            if value + cost > self._share(limit):
                return i + 1, value
            used.append(value)
        if parallel is not None:
            name, most, rid, expires = parallel
            running = self.parallel.setdefault(name, {})
            if len(running) >= self._share(most):
                for r in [r for r, t in running.items() if t <= now]:
                    del running[r]
                if len(running) >= self._share(most):
                    return -1, len(running)
        if budget is not None:
            name, usd = budget
            entry = self.spent.get(name)
            spent = entry[0] if entry is not None and entry[1] > now else 0.0
            if spent >= usd / self.shares:
                return -2, spent
        for (name, _limit, cost, expires), value in zip(counters, used):
            self.counters[name] = [value + cost, expires]
        if parallel is not None:
            running[rid] = expires
        return 0, used

    def settle(self, deltas, parallel, budget, usage):
        for name, delta in deltas:
            entry = self.counters.get(name)
            if entry is not None:
                entry[0] += delta
        if parallel is not None:
            self.parallel.get(parallel[0], {}).pop(parallel[1], None)
        if budget is not None:
            name, usd, expires = budget
            entry = self.spent.get(name)
            if entry is None or entry[1] <= time.time():
                self.spent[name] = [usd, expires]
            else:
                entry[0] += usd

    async def usage(self):
        return None  # the Prometheus counters have it

    async def flush(self):
        pass

    def _sweep(self, now):
        for table in (self.counters, self.spent):
            for name in [n for n, (_, expires) in table.items() if expires <= now]:
                del table[name]
        for name in [n for n, running in self.parallel.items() if not running]:
            del self.parallel[name]
