"""When a provider fails, the gateway fails well, and never falls over.

Timeouts, retries, fallbacks, client disconnects, mid-stream upstream
failures, graceful shutdown and reload, each against a gateway started with
the config it needs (module-scoped where tests can share one) and the fake
providers, through the official SDKs (max_retries=0, so every retry seen is
the gateway's) and raw sockets.
"""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import anthropic
import openai
import pytest

from conftest import GATEWAY_ENV, anthropic_client, openai_client, start_gateway
from fakes import parse_sse
from reliability_util import (CLAUDE, USER, BlackHole, anth_sse, assert_dialect_error, closed_port, config,
                              fd_count, health, oai_sse, post, settle, wait_for)

GPT = "gpt-4o-mini"
OAI_500 = {"error": {"message": "The server had an error while processing your request.", "type": "server_error",
                     "param": None, "code": None}}
OAI_503 = {"error": {"message": "The engine is currently overloaded.", "type": "server_error", "param": None,
                     "code": None}}
OAI_429 = {"error": {"message": "Rate limit reached for requests", "type": "requests", "param": None,
                     "code": "rate_limit_exceeded"}}
OAI_400 = {"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error",
                     "param": "temperature", "code": None}}
ANTH_529 = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_x"}
ANTH_500 = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}, "request_id": "req_x"}


@pytest.fixture(scope="module")
def fakes(openai_fake, anthropic_fake, ollama_fake):
    return openai_fake, anthropic_fake, ollama_fake


def sdk(gw, dialect, timeout=10.0):
    if dialect == "openai":
        return openai_client(gw, timeout=timeout)
    return anthropic_client(gw, timeout=timeout)


def ask(client, model, **kw):
    """One non-streaming request in the client's dialect."""
    if isinstance(client, openai.OpenAI):
        return client.chat.completions.create(model=model, messages=USER, **kw)
    return client.messages.create(model=model, max_tokens=50, messages=USER, **kw)


def ask_raw(client, model, **kw):
    """Like `ask`, but (headers, parsed answer)."""
    if isinstance(client, openai.OpenAI):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, **kw)
    else:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=USER, **kw)
    return raw.headers, raw.parse()


def text_of(answer):
    if hasattr(answer, "choices"):
        return answer.choices[0].message.content
    return "".join(b.text for b in answer.content if b.type == "text")


