"""A provider stand-in for streams: N tokens, a fixed delay between them.

POST /v1/chat/completions streams OpenAI `chat.completion.chunk` events ending
in `data: [DONE]`; POST /v1/messages streams Anthropic message events ending in
`message_stop`. The first token is sent at once, then one every --delay-ms.
Tokens read `tok0 tok1 ...` so a client can find and count them in any dialect.
POST /_control?tokens=N&delay_ms=D changes both at run time (the benchmark
uses 0 ms for wrk throughput runs and a real delay for concurrency runs).

    python benchmarks/sse_server.py --port 9002 [--tokens 20] [--delay-ms 50]
"""

import argparse
import asyncio
import json
import resource

import tornado.web

SETTINGS = {"tokens": 20, "delay_ms": 50.0}


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


class Stream(tornado.web.RequestHandler):
    async def post(self):
        body = json.loads(self.request.body or b"{}")
        n, delay = SETTINGS["tokens"], SETTINGS["delay_ms"] / 1000
        anthropic = self.request.path == "/v1/messages"
        events = (anthropic_events if anthropic else openai_events)(body.get("model", "bench"), n)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        # Everything before the first token goes in one write with it.
        head = ""
        for ev in events:
            head += ev
            if "tok0" in ev:
                break
        self.write(head)
        await self.flush()
        for ev in events:
            if delay and '"tok' in ev:
                await asyncio.sleep(delay)
            self.write(ev)
            await self.flush()
        self.finish()


class Control(tornado.web.RequestHandler):
    def post(self):
        for key in SETTINGS:
            if self.get_argument(key, None) is not None:
                SETTINGS[key] = type(SETTINGS[key])(self.get_argument(key))
        self.write(SETTINGS)


class Health(tornado.web.RequestHandler):
    def get(self):
        self.write("ok")


async def main(args):
    SETTINGS.update(tokens=args.tokens, delay_ms=args.delay_ms)
    app = tornado.web.Application([
        (r"/healthz", Health), (r"/_control", Control), (r"/v1/(?:chat/completions|messages)", Stream)])
    app.listen(args.port, "127.0.0.1", backlog=4096)
    await asyncio.Event().wait()


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
