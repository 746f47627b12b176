"""Stored Responses: what `previous_response_id`, `GET /v1/responses/{id}` and
`input_items` read back.

A record is one response as the client received it, the input items of the
request that made it (its own, not the conversation before it), the id of the
response it continued, and the dialect of the provider that answered (reasoning
is only sent back to the kind of provider that made it). A conversation is
rebuilt by walking `previous` links, so a chain of N turns stores N records,
not N² items.

The store is an interface of three coroutines (get, put, delete) so that the
backend can be this process's memory (bounded in entries and bytes, oldest out
first, each entry with a time to live) or Redis shared by workers and replicas
(`state: {redis: ...}`; each record one JSON value expiring with the TTL; Redis's
own memory policy bounds the rest). A Redis that does not answer within
`state.timeout` is a 503 for what needs the store, never a wait.
"""
import json
import logging
import time
from collections import OrderedDict

from arch.errors import GatewayError
from arch.state import backend
from arch.state.redis import StateError

log = logging.getLogger("arch")
MAX_CHAIN = 1000          # turns followed back from one previous_response_id
DEFAULTS = {"max_entries": 10000, "max_bytes": 256 << 20, "ttl": 30 * 86400.0}


class MemoryStore:
    """Records in this process: least recently stored go first when a bound is hit."""

    def __init__(self, max_entries, max_bytes, ttl):
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self._items = OrderedDict()  # id -> (expires, size, record bytes)
        self.bytes = 0

    async def get(self, rid):
        entry = self._items.get(rid)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._drop(rid)
            return None
        return json.loads(entry[2])

    async def put(self, rid, record):
        data = _dumps(record)
        if len(data) > self.max_bytes:
            return
        self._drop(rid)
        self._items[rid] = (time.monotonic() + self.ttl, len(data), data)
        self.bytes += len(data)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    async def delete(self, rid):
        return self._drop(rid)

    def _drop(self, rid):
        entry = self._items.pop(rid, None)
        if entry is not None:
            self.bytes -= entry[1]
        return entry is not None


class RedisStore:
    """Records in Redis under `{prefix}:resp:<id>`, next to the limits' keys (one hash
    tag, one Cluster slot), through the client the limits use (one connection)."""

    def __init__(self, shared, max_bytes, ttl):
        self.redis, self.tag, self.max_bytes, self.ttl = shared.redis, shared.tag + "resp:", max_bytes, ttl

    async def get(self, rid):
        data = await self._call("GET", self.tag + rid)
        return None if data is None else json.loads(data)

    async def put(self, rid, record):
        data = _dumps(record)
        if len(data) <= self.max_bytes:
            await self._call("SET", self.tag + rid, data, "PX", max(1, int(self.ttl * 1000)))

    async def delete(self, rid):
        return await self._call("DEL", self.tag + rid) > 0

    async def _call(self, *command):
        try:
            return await self.redis.execute(*command)
        except StateError as e:  # the reason (with Redis's address) is logged, not told to the client
            log.warning("stored responses: %s", e)
            raise GatewayError(503, "stored responses are kept in Redis, which is unreachable right now; "
                                    "try again shortly", headers={"retry-after": "1"}) from None


def _dumps(record):
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode(errors="backslashreplace")


def make_store(state):
    """The configured backend: Redis when `state` names one, else this process's memory
    (bounded by `state.responses`)."""
    cfg = {**DEFAULTS, **(state.get("responses") or {})}
    if state.get("redis"):
        return RedisStore(backend(state), cfg["max_bytes"], cfg["ttl"])
    return MemoryStore(cfg["max_entries"], cfg["max_bytes"], cfg["ttl"])


def not_found(rid, param=None):
    return GatewayError(404, f"Response with id '{rid}' not found.", param)


async def conversation(store, previous_id, origin, owner):
    """The items before a request that continues `previous_id`: each stored turn's
    input then its output, oldest first. Reasoning (and output types only OpenAI
    makes) comes back only to the kind of provider (`origin`) that made it.
    None when `previous_id` is unknown; a 404 when the chain is broken or the
    response is another key's (`owner`: never sent on, even to OpenAI)."""
    record = await store.get(previous_id)
    if record is None:
        return None
    if record.get("owner") != owner:
        raise not_found(previous_id, "previous_response_id")
    chain = [record]
    while record.get("previous") and len(chain) < MAX_CHAIN:
        prior = record["previous"]
        record = await store.get(prior)
        if record is None:
            raise GatewayError(404, f"Response '{prior}' (earlier in the conversation of '{previous_id}') "
                                    "was not found or has expired", "previous_response_id")
        chain.append(record)
    items = []
    for record in reversed(chain):
        items.extend(record["input"])
        same = record.get("origin") == origin
        items.extend(item for item in (record["response"].get("output") or ())
                     if same or item.get("type") in PORTABLE)
    return items


PORTABLE = ("message", "function_call", "custom_tool_call", "function_call_output", "custom_tool_call_output")


def record(response, input_items, previous, origin, owner):
    return {"response": response, "input": input_items, "previous": previous, "origin": origin, "owner": owner}
