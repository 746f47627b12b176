"""The bare reference: the least a Tornado proxy can do.

For POST /v1/chat/completions (and /v1/messages): parse the JSON, set `model`,
forward to the upstream with AsyncHTTPClient, return the body. Streaming
requests (`"stream": true`) go to --stream-upstream and are relayed chunk by
chunk, with Nagle's algorithm off (a token must not wait for the ACK of the one
before it; the gateway does the same). Nothing else: no config, no translation, no logging. This is the
ceiling the gateway is measured against.

    python benchmarks/passthrough.py --port 9001 --upstream http://127.0.0.1:9000 \
        [--stream-upstream http://127.0.0.1:9002] [--client auto|simple|curl] [--loop auto|asyncio|uvloop]
"""

import argparse
import asyncio
import json
import resource

import tornado.web
from tornado.httpclient import AsyncHTTPClient

MODELS = {"/v1/chat/completions": "gpt-4o-mini", "/v1/messages": "claude-3-5-sonnet-20241022"}


def pick(choice, first, module):
    """'auto' means the faster option when its module is importable."""
    if choice != "auto":
        return choice
    try:
        __import__(module)
        return first
    except ImportError:
        return {"curl": "simple", "uvloop": "asyncio"}[first]


class Forward(tornado.web.RequestHandler):
    def initialize(self, upstream, stream_upstream):
        self.upstream = upstream
        self.stream_upstream = stream_upstream

    async def post(self):
        body = json.loads(self.request.body)
        body["model"] = MODELS[self.request.path]
        stream = bool(body.get("stream"))
        headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench",
                   "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
        kwargs = {}
        if stream:
            self.set_header("Content-Type", "text/event-stream")
            self.request.connection.stream.set_nodelay(True)  # each token at once, as the gateway sends them
            kwargs["streaming_callback"] = self.relay
        base = self.stream_upstream if stream else self.upstream
        resp = await AsyncHTTPClient().fetch(base + self.request.path, method="POST", headers=headers,
                                             body=json.dumps(body), raise_error=False,
                                             request_timeout=60, **kwargs)
        self.set_status(resp.code)
        if not stream:
            self.set_header("Content-Type", "application/json")
            self.write(resp.body)
        self.finish()

    def relay(self, chunk):
        self.write(chunk)
        self.flush()


class Health(tornado.web.RequestHandler):
    def get(self):
        self.write("ok")


async def main(args):
    app = tornado.web.Application([
        (r"/healthz", Health),
        (r"/v1/(?:chat/completions|messages)", Forward,
         {"upstream": args.upstream, "stream_upstream": args.stream_upstream or args.upstream}),
    ])
    app.listen(args.port, "127.0.0.1", backlog=4096)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--stream-upstream")
    p.add_argument("--client", default="auto", choices=["auto", "simple", "curl"])
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    p.add_argument("--max-clients", type=int, default=2000, help="concurrent upstream requests")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket each way per stream
    client, loop = pick(args.client, "curl", "pycurl"), pick(args.loop, "uvloop", "uvloop")
    if client == "curl":
        AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=args.max_clients)
    else:
        AsyncHTTPClient.configure(None, max_clients=args.max_clients)
    print(f"passthrough: client={client} loop={loop} port={args.port}", flush=True)
    if loop == "uvloop":
        import uvloop
        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
