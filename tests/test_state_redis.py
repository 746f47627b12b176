"""The gateway's own Redis client against a real Redis: commands, scripts,
pipelining, and what happens when Redis is slow, gone, or back."""
import asyncio
import os
import time

import pytest

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


def test_held_commands_leave_with_the_next_command_or_after_the_hold(redis_prefix):
    async def go():
        r, other = Redis("redis://127.0.0.1:6379/0", hold=0.3), Redis("redis://127.0.0.1:6379/0")
        k = f"{redis_prefix}:held"
        await r.get(k)  # connected
        first = asyncio.ensure_future(r.execute("SET", k, "1", later=True))
        await asyncio.sleep(0.1)
        assert not first.done() and await other.get(k) is None  # not sent yet
        assert await r.get(k) == b"1"  # went ahead of the next command, in the same write
        assert await first == b"OK"
        late = asyncio.ensure_future(r.execute("SET", k, "2", later=True))
        await asyncio.sleep(0.1)
        assert await other.get(k) == b"1"
        await asyncio.wait_for(late, 1)  # no command came: sent after the hold
        assert await other.get(k) == b"2"
        r.close()
        other.close()
    run(go())


def test_settling_holds_usage_but_never_spend(redis_prefix):
    """Spend goes to Redis at once (other replicas must see a budget run out); the rest of a
    settlement waits for the process's next command."""
    async def go():
        state = RedisState("redis://127.0.0.1:6379/0", prefix=redis_prefix)
        state.redis.hold = 30  # held means: not sent during this test
        row = [(("k", "m", "", "p", "requests"), 1)]
        await asyncio.wait_for(state.settle([], None, ("b:k", 0.5, time.time() + 60), row), 5)
        held = asyncio.ensure_future(state.settle([], None, None, row))
        await asyncio.sleep(0.1)
        assert not held.done()
        assert await state.usage() == [(("k", "m", "", "p", "requests"), 2.0)]  # the held one went first
        assert held.done()
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