def stream_text(client, model, got=None):
    """Stream a request with the raw iterator; return the text. `got` (a list)
    receives text pieces as they arrive, so a test can see what came before an error."""
    got = [] if got is None else got
    if isinstance(client, openai.OpenAI):
        for chunk in client.chat.completions.create(model=model, messages=USER, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    else:
        for event in client.messages.create(model=model, max_tokens=50, messages=USER, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                got.append(event.delta.text)
    return "".join(got)


def in_stream_error(dialect):
    """What each SDK raises for an in-stream error frame."""
    return openai.APIError if dialect == "openai" else anthropic.APIStatusError


def fake_for(model, fakes):
    return fakes[1] if model.startswith("claude") else fakes[0]


def error_reply(fake, status, **kw):
    """Script an error in the fake's own dialect."""
    if fake.request_id_header == "request-id":  # anthropic
        kind = {529: "overloaded_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "api_error")
        fake.enqueue(status, json={"type": "error", "error": {"type": kind, "message": f"anthropic says {status}"},
                                   "request_id": "req_x"}, **kw)
    else:
        fake.enqueue(status, json={"error": {"message": f"openai says {status}", "type": "server_error",
                                             "param": None, "code": None}}, **kw)


def provider(model, name, fake, **settings):
    key = "$ANTHROPIC_API_KEY" if model.startswith("anthropic/") else "$OPENAI_API_KEY"
    base_url = fake if isinstance(fake, str) else fake.url
    return {"model": model, "name": name, "access_key": key, "base_url": base_url, **settings}


# =====================================================================================================
# 1. Timeouts
# =====================================================================================================

@pytest.fixture(scope="module")
def blackhole():
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def timeout_gw(fakes, blackhole):
    openai_fake, anthropic_fake, _ = fakes
    cfg = config(fakes, listener={"timeout": "1s", "idle_timeout": "20s", "connect_timeout": "20s"}, providers=[
        # the provider's own settings win over the listener's
        provider("openai/gpt-idle", "gpt-idle", openai_fake, timeout="30s", idle_timeout="0.5s"),
        provider("anthropic/claude-idle", "claude-idle", anthropic_fake, timeout="30s", idle_timeout="0.5s"),
        provider("openai/gpt-blackhole", "gpt-blackhole", f"http://127.0.0.1:{blackhole.port}",
                 timeout="30s", connect_timeout="0.5s"),
        provider("openai/gpt-closed", "gpt-closed", f"http://127.0.0.1:{closed_port()}", timeout="30s"),
    ])
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


@pytest.mark.parametrize("dialect,model", [("openai", GPT), ("openai", CLAUDE), ("anthropic", CLAUDE),
                                           ("anthropic", GPT)])
def test_listener_timeout_gives_504_in_the_clients_dialect(timeout_gw, fakes, dialect, model):
    fake = fake_for(model, fakes)
    fake.enqueue(hang=True)
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError if dialect == "openai" else anthropic.InternalServerError) as info:
        ask(sdk(timeout_gw, dialect), model)
    elapsed = time.monotonic() - start
    assert info.value.status_code == 504
    assert 0.9 <= elapsed < 3, elapsed
    if dialect == "openai":
        assert info.value.body["type"] == "timeout" and "1s" in info.value.body["message"]
    else:
        assert info.value.body["error"]["type"] == "timeout_error"
        assert isinstance(info.value, getattr(anthropic, "GatewayTimeoutError", anthropic.InternalServerError))
    # and the provider's socket is closed: the hung call does not linger
    assert wait_for(lambda: fake.disconnects, 2), "the gateway kept the timed-out upstream connection open"
    assert len(fake.requests) == 1


def test_timeout_of_a_stream_request_before_its_first_byte_is_a_plain_504(timeout_gw, fakes):
    fakes[0].enqueue(hang=True)
    with pytest.raises(openai.InternalServerError) as info:
        stream_text(sdk(timeout_gw, "openai"), GPT)
    assert info.value.status_code == 504


@pytest.mark.parametrize("dialect,model", [("openai", "gpt-idle"), ("anthropic", "claude-idle"),
                                           ("openai", "claude-idle"), ("anthropic", "gpt-idle")])
def test_provider_idle_timeout_overrides_the_listeners(timeout_gw, fakes, dialect, model):
    fake = fake_for(model, fakes)
    fake.enqueue(hang=True)
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError if dialect == "openai" else anthropic.InternalServerError) as info:
        ask(sdk(timeout_gw, dialect, timeout=5), model)
    elapsed = time.monotonic() - start
    assert info.value.status_code == 504
    assert 0.4 <= elapsed < 2.5, elapsed  # 0.5 s idle, not the listener's 20 s
    assert wait_for(lambda: fake.disconnects, 2)


@pytest.mark.parametrize("dialect,model", [("openai", "gpt-idle"), ("anthropic", "claude-idle"),
                                           ("openai", "claude-idle"), ("anthropic", "gpt-idle")])
def test_stream_that_goes_silent_ends_with_an_in_stream_error(timeout_gw, fakes, dialect, model):
    fake = fake_for(model, fakes)
    transcript = anth_sse(["Hel", "lo"]) if fake is fakes[1] else oai_sse(["Hel", "lo"])
    fake.enqueue(chunks=transcript[:3], delay=5)  # the first event, then 5 s of silence
    got = []
    start = time.monotonic()
    with pytest.raises(in_stream_error(dialect)) as info:
        stream_text(sdk(timeout_gw, dialect, timeout=10), model, got)
    elapsed = time.monotonic() - start
    assert elapsed < 3, f"the silent stream took {elapsed:.1f}s to end"  # not the 5 s pause, nor 20 s
    assert "silent" in str(info.value)
    if dialect == "anthropic":
        assert info.value.status_code == 200 and info.value.body["type"] == "error"
    assert wait_for(lambda: fake.disconnects, 2), "the silent upstream stream was not closed"


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_connect_timeout_gives_502_quickly(timeout_gw, dialect):
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError if dialect == "openai" else anthropic.InternalServerError) as info:
        ask(sdk(timeout_gw, dialect, timeout=5), "gpt-blackhole")
    elapsed = time.monotonic() - start
    assert info.value.status_code == 502
    assert 0.4 <= elapsed < 3, elapsed  # the provider's 0.5 s connect timeout, not the listener's 20 s
    assert "timed out" in str(info.value)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_unreachable_provider_gives_502_quickly(timeout_gw, dialect):
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError if dialect == "openai" else anthropic.InternalServerError) as info:
        ask(sdk(timeout_gw, dialect, timeout=5), "gpt-closed")
    assert info.value.status_code == 502
    assert time.monotonic() - start < 1
    assert "cannot connect" in str(info.value)


