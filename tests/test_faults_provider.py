"""A provider that breaks HTTP, lies about lengths, floods or echoes keys.

Every fault comes from `fakes.RawProvider`, which writes exactly the bytes a
test scripts. Each test checks that the client gets a clear answer in its own
dialect (a 502, or an in-stream error once the stream started), that
`/healthz` answers while the fault is going on (one bad provider must not
freeze the gateway), and that no configured key leaves the gateway however the
provider spells it.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, start_gateway
from fakes import RawProvider, parse_sse
from reliability_util import CLAUDE, USER, anth_sse, assert_dialect_error, health, oai_chunk, oai_sse, post, \
    rss_kb, wait_for

OPENAI_KEY = "sk-raw/openai+Key-0123456789"     # a '/' that JSON may write as '\/'
ANTHROPIC_KEY = "sk-ant-raw-Key-9876543210"
KEYS = (OPENAI_KEY, ANTHROPIC_KEY)
ENV = {"RAW_OPENAI_KEY": OPENAI_KEY, "RAW_ANTHROPIC_KEY": ANTHROPIC_KEY}
SMALL = 64 << 10  # the limits of the `raw-small` model


def config(raw, **listener):
    return {
        "version": "v0.1.0",
        "listeners": {"egress_traffic": {"address": "127.0.0.1", "port": 0, "timeout": "30s", "idle_timeout": "30s",
                                         "max_retries": 0, **listener}},
        "llm_providers": [
            {"model": "openai/raw-gpt", "access_key": "$RAW_OPENAI_KEY", "base_url": raw.url},
            {"model": "anthropic/raw-claude", "access_key": "$RAW_ANTHROPIC_KEY", "base_url": raw.url},
            {"model": "openai/raw-small", "access_key": "$RAW_OPENAI_KEY", "base_url": raw.url,
             "max_response_body": "64KB", "max_stream_event": "64KB", "max_response_head": "4KB"},
        ],
    }


@pytest.fixture(scope="module")
def raw():
    fake = RawProvider().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(raw):
    gateway = start_gateway(config(raw), env=ENV)
    yield gateway
    gateway.stop()
    output = gateway.output()
    for key in KEYS:  # nothing any test made a provider echo reached the log
        assert key not in output


@pytest.fixture(autouse=True)
def _fresh(raw):
    raw.reset()


# --- helpers ------------------------------------------------------------------------------------

MODELS = {"openai": "raw-gpt", "anthropic": "raw-claude"}


def ask(gw, dialect, model=None, stream=False, timeout=15.0):
    """One raw request in `dialect` (the bytes the client got, unparsed)."""
    path = "/v1/chat/completions" if dialect == "openai" else "/v1/messages"
    body = {"model": model or MODELS[dialect], "max_tokens": 20, "messages": USER, "stream": stream}
    return post(gw.url, path, body, {"anthropic-version": "2023-06-01"}, timeout=timeout)


def during(gw, raw, call):
    """Run `call()` (a request) in a thread; once the provider has it, /healthz
    must answer (a short timeout: a frozen event loop fails here); then `call`'s result."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except Exception as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_for(lambda: raw.requests or not thread.is_alive(), 10), "the request never reached the provider"
    assert health(gw)["status"] == "ok"
    thread.join(20)
    assert not thread.is_alive(), "the client got no answer"
    if "error" in out:
        raise out["error"]
    assert health(gw)["status"] == "ok"
    return out["value"]


def chunked(*pieces):
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


