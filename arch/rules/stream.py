"""Server-sent events in, server-sent events out, one read at a time.

`SSEParser` turns bytes, split wherever the network split them, into events.
`Translate` runs a stream state machine declared in rules YAML over those
events and frames what it emits in the client's dialect; `Passthrough` hands
bytes straight on when provider and client speak the same dialect. Both emit
as soon as input arrives (nothing waits for the whole stream) and both turn a
stream that ends early into the client dialect's in-stream error, because a
silent clean end would make truncation look like success.
"""
import json
import re

from arch import jsonio
from arch.rules.mapping import run_steps, truthy

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_decode = json.JSONDecoder().raw_decode


def find_usage(data):
    """The `"usage": {...}` objects in a JSON body or SSE bytes, merged in
    order (Anthropic streams split usage over message_start and message_delta),
    without parsing the rest of a non-stream answer that goes through untouched."""
    found = None
    for m in _USAGE.finditer(data):
        try:
            usage, _ = _decode(data[m.end() - 1:].decode("utf-8", "replace"))
        except ValueError:
            continue
        found = {**(found or {}), **usage}
    return found


class SSEParser:
    """Events out of bytes. Each byte is looked at a bounded number of times
    however the network split an event (the unfinished one is kept as parts,
    joined once when its blank line arrives), and one event may not exceed
    `max_event` bytes."""

    def __init__(self, max_event):
        self.max_event = max_event
        self._parts = []   # the unfinished event
        self._held = 0     # its size
        self._cr = False   # the last read ended with CR: its LF may start the next one
        self.skipped = 0   # blocks without data (comments, `retry:`): nothing to pass on

    def feed(self, chunk):
        """Complete events in `chunk` (plus what was held back) as (event, data) pairs."""
        if not self._parts and not self._cr and b"\r" not in chunk:  # the usual case: LF only, nothing held
            blocks = chunk.split(b"\n\n")
            rest = blocks.pop()
            events = self._lf_events(blocks)
            if rest:
                self._parts.append(rest)
                self._held = len(rest)
                if self._held > self.max_event:
                    raise _too_big(self.max_event)
            return events
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events, parts = [], self._parts
        start = 0
        if parts and chunk[:1] == b"\n" and parts[-1].endswith(b"\n"):  # a blank line split by the network
            self._block(b"".join(parts)[:-1], events)
            start = 1
        while True:
            end = chunk.find(b"\n\n", start)
            if end < 0:
                break
            self._block(b"".join((*parts, chunk[start:end])) if parts else chunk[start:end], events)
            start = end + 2
        if start < len(chunk):
            parts.append(chunk[start:] if start else chunk)
            self._held += len(chunk) - start
            if self._held > self.max_event:
                raise _too_big(self.max_event)
        return events

    def _lf_events(self, blocks):
        """Events of whole LF-framed blocks: `data: X` read directly, anything else the general way."""
        events = []
        for block in blocks:
            if len(block) > self.max_event:
                raise _too_big(self.max_event)
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((None, block[6:]))
                continue
            event = _parse_block(block)
            if event:
                events.append(event)
            elif block:
                self.skipped += 1
        return events

    def _block(self, block, events):
        self._parts.clear()
        self._held = 0
        if len(block) > self.max_event:
            raise _too_big(self.max_event)
        event = _parse_block(block)
        if event:
            events.append(event)
        elif block:
            self.skipped += 1

    def close(self):
        """The last event when the stream ended without its blank line (lenient, like the SDKs)."""
        rest = b"".join(self._parts).strip()
        self._parts.clear()
        self._held = 0
        event = _parse_block(rest) if rest else None
        return [event] if event else []


def _parse_block(block):
    name, data = None, []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        # comment lines (": ping") and other fields carry nothing to translate
    if not data:
        return None
    return name, b"\n".join(data)


def _json_object(data):
    """The event's JSON object; StreamBroken when it is not one."""
    try:
        event = jsonio.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise StreamBroken("the provider sent a malformed stream event")
    return event


class StreamBroken(Exception):
    """The provider sent something that cannot be translated (a malformed event)."""


def _too_big(limit):
    return StreamBroken(f"the provider sent a stream event over {limit} bytes (max_stream_event)")


class _Numbered:
    """What both relays do for a client dialect whose stream events carry a sequence
    number (`stream.sequence`) and a final answer (`stream.result`)."""

    sequence = 0         # the next event's number
    result = None        # the final answer seen in the stream, in the client's dialect
    answer_so_far = None  # for a failure event that carries it (a Responses `response.failed`)

    def _number(self, event):
        dialect = self.client
        if dialect.sequence and isinstance(event, dict):
            event[dialect.sequence] = self.sequence
            self.sequence += 1
        if dialect.result is not None and isinstance(event, dict):
            result = dialect.result(event)
            if result is not None:
                self.result = result

    def failure(self, message, request_id):
        """The framed in-stream event that tells the client the stream failed."""
        event = self.client.stream_failure(message, request_id, self.answer_so_far)
        self._number(event)
        return self.client.frame(event)