# =====================================================================================================
# 2. Retries
# =====================================================================================================

@pytest.fixture(scope="module")
def retry_gw(fakes):
    cfg = config(fakes, listener={"max_retries": 2, "retry_backoff": "0.05s"}, providers=[
        provider("openai/gpt-4o-one-retry", "one-retry", fakes[0], max_retries=1),
    ])
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


@pytest.mark.parametrize("dialect,model,status", [("openai", GPT, 500), ("openai", GPT, 502),
                                                  ("anthropic", CLAUDE, 529), ("anthropic", CLAUDE, 500),
                                                  ("openai", CLAUDE, 529), ("anthropic", GPT, 503)])
def test_a_failed_attempt_is_retried(retry_gw, fakes, dialect, model, status):
    fake = fake_for(model, fakes)
    error_reply(fake, status)
    answer = ask(sdk(retry_gw, dialect), model)
    assert text_of(answer) == f"Hello from {model}!"
    reqs = fake.requests
    assert len(reqs) == 2
    assert reqs[0]["raw"] == reqs[1]["raw"]


def test_a_stream_request_is_retried_before_its_first_byte(retry_gw, fakes):
    error_reply(fakes[0], 503)
    assert stream_text(sdk(retry_gw, "openai"), GPT) == f"Hello from {GPT}!"
    assert len(fakes[0].requests) == 2


def test_429_with_retry_after_zero_is_retried(retry_gw, fakes):
    fakes[0].enqueue(429, json=OAI_429, headers={"retry-after": "0"})
    start = time.monotonic()
    assert text_of(ask(sdk(retry_gw, "openai"), GPT)) == f"Hello from {GPT}!"
    assert len(fakes[0].requests) == 2
    assert time.monotonic() - start < 1


