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

from .mapping import run_steps, truthy

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_decode = json.JSONDecoder().raw_decode


def find_usage(data):
    """The `"usage": {...}` objects in a JSON body or SSE bytes, merged in
    order (Anthropic streams split usage over message_start and message_delta),
    without parsing the rest: the pass-through path never parses the answer."""
    found = None
    for m in _USAGE.finditer(data):
        try:
            usage, _ = _decode(data[m.end() - 1:].decode("utf-8", "replace"))
        except ValueError:
            continue
        found = {**(found or {}), **usage}
    return found


class SSEParser:
    def __init__(self):
        self._buf = b""

    def feed(self, chunk):
        """Complete events in `chunk` (plus what was held back) as (event, data) pairs."""
        buf = self._buf + chunk
        if b"\r" in buf:
            held_cr = buf.endswith(b"\r")  # its \n may be in the next read
            buf = buf[:-1] if held_cr else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held_cr else b"")
        events = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_block(buf[start:end])
            if event:
                events.append(event)
            start = end + 2
        self._buf = buf[start:]
        return events

    def close(self):
        """The last event when the stream ended without its blank line (lenient, like the SDKs)."""
        rest, self._buf = self._buf.strip(), b""
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


class StreamBroken(Exception):
    """The provider sent something that cannot be translated (a malformed event)."""


class Translate:
    """One request's run of a declared stream state machine (a `stream:` rules section).

    All state lives here, per request: nothing is shared between streams (§12.14)."""

    def __init__(self, program, ctx, client, provider):
        self.program, self.client, self.provider = program, client, provider
        self.root = {"e": None, "s": program.new_state(), "c": ctx}
        self.parser = SSEParser()
        self.ended = False
        self._out = []

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
                event = json.loads(data)
            except ValueError:
                raise StreamBroken("the provider sent a malformed stream event") from None
        if self.program.split is None:
            self._match(self.program.rules, event)
            return
        self.root["e"] = event
        for part in self.program.split(self.root) or ():
            if not self.ended:
                self._match(self.program.rules, part)

    def _match(self, rules, event):
        self.root["e"] = event
        for when, steps in rules:
            if truthy(when(self.root)):
                self._run(steps, event)
                return

    def _run(self, steps, event):
        self.root["e"] = event
        if run_steps(steps, self.root, self._out):
            self.ended = True

    def _take(self):
        out, self._out = self._out, []
        return b"".join(map(self.client.frame, out))


class Passthrough:
    """Same dialect both sides: bytes go straight through, a whole event at a
    time, each checked to be JSON (never translated). The tail is watched for
    the dialect's end marker, to catch a provider that stops early.

    With `strip`, the gateway asked the provider for usage the client did not
    ask for: events are parsed so that the usage-only event (the dialect's
    `stream.usage.event`) is kept for accounting and not passed on."""

    def __init__(self, dialect, strip=False):
        self.dialect = dialect
        self.markers = dialect.end_markers
        self.keep = max(map(len, self.markers), default=0)
        self.tail = b""
        self.ended = False
        self.usage = None
        self.parser = SSEParser() if strip else None
        self.pending = b""          # the start of an event whose end has not arrived yet
        self.checker = SSEParser()

    def start(self):
        return b""

    def _whole(self, chunk):
        """The complete events that have arrived, each checked to be a JSON object
        (or a literal like `[DONE]`); the rest waits for its blank line. So a
        malformed or cut event becomes the client's in-stream error, never bytes
        its SDK cannot parse, and an error frame never lands inside an event."""
        buf = self.pending + chunk
        end = 0
        for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
            at = buf.rfind(sep)
            if at >= 0:
                end = max(end, at + len(sep))
        whole, self.pending = buf[:end], buf[end:]
        for _, data in self.checker.feed(whole):
            if data not in self.dialect.stream_literals:
                try:
                    event = json.loads(data)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    raise StreamBroken("the provider sent a malformed stream event")
        return whole

    def _strip(self, events):
        out = []
        for name, data in events:
            if b'"usage"' in data and data not in self.dialect.stream_literals:
                try:
                    event = json.loads(data)
                except ValueError:
                    event = None
                if isinstance(event, dict) and truthy(self.dialect.usage_event(event)):
                    self.usage = event.get("usage")
                    continue
            out.append(self.dialect.frame_raw(name, data))
        return b"".join(out)

    def feed(self, chunk):
        chunk = self._whole(chunk)
        if self.parser is not None:
            chunk = self._strip(self.parser.feed(chunk))
        if not self.ended:
            window = self.tail + chunk
            self.ended = any(m in window for m in self.markers)
            self.tail = window[-self.keep:]
        if b'"usage"' in chunk:
            usage = find_usage(chunk)
            if usage:
                self.usage = {**(self.usage or {}), **usage}
        return chunk

    def finish(self):
        last = self.feed(b"\n\n") if self.pending.strip() else b""  # a last event without its blank line
        return last + (self._strip(self.parser.close()) if self.parser is not None else b"")
