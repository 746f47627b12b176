"""Fake LLM providers for tests: real HTTP servers speaking the exact wire formats.

Each fake is a stdlib `ThreadingHTTPServer` on 127.0.0.1 with an ephemeral port,
speaking HTTP/1.1 with keep-alive (every response carries `content-length` or is
chunked), so the gateway talks to it over real sockets the way it talks to a vendor.
Every request is recorded. A test scripts the next answers with `enqueue()`
(FIFO, whatever the path); with nothing queued, the fake answers like the real
vendor would (`FakeOpenAI`, `FakeAnthropic`): a chat request gets the `Turn` that
`script()`'s responder returns for it (default: `Hello from <model>!`), rendered
in the fake's dialect, as JSON or SSE as the request asked. A responder decides
from the request alone, so an agent's multi-turn conversation (whose number and
order of requests the test does not control) is still deterministic. Shapes follow
docs/wire-formats.md (sections 1 and 2); the vectors in tests/vectors are
recordings of the real APIs and can be replayed with `enqueue(sse=vector(...))`.
`RawProvider` is the misbehaving one: it writes whatever bytes a test scripts.
"""
from __future__ import annotations

import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

VECTORS = Path(__file__).parent / "vectors"


def parse_sse(data):
    """(event name or None, data text) for each SSE event in bytes or text (WHATWG rules,
    enough for tests); a last event without its blank line counts too, as the SDKs read it."""
    text = data.decode() if isinstance(data, bytes) else data
    events, name, lines = [], None, []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if lines:
                events.append((name, "\n".join(lines)))
            name, lines = None, []
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                lines.append(value)
    if lines:
        events.append((name, "\n".join(lines)))
    return events


def vector(name: str) -> str:
    """Text of tests/vectors/<name>, e.g. `vector("anthropic/stream_text.sse")`."""
    return (VECTORS / name).read_text(encoding="utf-8")


def vector_json(name: str):
    return json.loads(vector(name))


def token_count(raw: bytes) -> int:
    """The fakes' deterministic "tokenizer": input tokens for a request body, so
    tests can predict usage numbers from `fake.last["raw"]`."""
    return len(raw) // 4 + 1


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _reply_pieces(model: str) -> list[str]:
    """The default answer `Hello from <model>!`, in the three pieces it is streamed in."""
    return ["Hello", " from", f" {model}!"]


@dataclass
class Turn:
    """One scripted assistant turn, dialect-neutral: each fake renders it in its own
    wire format. `text` is streamed piece by piece when it is a list; `tool_calls`
    are `(name, arguments dict)` pairs, given ids `call_<n>_<i>` (OpenAI) or
    `toolu_<n>_<i>` (Anthropic), n the request number. Anthropic only: `searches`
    are web searches run by the provider after the text (a `server_tool_use` block
    with id `srvtoolu_<n>_<i>` and its `web_search_tool_result` each), and `paused`
    ends the turn with `pause_turn`."""

    text: str | list[str] = ""
    tool_calls: list[tuple[str, dict]] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    paused: bool = False

    @property
    def pieces(self) -> list[str]:
        return list(self.text) if isinstance(self.text, list) else [self.text] if self.text else []


def tool_result(body) -> str | None:
    """The text of the tool result(s) a chat request ends with, in either dialect
    (OpenAI `tool` messages, Anthropic `tool_result` blocks in the last user message),
    or None when the conversation does not end with one."""
    messages = body.get("messages") or [] if isinstance(body, dict) else []
    items = body.get("input") if isinstance(body, dict) and isinstance(body.get("input"), list) else []
    outputs = []
    for item in reversed(items):  # Responses: function_call_output items at the end
        if not isinstance(item, dict) or item.get("type") not in ("function_call_output", "custom_tool_call_output"):
            break
        outputs.insert(0, _text_of(item.get("output")))
    if outputs:
        return "\n".join(outputs)
    texts = []
    for m in reversed(messages):  # OpenAI: one `tool` message per call, at the end
        if m.get("role") != "tool":
            break
        texts.insert(0, _text_of(m.get("content")))
    if not texts and messages and isinstance(messages[-1].get("content"), list):
        texts = [_text_of(b.get("content")) for b in messages[-1]["content"]
                 if isinstance(b, dict) and b.get("type") == "tool_result"]
    return "\n".join(texts) if texts else None