def test_retry_after_is_honoured(retry_gw, fakes):
    fakes[1].enqueue(429, json={"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                     headers={"retry-after-ms": "700"})
    start = time.monotonic()
    assert text_of(ask(sdk(retry_gw, "anthropic"), CLAUDE)) == f"Hello from {CLAUDE}!"
    assert time.monotonic() - start >= 0.65
    reqs = fakes[1].requests
    assert len(reqs) == 2


@pytest.mark.parametrize("model,attempts", [("one-retry", 2), (GPT, 3)])
def test_retries_are_bounded_by_max_retries(retry_gw, fakes, model, attempts):
    for _ in range(4):
        fakes[0].enqueue(500, json=OAI_500)
    with pytest.raises(openai.InternalServerError) as info:
        ask(sdk(retry_gw, "openai"), model)
    assert info.value.status_code == 500
    assert info.value.body["message"] == OAI_500["error"]["message"]
    time.sleep(0.2)
    assert len(fakes[0].requests) == attempts


@pytest.mark.parametrize("status,exc", [(400, openai.BadRequestError), (401, openai.AuthenticationError),
                                        (404, openai.NotFoundError), (422, openai.UnprocessableEntityError)])
def test_client_errors_are_never_retried(retry_gw, fakes, status, exc):
    fakes[0].enqueue(status, json=OAI_400)
    with pytest.raises(exc):
        ask(sdk(retry_gw, "openai"), GPT)
    time.sleep(0.2)
    assert len(fakes[0].requests) == 1


def test_a_long_retry_after_means_no_retry(retry_gw, fakes):
    fakes[0].enqueue(429, json=OAI_429, headers={"retry-after": "100"})
    start = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        ask(sdk(retry_gw, "openai"), GPT)
    assert time.monotonic() - start < 1
    assert info.value.response.headers["retry-after"] == "100"  # the client hears the hint too
    time.sleep(0.2)
    assert len(fakes[0].requests) == 1


def test_x_should_retry_false_means_no_retry(retry_gw, fakes):
    fakes[0].enqueue(503, json=OAI_503, headers={"x-should-retry": "false"})
    with pytest.raises(openai.InternalServerError):
        ask(sdk(retry_gw, "openai"), GPT)
    time.sleep(0.2)
    assert len(fakes[0].requests) == 1


@pytest.mark.parametrize("dialect,model", [("openai", GPT), ("anthropic", CLAUDE), ("openai", CLAUDE),
                                           ("anthropic", GPT)])
def test_no_retry_once_the_stream_started(retry_gw, fakes, dialect, model):
    fake = fake_for(model, fakes)
    transcript = anth_sse(["Hel", "lo", " there"]) if fake is fakes[1] else oai_sse(["Hel", "lo", " there"])
    cut = sum(map(len, transcript[:3])) + 10  # in the middle of the 4th event
    fake.enqueue(chunks=transcript, close_after=cut)
    error_reply(fake, 500)  # what a (wrong) second attempt would get
    got = []
    with pytest.raises(in_stream_error(dialect)):
        stream_text(sdk(retry_gw, dialect), model, got)
    # everything that arrived before the drop reached the client: three events
    assert "".join(got) == ("Hel" if fake is fakes[1] else "Hello")
    time.sleep(0.2)
    assert len(fake.requests) == 1


# =====================================================================================================
# 3. Fallbacks
# =====================================================================================================

@pytest.fixture(scope="module")
def fallback_gw(fakes):
    cfg = config(fakes, listener={"max_retries": 0}, providers=[
        provider("openai/gpt-dead", "dead-model", f"http://127.0.0.1:{closed_port()}"),
        provider("openai/gpt-4-turbo", "gpt-4-turbo", fakes[0], fallbacks=[CLAUDE]),
        provider("openai/gpt-slow", "slow-model", fakes[0], idle_timeout="0.5s", max_retries=2),
    ], aliases={
        "slow-first": {"target": "slow-model", "fallbacks": [CLAUDE]},
        "smart-model": {"target": CLAUDE, "fallbacks": ["gpt-4o"]},
        "oai-first": {"target": "gpt-4o", "fallbacks": [CLAUDE]},
        "dead-first": {"target": "dead-model", "fallbacks": ["gpt-4o"]},
        "three-deep": {"target": "dead-model", "fallbacks": [CLAUDE, "gpt-4o"]},
    })
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fallback_across_dialects_after_529(fallback_gw, fakes, dialect):
    openai_fake, anthropic_fake, _ = fakes
    error_reply(anthropic_fake, 529)
    headers, answer = ask_raw(sdk(fallback_gw, dialect), "smart-model")
    assert headers["x-arch-upstream-model"] == "gpt-4o"
    assert answer.model == "gpt-4o"
    assert text_of(answer) == "Hello from gpt-4o!"
    assert len(anthropic_fake.requests) == 1
    assert [r["body"]["model"] for r in openai_fake.requests] == ["gpt-4o"]


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fallback_from_openai_to_anthropic_after_503(fallback_gw, fakes, dialect):
    openai_fake, anthropic_fake, _ = fakes
    openai_fake.enqueue(503, json=OAI_503)
    headers, answer = ask_raw(sdk(fallback_gw, dialect), "oai-first")
    assert headers["x-arch-upstream-model"] == CLAUDE
    assert answer.model == CLAUDE
    assert text_of(answer) == f"Hello from {CLAUDE}!"
    assert [r["body"]["model"] for r in anthropic_fake.requests] == [CLAUDE]
    assert anthropic_fake.last["headers"]["x-api-key"] == "sk-ant-secret"


def test_fallback_of_a_stream_openai_client(fallback_gw, fakes):
    error_reply(fakes[1], 529)
    with sdk(fallback_gw, "openai").chat.completions.with_streaming_response.create(
            model="smart-model", messages=USER, stream=True) as resp:
        assert resp.headers["x-arch-upstream-model"] == "gpt-4o"
        chunks = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from gpt-4o!"
    assert {c.model for c in chunks} == {"gpt-4o"}


def test_fallback_of_a_stream_anthropic_client(fallback_gw, fakes):
    error_reply(fakes[0], 503)
    with sdk(fallback_gw, "anthropic").messages.stream(model="oai-first", max_tokens=50, messages=USER) as stream:
        assert stream.response.headers["x-arch-upstream-model"] == CLAUDE
        message = stream.get_final_message()
    assert message.model == CLAUDE
    assert text_of(message) == f"Hello from {CLAUDE}!"


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fallback_on_connect_error(fallback_gw, fakes, dialect):
    headers, answer = ask_raw(sdk(fallback_gw, dialect), "dead-first")
    assert headers["x-arch-upstream-model"] == "gpt-4o"
    assert text_of(answer) == "Hello from gpt-4o!"


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fallback_after_a_timeout_without_retrying_it(fallback_gw, fakes, dialect):
    """A timeout already cost its full wait: no retry on the same model, straight to the next."""
    fakes[0].enqueue(hang=True)
    started = time.monotonic()
    headers, answer = ask_raw(sdk(fallback_gw, dialect), "slow-first")
    assert headers["x-arch-upstream-model"] == CLAUDE and text_of(answer) == f"Hello from {CLAUDE}!"
    assert [r["body"]["model"] for r in fakes[0].requests] == ["gpt-slow"]
    assert time.monotonic() - started < 5


def test_fallback_walks_the_whole_list(fallback_gw, fakes):
    error_reply(fakes[1], 500)
    headers, answer = ask_raw(sdk(fallback_gw, "openai"), "three-deep")
    assert headers["x-arch-upstream-model"] == "gpt-4o" and answer.model == "gpt-4o"
    assert len(fakes[1].requests) == 1 and len(fakes[0].requests) == 1


def test_fallbacks_on_a_provider_entry(fallback_gw, fakes):
    fakes[0].enqueue(500, json=OAI_500)
    headers, answer = ask_raw(sdk(fallback_gw, "openai"), "gpt-4-turbo")
    assert headers["x-arch-upstream-model"] == CLAUDE
    assert answer.model == CLAUDE and text_of(answer) == f"Hello from {CLAUDE}!"
    assert [r["body"]["model"] for r in fakes[0].requests] == ["gpt-4-turbo"]


def test_all_targets_failing_gives_the_last_error_openai_client(fallback_gw, fakes):
    error_reply(fakes[1], 529)
    fakes[0].enqueue(500, json=OAI_500)
    with pytest.raises(openai.InternalServerError) as info:
        ask(sdk(fallback_gw, "openai"), "smart-model")
    assert info.value.status_code == 500
    assert info.value.body["message"] == OAI_500["error"]["message"]  # gpt-4o's, the last one tried


def test_all_targets_failing_gives_the_last_error_anthropic_client(fallback_gw, fakes):
    fakes[0].enqueue(503, json=OAI_503)
    error_reply(fakes[1], 529)
    with pytest.raises(anthropic.InternalServerError) as info:
        ask(sdk(fallback_gw, "anthropic"), "oai-first")
    assert info.value.status_code == 529
    assert isinstance(info.value, getattr(anthropic, "OverloadedError", anthropic.InternalServerError))
    assert info.value.body["error"] == {"type": "overloaded_error", "message": "anthropic says 529"}


def test_all_targets_failing_in_a_raw_stream_request(fallback_gw, fakes):
    error_reply(fakes[1], 529)
    fakes[0].enqueue(502, json=OAI_500)
    resp = post(fallback_gw.url, "/v1/chat/completions", {"model": "smart-model", "stream": True, "messages": USER})
    assert resp.headers["content-type"].startswith("application/json")  # not a started stream
    assert_dialect_error("openai", resp, 502)


def test_a_client_error_does_not_fall_back(fallback_gw, fakes):
    error_reply(fakes[1], 400)
    with pytest.raises(openai.BadRequestError):
        ask(sdk(fallback_gw, "openai"), "smart-model")
    assert fakes[0].requests == []


# =====================================================================================================
# 4. Client disconnects
# =====================================================================================================

@pytest.fixture(scope="module")
def plain_gw(fakes):
    gw = start_gateway(config(fakes), env=GATEWAY_ENV)
    yield gw
    gw.stop()


def _http_request(path, body):
    data = json.dumps(body).encode()
    return (b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer k\r\n"
            b"anthropic-version: 2023-06-01\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))


def _open_stream(gw, path, body):
    """A raw client that sent a streaming request and has read its first body bytes."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.sendall(_http_request(path, body))
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) == 0:
        data = sock.recv(65536)
        assert data, f"the gateway closed the stream early: {buf!r}"
        buf += data
    assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    return sock


def _baseline(gw, fakes):
    """Warm the gateway up (pooled upstream connections, lazy imports), then its fd count."""
    for model in (GPT, CLAUDE):
        for path in ("/v1/chat/completions", "/v1/messages"):
            assert post(gw.url, path, {"model": model, "max_tokens": 5, "messages": USER}).status == 200
    for fake in fakes:
        fake.reset()
    time.sleep(0.1)
    assert health(gw)["inflight"] == 0
    return fd_count(gw.proc.pid)


def test_many_clients_hanging_up_mid_stream_cancel_upstream_and_leak_nothing(plain_gw, fakes):
    baseline = _baseline(plain_gw, fakes)
    n = 50
    combos = [("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE), ("/v1/chat/completions", CLAUDE),
              ("/v1/messages", GPT)]
    for i in range(n):
        path, model = combos[i % 4]
        fake = fake_for(model, fakes)
        transcript = anth_sse(["tok"] * 100) if fake is fakes[1] else oai_sse(["tok"] * 100)
        fake.enqueue(chunks=transcript, delay=0.05)  # ~5 s of stream if nobody hangs up
    socks = []
    for i in range(n):
        path, model = combos[i % 4]
        socks.append(_open_stream(plain_gw, path, {"model": model, "max_tokens": 500, "stream": True,
                                                   "messages": USER}))
    assert health(plain_gw)["inflight"] == n
    closed_at = time.monotonic()
    for sock in socks:
        sock.close()

    def gone():
        return len(fakes[0].disconnects) + len(fakes[1].disconnects) >= n

    assert wait_for(gone, 3), (len(fakes[0].disconnects), len(fakes[1].disconnects))
    last = max(d["at"] for d in fakes[0].disconnects + fakes[1].disconnects)
    assert last - closed_at < 1.0, f"upstream streams kept running {last - closed_at:.2f}s after the clients left"
    state, fds = settle(plain_gw, baseline)
    assert state["inflight"] == 0, state
    assert fds <= baseline + 2, (baseline, fds)
    # and the gateway still serves
    assert post(plain_gw.url, "/v1/chat/completions", {"model": GPT, "messages": USER}).status == 200


@pytest.mark.parametrize("path,model", [("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE),
                                        ("/v1/chat/completions", CLAUDE)])
def test_client_hanging_up_during_a_non_stream_request_closes_the_upstream_socket(plain_gw, fakes, path, model):
    baseline = _baseline(plain_gw, fakes)
    fake = fake_for(model, fakes)
    fake.enqueue(hang=True)
    sock = socket.create_connection(("127.0.0.1", plain_gw.port), timeout=5)
    sock.sendall(_http_request(path, {"model": model, "max_tokens": 5, "messages": USER}))
    assert wait_for(lambda: fake.requests, 3)
    assert health(plain_gw)["inflight"] == 1
    closed_at = time.monotonic()
    sock.close()
    assert wait_for(lambda: fake.disconnects, 3), "the upstream call outlived its client"
    assert fake.disconnects[0]["at"] - closed_at < 1
    state, fds = settle(plain_gw, baseline)
    assert state["inflight"] == 0 and fds <= baseline + 2, (state, baseline, fds)


def test_client_hanging_up_during_retry_backoff_stops_the_retries(retry_gw, fakes):
    fakes[0].enqueue(429, json=OAI_429, headers={"retry-after": "1"})
    sock = socket.create_connection(("127.0.0.1", retry_gw.port), timeout=5)
    sock.sendall(_http_request("/v1/chat/completions", {"model": GPT, "messages": USER}))
    assert wait_for(lambda: fakes[0].requests, 3)
    time.sleep(0.2)
    sock.close()
    time.sleep(1.5)
    assert len(fakes[0].requests) == 1, "the gateway retried for a client that had left"
    assert health(retry_gw)["inflight"] == 0


# =====================================================================================================
# 5. Mid-stream upstream failure
# =====================================================================================================

def _broken(transcript, kind):
    """A transcript with one failure: cut mid-event, garbage event, or a clean end with no end marker."""
    if kind == "malformed":
        return transcript[:3] + [b"data: {not json\n\n"] + transcript[3:], {}
    if kind == "truncated":  # a clean chunked end, before finish_reason+[DONE] / message_delta+message_stop
        return transcript[:-2], {}
    if kind == "reset":  # the connection drops in the middle of an event
        return transcript, {"close_after": sum(map(len, transcript[:3])) + 7}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["malformed", "truncated", "reset"])
@pytest.mark.parametrize("dialect,model", [("openai", GPT), ("anthropic", CLAUDE), ("openai", CLAUDE),
                                           ("anthropic", GPT)])
def test_mid_stream_failure_is_an_in_stream_error(plain_gw, fakes, kind, dialect, model):
    fake = fake_for(model, fakes)
    transcript = anth_sse(["Hel", "lo", " world"]) if fake is fakes[1] else oai_sse(["Hel", "lo", " world"])
    chunks, kw = _broken(transcript, kind)
    fake.enqueue(chunks=chunks, **kw)
    got = []
    start = time.monotonic()
    with pytest.raises(in_stream_error(dialect)) as info:
        stream_text(sdk(plain_gw, dialect, timeout=5), model, got)
    assert time.monotonic() - start < 3
    text = "".join(got)
    if kind == "truncated":
        assert text == "Hello world"
    elif kind == "reset":  # what arrived before the drop (three events) reached the client
        assert text == ("Hel" if fake is fakes[1] else "Hello")
    else:  # events that came in the same read as the malformed one may be lost with it
        assert "Hello world".startswith(text), text
    if dialect == "anthropic":
        assert info.value.status_code == 200 and info.value.body["type"] == "error"


@pytest.mark.parametrize("kind", ["malformed", "truncated", "reset"])
@pytest.mark.parametrize("path,model", [("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE),
                                        ("/v1/chat/completions", CLAUDE), ("/v1/messages", GPT)])
def test_mid_stream_failure_on_the_wire(plain_gw, fakes, kind, path, model):
    """What goes over the socket: complete events, the last one the dialect's error event, then a clean end."""
    fake = fake_for(model, fakes)
    transcript = anth_sse(["Hel", "lo"]) if fake is fakes[1] else oai_sse(["Hel", "lo"])
    chunks, kw = _broken(transcript, kind)
    fake.enqueue(chunks=chunks, **kw)
    resp = post(plain_gw.url, path, {"model": model, "max_tokens": 5, "stream": True, "messages": USER}, timeout=5)
    assert resp.status == 200
    frames = parse_sse(resp.body)
    assert resp.body.endswith(b"\n\n")
    for name, data in frames:  # every event is well-formed JSON (never garbage passed on)
        assert data == "[DONE]" or isinstance(json.loads(data), dict), data
    name, data = frames[-1]
    error = json.loads(data)
    if path == "/v1/messages":
        assert name == "error" and error["type"] == "error" and error["error"]["type"] == "api_error"
        assert not any(n == "message_stop" for n, _ in frames)
    else:
        assert set(error["error"]) >= {"message", "type", "param", "code"}
        assert not any(d == "[DONE]" for _, d in frames)


# =====================================================================================================
# 7. Graceful shutdown and reload
# =====================================================================================================

def test_sigterm_drains_in_flight_streams_and_exits_0(fakes):
    gw = start_gateway(config(fakes), env=GATEWAY_ENV)
    try:
        n = 6
        for i in range(n):
            fake = fakes[i % 2]
            fake.enqueue(chunks=(anth_sse if fake is fakes[1] else oai_sse)([f"p{k} " for k in range(8)]), delay=0.15)
        results = [None] * n

        def run(i):
            dialect = ("openai", "anthropic")[i % 2]
            model = (GPT, CLAUDE)[i % 2]
            try:
                results[i] = stream_text(sdk(gw, dialect), model)
            except Exception as e:  # noqa: BLE001 - recorded, asserted below
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        assert wait_for(lambda: len(fakes[0].requests) + len(fakes[1].requests) == n, 5)
        time.sleep(0.2)
        sent = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):  # no new connections while draining
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
        assert gw.proc.poll() is None, "the gateway exited with streams in flight"
        for t in threads:
            t.join(10)
        assert results == ["".join(f"p{k} " for k in range(8))] * n
        assert gw.proc.wait(10) == 0
        assert time.monotonic() - sent < 5
    finally:
        gw.stop()
    assert "shutting down" in gw.output()


def _load(gw, stop, counts, errors):
    """Requests in a loop until `stop` is set: both dialects, stream and not, across dialects."""
    clients = {d: sdk(gw, d, timeout=10) for d in ("openai", "anthropic")}
    i = 0
    while not stop.is_set():
        dialect, model, stream = [("openai", GPT, False), ("anthropic", CLAUDE, True), ("openai", CLAUDE, True),
                                  ("anthropic", GPT, False)][i % 4]
        i += 1
        try:
            text = stream_text(clients[dialect], model) if stream else text_of(ask(clients[dialect], model))
            if text == f"Hello from {model}!":
                counts.append(1)
            else:
                errors.append(f"wrong answer {text!r}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))


def test_reload_under_load_drops_no_request(fakes):
    gw = start_gateway(config(fakes), env=GATEWAY_ENV)
    try:
        stop, counts, errors = threading.Event(), [], []
        threads = [threading.Thread(target=_load, args=(gw, stop, counts, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.7)
        text = gw.config_path.read_text()
        gw.config_path.write_text(text.replace("model_aliases:", "model_aliases:\n  new-alias:\n"
                                                                   "    target: gpt-4o-mini", 1))
        assert wait_for(lambda: post(gw.url, "/v1/chat/completions",
                                     {"model": "new-alias", "messages": USER}).status == 200, 20)
        gw.proc.send_signal(signal.SIGHUP)
        after = len(counts)
        assert wait_for(lambda: len(counts) >= after + 8, 60)  # the load goes on being answered after it
        stop.set()
        for t in threads:
            t.join(15)
        assert errors == []
        assert gw.output().count("configuration reloaded") >= 3
    finally:
        gw.stop()


def test_shutdown_under_load_answers_every_accepted_request(fakes):
    """Load on fresh connections across a SIGTERM: each request is either
    answered in full or refused at connect, never cut off."""
    gw = start_gateway(config(fakes), env=GATEWAY_ENV)
    try:
        stop = threading.Event()
        answered, refused, broken = [], [], []

        def run():
            body = {"model": GPT, "messages": USER}
            while not stop.is_set():
                try:
                    resp = post(gw.url, "/v1/chat/completions", body, headers={"connection": "close"}, timeout=5)
                except ConnectionRefusedError:
                    refused.append(1)
                    time.sleep(0.01)
                    continue
                except Exception as e:  # noqa: BLE001
                    broken.append(repr(e))
                    continue
                (answered if resp.status == 200 and "Hello from" in resp.text else broken).append(resp.status)

        threads = [threading.Thread(target=run) for _ in range(8)]  # enough to catch the accept-queue race
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = len(answered)
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
        assert broken == []
        assert before > 20 and refused
    finally:
        gw.stop()
