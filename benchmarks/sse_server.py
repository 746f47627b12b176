"""A provider stand-in for streams: N tokens, a fixed delay between them.

POST /v1/chat/completions streams OpenAI `chat.completion.chunk` events ending
in `data: [DONE]`; POST /v1/messages streams Anthropic message events ending in
`message_stop`; POST /v1/responses streams OpenAI Responses events ending in
`response.completed`. The first token is sent at once, then one every --delay-ms.
Tokens read `tok0 tok1 ...` so a client can find and count them in any dialect.
POST /_control?tokens=N&delay_ms=D changes both at run time (the benchmark
uses 0 ms for wrk throughput runs and a real delay for concurrency runs).

It is a bare asyncio Protocol (uvloop when installed) with every stream
rendered once per model and token count, so that, like nginx for the
non-streaming rows, the stand-in costs little of the CPU the proxies under
test share with it; each event is still its own write (and, with TCP_NODELAY,
its own segment), as a provider sends them.

    python benchmarks/sse_server.py --port 9002 [--tokens 20] [--delay-ms 50]
"""

import argparse
import asyncio
import json
import resource
import socket
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

SETTINGS = {"tokens": 20, "delay_ms": 50.0}
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def sse(data, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def openai_events(model, n):
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1727346142, "model": model}
    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for i in range(n):
        yield sse({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 14, "completion_tokens": n, "total_tokens": 14 + n}})
    yield "data: [DONE]\n\n"


def anthropic_events(model, n):
    yield sse({"type": "message_start", "message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 14, "output_tokens": 1}}},
        "message_start")
    yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              "content_block_start")
    for i in range(n):
        yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}},
                  "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"output_tokens": n}}, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def responses_events(model, n):
    text = "".join(f"tok{i} " for i in range(n))
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    done = {"id": "resp_bench", "object": "response", "created_at": 1727346142, "status": "completed",
            "model": model, "output": [item], "usage": {
                "input_tokens": 14, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14 + n}}
    start = {**done, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": "msg_bench", "output_index": 0}
    events = [("response.created", {"response": start}), ("response.in_progress", {"response": start}),
              ("response.output_item.added", {"output_index": 0,
                                              "item": {**item, "status": "in_progress", "content": []}}),
              ("response.content_part.added", {**where, "content_index": 0, "part": {**part, "text": ""}})]
    events += [("response.output_text.delta", {**where, "content_index": 0, "delta": f"tok{i} ", "logprobs": []})
               for i in range(n)]
    events += [("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []}),
               ("response.content_part.done", {**where, "content_index": 0, "part": part}),
               ("response.output_item.done", {"output_index": 0, "item": item}),
               ("response.completed", {"response": done})]
    for seq, (kind, data) in enumerate(events):
        yield sse({"type": kind, **data, "sequence_number": seq}, kind)


EVENTS = {"/v1/chat/completions": openai_events, "/v1/messages": anthropic_events, "/v1/responses": responses_events}


@lru_cache(maxsize=64)
def rendered(path, model, n):
    """HTTP chunks: everything up to the first token in one write (with the response head),
    then one per event; the token events are chunks 1 to n-1, the ones sent after a delay."""
    events = list(EVENTS[path](model, n))
    first = next((i for i, ev in enumerate(events) if "tok0" in ev), 0)
    pieces = ["".join(events[:first + 1]), *events[first + 1:]]
    chunks = [b"%x\r\n%s\r\n" % (len(data), data) for data in (piece.encode() for piece in pieces)]
    chunks[0] = HEAD + chunks[0]
    chunks[-1] += b"0\r\n\r\n"
    return chunks


def plain(status, body, content_type="text/plain"):
    return (b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, content_type.encode(), len(body), body))


class Server(asyncio.Protocol):
    """One connection: keep-alive HTTP/1.1 requests, one at a time."""

    def connection_made(self, transport):
        self.transport, self.buf, self.busy = transport, b"", False
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.buf += data
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
            method, target = head[0].split(" ")[:2]
            self.handle(method, urlsplit(target), body)

    def handle(self, method, url, body):
        if url.path == "/healthz":
            self.transport.write(plain(200, b"ok"))
        elif url.path == "/_control":
            for key, value in parse_qsl(url.query):
                if key in SETTINGS:
                    SETTINGS[key] = type(SETTINGS[key])(value)
            self.transport.write(plain(200, json.dumps(SETTINGS).encode(), "application/json"))
        elif method == "POST" and url.path in EVENTS:
            model = json.loads(body or b"{}").get("model", "bench")
            self.busy = True
            n = SETTINGS["tokens"]
            self.send(rendered(url.path, model, n), SETTINGS["delay_ms"] / 1000, n)
        else:
            self.transport.write(plain(404, b"not found"))

    def send(self, chunks, delay, tokens, at=0):
        while at < len(chunks) and not self.transport.is_closing():
            self.transport.write(chunks[at])
            at += 1
            if delay and at < tokens:  # the next chunk is a token
                asyncio.get_running_loop().call_later(delay, self.send, chunks, delay, tokens, at)
                return
        self.busy = False
        if self.buf:
            self.data_received(b"")


async def main(args):
    SETTINGS.update(tokens=args.tokens, delay_ms=args.delay_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", args.port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--delay-ms", type=float, default=50.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per concurrent stream
    try:
        import uvloop
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop else asyncio.run)(main(args))