def _text_of(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def tool_loop(name: str, arguments: dict, answer=lambda result: f"The tool said: {result}"):
    """A responder for `script()`: a two-turn tool loop. A request that does not end
    with a tool result is answered with one call to `name`; one that does is
    answered with `answer(result text)`."""
    def respond(req):
        result = tool_result(req["body"])
        return Turn(tool_calls=[(name, arguments)]) if result is None else Turn(answer(result))
    return respond


def pausing(times: int, answer: str = "Done."):
    """A responder for `script()` (Anthropic): a web-searching turn the provider pauses
    `times` times. The request's paused content so far (its last message, an assistant
    one) says how many parts came before: each part `Part <k>. ` searches `query <k>`
    and pauses; the part after the last pause answers `answer`."""
    def respond(req):
        messages = req["body"].get("messages") or []
        last = messages[-1] if messages and messages[-1].get("role") == "assistant" else {}
        done = sum(1 for b in last.get("content") or () if isinstance(b, dict) and b.get("type") == "server_tool_use")
        if done >= times:
            return Turn(answer)
        return Turn(f"Part {done + 1}. ", searches=[f"query {done + 1}"], paused=True)
    return respond


def search_result(query: str) -> list[dict]:
    """The results a fake web search for `query` finds (a `web_search_tool_result`'s content)."""
    slug = query.replace(" ", "-")
    return [{"type": "web_search_result", "url": f"https://example.com/{slug}", "title": f"About {query}",
             "encrypted_content": f"enc-{slug}", "page_age": "April 30, 2025"}]


# An SSE event ends at a blank line; split after it so each event keeps its terminator.
_SSE_EVENT_END = re.compile(rb"(?<=\r\n\r\n)|(?<=\n\n)")


@dataclass
class Reply:
    """One scripted response. `pieces` is None for a `content-length` body,
    else the list of chunked-encoding writes."""

    status: int = 200
    body: bytes = b""
    pieces: list[bytes] | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    close_after: int | None = None
    hang: bool = False
    linger: bool = False


class FakeProvider:
    """Base fake: serving, recording and the response queue. Subclasses answer
    unscripted requests in `default_reply()`."""

    sse_content_type = "text/event-stream"
    request_id_header = "x-request-id"
    not_found_type = "invalid_request_error"

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._responder = None
        self._requests: list[dict] = []
        self._disconnects: list[dict] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self, tls=None):
        """Serve in a thread; with `tls` (an ssl.SSLContext) over HTTPS, as real providers do."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._scheme = "https" if tls else "http"
        self._httpd.fake = self
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._stopping.set()  # releases `hang=True` handlers
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return "%s://127.0.0.1:%d" % (self._scheme, self._httpd.server_address[1])

    # -- recording -------------------------------------------------------------
    @property
    def requests(self) -> list[dict]:
        """Snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last(self) -> dict:
        with self._lock:
            return self._requests[-1]

    @property
    def disconnects(self) -> list[dict]:
        """Snapshot of the times a client (the gateway) hung up before a `delay`ed,
        streamed or `hang`ing reply was complete: `{"request": n, "at": time.monotonic()}`."""
        with self._lock:
            return list(self._disconnects)

    def _client_gone(self, n: int):
        with self._lock:
            self._disconnects.append({"request": n, "at": time.monotonic()})

    def reset(self):
        """Forget recorded requests, scripted replies and the responder; request ids
        restart at req_1."""
        with self._lock:
            self._requests.clear()
            self._disconnects.clear()
            self._queue.clear()
            self._responder = None

    def _record(self, req: dict) -> tuple[int, Reply | None]:
        """Store the request; return its 1-based number and the next scripted reply."""
        with self._lock:
            self._requests.append(req)
            return len(self._requests), (self._queue.popleft() if self._queue else None)

    # -- scripting ---------------------------------------------------------------
    def enqueue(self, status=200, body=None, *, json=None, sse=None, content_type=None, headers=None,
                delay=0.0, chunks=None, close_after=None, hang=False, linger=False):
        """Script the next response (FIFO, served whatever the path).

        Exactly one of: `body` (str/bytes sent with content-length, default
        content-type application/json, so error vectors can be passed as text),
        `json` (object), `sse` (a whole SSE transcript: chunked, one event per
        chunk) or `chunks` (list of bytes, each one chunked write, so tests can
        split an event across TCP writes). `delay`: seconds slept between
        events/chunks, or before answering a content-length body. `close_after=N`:
        close the socket once N body bytes were sent (no terminating chunk).
        `hang=True`: never answer (until the client hangs up or stop()).
        `linger=True`: send the whole stream, then neither end the body nor close the
        connection (until the client hangs up or stop()), as some servers do after their
        last event.
        Content-type defaults to the dialect's SSE type for `sse`/`chunks`, else
        application/json. `headers` are added to (and may override) the defaults,
        which include the dialect's request-id header (`req_<n>`, n = request number).
        """
        if json is not None:
            body = _dumps(json)
        elif isinstance(body, str):
            body = body.encode()
        pieces = None
        if sse is not None:
            sse = sse.encode() if isinstance(sse, str) else sse
            pieces = [p for p in _SSE_EVENT_END.split(sse) if p]
        elif chunks is not None:
            pieces = list(chunks)
        default_type = self.sse_content_type if pieces is not None else "application/json"
        reply = Reply(status, body or b"", pieces,
                      {"content-type": content_type or default_type, **(headers or {})},
                      delay, close_after, hang, linger)
        with self._lock:
            self._queue.append(reply)

    def script(self, responder):
        """Answer every chat request that nothing is `enqueue`d for with
        `responder(recorded request)`: a `Turn`, or None for the default answer.
        Called on the fake's threads, possibly concurrently: decide from the
        request, keep no state. Cleared by reset()."""
        with self._lock:
            self._responder = responder

    def turn(self, req: dict) -> Turn:
        """The scripted (or default) turn for a chat request."""
        with self._lock:
            responder = self._responder
        return (responder and responder(req)) or Turn(_reply_pieces(req["body"]["model"]))

    # -- default answers (subclasses) ---------------------------------------------
    def default_reply(self, req: dict, n: int) -> Reply:
        return self.error(404, self.not_found_type, f"Unknown request URL: {req['method']} {req['path']}", n)

    def error(self, status: int, kind: str, message: str, n: int) -> Reply:
        raise NotImplementedError

    def json_reply(self, obj, status=200) -> Reply:
        return Reply(status, _dumps(obj), headers={"content-type": "application/json"})

    def sse_reply(self, events: list[bytes]) -> Reply:
        return Reply(pieces=events, headers={"content-type": self.sse_content_type})


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections under concurrent tests
    daemon_threads = True

    def handle_error(self, request, client_address):
        """The gateway hanging up (a cancelled call) is expected here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _handle(self):
        fake: FakeProvider = self.server.fake
        url = urlsplit(self.path)
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        req = {"method": self.command, "path": url.path, "query": dict(parse_qsl(url.query, keep_blank_values=True)),
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "raw": raw}
        n, reply = fake._record(req)
        reply = reply or fake.default_reply(req, n)
        if reply.hang:
            if self._hang(fake):
                fake._client_gone(n)
            return
        headers = {fake.request_id_header: f"req_{n}", **reply.headers}
        if reply.pieces is None:
            time.sleep(reply.delay)
            headers["content-length"] = str(len(reply.body))
            self._send_head(reply.status, headers)
            self._write(reply.body, reply.close_after, lambda data: self.wfile.write(data))
        else:
            headers["transfer-encoding"] = "chunked"
            self._send_head(reply.status, headers)
            sent = 0
            for i, piece in enumerate(reply.pieces):
                budget = None if reply.close_after is None else reply.close_after - sent
                try:
                    if i and self._pause(reply.delay):
                        raise ConnectionResetError("the client hung up")
                    if self._write(piece, budget, self._write_chunk):
                        return
                except (BrokenPipeError, ConnectionResetError):
                    fake._client_gone(n)
                    self.close_connection = True
                    return
                sent += len(piece)
            if reply.linger:
                if self._hang(fake):
                    fake._client_gone(n)
                return
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            raw = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                raw += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return raw
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _send_head(self, status, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _write_chunk(self, data: bytes):
        if data:  # an empty chunk would end the body
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _write(self, data: bytes, budget: int | None, write) -> bool:
        """Write `data`, or only `budget` bytes of it and then drop the connection
        the way a crashed upstream does. Returns whether it dropped it."""
        if budget is None or budget > len(data):
            write(data)
            return False
        write(data[:budget])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True
        return True

    def _hang(self, fake: FakeProvider) -> bool:
        """Answer nothing until stop(), or until the client gives up (EOF), so a
        timed-out request does not leave a thread behind for the session.
        Returns whether the client gave up."""
        self.close_connection = True
        while not fake._stopping.wait(0.05):
            if self._peer_closed():
                return True
        return False

    def _peer_closed(self) -> bool:
        """Whether the client closed its end (EOF or reset is waiting to be read)."""
        if not select.select([self.connection], [], [], 0)[0]:
            return False
        try:
            return not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` between stream pieces, returning True at once if the
        client hung up meanwhile (so tests can see how fast the gateway cancels)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([self.connection], [], [], min(left, 0.05))[0]:
                if self._peer_closed():
                    return True
                time.sleep(max(end - time.monotonic(), 0))  # the client sent more: just wait
                return False
        return False


def responses_events(response: dict, pieces: int = 3) -> list[dict]:
    """The stream OpenAI's /v1/responses sends for a finished `response`, event by event:
    response.created, response.in_progress, for each output item output_item.added, its
    parts and deltas (text and arguments split into `pieces`), its .done events and
    output_item.done, then response.completed (or .incomplete). Numbered from 0."""
    def split(text):
        size = max(1, -(-len(text) // pieces))
        return [text[i:i + size] for i in range(0, len(text), size)] or [""]

    start = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    events = [{"type": "response.created", "response": start}, {"type": "response.in_progress", "response": start}]
    for n, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": n}
        kind = item["type"]
        if kind == "message":
            events.append({"type": "response.output_item.added", "output_index": n,
                           "item": {**item, "status": "in_progress", "content": []}})
            for c, part in enumerate(item["content"]):
                events.append({"type": "response.content_part.added", **where, "content_index": c,
                               "part": {**part, "text": ""}})
                events += [{"type": "response.output_text.delta", **where, "content_index": c, "delta": d,
                            "logprobs": []} for d in split(part["text"])]
                events.append({"type": "response.output_text.done", **where, "content_index": c,
                               "text": part["text"], "logprobs": []})
                events.append({"type": "response.content_part.done", **where, "content_index": c, "part": part})
        elif kind == "function_call":
            events.append({"type": "response.output_item.added", "output_index": n,
                           "item": {**item, "status": "in_progress", "arguments": ""}})
            events += [{"type": "response.function_call_arguments.delta", **where, "delta": d}
                       for d in split(item["arguments"])]
            events.append({"type": "response.function_call_arguments.done", **where, "name": item["name"],
                           "arguments": item["arguments"]})
        elif kind == "reasoning":
            events.append({"type": "response.output_item.added", "output_index": n, "item": {**item, "summary": []}})
            for k, part in enumerate(item["summary"]):
                events.append({"type": "response.reasoning_summary_part.added", **where, "summary_index": k,
                               "part": {"type": "summary_text", "text": ""}})
                events += [{"type": "response.reasoning_summary_text.delta", **where, "summary_index": k, "delta": d}
                           for d in split(part["text"])]
                events.append({"type": "response.reasoning_summary_text.done", **where, "summary_index": k,
                               "text": part["text"]})
                events.append({"type": "response.reasoning_summary_part.done", **where, "summary_index": k,
                               "part": part})
        else:
            events.append({"type": "response.output_item.added", "output_index": n, "item": item})
        events.append({"type": "response.output_item.done", "output_index": n, "item": item})
    final = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append({"type": final, "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


def named_sse(events: list[dict]) -> list[bytes]:
    """SSE frames `event: <type>` + `data: <json>` (Anthropic and Responses streams)."""
    return [b"event: %s\ndata: %s\n\n" % (e["type"].encode(), _dumps(e)) for e in events]


class FakeOpenAI(FakeProvider):
    """OpenAI-compatible server (also stands in for Ollama's /v1), with OpenAI's own
    /v1/responses (answers made the way `responses_events` streams them)."""

    def __init__(self, models=("gpt-4o-mini", "gpt-4o")):
        super().__init__()
        self.models = models

    def error(self, status, kind, message, n):
        return self.json_reply({"error": {"message": message, "type": kind, "param": None,
                                          "code": "unknown_url" if status == 404 else None}}, status)

    def default_reply(self, req, n):
        if req["method"] == "GET" and req["path"].endswith("/models"):
            return self.json_reply({"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in self.models]})
        if req["method"] == "POST" and req["path"].endswith("/chat/completions"):
            body = req["body"]
            if not isinstance(body, dict):
                return self.error(400, "invalid_request_error", "We could not parse the JSON body of your request.", n)
            if "model" not in body or "messages" not in body:
                return self.error(400, "invalid_request_error", "Missing required parameter: 'model' or 'messages'.", n)
            return self._chat(req, n)
        if req["method"] == "POST" and req["path"].endswith("/responses"):
            body = req["body"]
            if not isinstance(body, dict) or "model" not in body:
                return self.error(400, "invalid_request_error", "Missing required parameter: 'model'.", n)
            if not isinstance(body.get("input", ""), (str, list)):
                return self.json_reply(vector_json("openai_responses/error_400_invalid_input.json"), 400)
            if body.get("previous_response_id"):
                return self.json_reply(vector_json("openai_responses/error_400_previous_response_not_found.json"), 400)
            return self._responses(req, n)
        return super().default_reply(req, n)

    def _responses(self, req, n):
        body, turn = req["body"], self.turn(req)
        input_tokens, text = token_count(req["raw"]), "".join(turn.pieces)
        output = [{"id": f"msg_fake{n}", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}] if text else []
        output += [{"id": f"fc_fake{n}_{i}", "type": "function_call", "status": "completed", "call_id": f"call_{n}_{i}",
                    "name": name, "arguments": json.dumps(args)} for i, (name, args) in enumerate(turn.tool_calls)]
        output_tokens = len(turn.pieces) + len(turn.tool_calls)
        response = {**vector_json("openai_responses/response_text.json"), "id": f"resp_fake{n}",
                    "created_at": int(time.time()), "model": body["model"], "output": output,
                    "instructions": body.get("instructions"), "store": body.get("store", True),
                    "previous_response_id": None, "tools": body.get("tools") or [],
                    "usage": {"input_tokens": input_tokens,
                              "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                              "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": input_tokens + output_tokens}}
        if not body.get("stream"):
            return self.json_reply(response)
        return self.sse_reply(named_sse(responses_events(response)))

    def _chat(self, req, n):
        body, turn = req["body"], self.turn(req)
        pieces, prompt_tokens = turn.pieces, token_count(req["raw"])
        calls = [{"id": f"call_{n}_{i}", "type": "function",
                  "function": {"name": name, "arguments": json.dumps(args)}}
                 for i, (name, args) in enumerate(turn.tool_calls)]
        finish = "tool_calls" if calls else "stop"
        completion_tokens = len(pieces) + len(calls)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        head = {"id": f"chatcmpl-fake{n}", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces) if pieces or not calls else None,
                       "refusal": None, **({"tool_calls": calls} if calls else {})}
            return self.json_reply({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": message, "logprobs": None, "finish_reason": finish}], "usage": usage})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta, finish=None):
            c = {**head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return {**c, "usage": None} if with_usage else c

        frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
        frames += [chunk({"content": p}) for p in pieces]
        for i, call in enumerate(calls):  # the head of each call, then its arguments
            frames.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            frames.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}))
        frames.append(chunk({}, finish))
        if with_usage:
            frames.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return self.sse_reply([b"data: %s\n\n" % _dumps(f) for f in frames] + [b"data: [DONE]\n\n"])


class FakeAnthropic(FakeProvider):
    """Anthropic Messages API. Like the real one it rejects requests without a key
    (401) or without `anthropic-version` (400). A key is `x-api-key` or
    `Authorization: Bearer` - the anthropic 2.x SDK sends only the latter."""

    sse_content_type = "text/event-stream; charset=utf-8"
    request_id_header = "request-id"
    not_found_type = "not_found_error"

    def error(self, status, kind, message, n):
        return self.json_reply({"type": "error", "error": {"type": kind, "message": message},
                                "request_id": f"req_{n}"}, status)

    def default_reply(self, req, n):
        h = req["headers"]
        if not h.get("x-api-key") and not h.get("authorization", "").startswith("Bearer "):
            return self.error(401, "authentication_error", "x-api-key header is required", n)
        if "anthropic-version" not in h:
            return self.error(400, "invalid_request_error", "anthropic-version: header is required", n)
        if req["method"] != "POST" or req["path"] not in ("/v1/messages", "/v1/messages/count_tokens"):
            return super().default_reply(req, n)
        body = req["body"]
        if not isinstance(body, dict):
            return self.error(400, "invalid_request_error", "There was an error parsing the body of your request.", n)
        required = ("model", "messages") if req["path"].endswith("count_tokens") else ("model", "max_tokens", "messages")
        missing = [f for f in required if f not in body]
        if missing:
            return self.error(400, "invalid_request_error", f"{missing[0]}: Field required", n)
        if req["path"].endswith("count_tokens"):
            return self.json_reply({"input_tokens": token_count(req["raw"])})
        return self._message(req, n)

    def _message(self, req, n):
        body, turn = req["body"], self.turn(req)
        pieces = turn.pieces
        usage = {"input_tokens": token_count(req["raw"]), "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        blocks = ([{"type": "text", "text": "".join(pieces)}] if pieces or not turn.tool_calls else [])
        for i, query in enumerate(turn.searches):
            blocks += [{"type": "server_tool_use", "id": f"srvtoolu_{n}_{i}", "name": "web_search",
                        "input": {"query": query}},
                       {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{n}_{i}",
                        "content": search_result(query)}]
        blocks += [{"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args}
                   for i, (name, args) in enumerate(turn.tool_calls)]
        stop = "pause_turn" if turn.paused else "tool_use" if turn.tool_calls else "end_turn"
        output_tokens = len(pieces) + len(turn.tool_calls) + len(turn.searches)
        message = {"id": f"msg_fake{n}", "type": "message", "role": "assistant", "model": body["model"],
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": {**usage, "output_tokens": output_tokens}}
        if not body.get("stream"):
            return self.json_reply(message)
        events = [{"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                        "usage": {**usage, "output_tokens": 1}}}]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                start = {**block, "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in pieces or [""]]
            elif block["type"] == "web_search_tool_result":
                start, deltas = block, []
            else:
                start = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
            events += [{"type": "content_block_start", "index": i, "content_block": start},
                       *([{"type": "ping"}] if i == 0 else []),
                       *({"type": "content_block_delta", "index": i, "delta": d} for d in deltas),
                       {"type": "content_block_stop", "index": i}]
        events += [{"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens}},
                   {"type": "message_stop"}]
        return self.sse_reply(named_sse(events))


class FakeProxy:
    """A TCP middlebox on 127.0.0.1, in one of two roles.

    - An HTTP forward proxy (no `upstream`): `CONNECT host:port` opens a tunnel
      (answered `200`), an absolute-form request (`POST http://host:port/path`)
      is passed to that host as it is; the first line of each is recorded in
      `requests`, its whole head in `heads`.
    - A relay to a fixed `upstream` (host, port), standing in for the NAT or load
      balancer between the gateway and a provider: `blackhole_after` seconds of
      silence on a connection make it swallow everything afterwards without a
      word (the way a dropped NAT entry behaves); `poison()` makes every open
      connection close as soon as it next carries a request.
    """

    def __init__(self, upstream=None, blackhole_after=None):
        self.upstream, self.blackhole_after = upstream, blackhole_after
        self.requests: list[str] = []
        self.heads: list[str] = []
        self.connections = 0
        self._poisoned: set = set()
        self._open: set = set()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self._sock.close()

    def poison(self):
        with self._lock:
            self._poisoned |= self._open

    def _accept(self):
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            if self.upstream:
                server, first = socket.create_connection(self.upstream), b""
            else:
                server, first = self._open_as_proxy(client)
            if server is not None:
                self._pipe(client, server, first)
        except OSError:
            pass
        finally:
            client.close()

    def _open_as_proxy(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return None, b""
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        with self._lock:
            self.requests.append(line)
            self.heads.append(head.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
        method, target = line.split(" ")[:2]
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            server = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            return server, head.split(b"\r\n\r\n", 1)[1]
        url = urlsplit(target)
        return socket.create_connection((url.hostname, url.port or 80)), head

    def _pipe(self, client, server, first):
        with self._lock:
            self._open.add(client)
        if first:
            server.sendall(first)
        last, dead = time.monotonic(), False
        try:
            while True:
                ready = select.select([client, server], [], [], 0.05)[0]
                if client in ready:
                    data = client.recv(65536)
                    with self._lock:
                        poisoned = client in self._poisoned
                    if not data or poisoned:
                        return
                    quiet = time.monotonic() - last
                    dead = dead or (self.blackhole_after is not None and quiet > self.blackhole_after)
                    if not dead:  # once dead, swallowed: the connection still looks open
                        server.sendall(data)
                        last = time.monotonic()
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
                    last = time.monotonic()
        finally:
            with self._lock:
                self._open.discard(client)
            server.close()
class FakeRouter(FakeOpenAI):
    """A router model (Arch-Router's contract) on the OpenAI wire: reads the conversation
    in the prompt and answers `{"route": name}` for the first keyword of `routes` found in
    the last user message ("other" when none). `mode` scripts a failure instead:
    "hang" (never answers), "error" (500), "garbage" (prose, no route JSON)."""

    def __init__(self):
        super().__init__(models=("arch-router",))
        self.routes: dict[str, str] = {}
        self.mode = "answer"

    def reset(self):
        super().reset()
        self.routes, self.mode = {}, "answer"

    def default_reply(self, req, n):
        if not (req["method"] == "POST" and req["path"].endswith("/chat/completions")):
            return super().default_reply(req, n)
        if self.mode == "hang":
            return Reply(hang=True)
        if self.mode == "error":
            return self.error(500, "server_error", "router crashed", n)
        prompt = req["body"]["messages"][-1]["content"]
        convo = json.loads(prompt.split("<conversation>")[1].split("</conversation>")[0])
        last = next((m["content"] for m in reversed(convo) if m["role"] == "user"), "")
        route = next((r for word, r in self.routes.items() if word in last), "other")
        text = "I think it is that one." if self.mode == "garbage" else json.dumps({"route": route})
        return self.json_reply({"id": f"chatcmpl-r{n}", "object": "chat.completion", "created": 1,
                                "model": req["body"]["model"], "choices": [{
                                    "index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


class RawProvider:
    """A provider that misbehaves at the byte level: each scripted reply is a
    list of steps written to the socket exactly as given, so a test can send
    what `http.server` never would (a negative or huge length, a chunk-size
    line with no end, a bare CR in a header, a body cut by FIN or RST, a
    gigantic event) and see what the gateway makes of it.

    Steps: bytes (written as they are), a callable (request -> bytes: an
    answer that echoes the request, e.g. its headers), a float (seconds to
    pause), "close" (FIN), "reset" (RST), "hang" (keep the socket open and
    answer nothing more until the gateway hangs up or stop()). After the last
    step the connection stays open for the next request (keep-alive). With
    nothing scripted the answer is a 503 JSON error. Requests are recorded
    like the other fakes' (method, path, headers, raw body)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: deque[list] = deque()
        self._requests: list[dict] = []
        self._stopping = threading.Event()
        self._sock = None
        self.sent = 0  # bytes written so far (a write blocks while the gateway reads nothing)

    def start(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self._stopping.set()
        self._sock.close()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self._sock.getsockname()[1]

    @property
    def requests(self) -> list[dict]:
        with self._lock:
            return list(self._requests)

    def reset(self):
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    def enqueue(self, *steps):
        """Script the next reply (FIFO, whatever the path)."""
        with self._lock:
            self._queue.append(list(steps))

    @staticmethod
    def response(status=200, body=b"", headers=None, length=True) -> bytes:
        """A well-formed head and body (`length=False`: no content-length, so the body ends at close)."""
        body = body.encode() if isinstance(body, str) else body
        lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if length:
            lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _accept(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        reader = conn.makefile("rb")
        try:
            while True:
                request = self._read(reader)
                if request is None:
                    return
                with self._lock:
                    self._requests.append(request)
                    steps = self._queue.popleft() if self._queue else [self.response(
                        503, _dumps({"error": {"message": "nothing scripted", "type": "server_error"}}),
                        {"content-type": "application/json"})]
                if not self._play(conn, steps, request):
                    return
        except OSError:
            pass
        finally:
            reader.close()
            conn.close()

    @staticmethod
    def _read(reader):
        line = reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = reader.read(int(headers.get("content-length") or 0))
        return {"method": method, "path": path, "headers": headers, "raw": raw}

    def _play(self, conn, steps, request) -> bool:
        """Write the steps; whether the connection may serve another request."""
        for step in steps:
            if callable(step):
                step = step(request)
            if isinstance(step, bytes):
                conn.sendall(step)
                self.sent += len(step)
            elif isinstance(step, float):
                time.sleep(step)
            elif step == "close":
                conn.shutdown(socket.SHUT_WR)
                return False
            elif step == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
                return False
            elif step == "hang":
                while not self._stopping.wait(0.05):
                    if select.select([conn], [], [], 0)[0] and not conn.recv(1, socket.MSG_PEEK):
                        break
                return False
        return True
