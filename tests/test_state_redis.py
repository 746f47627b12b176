"""The gateway's own Redis client against a real Redis: commands, scripts,
pipelining, and what happens when Redis is slow, gone, or back."""
import asyncio
import os
import time

import pytest

from arch.state.leases import LEASE_SECONDS
from arch.state.redis import Redis, ReplyError, Script, StateError
from arch.state.shared import RedisState


def run(coro):
    return asyncio.run(coro)


def test_get_set_ttl_delete(redis_prefix):
    async def go():
        r = Redis("redis://127.0.0.1:6379/0")
        k = f"{redis_prefix}:a"
        assert await r.get(k) is None
        assert await r.set(k, b"v\r\n1") == b"OK"
        assert await r.get(k) == b"v\r\n1"
        await r.set(k + "t", "x", ttl=60)
        assert await r.get(k + "t") == b"x"
        assert 0 < await r.execute("PTTL", k + "t") <= 60000
        await r.set(k + "t", "x", ttl=0.05)
        for _ in range(100):  # expired, however slow this machine is
            if await r.get(k + "t") is None:
                break
            await asyncio.sleep(0.05)
        assert await r.get(k + "t") is None
        big = os.urandom(3 << 20)  # arrives in many reads
        await r.set(k + "big", big)
        assert await r.get(k + "big") == big
        assert await r.delete(k, k + "big", k + "none") == 2
        r.close()
    run(go())


def test_script_loaded_on_first_use_then_sent_by_sha(redis_prefix):
    async def go():
        r = Redis("redis://127.0.0.1:6379/0")
        # a script this server has never seen: EVALSHA fails with NOSCRIPT, EVAL loads it
        script = Script(f"-- {redis_prefix}\nreturn {{redis.call('INCRBY', KEYS[1], ARGV[1]), ARGV[2]}}")
        assert await r.execute("SCRIPT", "EXISTS", script.sha) == [0]
        assert await r.eval(script, [f"{redis_prefix}:n"], [5, "x"]) == [5, b"x"]
        assert await r.execute("SCRIPT", "EXISTS", script.sha) == [1]
        assert await r.eval(script, [f"{redis_prefix}:n"], [2, None]) == [7, b"None"]
        with pytest.raises(ReplyError):
            await r.eval(Script("return redis.call('NOSUCHCOMMAND')"))
        assert await r.get(f"{redis_prefix}:n") == b"7"  # an error reply leaves the connection usable
        r.close()
    run(go())


def test_pipelined_replies_reach_their_own_callers(redis_prefix):
    async def go():
        r = Redis("redis://127.0.0.1:6379/0")
        keys = [f"{redis_prefix}:{i}" for i in range(500)]
        await asyncio.gather(*(r.set(k, k * (i % 7)) for i, k in enumerate(keys)))
        values = await asyncio.gather(*(r.get(k) for k in keys))
        assert values == [(k * (i % 7)).encode() for i, k in enumerate(keys)]
        r.close()
    run(go())


def test_commands_sent_together_keep_their_order_and_their_own_errors(redis_prefix):
    async def go():
        r = Redis("redis://127.0.0.1:6379/0")
        k = f"{redis_prefix}:many"
        replies = await r.execute_many(("SET", k, "1"), ("NOSUCHCOMMAND",), ("INCR", k))
        assert replies[0] == b"OK" and isinstance(replies[1], ReplyError) and replies[2] == 2
        r.close()
    run(go())


USAGE_ROW = (("k", "m", "", "p", "requests"), 1)


def test_settlements_are_summed_and_leave_together(redis_prefix):
    """Spend goes to Redis at once (other replicas must see a budget run out); the rest waits,
    summed, for the hold, or goes ahead of this process's next read."""
    async def go():
        state = RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix, hold=0.3)
        other = Redis("redis://127.0.0.1:6379/0")
        usage = state.tag + "usage"
        state.settle([], None, ("b:k", 0.5, time.time() + 60), [USAGE_ROW])
        await asyncio.sleep(0.1)
        assert await other.get(state.tag + "b:k") == b"0.5"
        state.settle([], None, None, [USAGE_ROW])
        state.settle([], None, None, [USAGE_ROW])
        await asyncio.sleep(0.1)
        assert await other.execute("HGETALL", usage) == [b'["k", "m", "", "p", "requests"]', b"1"]  # held
        assert await state.usage() == [(USAGE_ROW[0], 3.0)]  # they went ahead of the read
        state.settle([], None, None, [USAGE_ROW])
        await asyncio.sleep(0.5)  # no command came: sent after the hold
        assert await other.execute("HGET", usage, '["k", "m", "", "p", "requests"]') == b"4"
        state.redis.close()
        other.close()
    run(go())


