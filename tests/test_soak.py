"""A soak test. Many mixed requests and streams, both dialects and
across them, some failing upstream, some clients hanging up; afterwards the
gateway's RSS and open file descriptors are flat compared with after a warm-up.

    SOAK_REQUESTS=50000 python -m pytest tests/test_soak.py -m soak -s

runs it longer by hand; the default size runs in CI in well under a minute.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import threading
import time
from collections import Counter

import pytest

from conftest import GATEWAY_ENV, start_gateway
from fakes import parse_sse
from reliability_util import (CLAUDE, USER, closed_port, config, fd_count, health, post, rss_kb, settle,
                              wait_for)

GPT = "gpt-4o-mini"
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "3000"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "8"))
RSS_SLACK_KB = 15 * 1024
FD_SLACK = 10

# (name, path, body, what a correct answer looks like)
_OAI, _ANTH = "/v1/chat/completions", "/v1/messages"
KINDS = [
    ("openai non-stream", _OAI, {"model": GPT, "messages": USER}, 200),
    ("openai stream", _OAI, {"model": GPT, "stream": True, "messages": USER}, 200),
    ("anthropic non-stream", _ANTH, {"model": CLAUDE, "max_tokens": 20, "messages": USER}, 200),
    ("anthropic stream", _ANTH, {"model": CLAUDE, "max_tokens": 20, "stream": True, "messages": USER}, 200),
    ("openai->anthropic", _OAI, {"model": CLAUDE, "messages": USER}, 200),
    ("openai->anthropic stream", _OAI, {"model": CLAUDE, "stream": True, "messages": USER}, 200),
    ("anthropic->openai", _ANTH, {"model": GPT, "max_tokens": 20, "messages": USER}, 200),
    ("anthropic->openai stream", _ANTH, {"model": GPT, "max_tokens": 20, "stream": True, "messages": USER}, 200),
    ("provider refuses connections", _OAI, {"model": "dead-model", "messages": USER}, 502),
    ("provider answers 400", _ANTH, {"model": "wrong-path", "max_tokens": 20, "messages": USER}, 400),
    ("fallback after connect error", _OAI, {"model": "dead-then-claude", "stream": True, "messages": USER}, 200),
    ("bad request", _ANTH, {"model": CLAUDE, "messages": USER}, 400),
    ("unknown model", _OAI, {"model": "no-such-model", "messages": USER}, 404),
    ("client hangs up", None, None, None),
    ("client hangs up mid-stream", None, None, None),
]


@pytest.fixture(scope="module")
def soak_gw(openai_fake, anthropic_fake, ollama_fake):
    fakes = (openai_fake, anthropic_fake, ollama_fake)
    cfg = config(fakes, providers=[
        {"model": "openai/dead-model", "access_key": "$OPENAI_API_KEY", "base_url": f"http://127.0.0.1:{closed_port()}"},
        # an OpenAI-style provider that is really Anthropic: it answers 400 (no anthropic-version)
        {"model": "openai/wrong-path", "access_key": "$OPENAI_API_KEY", "base_url": anthropic_fake.url},
    ], aliases={"dead-then-claude": {"target": "dead-model", "fallbacks": [CLAUDE]}})
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def _check(kind, resp):
    name, path, body, status = kind
    assert resp.status == status, (name, resp.status, resp.body[:300])
    if status != 200:
        err = resp.json()
        assert ("error" in err) and (path == _OAI or err["type"] == "error"), (name, err)
        return
    if body.get("stream"):
        frames = parse_sse(resp.body)
        last = frames[-1]
        assert last[1] == "[DONE]" if path == _OAI else last[0] == "message_stop", (name, frames[-2:])
        text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for _, d in frames
                       if d != "[DONE]" and json.loads(d).get("choices"))
        if path == _ANTH:
            text = "".join(json.loads(d)["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
    else:
        data = resp.json()
        text = data["choices"][0]["message"]["content"] if path == _OAI else data["content"][0]["text"]
    assert text.startswith("Hello from "), (name, text)


def _hang_up(gw, mid_stream):
    body = json.dumps({"model": CLAUDE if mid_stream else GPT, "stream": True, "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if mid_stream:
            sock.recv(100)  # the head of the answer has arrived; go away now


def _run(gw, count, offset=0):
    """`count` requests from WORKERS threads on keep-alive connections; returns Counter of kinds done."""
    counter = itertools.count()
    done, failures = Counter(), []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        while (i := next(counter)) < count:
            kind = KINDS[(i + offset) % len(KINDS)]
            try:
                if kind[1] is None:
                    _hang_up(gw, kind[0].endswith("mid-stream"))
                else:
                    resp = post(gw.url, kind[1], kind[2], conn=conn)
                    _check(kind, resp)
                with lock:
                    done[kind[0]] += 1
            except Exception as e:  # noqa: BLE001 - collected and reported together
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
                with lock:
                    failures.append(f"{kind[0]}: {e!r}"[:500])
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [], f"{len(failures)} failures, e.g. {failures[:5]}"
    return done


@pytest.mark.soak
def test_soak_rss_and_fds_stay_flat(soak_gw, openai_fake, anthropic_fake):
    pid = soak_gw.proc.pid
    warmup = max(len(KINDS) * 20, REQUESTS // 5)
    start = time.monotonic()
    _run(soak_gw, warmup)
    state, fds_warm = settle(soak_gw, fd_count(pid), timeout=5, slack=1_000)
    assert state["inflight"] == 0
    time.sleep(0.3)
    rss_warm, fds_warm = rss_kb(pid), fd_count(pid)
    for fake in (openai_fake, anthropic_fake):
        fake.reset()

    done = _run(soak_gw, REQUESTS - warmup, offset=warmup)
    assert set(done) == {k[0] for k in KINDS}, done  # every kind ran and succeeded
    state, fds_end = settle(soak_gw, fds_warm, timeout=5, slack=FD_SLACK)
    assert wait_for(lambda: health(soak_gw)["inflight"] == 0, 5), health(soak_gw)
    rss_end = rss_kb(pid)
    elapsed = time.monotonic() - start
    print(f"\nsoak: {REQUESTS} requests in {elapsed:.1f}s ({REQUESTS / elapsed:.0f}/s); "
          f"RSS {rss_warm} -> {rss_end} kB; fds {fds_warm} -> {fds_end}; {dict(done)}")
    assert fds_end <= fds_warm + FD_SLACK, (fds_warm, fds_end)
    assert rss_end <= rss_warm + RSS_SLACK_KB, (rss_warm, rss_end)
    # and it still answers normally
    assert post(soak_gw.url, _OAI, {"model": GPT, "messages": USER}).status == 200
