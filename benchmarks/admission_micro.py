#!/usr/bin/env python
"""What a gateway key with limits in Redis costs a request, in parts: the Python
of admission (key, limits, counter names, rate-limit headers; the state
answering at once), the RESP encoding and parsing, an admission from a lease,
and the Redis round trip of the admission script when Redis must be asked,
back to back and after the process slept 0.4 ms (as a gateway at one
connection does between requests: the wake-ups are in it).

    python benchmarks/admission_micro.py [--n 20000] [--redis redis://127.0.0.1:6379/0]

`benchmarks/run.py` measures the same configuration end to end (the rows
`gateway+keys+limits (Redis)`).
"""
import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tornado.httputil import HTTPHeaders  # noqa: E402

from arch.runtime import build  # noqa: E402
from arch.state.redis import _encode, _parse  # noqa: E402
from arch.state.shared import ADMIT, RedisState  # noqa: E402
from run import OPENAI_HEADERS, keys_config, openai_body  # noqa: E402


class _Answers:
    """A state backend that admits at once: what is left is admission's own Python."""

    async def admit(self, counters, parallel, budget, now):
        return 0, [0] * len(counters)


def _step(coro):
    try:
        coro.send(None)
    except StopIteration:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.yaml"
        path.write_text(keys_config(1, 2, 3, args.redis, "archmicro"))
        runtime = build(str(path))
    admission, dialect = runtime.admission, runtime.rules.dialects["openai"]
    headers, body = HTTPHeaders(OPENAI_HEADERS), openai_body("gpt-4o-mini")
    key = admission.authenticate(headers)
    admission.state = _Answers()
    us = lambda fn, n=args.n: timeit.timeit(fn, number=n) / n * 1e6  # noqa: E731
    print(f"authenticate (SHA-256, lookup): {us(lambda: admission.authenticate(headers)):.1f} µs")
    print(f"admit, state answering at once: "
          f"{us(lambda: _step(admission.admit(key, 'gpt-4o-mini', body, headers, dialect, 'rid'))):.1f} µs")
    command = ["EVALSHA", ADMIT.sha, 4, "{archmicro}:w:k:bench:requests:minute:29000000",
               "{archmicro}:w:k:bench:tokens:minute:29000000", "{archmicro}:-", "{archmicro}:-", 2, 1764500000000,
               "", "", "", "", 1000000000, 1, 1764500060000, 0, 16, 10 ** 12, 1100, 1764500060000, 0, 16]
    print(f"encode the admission command: {us(lambda: _encode(command)):.1f} µs")
    reply = b"*3\r\n:0\r\n*2\r\n:12\r\n:34567\r\n*2\r\n:0\r\n:0\r\n"
    print(f"parse its reply: {us(lambda: _parse(reply, 0)):.1f} µs")

    async def round_trips():
        state = RedisState(args.redis, prefix="archmicro")
        now = time.time()
        counters = [("w:k:bench:requests:minute:1", 10 ** 9, 1, now + 60),
                    ("w:k:bench:tokens:minute:1", 10 ** 12, 500, now + 60)]
        parallel = ("p:bench", 10 ** 9, "rid", now + 3600)  # a parallel slot is never leased: Redis is asked
        await state.admit(counters, parallel, None, now)
        for label, slot, pause in (("from a lease", None, 0), ("asking Redis, back to back", parallel, 0),
                                   ("asking Redis, after 0.4 ms asleep", parallel, 0.0004)):
            took = []
            for _ in range(2000):
                if pause:
                    time.sleep(pause)
                t = time.perf_counter()
                await state.admit(counters, slot, None, now)
                took.append(time.perf_counter() - t)
            took.sort()
            print(f"admission {label}: p50 {took[1000] * 1e6:.1f} µs, p90 {took[1800] * 1e6:.1f} µs")
        await state.redis.execute("DEL", *(state.tag + c[0] for c in counters), state.tag + parallel[0])
        state.redis.close()

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(round_trips())


if __name__ == "__main__":
    main()