class Translate(_Numbered):
    """One request's run of a declared stream state machine (a `stream:` rules section).

    All state lives here, per request: nothing is shared between streams (docs/wire-formats.md, pitfall 14).
    A translation into a dialect with a final answer object keeps it, so far, in `s.response`.
    With `resume` (arch/rules/resume.py), the provider events of a paused turn and of its
    continuations are translated as one stream."""

    def __init__(self, program, ctx, client, provider, max_event, resume=None):
        self.program, self.client, self.provider, self.resume = program, client, provider, resume
        self.root = {"e": None, "s": program.new_state(), "c": ctx}
        self.parser = SSEParser(max_event)
        self.ended = False
        self._out = []

    @property
    def answer_so_far(self):
        return self.root["s"].get("response")

    @property
    def state(self):
        return self.root["s"]

    @property
    def usage(self):
        """Translations keep the provider's usage object in `s.usage`."""
        return self.root["s"].get("usage")

    def start(self):
        self._run(self.program.start, None)
        return self._take()

    def feed(self, chunk):
        for _, data in self.parser.feed(chunk):
            if self.ended:
                break
            self._event(data)
        return self._take()

    def finish(self):
        """Upstream EOF: the `eof` rules may still close the stream; if none
        does, `ended` stays false and the caller reports truncation."""
        for _, data in self.parser.close():
            if not self.ended:
                self._event(data)
        if not self.ended:
            self._match(self.program.eof, None)
        return self._take()

    def _event(self, data):
        if data in self.provider.stream_literals:
            event = data.decode()
        else:
            try:
                event = jsonio.loads(data)
            except ValueError:
                raise StreamBroken("the provider sent a malformed stream event") from None
            if self.resume is not None and isinstance(event, dict):
                event = self.resume.see(event, len(data))
                if event is None:
                    return
        if self.program.split is None:
            self._match(self.program.rules, event)
            return
        self.root["e"] = event
        for part in self.program.split(self.root) or ():
            if not self.ended:
                self._match(self.program.rules, part)

    def _match(self, rules, event):
        self.root["e"] = event
        for when, steps in rules(self.root):
            if truthy(when(self.root)):
                self._run(steps, event)
                return

    def _run(self, steps, event):
        self.root["e"] = event
        if run_steps(steps, self.root, self._out):
            self.ended = True

    def _take(self):
        out, self._out = self._out, []
        if self.client.sequence or self.client.result:
            for event in out:
                self._number(event)
        return b"".join(map(self.client.frame, out))


class Passthrough(_Numbered):
    """Same dialect both sides: the provider's bytes go through as they were
    framed, a whole event at a time, each checked to be JSON, never translated.
    So a malformed or cut event becomes the client's in-stream error rather
    than bytes its SDK cannot parse, and an error frame never lands inside an
    event. An event that ends the stream (the dialect's `end_markers`, matched
    against whole events, never against content) tells a finished stream from
    a cut one.

    With `strip`, the gateway asked the provider for usage the client did not
    ask for: that usage-only event (the dialect's `stream.usage.event`) is kept
    for accounting and not passed on."""

    _SEPARATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")

    def __init__(self, dialect, strip, max_event):
        self.dialect = self.client = dialect
        self.strip, self.max_event = strip, max_event
        self.parser = SSEParser(max_event)
        self.pending = []    # the start of an event whose blank line has not arrived yet, in parts
        self.held = 0        # its size
        self.tail = b""      # its last 3 bytes
        self.ended = False
        self.usage = None

    def start(self):
        return b""

    def feed(self, chunk):
        if not self.pending and b"\r" not in chunk:  # the usual case: LF-framed events, nothing held
            cut = chunk.rfind(b"\n\n") + 2
            if cut == len(chunk) > 1:
                return self._pass(chunk)
            if cut > 1:
                rest = chunk[cut:]
                self.pending, self.held, self.tail = [rest], len(rest), rest[-3:]
                return self._pass(chunk[:cut])
        # Cut after the last blank line. Only the new bytes are searched, plus the 3 held before
        # them (a blank line the network split); what is held has no complete separator.
        seen = self.tail + chunk
        cut = max(seen.rfind(sep) + len(sep) if sep in seen else 0 for sep in self._SEPARATORS) - len(self.tail)
        if cut <= 0:
            self.pending.append(chunk)
            self.held += len(chunk)
            self.tail = seen[-3:]
            if self.held > self.max_event:
                raise _too_big(self.max_event)
            return b""
        whole = b"".join((*self.pending, chunk[:cut])) if self.pending else chunk[:cut]
        rest = chunk[cut:]
        self.pending, self.held, self.tail = ([rest], len(rest), rest[-3:]) if rest else ([], 0, b"")
        return self._pass(whole)

    def finish(self):
        rest = b"".join(self.pending)
        self.pending, self.held, self.tail = [], 0, b""
        return self._pass(rest + b"\n\n") if rest.strip() else b""  # a last event without its blank line

    def _pass(self, whole):
        """`whole`: complete events. Each is checked and looked at; they go on as they came,
        unless a block is held back (a usage event the client did not ask for, a comment)."""
        skipped = self.parser.skipped
        events = self.parser.feed(whole)
        held_back = self.parser.skipped - skipped
        kept, dialect, ends = [], self.dialect, self.dialect.ends
        for name, data in events:
            if data not in dialect.stream_literals:
                event = _json_object(data)
                if dialect.sequence or dialect.result is not None:
                    self._seen(event)
                if b'"usage"' in data:
                    if self.strip and truthy(dialect.usage_event(event)):
                        self.usage = event.get("usage")
                        held_back += 1
                        continue
                    usage = find_usage(data)  # Anthropic's is split over message_start and message_delta
                    if usage:
                        self.usage = {**(self.usage or {}), **usage}
            if not self.ended and ends(name, data):
                self.ended = True
            kept.append((name, data))
        if held_back:  # some blocks stay here: frame what is left anew
            return b"".join(dialect.frame_raw(n, d) for n, d in kept)
        return whole

    def _seen(self, event):
        """Numbered events: a failure event must come after the provider's last number;
        the answer so far and the final answer are kept as they pass."""
        number = event.get(self.dialect.sequence)
        if isinstance(number, int) and number >= self.sequence:
            self.sequence = number + 1
        if isinstance(event.get("response"), dict):
            self.answer_so_far = event["response"]
        result = self.dialect.result(event) if self.dialect.result is not None else None
        if result is not None:
            self.result = result
