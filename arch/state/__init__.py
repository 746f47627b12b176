"""Shared state: what several requests, workers or replicas must agree on
(rate-limit windows, parallel requests, budgets, usage by key; conversations).

`redis.py` is the Redis client; `memory.py` and `shared.py` are the two
backends of the admission stage; `responses.py` keeps stored Responses. A backend outlives reloads (its counters and
its connection are kept), so `backend()` hands out one per setting.
"""
from arch.state.memory import MemoryState
from arch.state.shared import RedisState

_open = {}


def backend(state, shares=1):
    """The backend for a config's `state:` (Redis when it names one, else this process's memory)."""
    url = state.get("redis")
    which = (url, state.get("prefix", "archgw"), state.get("timeout", 0.25)) if url else ("memory", shares)
    if which not in _open:
        _open[which] = RedisState(*which) if url else MemoryState(shares)
    return _open[which]