def counter(limit, cost, name="w:c"):
    return name, limit, cost, time.time() + 60


def test_a_lease_admits_without_redis_and_what_it_left_goes_back(redis_prefix):
    async def go():
        state = RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix)
        other = Redis("redis://127.0.0.1:6379/0")
        name = state.tag + "w:c"
        c = [counter(1600, 1)]
        assert await state.admit(c, None, None, time.time()) == (0, [0])
        assert await other.get(name) == b"100"  # the request and a lease of 1599 // 16
        for n in range(1, 100):  # the lease: Redis is not asked
            assert await state.admit(c, None, None, time.time()) == (0, [n])
        assert await other.get(name) == b"100"
        assert await state.admit(c, None, None, time.time()) == (0, [100])
        assert await other.get(name) == b"194"  # the next lease: 1499 // 16
        await asyncio.sleep(LEASE_SECONDS)
        for _ in range(50):  # unused, it goes back (however slow this machine is)
            if await other.get(name) == b"101":
                break
            await asyncio.sleep(0.05)
        assert await other.get(name) == b"101"
        state.redis.close()
        other.close()
    run(go())


def test_a_lease_too_small_for_a_request_goes_back_with_it(redis_prefix):
    async def go():
        state = RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix)
        other = Redis("redis://127.0.0.1:6379/0")
        name = state.tag + "w:c"
        await state.admit([counter(1700, 100)], None, None, time.time())
        assert await other.get(name) == b"200"  # a lease of 100: one more such request
        await state.admit([counter(1700, 60)], None, None, time.time())
        assert await other.get(name) == b"200"  # from the lease, 40 left
        await state.admit([counter(1700, 100)], None, None, time.time())
        # the 40 went back, and no lease: 1340 // 16 covers no request of 100
        assert await other.get(name) == b"260" and not state.leases.held
        state.redis.close()
        other.close()
    run(go())


def test_leases_over_three_processes_admit_exactly_the_limit(redis_prefix):
    """Three processes' worth of state (three connections, three sets of leases), one counter:
    3,000 requests at once, exactly 1,000 admitted, and Redis counted exactly those."""
    async def go():
        states = [RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix) for _ in range(3)]
        c = [counter(1000, 1)]
        admitted = 0
        for batch in range(0, 3000, 60):
            codes = await asyncio.gather(*(states[i % 3].admit(c, None, None, time.time())
                                           for i in range(batch, batch + 60)))
            admitted += sum(code == 0 for code, _ in codes)
        assert admitted == 1000
        assert await states[0].redis.get(states[0].tag + "w:c") == b"1000"
        for state in states:
            state.redis.close()
    run(go())


def test_unreachable_redis_fails_fast_then_reconnects(own_redis):
    async def go():
        r = Redis(own_redis.url, retry_interval=0.2)
        assert await r.set("k", 1) == b"OK"
        own_redis.stop()
        with pytest.raises(StateError):
            await r.get("k")
        with pytest.raises(StateError, match="unavailable"):  # within retry_interval: no network at all
            await r.get("k")
        own_redis.start()
        await asyncio.sleep(0.25)
        assert await r.get("k") is None  # a fresh server
        r.close()
    run(go())


def test_a_hung_redis_costs_one_timeout_then_fails_fast(own_redis):
    async def go():
        r = Redis(own_redis.url, timeout=0.1, retry_interval=0.3)
        await r.set("k", b"1")
        own_redis.pause()
        try:
            # the 10 s guard only turns a hang into a failure; the client's own timeout is 0.1 s
            results = await asyncio.wait_for(
                asyncio.gather(*(r.get("k") for _ in range(50)), return_exceptions=True), 10)
            assert all(isinstance(x, StateError) for x in results)
            with pytest.raises(StateError, match="unavailable"):
                await r.get("k")
        finally:
            own_redis.resume()
        await asyncio.sleep(0.35)
        assert await r.get("k") == b"1"
        r.close()
    run(go())


def test_password_and_database_from_the_url(own_redis):
    async def go():
        admin = Redis(own_redis.url)
        await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
        r = Redis(f"redis://:s3cret@127.0.0.1:{own_redis.port}/2")
        await r.set("k", "db2")
        assert await r.get("k") == b"db2"
        assert await admin.get("k") is None  # database 0
        bad = Redis(f"redis://:wrong@127.0.0.1:{own_redis.port}/0")
        with pytest.raises(StateError):
            await bad.get("k")
        r.close()
    run(go())
