"""The Responses endpoints: POST /v1/responses, GET/DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items, POST /v1/responses/compact.

Creating a response is a Chat-handler exchange plus state: a request that names
`previous_response_id` the gateway stored is sent with the conversation before
it, rebuilt for whichever provider answers now (so a conversation may switch
models), and every answer is stored unless the request says `store: false`.
OpenAI models are reached at their own /responses endpoint, untouched; others
through the rules (rules/dialects/responses_to_*.yaml).
"""
import json
import logging

from arch.errors import GatewayError
from arch.http.handlers import Base, Chat, _Exchange
from arch.route.resolve import first_target
from arch.rules.responses import input_items
from arch.state.responses import conversation, input_id, not_found, record, references, resolved

DIALECT = "responses"
log = logging.getLogger("arch")


def _owner(handler):
    """The name of the caller's gateway key (a 401 without a valid one); None when keys are off.
    A stored response is seen only by the key that made it."""
    key = handler.authenticate()
    return key and key.name


async def _find(handler, rid):
    owner = _owner(handler)
    found = await handler.gateway.responses.get(rid)
    if found is None or found.get("owner") != owner:
        raise not_found(rid)
    return found


class Create(Chat):
    """POST /v1/responses: authenticated and admitted as any chat request (Chat._serve)."""

    dialect = DIALECT
    keeps_answers = True

    async def _forward(self, client, body, route):
        self.keeps_answers = body.get("store") is not False  # store: false keeps nothing, no work after the answer
        self.owner = self.record["key"] and self.record["key"].name
        self.sent = {}  # provider dialect -> (the items it is sent, this request's own among them), when rebuilt
        self.continues = None
        store = self.gateway.responses
        origins = dict.fromkeys(self._endpoint(target)[1] for target in route)
        history = {}  # provider dialect -> the conversation before this request, or None
        previous = body.get("previous_response_id")
        if previous:
            for origin in origins:
                history[origin] = await conversation(store, previous, origin, self.owner)
            if all(h is None for h in history.values()):
                if set(origins) != {DIALECT}:  # an OpenAI model may know an id the gateway never stored; no other can
                    raise not_found(previous, "previous_response_id")
            else:
                self.continues = previous
        own = input_items(body.get("input"))
        wanted = references(own).union(*(references(h) for h in history.values() if h))
        rebuilt = [o for o in origins if history.get(o) is not None or (wanted and o != DIALECT)]
        found = await store.find(self.owner, wanted) if wanted and rebuilt else {}
        for origin in rebuilt:  # the others get the client's input as it is (OpenAI resolves its own references)
            strict = origin != DIALECT  # OpenAI may know an id the gateway does not; no other provider can
            mine = resolved(own, found, origin, lambda n: f"input[{n}]", strict)
            before = resolved(history.get(origin) or [], found, origin, lambda n: "previous_response_id", strict)
            self.sent[origin] = (before + mine, mine)
        await super()._forward(client, body, route)

    def _endpoint(self, target):
        native = target.native.get(DIALECT)
        return (native[0], DIALECT) if native else (target.url, target.dialect)

    def _upstream_request(self, client, body, target, pristine=True):
        sent = self.sent.get(self._endpoint(target)[1])
        if sent is not None:
            body = {k: v for k, v in body.items() if k != "previous_response_id"}
            body["input"] = sent[0]
            pristine = False
        return super()._upstream_request(client, body, target, pristine)

    async def keep(self, answer, body, target):
        """Store the answer (as the client got it) with this request's own input (its
        references resolved, where they were)."""
        if body.get("store") is False:
            return
        if isinstance(answer, bytes):
            try:
                answer = json.loads(answer)
            except ValueError:
                return
        rid = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(rid, str) or answer.get("status") == "failed":
            return
        origin = self._endpoint(target)[1]
        sent = self.sent.get(origin)
        own = sent[1] if sent is not None else input_items(body.get("input"))
        try:
            await self.gateway.responses.put(rid, record(answer, own, self.continues, origin, self.owner))
        except GatewayError as e:  # the answer is made (and paid for): it still goes to the client
            log.warning("%s: response %s not stored: %s", self.request_id, rid, e.message)


class Stored(Base):
    """GET and DELETE /v1/responses/{id}: a stored response, as it was answered."""

    dialect = DIALECT

    async def get(self, rid):
        self.send_json(200, (await _find(self, rid))["response"])

    async def delete(self, rid):
        await _find(self, rid)
        if not await self.gateway.responses.delete(rid):
            raise not_found(rid)
        self.send_json(200, {"id": rid, "object": "response", "deleted": True})


class InputItems(Base):
    """GET /v1/responses/{id}/input_items: the input of the request that made it, not the
    conversation before it (each earlier response lists its own); `order` asc or desc,
    default desc; `limit` 1-100, default 20; `after` an item id."""

    dialect = DIALECT

    async def get(self, rid):
        found = await _find(self, rid)
        items = [_listed(item, input_id(rid, n)) for n, item in enumerate(found["input"])]
        if self.get_argument("order", "desc") != "asc":
            items.reverse()
        after = self.get_argument("after", None)
        if after:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        try:
            limit = min(max(int(self.get_argument("limit", "20")), 1), 100)
        except ValueError:
            raise GatewayError(400, "limit must be an integer from 1 to 100", "limit") from None
        page = items[:limit]
        self.send_json(200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


class Compact(Create):
    """POST /v1/responses/compact: OpenAI's own compaction, passed through to OpenAI
    models; other providers have no counterpart, so it is a clear 400 for them."""

    keeps_answers = False
    sent = {}

    async def _serve(self):
        self.record["key"] = self.authenticate()
        body = await self._body()
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise GatewayError(400, "model: a string is required", "model")
        self.record["requested_model"] = body["model"]
        target = first_target(self.runtime.routes.resolve(body["model"])[0])
        client = self.runtime.rules.dialects[self.dialect]
        await self._admit(client, body)
        self.record["provider"], self.record["model"] = target.provider, target.model
        native = target.native.get(DIALECT)
        if not native or not native[1]:
            raise GatewayError(400, f"/v1/responses/compact is only available for OpenAI models; "
                                    f"'{body['model']}' is served by {target.provider}. Send the full input "
                                    "(or previous_response_id) to /v1/responses instead.", "model")
        data, _, _ = self._upstream_request(client, body, target)
        exchange = _Exchange(self, client, client, None)
        if await self._send(target, native[1], data, exchange):
            if not 200 <= self.call.status < 300:
                raise self._upstream_error(client, client, exchange)
            self.send_json(200, b"".join(exchange.buffer))


def _listed(item, fallback_id):
    """An input item as the list endpoint shows it: with an id, a message's text as parts."""
    item = {"id": fallback_id, **item}
    if item.get("type") == "message":
        if isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        item.setdefault("status", "completed")
    return item
