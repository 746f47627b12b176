"""Paused turns, continued by the gateway for clients that cannot continue them.

A provider may pause a long turn (Anthropic's `pause_turn`, after a long server-tool
loop): its client is to send the same request again with the paused assistant content
appended, and the model resumes where it stopped. A client of another dialect has no
way to send that content back, so the gateway continues for it, a bounded number of
times, and the client gets one answer. What a pause is, how often to continue and what
to say when the turn is still paused after the last continuation are the provider
dialect's `pause` section (rules/dialects/anthropic.yaml); the merging here works on
answers and streams in the Messages shape: `content` blocks, `usage`, `stop_reason`,
and message_start / content_block_* / message_delta / message_stop events.
"""
from arch import jsonio
from arch.rules.mapping import compile_expr


class Pause:
    """A dialect's `pause` section, compiled."""

    def __init__(self, spec, interpreter, where):
        self.reasons = frozenset(spec["stop_reasons"])
        self.max = spec["max_continuations"]
        self.cut = spec["cut"]
        self._request = compile_expr(spec["request"], interpreter, f"{where}: pause.request")

    def paused(self, answer):
        return answer.get("stop_reason") in self.reasons

    def request(self, request, content):
        """The provider request that continues `request` after the assistant `content` so far."""
        return self._request({"request": request, "content": content})


def add_usage(a, b):
    """Two usage objects summed field by field (nested ones too); other values: b's."""
    out = dict(a)
    for key, value in b.items():
        before = out.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            out[key] = add_usage(before, value)
        elif _number(value) and _number(before):
            out[key] = before + value
        else:
            out[key] = value
    return out


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merged(answer, more):
    """One answer out of a paused one and its continuation: the content of both, usage summed,
    the rest (stop reason included) the continuation's; the id stays the first one's."""
    return {**more, "id": answer.get("id", more.get("id")),
            "content": [*(answer.get("content") or ()), *(more.get("content") or ())],
            "usage": add_usage(answer.get("usage") or {}, more.get("usage") or {})}


class Resumable:
    """The provider events of a turn that may be paused and continued, as the events of
    one message: a continuation's message_start, and the message_delta and message_stop
    of a pause that will be continued, are held back; a continuation's block indexes
    follow the ones before; the last message_delta carries the usage of every part.
    The content blocks' events are kept, while they stay under `limit` bytes (past it, the
    turn is not continued: see `going_on`), and the content is rebuilt from them only for a
    continuation request: a turn that is never paused pays one append per event."""

    def __init__(self, pause, limit):
        self.pause, self.limit = pause, limit
        self.content = []       # blocks of all parts so far, as of the last continuation
        self.size = 0           # bytes of the events they came in
        self.continuations = 0  # made so far
        self.paused = False     # this part ended paused and will be continued
        self._events = []       # (kind, index in the whole message, event) since the last continuation
        self._offset = 0        # index of this part's first block in the whole message
        self._usage = {}        # of the parts before this one, summed
        self._part = {}         # of this part

    def going_on(self):
        """Whether another continuation may be made (the count and the size allow it)."""
        return self.continuations < self.pause.max and self.size <= self.limit

    def see(self, event, size):
        """The event to translate (index shifted, usage summed, a pause resolved), or None."""
        kind = event.get("type")
        if kind in _BLOCK_EVENTS:  # most events: first
            index = event.get("index")
            if index.__class__ is int:
                if self._offset:
                    index += self._offset
                    event = {**event, "index": index}
                if self.size <= self.limit:
                    self._events.append((kind, index, event))
                    self.size += size
            return event
        if kind == "message_start":
            self._part = dict((event.get("message") or {}).get("usage") or {})
            return event if not self.continuations else None
        if kind == "message_delta":
            self._part = {**self._part, **(event.get("usage") or {})}
            delta = event.get("delta") or {}
            if delta.get("stop_reason") in self.pause.reasons:
                if self.going_on():
                    self.paused = True
                    return None
                event = {**event, "delta": {**delta, "stop_reason": self.pause.cut}}
            if self.continuations:
                event = {**event, "usage": add_usage(self._usage, self._part)}
            return event
        if kind == "message_stop" and self.paused:
            return None
        return event

    def next_request(self, request):
        """The request continuing the paused part (the provider request as sent, parsed); the
        events that follow are the next part."""
        self.continuations += 1
        self.paused = False
        self._usage, self._part = add_usage(self._usage, self._part), {}
        self._rebuild()
        self._offset = len(self.content)
        return self.pause.request(request, self.content)

    def _rebuild(self):
        """The blocks the kept events start and add to, appended to `content`: deltas joined at
        their block's stop (a block the provider never closed is left out of what goes back)."""
        pieces = {}  # block index -> {field: the pieces its deltas brought}
        for kind, index, event in self._events:
            if kind == "content_block_start":
                self.content.append(dict(event.get("content_block") or {}))
                continue
            if not 0 <= index < len(self.content):
                continue
            block = self.content[index]
            if kind == "content_block_stop":
                for field, parts in pieces.pop(index, {}).items():
                    text = "".join(parts)
                    if field != "input":
                        block[field] = (block.get(field) or "") + text
                    elif text:
                        try:
                            block["input"] = jsonio.loads(text)
                        except ValueError:
                            pass  # kept as the start gave it: the provider's own fault shows in its answer
                continue
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "citations_delta":
                block["citations"] = [*(block.get("citations") or ()), delta.get("citation")]
            elif dtype in _DELTAS:
                field, key = _DELTAS[dtype]
                pieces.setdefault(index, {}).setdefault(field, []).append(delta.get(key) or "")
        self._events = []


_BLOCK_EVENTS = frozenset(("content_block_start", "content_block_delta", "content_block_stop"))
# delta type -> (the block field it adds to, the delta field that carries it)
_DELTAS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"),
           "signature_delta": ("signature", "signature"), "input_json_delta": ("input", "partial_json")}
