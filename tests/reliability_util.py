"""Helpers shared by the reliability, fuzz and soak tests.

Configs derived from the standard one in conftest, raw HTTP without an SDK
(so a test sees exactly what went over the socket), and the numbers a leak
would move in the gateway process: open file descriptors, RSS, and the
in-flight count `GET /healthz` reports.
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import socket
import time
from urllib.parse import urlsplit

from conftest import gateway_config

CLAUDE = "claude-3-5-sonnet-20241022"
USER = [{"role": "user", "content": "Hi"}]


def config(fakes, listener=None, providers=(), aliases=None):
    """The standard config (every provider a fake) with listener settings laid
    over it, extra `llm_providers` entries appended and `model_aliases` merged."""
    openai_fake, anthropic_fake, ollama_fake = fakes
    cfg = copy.deepcopy(gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url))
    cfg["listeners"]["egress_traffic"].update(listener or {})
    cfg["llm_providers"].extend(providers)
    cfg["model_aliases"].update(aliases or {})
    return cfg


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BlackHole:
    """A port whose connects hang: a listening socket with a full accept queue
    (backlog 0, one connection parked in it), so further SYNs are dropped."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.parked = socket.create_connection(("127.0.0.1", self.port))

    def close(self):
        self.parked.close()
        self.server.close()


# --- raw HTTP -----------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


def request(base_url, method, path, body=b"", headers=None, timeout=10.0, conn=None) -> Response:
    """One HTTP request; `body` may be a dict (sent as JSON) or bytes. Pass
    `conn` (an http.client.HTTPConnection) to reuse a keep-alive connection."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    own = conn is None
    if own:
        parts = urlsplit(base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        if own:
            conn.close()


def post(base_url, path, body, headers=None, timeout=10.0, conn=None) -> Response:
    return request(base_url, "POST", path, body, headers, timeout, conn)


def assert_dialect_error(dialect, resp, status=None):
    """`resp` is a well-formed error in `dialect`'s envelope."""
    assert resp.status >= 400, (resp.status, resp.body[:300])
    if status is not None:
        assert resp.status == status, (resp.status, resp.body[:300])
    body = resp.json()
    if dialect == "openai":
        err = body["error"]
        assert set(err) >= {"message", "type", "param", "code"}, body
        assert isinstance(err["message"], str) and err["message"], body
    else:
        assert body["type"] == "error", body
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
    return body


# --- the gateway process ------------------------------------------------------------------------

def fd_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def health(gw) -> dict:
    return request(gw.url, "GET", "/healthz", timeout=5).json()


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll until `predicate()` is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def settle(gw, baseline_fds, timeout=5.0, slack=2):
    """Wait until the gateway has nothing in flight and no more fds than
    `baseline_fds` + `slack`; return (health, fds) as last seen."""
    seen = {}

    def ok():
        seen["health"], seen["fds"] = health(gw), fd_count(gw.proc.pid)
        return seen["health"]["inflight"] == 0 and seen["fds"] <= baseline_fds + slack

    wait_for(ok, timeout)
    return seen["health"], seen["fds"]


# --- scripted provider answers --------------------------------------------------------------------

def oai_chunk(content=None, finish=None, model="gpt-4o-mini", role=None):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def oai_sse(pieces, model="gpt-4o-mini", done=True) -> list[bytes]:
    """An OpenAI stream transcript, one event per list item."""
    frames = [oai_chunk("", role="assistant", model=model)]
    frames += [oai_chunk(p, model=model) for p in pieces]
    frames.append(oai_chunk(finish="stop", model=model))
    out = [b"data: %s\n\n" % json.dumps(f).encode() for f in frames]
    return out + ([b"data: [DONE]\n\n"] if done else [])


def anth_sse(pieces, model=CLAUDE, stop=True) -> list[bytes]:
    """An Anthropic stream transcript, one event per list item."""
    usage = {"input_tokens": 5, "output_tokens": 1}
    events = [
        {"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant", "model": model,
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": len(pieces)}},
    ]
    if stop:
        events.append({"type": "message_stop"})
    return [b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events]
