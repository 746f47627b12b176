"""Limits, parallel requests, budgets and usage in Redis, shared by every
worker and replica.

One admission is one EVALSHA: the script checks every counter, the parallel
set and the budget, and only if all pass moves them, atomically, so replicas
never both take the last unit of a limit. Settling after the answer (the
token correction, the parallel slot, the spend, the usage totals) is one more
EVALSHA that nobody waits for, held to leave in the same write as this
process's next command (or 5 ms later when none comes): under load and at one
connection alike it adds no round trip of its own. A settlement that adds spend
to a budget is not held: other replicas see spend as soon as the answer is
made, so a budget is overshot only by the requests in flight when it ran out.
Every key starts with the hash tag `{prefix}`, so all of a gateway's keys live
in one Redis Cluster slot and the scripts may touch any of them (one slot
serves tens of thousands of admissions a second).
Window counters expire at their window's end (PEXPIREAT), budgets at theirs;
usage totals are kept.
"""
import functools
import json

from arch.state.redis import Redis, Script

ADMIT = Script("""
-- KEYS: n window counters, the parallel set, the budget counter
-- ARGV: n, now_ms, request id, parallel max ('' = none), parallel expiry ms, budget usd ('' = none),
--       then limit, cost, expire-at ms for each counter
local n = tonumber(ARGV[1])
local used = {}
for i = 1, n do
  local b = 4 + 3 * i
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  if v + tonumber(ARGV[b + 1]) > tonumber(ARGV[b]) then return {i, v} end
  used[i] = v
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
for i = 1, n do
  local b = 4 + 3 * i
  redis.call('INCRBY', KEYS[i], ARGV[b + 1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[b + 2])
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[n + 1], ARGV[5], ARGV[3])
  redis.call('PEXPIREAT', KEYS[n + 1], ARGV[5])
end
return {0, used}
""")

SETTLE = Script("""
-- KEYS: n window counters, the parallel set, the budget counter, the usage hash
-- ARGV: n, request id ('' = none), spend usd, budget expire-at ms ('' = none), n deltas, then field/amount pairs
local n = tonumber(ARGV[1])
for i = 1, n do
  local d = tonumber(ARGV[4 + i])
  if d ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], d) end
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[n + 1], ARGV[2]) end
if ARGV[4] ~= '' and tonumber(ARGV[3]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[n + 2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[n + 2], ARGV[4])
end
for j = 5 + n, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[n + 3], ARGV[j], ARGV[j + 1]) end
return 1
""")


@functools.lru_cache(maxsize=4096)  # (key, model, alias, provider, kind): a few per configuration
def _field(fields):
    return json.dumps(fields)


class RedisState:
    def __init__(self, url, prefix="archgw", timeout=0.25):
        self.redis = Redis(url, timeout=timeout)
        self.tag = "{" + prefix + "}:"
        self.none = self.tag + "-"  # stands for an absent key: same slot, never written

    def _key(self, name):
        return self.tag + name if name else self.none

    async def admit(self, counters, parallel, budget, now):
        keys = [self.tag + c[0] for c in counters]
        keys.append(self._key(parallel and parallel[0]))
        keys.append(self._key(budget and budget[0]))
        args = [len(counters), int(now * 1000), parallel[2] if parallel else "",
                parallel[1] if parallel else "", int(parallel[3] * 1000) if parallel else "",
                budget[1] if budget else ""]
        for _name, limit, cost, expires in counters:
            args += (limit, cost, int(expires * 1000))
        code, value = await self.redis.eval(ADMIT, keys, args)
        return code, (float(value) if code == -2 else value)

    async def settle(self, deltas, parallel, budget, usage):
        keys = [self.tag + name for name, _ in deltas]
        keys += (self._key(parallel and parallel[0]), self._key(budget and budget[0]), self.tag + "usage")
        args = [len(deltas), parallel[1] if parallel else "", budget[1] if budget else 0,
                int(budget[2] * 1000) if budget else ""]
        args += [d for _, d in deltas]
        for fields, amount in usage:
            args += (_field(fields), amount)
        await self.redis.eval(SETTLE, keys, args, later=not (budget and budget[1]))

    async def usage(self):
        """((key, model, alias, provider, kind), amount) for everything recorded."""
        flat = await self.redis.execute("HGETALL", self.tag + "usage")
        return [(tuple(json.loads(flat[i])), float(flat[i + 1])) for i in range(0, len(flat), 2)]
