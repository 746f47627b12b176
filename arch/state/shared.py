"""Limits, parallel requests, budgets and usage in Redis, shared by every
worker and replica.

One admission is one EVALSHA: the script checks every counter, the parallel
set and the budget, and only if all pass moves them, atomically, so replicas
never both take the last unit of a limit. The same script may lease this
process a part of a window's headroom, which its next requests are admitted
from without a round trip (`leases.py`). Settling after an answer (the token
correction, the parallel slot, the spend, the usage totals) is summed with the
other settlements of the next 5 ms and sent as one more script nobody waits
for, ahead of this process's next admission that asks Redis (a freed slot or
returned tokens count for it). A settlement that adds spend to a budget leaves
at once: other replicas see spend as soon as the answer is made, so a budget is
overshot only by the requests in flight when it ran out.
Every key starts with the hash tag `{prefix}`, so all of a gateway's keys live
in one Redis Cluster slot and the scripts may touch any of them (one slot
serves tens of thousands of admissions a second).
Window counters expire at their window's end (PEXPIREAT), budgets at theirs;
usage totals are kept.
"""
import asyncio
import functools
import json

from arch.state.leases import Leases
from arch.state.redis import Redis, ReplyError, Script, StateError

ADMIT = Script("""
-- KEYS: n window counters, the parallel set, the budget counter
-- ARGV: n, now_ms, request id, parallel max ('' = none), parallel expiry ms, budget usd ('' = none),
--       then for each counter: limit, cost, expire-at ms, units of a lease given back, the share
--       of the headroom to lease (1/share; 0: none)
local n = tonumber(ARGV[1])
local used = {}
for i = 1, n do
  local b = 2 + 5 * i
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local back = tonumber(ARGV[b + 3])
  if back > 0 and v > 0 then v = redis.call('DECRBY', KEYS[i], math.min(back, v)) end
  used[i] = v
end
for i = 1, n do
  local b = 2 + 5 * i
  if used[i] + tonumber(ARGV[b + 1]) > tonumber(ARGV[b]) then return {i, used[i]} end
end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', ARGV[2])
  local running = redis.call('ZCARD', KEYS[n + 1])
  if running >= tonumber(ARGV[4]) then return {-1, running} end
end
if ARGV[6] ~= '' then
  local spent = redis.call('GET', KEYS[n + 2]) or '0'
  if tonumber(spent) >= tonumber(ARGV[6]) then return {-2, spent} end
end
local grants = {}
for i = 1, n do
  local b = 2 + 5 * i
  local cost, grant = tonumber(ARGV[b + 1]), 0
  local share = tonumber(ARGV[b + 4])
  if share > 0 then  -- only a lease that covers one more request like this one
    grant = math.floor((tonumber(ARGV[b]) - used[i] - cost) / share)
    if grant < cost then grant = 0 end
  end
  grants[i] = grant
  redis.call('INCRBY', KEYS[i], string.format('%d', cost + grant))
  redis.call('PEXPIREAT', KEYS[i], ARGV[b + 2])
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[n + 1], ARGV[5], ARGV[3])
  redis.call('PEXPIREAT', KEYS[n + 1], ARGV[5])
end
return {0, used, grants}
""")

SETTLE = Script("""
-- KEYS: n window counters, m parallel sets, the budget counter, the usage hash
-- ARGV: n, m, spend usd, budget expire-at ms ('' = none), n deltas, m request ids, then field/amount pairs
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, n do
  local d = tonumber(ARGV[4 + i])
  if d ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], d) end
end
for j = 1, m do redis.call('ZREM', KEYS[n + j], ARGV[4 + n + j]) end
if ARGV[4] ~= '' and tonumber(ARGV[3]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[n + m + 1], ARGV[3])
  redis.call('PEXPIREAT', KEYS[n + m + 1], ARGV[4])
end
for j = 5 + n + m, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[n + m + 2], ARGV[j], ARGV[j + 1]) end
return 1
""")


@functools.lru_cache(maxsize=4096)  # (key, model, alias, provider, kind): a few per configuration
def _field(fields):
    return json.dumps(fields)


class _Settlements:
    """What the answers since the last send have to say to Redis, summed."""
    __slots__ = ("deltas", "parallel", "budget", "usage")

    def __init__(self):
        self.deltas = {}     # counter -> tokens to add (negative: given back)
        self.parallel = []   # (parallel set, request id) to free
        self.budget = None   # (budget counter, usd, expires): spend leaves at once, so one at most
        self.usage = {}      # usage field -> amount