def head(status=200, content_type="application/json", **headers):
    """A response head only (`transfer_encoding=...` for transfer-encoding)."""
    fields = {"content-type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return RawProvider.response(status, b"", fields, length=False)


SSE_HEAD = head(content_type="text/event-stream", transfer_encoding="chunked")


def completion(content="Hello", model="raw-gpt"):
    return {"id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def message(text="Hello"):
    return {"id": "msg_raw", "type": "message", "role": "assistant", "model": CLAUDE,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1}}


def answer(dialect, text="Hello"):
    return json.dumps(completion(text) if dialect == "openai" else message(text)).encode()


def assert_stream_error(dialect, resp, says=None):
    """A 200 stream that ended with the dialect's in-stream error (and not with its clean end)."""
    assert resp.status == 200, (resp.status, resp.body[:300])
    frames = parse_sse(resp.body)
    name, data = frames[-1]
    error = json.loads(data)
    if dialect == "openai":
        assert "error" in error and not any(d == "[DONE]" for _, d in frames), frames[-3:]
    else:
        assert name == "error" and error["type"] == "error", frames[-3:]
        assert not any(n == "message_stop" for n, _ in frames)
    if says:
        assert says in error["error"]["message"], error
    return frames


BOTH = pytest.mark.parametrize("dialect", ["openai", "anthropic"])


# --- lengths and sizes on the wire ---------------------------------------------------------------

@BOTH
@pytest.mark.parametrize("length", ["-5", "12abc", "+2", " 0x10", "1e3", "99999999999999999999999999", "2, 3"])
def test_a_malformed_content_length_is_a_502(gw, raw, dialect, length):
    raw.enqueue(head(content_length=length) + b"{}", "hang")
    resp = during(gw, raw, lambda: ask(gw, dialect))
    body = assert_dialect_error(dialect, resp, 502)
    assert "content-length" in json.dumps(body)


@BOTH
@pytest.mark.parametrize("line", [b"-5", b"zz", b"", b"0x10", b"ffffffffffffffffffff"])
def test_a_malformed_chunk_size_line_is_a_502(gw, raw, dialect, line):
    raw.enqueue(head(transfer_encoding="chunked") + b"2\r\n{}\r\n" + line + b"\r\n{}\r\n0\r\n\r\n", "hang")
    assert_dialect_error(dialect, during(gw, raw, lambda: ask(gw, dialect)), 502)


def test_a_chunk_longer_than_its_size_line_is_a_502(gw, raw):
    raw.enqueue(head(transfer_encoding="chunked") + b"2\r\n{}xx\r\n0\r\n\r\n", "hang")
    assert_dialect_error("openai", during(gw, raw, lambda: ask(gw, "openai")), 502)


@BOTH
def test_a_chunk_size_line_that_never_ends_is_cut_at_the_limit(gw, raw, dialect):
    """Eight 2 MB lines of hex digits with no CRLF: refused once over max_response_head, not buffered."""
    raw.enqueue(head(transfer_encoding="chunked"), *[b"f" * (2 << 20)] * 8, "hang")
    body = assert_dialect_error(dialect, during(gw, raw, lambda: ask(gw, dialect)), 502)
    assert "line over 65536 bytes" in json.dumps(body)


@BOTH
def test_a_content_length_over_max_response_body_is_refused_at_once(gw, raw, dialect):
    raw.enqueue(head(content_length=str(1 << 40)), "hang")  # a terabyte announced; nothing follows
    body = assert_dialect_error(dialect, during(gw, raw, lambda: ask(gw, dialect)), 502)
    assert "max_response_body" in json.dumps(body)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_body_over_max_response_body_is_a_502(gw, raw, framing):
    big = json.dumps(completion("x" * (SMALL + 10), "raw-small")).encode()
    if framing == "length":  # refused from the head: the body is never read
        raw.enqueue(RawProvider.response(200, big, {"content-type": "application/json"}), "hang")
    elif framing == "chunked":
        raw.enqueue(head(transfer_encoding="chunked") + chunked(*(big[i:i + 4096] for i in range(0, len(big), 4096))))
    else:
        raw.enqueue(head() + big, "close")
    body = assert_dialect_error("openai", during(gw, raw, lambda: ask(gw, "openai", "raw-small")), 502)
    assert "max_response_body" in json.dumps(body)


def test_a_head_over_max_response_head_is_a_502(gw, raw):
    raw.enqueue(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * (8 << 10) + b"\r\n", "hang")
    assert_dialect_error("openai", during(gw, raw, lambda: ask(gw, "openai", "raw-small")), 502)


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 abc OK", b"HTTP/1.1 -200 OK", b"SPDY/9 200 OK", b"garbage"])
def test_a_malformed_status_line_is_a_502(gw, raw, status_line):
    raw.enqueue(status_line + b"\r\ncontent-length: 2\r\n\r\n{}", "hang")
    assert_dialect_error("openai", during(gw, raw, lambda: ask(gw, "openai")), 502)


@BOTH
def test_a_stream_event_over_max_stream_event_is_an_in_stream_error(gw, raw, dialect):
    """One 17 MB event, arriving in 64 KB pieces, against the 16 MB default: the
    client hears why, and the event loop stays free meanwhile (linear parsing)."""
    frames = oai_sse(["PIECES"]) if dialect == "openai" else anth_sse(["PIECES"], model="raw-claude")
    giant = next(f for f in frames if b"PIECES" in f)
    before, after = giant.split(b"PIECES")
    piece = b"a" * (64 << 10)  # a valid event, once all of it has arrived
    raw.enqueue(SSE_HEAD, *(b"%x\r\n%s\r\n" % (len(f), f) for f in frames[:frames.index(giant)]),
                b"%x\r\n%s\r\n" % (len(before), before), *[b"%x\r\n%s\r\n" % (len(piece), piece)] * 272,
                chunked(after, *frames[frames.index(giant) + 1:]))
    resp = during(gw, raw, lambda: ask(gw, dialect, stream=True, timeout=60))
    assert_stream_error(dialect, resp, "max_stream_event")
    assert len(resp.body) < 10000


def test_a_stream_event_over_a_small_limit(gw, raw):
    event = b"data: " + json.dumps(oai_chunk("y" * (SMALL + 1), model="raw-small")).encode() + b"\n\n"
    raw.enqueue(SSE_HEAD + chunked(oai_sse([], model="raw-small")[0], event, b"data: [DONE]\n\n"))
    resp = during(gw, raw, lambda: ask(gw, "openai", "raw-small", stream=True))
    assert_stream_error("openai", resp, "max_stream_event")


# --- truncated and mislabelled bodies ------------------------------------------------------------

@BOTH
@pytest.mark.parametrize("end", ["close", "reset"])
def test_a_body_without_length_cut_short_is_a_502(gw, raw, dialect, end):
    whole = answer(dialect)
    raw.enqueue(head(), whole[: len(whole) // 2], 0.2, end)
    body = assert_dialect_error(dialect, during(gw, raw, lambda: ask(gw, dialect)), 502)
    assert "JSON" in json.dumps(body) or "closed" in json.dumps(body)


@BOTH
def test_a_whole_body_without_length_is_served(gw, raw, dialect):
    raw.enqueue(head(), answer(dialect, "all of it"), "close")
    resp = during(gw, raw, lambda: ask(gw, dialect))
    assert resp.status == 200 and b"all of it" in resp.body


@BOTH
def test_a_200_html_page_is_a_502(gw, raw, dialect):
    page = b"<html><body>Service temporarily unavailable</body></html>"
    raw.enqueue(RawProvider.response(200, page, {"content-type": "text/html"}))
    resp = during(gw, raw, lambda: ask(gw, dialect))
    body = assert_dialect_error(dialect, resp, 502)
    assert "text/html" in json.dumps(body)
    assert b"<html>" not in resp.body


def test_json_without_a_json_label_is_still_served(gw, raw):
    """Validate what the gateway needs: a JSON answer a compat server mislabels is still an answer."""
    raw.enqueue(RawProvider.response(200, answer("openai", "labelled text"), {"content-type": "text/plain"}))
    resp = during(gw, raw, lambda: ask(gw, "openai"))
    assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"] == "labelled text"


# --- stream ends only on event boundaries --------------------------------------------------------

def test_end_marker_text_inside_openai_content_does_not_end_the_stream(gw, raw):
    frames = oai_sse(["see: \ndata: [DONE]\n\n", "data: {\"error\": 1}"], done=False)  # no real [DONE]
    raw.enqueue(SSE_HEAD + chunked(*frames))
    resp = during(gw, raw, lambda: ask(gw, "openai", stream=True))
    assert_stream_error("openai", resp, "before it was complete")


def test_end_marker_text_inside_anthropic_content_does_not_end_the_stream(gw, raw):
    frames = anth_sse(["x\n\nevent: message_stop\ndata: {\"type\": \"message_stop\"}\n\n"], model="raw-claude",
                      stop=False)
    raw.enqueue(head(content_type="text/event-stream", transfer_encoding="chunked") + chunked(*frames))
    resp = during(gw, raw, lambda: ask(gw, "anthropic", stream=True))
    assert_stream_error("anthropic", resp, "before it was complete")


@BOTH
def test_a_real_end_event_still_ends_the_stream(gw, raw, dialect):
    frames = oai_sse(["a", "b"]) if dialect == "openai" else anth_sse(["a", "b"])
    raw.enqueue(SSE_HEAD + chunked(*frames))
    resp = during(gw, raw, lambda: ask(gw, dialect, stream=True))
    last = parse_sse(resp.body)[-1]
    assert last == ((None, "[DONE]") if dialect == "openai" else ("message_stop", '{"type": "message_stop"}'))


def test_a_client_that_stops_reading_pauses_its_provider(gw, raw):
    """A provider floods 96 MB of events at a client that reads nothing for a while: the gateway
    holds about a megabyte of them, stops reading the provider (whose writes then wait in the
    kernel's buffers), and once the client reads again every event arrives, in order. Without the
    pause the gateway's memory would take the whole flood."""
    piece, count = "x" * 65000, 1536
    events = oai_sse([f"{n:04d}{piece}" for n in range(count)])
    raw.enqueue(SSE_HEAD, *(chunked(e)[:-5] for e in events), b"0\r\n\r\n")
    body = json.dumps({"model": MODELS["openai"], "messages": USER, "stream": True}).encode()
    before = rss_kb(gw.proc.pid)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_for(lambda: raw.sent > 1 << 20, 10), "the provider's stream never started"
        time.sleep(3)  # the client reads nothing
        grown = (rss_kb(gw.proc.pid) - before) >> 10
        assert grown < 32, f"the gateway grew by {grown} MB while its client read nothing"
        assert health(gw)["status"] == "ok"
        received = bytearray()
        while chunk := s.recv(1 << 20):
            received += chunk
            if received.endswith(b"0\r\n\r\n"):
                break
    found = re.findall(rb'"content": "(\d{4})x', bytes(received))
    assert [int(n) for n in found] == list(range(count)) and b"[DONE]" in received


def test_a_stream_to_an_http_1_0_client_is_not_chunked(gw, raw):
    """HTTP/1.0 has no chunked encoding: the stream's bytes go out as they are and the close ends them."""
    raw.enqueue(SSE_HEAD + chunked(*oai_sse(["a", "b"])))
    body = json.dumps({"model": MODELS["openai"], "messages": USER, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    head, _, events = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and events.startswith(b"data: {")
    assert [d for _, d in parse_sse(events)][-1] == "[DONE]" and b'"a"' in events and b'"b"' in events


# --- headers -------------------------------------------------------------------------------------

@BOTH
def test_a_bare_cr_in_retry_after_keeps_the_429(gw, raw, dialect):
    error = (b'{"error": {"message": "slow down", "type": "requests", "param": null, "code": null}}'
             if dialect == "openai" else b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}')
    raw.enqueue(b"HTTP/1.1 429 Too Many\r\ncontent-type: application/json\r\nretry-after: 5\rx-evil: 1\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(error), error))
    resp = during(gw, raw, lambda: ask(gw, dialect))
    assert_dialect_error(dialect, resp, 429)
    assert "x-evil" not in resp.headers and "\r" not in resp.headers.get("retry-after", "")


def test_a_bare_cr_in_content_length_is_a_502(gw, raw):
    raw.enqueue(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r5\r\n\r\n{}", "hang")
    assert_dialect_error("openai", during(gw, raw, lambda: ask(gw, "openai")), 502)


# --- keys echoed back, in every spelling --------------------------------------------------------

def _u_escaped(text):
    return "".join("\\u%04x" % ord(c) if i % 2 else c for i, c in enumerate(text))


SPELLINGS = {
    "plain": lambda key: key,
    "slash-escaped": lambda key: key.replace("/", "\\/"),
    "u-escaped": _u_escaped,
    "u-escaped-upper": lambda key: "".join("\\u%04X" % ord(c) for c in key),
}


def echo(dialect, spell, status=200):
    """An answer (or error) quoting the key the gateway sent, as the provider's JSON spelt it."""
    def reply(request):
        sent = request["headers"].get("x-api-key") or request["headers"]["authorization"].split(" ", 1)[1]
        text = f"you sent {spell(sent)} in your headers"
        if status != 200:
            body = ('{"error": {"message": "%s", "type": "invalid_request_error", "param": null, "code": null}}'
                    if dialect == "openai" else '{"type": "error", "error": {"type": "authentication_error", '
                                                '"message": "%s"}}') % text
        else:
            body = json.dumps(json.loads(answer(dialect, "PLACEHOLDER"))).replace("PLACEHOLDER", text)
        return RawProvider.response(status, body, {"content-type": "application/json"})
    return reply


def assert_no_key(resp):
    text = resp.body.decode("utf-8", "replace")
    for key in KEYS:
        assert not any(spell(key) in text for spell in SPELLINGS.values())
        assert key not in json.dumps(resp.json(), ensure_ascii=False)
    for value in resp.headers.values():
        assert not any(key in value for key in KEYS)


@BOTH
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("status", [200, 401])
def test_an_echoed_key_is_redacted_in_any_spelling(gw, raw, dialect, spelling, status):
    raw.enqueue(echo(dialect, SPELLINGS[spelling], status))
    resp = during(gw, raw, lambda: ask(gw, dialect))
    assert resp.status == status
    assert_no_key(resp)
    assert "you sent [redacted] in your headers" in json.dumps(resp.json(), ensure_ascii=False)


@pytest.mark.parametrize("dialect,model", [("openai", "raw-gpt"), ("anthropic", "raw-claude"),
                                           ("openai", "raw-claude"), ("anthropic", "raw-gpt")])
@pytest.mark.parametrize("spelling", ["plain", "u-escaped"])
def test_a_key_echoed_in_stream_content_is_redacted(gw, raw, dialect, model, spelling):
    spell = SPELLINGS[spelling]
    if model == "raw-gpt":
        def reply(request):
            key = request["headers"]["authorization"].split(" ", 1)[1]
            event = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"raw-gpt","choices":' \
                    b'[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % spell(key).encode()
            frames = oai_sse([], model="raw-gpt")
            return SSE_HEAD + chunked(frames[0], event, *frames[1:])
    else:
        def reply(request):
            key = request["headers"]["x-api-key"]
            event = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":' \
                    b'{"type":"text_delta","text":"%s"}}\n\n' % spell(key).encode()
            frames = anth_sse([], model="raw-claude")
            return SSE_HEAD + chunked(*frames[:2], event, *frames[2:])
    raw.enqueue(reply)
    resp = during(gw, raw, lambda: ask(gw, dialect, model, stream=True))
    assert resp.status == 200
    text = resp.body.decode()
    assert "[redacted]" in text
    for key in KEYS:
        assert key not in text and spell(key) not in text and _u_escaped(key) not in text


@BOTH
@pytest.mark.parametrize("spelling", ["plain", "u-escaped", "slash-escaped"])
def test_a_key_in_an_in_stream_error_after_the_200_is_redacted(gw, raw, dialect, spelling):
    spell = SPELLINGS[spelling]

    def reply(request):
        key = (request["headers"].get("x-api-key") or request["headers"]["authorization"].split(" ", 1)[1])
        if dialect == "openai":
            error = b'data: {"error": {"message": "key %s revoked", "type": "server_error"}}\n\n' % spell(key).encode()
            return SSE_HEAD + chunked(oai_sse(["hi"])[0], error)
        error = (b'event: error\ndata: {"type": "error", "error": {"type": "api_error", "message": "key %s revoked"}}'
                 b'\n\n' % spell(key).encode())
        return SSE_HEAD + chunked(anth_sse(["hi"], model="raw-claude")[0], error)

    raw.enqueue(reply)
    resp = during(gw, raw, lambda: ask(gw, dialect, stream=True))
    frames = parse_sse(resp.body)
    assert "[redacted] revoked" in json.loads(frames[-1][1])["error"]["message"]
    for key in KEYS:
        assert key not in resp.body.decode() and spell(key) not in resp.body.decode()


def test_a_u_escaped_key_never_reaches_the_access_log(raw):
    """The error message is decoded for the log line (and a span's status): redacted before that."""
    gateway = start_gateway(config(raw), env=ENV)
    try:
        for dialect in ("openai", "anthropic"):
            raw.enqueue(echo(dialect, SPELLINGS["u-escaped"], 401))
            assert ask(gateway, dialect).status == 401
        wait_for(lambda: gateway.output().count('"status": 401') >= 2)
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
    errors = [line["error"] for line in lines if line.get("status") == 401]
    assert len(errors) == 2 and all("you sent [redacted]" in e for e in errors), errors
    for key in KEYS:
        assert key not in gateway.output()


# --- shutdown that runs out of drain time --------------------------------------------------------

def test_streams_cut_at_the_drain_timeout_get_an_error_a_log_line_and_a_non_zero_exit(raw):
    gateway = start_gateway(config(raw, drain_timeout="1s"), env=ENV)
    try:
        raw.enqueue(SSE_HEAD + b"%x\r\n%s\r\n" % (len(oai_sse(["a"])[1]), oai_sse(["a"])[1]), "hang")
        raw.enqueue(SSE_HEAD + b"%x\r\n%s\r\n" % (len(anth_sse([])[0]), anth_sse([])[0]), "hang")
        results, threads = {}, []
        for n, dialect in enumerate(("openai", "anthropic"), 1):  # in order: each gets its scripted reply
            threads.append(threading.Thread(
                target=lambda d=dialect: results.__setitem__(d, ask(gateway, d, stream=True))))
            threads[-1].start()
            assert wait_for(lambda n=n: len(raw.requests) == n, 5)
        gateway.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(15)
        assert gateway.proc.wait(15) != 0
    finally:
        gateway.stop()
    for dialect in ("openai", "anthropic"):
        assert_stream_error(dialect, results[dialect], "drain_timeout")
    output = gateway.output()
    assert "drain_timeout (1s) ran out: 2 request(s) cut" in output
    cut = [json.loads(line) for line in output.splitlines() if line.startswith("{") and "drain_timeout" in line]
    assert len(cut) == 2 and all(line["stream"] and "drain_timeout" in line["error"] for line in cut)


# --- the config never prints a key ---------------------------------------------------------------

BROKEN_CONFIGS = {
    "an object where a list belongs": "llm_providers:\n  model: openai/x\n  access_key: {key}\n",
    "a key of the wrong type": "llm_providers:\n  - model: openai/x\n    access_key: 12345678901234567890\n",
    "a YAML error on the key's line": "llm_providers:\n  - model: openai/x\n    access_key: {key}: oops\n",
    "an unterminated quote": "llm_providers:\n  - model: openai/x\n    access_key: \"{key}\n",
}


@pytest.mark.parametrize("command", ["validate", "up"])
@pytest.mark.parametrize("case", BROKEN_CONFIGS)
def test_a_broken_config_never_prints_a_key(tmp_path, command, case):
    key = "sk-literal-in-config-0123456789"
    text = "version: v0.1.0\nlisteners: {egress_traffic: {port: 0}}\n" + BROKEN_CONFIGS[case].format(key=key)
    (tmp_path / "config.yaml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "arch", command, str(tmp_path / "config.yaml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert "problem" in out.stdout + out.stderr
    for secret in (key, "12345678901234567890"):
        assert secret not in out.stdout + out.stderr


# --- JSON of the wrong shape, across dialects ------------------------------------------------------

@pytest.mark.parametrize("dialect,model", [("openai", "raw-claude"), ("anthropic", "raw-gpt")])
@pytest.mark.parametrize("shape", [b"[]", b'"text"', b"null", b"{}x"])
def test_a_translated_answer_of_the_wrong_shape_is_a_502(gw, raw, dialect, model, shape):
    raw.enqueue(RawProvider.response(200, shape, {"content-type": "application/json"}))
    assert_dialect_error(dialect, during(gw, raw, lambda: ask(gw, dialect, model)), 502)


@pytest.mark.parametrize("dialect,model", [("openai", "raw-claude"), ("anthropic", "raw-gpt")])
@pytest.mark.parametrize("event", [b'{"choices": 5}', b'{"type": "content_block_delta", "delta": 5}', b"[1, 2]"])
def test_a_translated_stream_event_of_the_wrong_shape_is_an_in_stream_error(gw, raw, dialect, model, event):
    raw.enqueue(SSE_HEAD + chunked(b"event: content_block_delta\ndata: " + event + b"\n\n"))
    resp = during(gw, raw, lambda: ask(gw, dialect, model, stream=True))
    assert_stream_error(dialect, resp)
