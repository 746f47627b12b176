"""Stored Responses: what `previous_response_id`, `GET /v1/responses/{id}` and
`input_items` read back.

A record is one response as the client received it, the input items of the
request that made it (its own, not the conversation before it), the id of the
response it continued, and the dialect of the provider that answered (reasoning
is only sent back to the kind of provider that made it). A conversation is
rebuilt by walking `previous` links, so a chain of N turns stores N records,
not N² items.

Input items of type `item_reference` name an item by id: an output item of a stored
response or one of its input items (as `input_items` lists them). The store keeps an index
from (owner, item id) to the response holding it, so a reference costs one lookup, not a
scan; an index entry goes when its response goes (dropped, deleted, expired). An id held
by several responses points at the latest stored.

The store is an interface of four coroutines (get, put, delete, find) so that the
backend can be this process's memory (bounded in entries and bytes, oldest out
first, each entry with a time to live) or Redis shared by workers and replicas
(`state: {redis: ...}`; each record one JSON value expiring with the TTL, each index
entry one key expiring with it; Redis's own memory policy bounds the rest). A Redis that
does not answer within `state.timeout` is a 503 for what needs the store, never a wait.
"""
import json
import logging
import time
from collections import OrderedDict
from urllib.parse import quote

from arch.errors import GatewayError
from arch.state import backend
from arch.state.redis import Script, StateError

log = logging.getLogger("arch")
MAX_CHAIN = 1000          # turns followed back from one previous_response_id
DEFAULTS = {"max_entries": 10000, "max_bytes": 256 << 20, "ttl": 30 * 86400.0}


class MemoryStore:
    """Records in this process: least recently stored go first when a bound is hit."""

    def __init__(self, max_entries, max_bytes, ttl):
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self._items = OrderedDict()  # id -> (expires, size, record bytes, its index keys)
        self._index = {}             # (owner, item id) -> response id
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
        keys = [(record.get("owner"), item_id) for item_id in item_ids(rid, record)]
        self._items[rid] = (time.monotonic() + self.ttl, len(data), data, keys)
        self.bytes += len(data)
        for key in keys:
            self._index[key] = rid
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    async def delete(self, rid):
        return self._drop(rid)

    async def find(self, owner, ids):
        """{item id: (item, the dialect that made it)} for the ids `owner`'s responses hold."""
        found, records = {}, {}
        for item_id in ids:
            rid = self._index.get((owner, item_id))
            if rid is not None and rid not in records:
                records[rid] = await self.get(rid)
            if rid is not None and (item := _held(rid, records[rid], owner, item_id)):
                found[item_id] = item
        return found

    def _drop(self, rid):
        entry = self._items.pop(rid, None)
        if entry is None:
            return False
        self.bytes -= entry[1]
        for key in entry[3]:
            if self._index.get(key) == rid:  # not when a later response holds the same id
                del self._index[key]
        return True


# A record and its index entries are written (and deleted) together, in one command.
PUT = Script("""
-- KEYS: the record, then its items' index keys; ARGV: the record, its time to live (ms), its id
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[2]) end
return 1
""")
DELETE = Script("""
-- KEYS: the record, then its items' index keys; ARGV: its id
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return redis.call('DEL', KEYS[1])
""")


class RedisStore:
    """Records in Redis under `{prefix}:resp:<id>`, the item index under
    `{prefix}:item:<owner>:<item id>` (the owner %-quoted), next to the limits' keys (one
    hash tag, one Cluster slot), through the client the limits use (one connection)."""

    def __init__(self, shared, max_bytes, ttl):
        self.redis, self.tag, self.max_bytes, self.ttl = shared.redis, shared.tag + "resp:", max_bytes, ttl
        self.item_tag = shared.tag + "item:"

    async def get(self, rid):
        data = await self._call(self.redis.get(self.tag + rid))
        return None if data is None else json.loads(data)

    async def put(self, rid, record):
        data = _dumps(record)
        if len(data) <= self.max_bytes:
            keys = [self.tag + rid, *self._index_keys(rid, record)]
            await self._call(self.redis.eval(PUT, keys, [data, max(1, int(self.ttl * 1000)), rid]))

    async def delete(self, rid):
        record = await self.get(rid)
        if record is None:
            return False
        return await self._call(self.redis.eval(DELETE, [self.tag + rid, *self._index_keys(rid, record)], [rid])) > 0

    async def find(self, owner, ids):
        """Two round trips whatever the number of ids: their index entries, then their responses."""
        ids = list(ids)
        rids = await self._call(self.redis.execute("MGET", *(self._index_key(owner, item_id) for item_id in ids)))
        held = {rid: None for rid in rids if rid is not None}
        if held:
            records = await self._call(self.redis.execute("MGET", *(self.tag + rid.decode() for rid in held)))
            for rid, data in zip(held, records):
                held[rid] = data and json.loads(data)
        return {item_id: found for item_id, rid in zip(ids, rids)
                if rid is not None and (found := _held(rid.decode(), held[rid], owner, item_id))}

    def _index_key(self, owner, item_id):
        return f"{self.item_tag}{quote(owner or '', safe='')}:{item_id}"

    def _index_keys(self, rid, record):
        return [self._index_key(record.get("owner"), item_id) for item_id in item_ids(rid, record)]

    async def _call(self, pending):
        try:
            return await pending
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


def input_id(rid, n):
    """The id an input item sent without one has in `input_items` (and for references)."""
    return f"msg_{rid[5:]}{n}"


def _input_ids(rid, record):
    """(id, input item) for each of a record's input items that can be referenced (a reference
    itself cannot: its id is the item it names)."""
    return [(item.get("id") or input_id(rid, n), item) for n, item in enumerate(record["input"])
            if item.get("type") != "item_reference"]


def item_ids(rid, record):
    """The ids a reference may name in a record: its output items' and its input items'."""
    ids = [item["id"] for item in record["response"].get("output") or () if item.get("id")]
    return ids + [item_id for item_id, _ in _input_ids(rid, record)]


def _held(rid, record, owner, item_id):
    """(item, the dialect that made it: None for an input item, the client's) for `item_id`
    in `record`, if the record is `owner`'s."""
    if record is None or record.get("owner") != owner:
        return None
    for item in record["response"].get("output") or ():
        if item.get("id") == item_id:
            return item, record.get("origin")
    for held_id, item in _input_ids(rid, record):
        if held_id == item_id:
            return item, None
    return None


def references(items):
    """The ids the `item_reference` items among `items` name."""
    return {item.get("id") for item in items if item.get("type") == "item_reference"}


def resolved(items, found, origin, where, strict=True):
    """`items` with each reference replaced by the item it names (`found`: from the store's
    `find`), as for a provider of dialect `origin`: another provider's reasoning (and output
    types only OpenAI makes) is left out, as in `conversation`. An unknown id is a 400 naming
    it (`where(n)`: the param of the n-th item), or, when not `strict` (OpenAI, which may
    know it), the reference is sent as it is."""
    out = []
    for n, item in enumerate(items):
        if item.get("type") != "item_reference":
            out.append(item)
            continue
        held = found.get(item.get("id"))
        if held is None:
            if strict:
                raise GatewayError(400, f"Item with id '{item.get('id')}' not found.", where(n))
            out.append(item)
        elif held[1] in (None, origin) or held[0].get("type") in PORTABLE:
            out.append(held[0])
    return out


PORTABLE = ("message", "function_call", "custom_tool_call", "function_call_output", "custom_tool_call_output")


def record(response, input_items, previous, origin, owner):
    return {"response": response, "input": input_items, "previous": previous, "origin": origin, "owner": owner}