class RedisState:
    def __init__(self, url, prefix="archgw", timeout=0.25, hold=0.005):
        self.redis = Redis(url, timeout=timeout)
        self.tag = "{" + prefix + "}:"
        self.none = self.tag + "-"  # stands for an absent key: same slot, never written
        self.leases = Leases(self._give_back)
        self.hold = hold
        self.on_error = lambda error: None  # what to do when settlements could not be sent
        self._settling = None  # _Settlements not sent yet
        self._timer = None

    def _key(self, name):
        return self.tag + name if name else self.none

    async def admit(self, counters, parallel, budget, now):
        leased = parallel is None and budget is None  # budgets and parallel slots are never leased
        if leased:
            used = self.leases.take(counters)
            if used is not None:
                return 0, used
        plan = self.leases.ask(counters) if leased else [(0, 0)] * len(counters)
        keys = [self.tag + c[0] for c in counters]
        keys.append(self._key(parallel and parallel[0]))
        keys.append(self._key(budget and budget[0]))
        args = [len(counters), int(now * 1000), parallel[2] if parallel else "",
                parallel[1] if parallel else "", int(parallel[3] * 1000) if parallel else "",
                budget[1] if budget else ""]
        for (_name, limit, cost, expires), (back, share) in zip(counters, plan):
            args += (limit, cost, int(expires * 1000), back, share)
        reply = None
        try:
            try:
                reply = await self._after_settling("EVALSHA", ADMIT.sha, len(keys), *keys, *args)
            except ReplyError as e:  # Redis does not know the script yet (a restart, a fresh server)
                if not str(e).startswith("NOSCRIPT"):
                    raise
                reply = await self.redis.execute("EVAL", ADMIT.source, len(keys), *keys, *args)
        finally:
            if leased:
                self.leases.answered(counters, plan, reply)
        code, value = reply[0], reply[1]
        return code, (float(value) if code == -2 else value)

    def settle(self, deltas, parallel, budget, usage):
        """Add an answer's settlement to those not sent yet. They leave together, `hold` seconds
        after the first, or ahead of this process's next admission or usage read, or at once
        when this one adds spend to a budget (other replicas must see a budget run out)."""
        s = self._settling
        if s is None:
            s = self._settling = _Settlements()
            self._timer = asyncio.get_running_loop().call_later(self.hold, self._send)
        for name, delta in deltas:
            s.deltas[name] = s.deltas.get(name, 0) + delta
        if parallel:
            s.parallel.append(parallel)
        for fields, amount in usage:
            field = _field(fields)
            s.usage[field] = s.usage.get(field, 0) + amount
        if budget and budget[1]:
            s.budget = budget
            self._send()

    def _give_back(self, name, units):
        self.settle([(name, -units)], None, None, ())

    def _take(self):
        """The settlements not sent yet, as one command (None if there are none)."""
        s = self._settling
        if s is None:
            return None
        self._settling = None
        self._timer.cancel()
        keys = [self.tag + name for name in s.deltas]
        keys += [self.tag + name for name, _ in s.parallel]
        keys += (self._key(s.budget and s.budget[0]), self.tag + "usage")
        args = [len(s.deltas), len(s.parallel), s.budget[1] if s.budget else 0,
                int(s.budget[2] * 1000) if s.budget else "", *s.deltas.values(), *(rid for _, rid in s.parallel)]
        for field, amount in s.usage.items():
            args += (field, amount)
        return ("EVAL", SETTLE.source, len(keys), *keys, *args)  # once per send: the text costs nothing here

    def _send(self):
        command = self._take()
        if command is not None:
            asyncio.ensure_future(self._quietly(command))

    async def _quietly(self, command):
        try:
            await self.redis.execute(*command)
        except StateError as e:
            self.on_error(e)

    async def _after_settling(self, *command):
        """`command`'s reply, sent in the same write as (and after) the settlements not sent yet,
        so that a parallel slot freed or tokens given back count for it."""
        settling = self._take()
        if settling is None:
            return await self.redis.execute(*command)
        settled, reply = await self.redis.execute_many(settling, command)
        if isinstance(settled, ReplyError):
            self.on_error(settled)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def flush(self):
        """At shutdown: unused leases and the settlements not sent yet go to Redis now."""
        self.leases.give_all_back()
        command = self._take()
        if command is not None:
            await self._quietly(command)

    async def usage(self):
        """((key, model, alias, provider, kind), amount) for everything recorded."""
        flat = await self._after_settling("HGETALL", self.tag + "usage")
        return [(tuple(json.loads(flat[i])), float(flat[i + 1])) for i in range(0, len(flat), 2)]
