"""Leases: shares of the rate-limit counters in Redis that this process hands
out itself, so that most admissions make no round trip.

When a request must ask Redis (no lease, or too little left of one), the same
admission script may grant this process a lease on each counter it moves: a
part of the window's headroom, added to the counter in Redis at once, that the
process then admits its next requests from. Nothing is admitted that Redis has
not counted, so a limit is never exceeded, across any number of replicas. What
a lease costs is the other way round: units leased and not yet used are
unavailable to other replicas. That is kept small:

- a lease is a sixteenth of the headroom left after the request, granted only
  when it covers at least one more request of the same cost: none comes out
  of the last seventeen requests' worth of a window's headroom, which are
  admitted one by one in Redis (or from leases granted before);
- a process asks for one lease per counter at a time;
- a lease too small for a request is given back by the very call that admits
  it, and what is left of one after LEASE_SECONDS goes back on its own (a
  lease on a window that ended is never found again: the counter's name is
  its window's).

Only window counters are leased: a key with a budget or `max_parallel_requests`
asks Redis on every request. The counts for the rate-limit headers of a
request admitted from a lease are this process's own requests exactly, and the
other replicas' as of the lease.
"""
import asyncio

LEASE_SECONDS = 1.0
SHARE = 16  # a lease is 1/SHARE of what the window has left


class _Lease:
    __slots__ = ("left", "base")

    def __init__(self, left, base):
        self.left = left  # units not handed out yet
        self.base = base  # the counter in Redis just after the grant


class Leases:
    """The leases of one process: counter name -> lease, and the counters asked for."""

    def __init__(self, give_back):
        self.give_back = give_back  # (counter name, units): returns units to Redis, nobody waiting
        self.held = {}
        self.asking = set()

    def take(self, counters):
        """Admit from the leases when every counter's lease covers its cost: the counters'
        counts before this request, as the admission script returns them. None otherwise."""
        held = self.held
        for name, _limit, cost, _reset in counters:
            lease = held.get(name)
            if lease is None or lease.left < cost:
                return None
        used = []
        for name, _limit, cost, _reset in counters:
            lease = held[name]
            lease.left -= cost
            used.append(lease.base - lease.left - cost)
        return used

    def ask(self, counters):
        """What the admission script is to do with each counter's lease: (units this process gives
        back, SHARE to ask for a new lease or 0). The leases given back are gone from here."""
        plan = []
        for name, *_ in counters:
            lease = self.held.pop(name, None)
            asking = name not in self.asking
            if asking:
                self.asking.add(name)
            plan.append((lease.left if lease else 0, SHARE if asking else 0))
        return plan

    def answered(self, counters, plan, reply):
        """The script's reply to `ask`'s plan (None if it failed): leases granted are held."""
        for (name, *_), (_give, asked) in zip(counters, plan):
            if asked:
                self.asking.discard(name)
        if not reply or reply[0] != 0:
            return
        loop = asyncio.get_running_loop()
        for (name, _limit, cost, _reset), used, grant in zip(counters, reply[1], reply[2]):
            if grant:
                lease = self.held[name] = _Lease(grant, used + cost + grant)
                loop.call_later(LEASE_SECONDS, self._expire, name, lease)

    def _expire(self, name, lease):
        if self.held.get(name) is lease:
            del self.held[name]
            if lease.left:
                self.give_back(name, lease.left)

    def give_all_back(self):
        for name, lease in self.held.items():
            if lease.left:
                self.give_back(name, lease.left)
        self.held.clear()
