"""Misbehaving clients: none of them may freeze the gateway, exhaust it, or
make it leak what it should not.

Each test drives the real gateway process over real sockets: raw sockets for
what no well-behaved client sends (slow or endless headers, stalled bodies,
connection floods), curl for chunked uploads, the SDKs where the answer's
envelope matters. The last test throws random bytes at the server.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GATEWAY_ENV, anthropic_client, openai_client, start_gateway
from reliability_util import (CLAUDE, USER, assert_dialect_error, closed_port, config, health, post, request,
                              wait_for)

GPT = "gpt-4o-mini"
LIMIT = 1 << 20
CAP = 8  # max_connections of the `policy` gateway


@pytest.fixture(scope="module")
def fakes(openai_fake, anthropic_fake, ollama_fake):
    return openai_fake, anthropic_fake, ollama_fake


@pytest.fixture(scope="module")
def tight(fakes):
    """Small limits, short timeouts."""
    gw = start_gateway(config(fakes, listener={"max_body_size": "1MB", "header_timeout": "1s", "body_timeout": "1s",
                                               "max_header_size": "16KB",
                                               "list_models_in_errors": False}), env=GATEWAY_ENV)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def big(fakes, tmp_path_factory):
    """The default 32 MB body limit, and the access log in a file."""
    log = tmp_path_factory.mktemp("log") / "access.log"
    cfg = config(fakes)
    cfg["access_log"] = {"file": str(log)}
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    gw.access_log = log
    yield gw
    gw.stop()


ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def policy(fakes):
    """CORS for one origin, its own Host names, a beta allow-list, many names, a connection cap."""
    cfg = config(fakes, listener={"allowed_hosts": ["127.0.0.1", "gw.test"], "anthropic_betas": ["prompt-caching-*"],
                                  "max_connections": CAP},
                 aliases={f"alias-{n:02d}": {"target": GPT} for n in range(30)})
    cfg["cors"] = {"origins": [ORIGIN + "/"]}
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def raw_exchange(port, data, timeout=10.0):
    """Send `data` on a new connection, half-close, return all it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(sock):
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_and_json(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1").lower(), json.loads(body)


def log_lines(gw):
    return [json.loads(line) for line in gw.access_log.read_text().splitlines()]


# --- bounded work per request -----------------------------------------------------------------------

def test_a_million_schema_errors_cost_no_more_than_one(big):
    """A body whose every message is invalid is refused about as fast as the
    same bytes cut short (invalid JSON, so only parsed): the error report looks
    at the first few errors only, it never walks all of them on the event loop."""
    many = json.dumps({"model": GPT, "messages": [{"role": "user", "content": 5}] * 300_000}).encode()

    def timed(body, words):
        started = time.monotonic()
        resp = post(big.url, "/v1/chat/completions", body, timeout=300)
        assert words in assert_dialect_error("openai", resp, 400)["error"]["message"]
        return time.monotonic() - started

    timed(many[:-1], "not valid JSON")  # warm-up
    baseline = min(timed(many[:-1], "not valid JSON") for _ in range(2))
    assert timed(many, "messages[0].content") < 3 * baseline + 1.0, baseline


def test_healthz_answers_while_a_large_body_is_checked(big):
    """A large body is parsed and checked off the event loop: other requests
    are answered while it is checked, not after."""
    body = json.dumps({"model": GPT, "messages": [{"role": "user", "content": "hello there"}] * 200_000,
                       "max_tokens": -5}).encode()  # fails the schema only after every message was checked
    done = []

    def big_request():
        assert_dialect_error("openai", post(big.url, "/v1/chat/completions", body, timeout=300), 400)
        done.append(time.monotonic())

    t = threading.Thread(target=big_request)
    t.start()
    answered = []
    while t.is_alive():
        health(big)
        answered.append(time.monotonic())
    t.join()
    assert done and any(when < done[0] - 0.1 for when in answered)


@pytest.mark.parametrize("text, field", [
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "temperature": 1e999}', "temperature"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "top_p": -1E400}', "top_p"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "metadata": {"x": NaN}}', "metadata.x"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"1": Infinity}}',
     "logit_bias.1"),
])
def test_non_finite_numbers_are_refused_naming_the_field(big, openai_fake, text, field):
    resp = post(big.url, "/v1/chat/completions", text)
    body = assert_dialect_error("openai", resp, 400)
    assert body["error"]["param"] == field and "finite" in body["error"]["message"], body
    assert not openai_fake.requests  # nothing with Infinity in it ever went out


# --- what is echoed is capped; the access log survives anything ----------------------------------------

def test_huge_model_name_is_not_echoed_whole(big):
    name = "m" * (20 << 20)
    resp = post(big.url, "/v1/chat/completions", {"model": name, "messages": USER}, timeout=120)
    assert_dialect_error("openai", resp, 404)
    assert len(resp.body) < 8192
    line = wait_for(lambda: [x for x in big.access_log.read_text().splitlines() if '"mmmmmmmm' in x])
    assert line and len(line[-1]) < 8192


def test_lone_surrogate_in_model_name_keeps_its_access_line(big):
    rid = "surrogate-in-model"
    resp = post(big.url, "/v1/messages", b'{"model": "half-\\ud83d", "max_tokens": 5, "messages": '
                                         b'[{"role": "user", "content": "Hi"}]}', headers={"x-request-id": rid})
    assert_dialect_error("anthropic", resp, 404)
    line = wait_for(lambda: [x for x in log_lines(big) if x["request_id"] == rid])
    assert line and line[0]["requested_model"] == "half-\ud83d" and line[0]["status"] == 404


# --- information leaks ----------------------------------------------------------------------------------

def test_no_server_header(big):
    resp = request(big.url, "GET", "/healthz")
    assert resp.status == 200 and "server" not in resp.headers


def test_provider_address_not_in_client_errors(fakes):
    port = closed_port()
    gw = start_gateway(config(fakes, providers=[{"model": "openai/gone", "base_url": f"http://127.0.0.1:{port}",
                                                 "access_key": "sk-x"}]), env=GATEWAY_ENV)
    try:
        with openai_client(gw) as client, pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gone", messages=USER)
        assert e.value.status_code == 502 and str(port) not in str(e.value.body) and "127.0.0.1" not in str(e.value.body)
        assert str(port) in gw.output()  # the operator still sees where
    finally:
        gw.stop()


@pytest.mark.parametrize("gw_name, listed", [("big", True), ("tight", False)])
def test_unknown_model_lists_served_names_only_when_configured(request, gw_name, listed):
    gw = request.getfixturevalue(gw_name)
    with openai_client(gw) as client, pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert ("Available models" in e.value.message and "gpt-4o-mini" in e.value.message) == listed


def test_unknown_model_list_is_capped(policy):
    with openai_client(policy) as client, pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert re.search(r"and \d+ more", e.value.message) and e.value.message.count(",") < 25, e.value.message


def test_anthropic_beta_values_pass_only_per_the_allow_list(policy, big, anthropic_fake):
    betas = "prompt-caching-2024-07-31, computer-use-2024-10-22"
    for gw, expected in ((big, betas), (policy, "prompt-caching-2024-07-31")):
        with anthropic_client(gw) as client:
            client.messages.create(model=CLAUDE, max_tokens=10, messages=USER, extra_headers={"anthropic-beta": betas})
        assert anthropic_fake.last["headers"].get("anthropic-beta") == expected
    with anthropic_client(policy) as client:  # nothing allowed left: no header at all
        client.messages.create(model=CLAUDE, max_tokens=10, messages=USER,
                               extra_headers={"anthropic-beta": "computer-use-2024-10-22"})
    assert "anthropic-beta" not in anthropic_fake.last["headers"]


# --- browsers: cross-site requests and DNS rebinding ------------------------------------------------------

CHAT = json.dumps({"model": GPT, "messages": USER}).encode()


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Content-Type": "text/plain"},
    {"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    {"Origin": "https://evil.example", "Content-Type": "application/json"},
], ids=["text-plain", "null-origin-form", "sec-fetch-site", "json"])
def test_browser_requests_are_refused_without_cors(big, policy, openai_fake, headers):
    for gw in (big, policy):  # no cors at all; cors for another origin
        resp = post(gw.url, "/v1/chat/completions", CHAT, headers=headers)
        assert_dialect_error("openai", resp, 403)
        assert "access-control-allow-origin" not in resp.headers
    assert not openai_fake.requests  # no key was spent


def test_cors_preflight_and_request_from_an_allowed_origin(policy):
    pre = request(policy.url, "OPTIONS", "/v1/messages", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key, anthropic-version, x-stainless-os, x-evil"})
    assert pre.status == 204, pre.body
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"content-type", "x-api-key", "anthropic-version", "x-stainless-os"}
    assert int(pre.headers["access-control-max-age"]) > 0
    resp = post(policy.url, "/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": USER},
                headers={"Origin": ORIGIN, "anthropic-version": "2023-06-01", "Sec-Fetch-Site": "cross-site"})
    assert resp.status == 200 and resp.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in resp.headers["access-control-expose-headers"]
    refused = request(policy.url, "OPTIONS", "/v1/messages", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert_dialect_error("anthropic", refused, 403)


@pytest.mark.parametrize("host, ok", [("localhost:1", True), ("127.0.0.1", True), ("[::1]:8080", True),
                                      ("LOCALHOST", True), ("evil.example", False), ("evil.example:12000", False),
                                      ("localhost.evil.example", False)])
def test_host_header_must_name_a_loopback_gateway(big, host, ok):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends Host: evil.example."""
    resp = request(big.url, "GET", "/v1/models", headers={"Host": host})
    if ok:
        assert resp.status == 200
    else:
        assert_dialect_error("openai", resp, 403)
        assert "Host" in resp.json()["error"]["message"]


def test_configured_host_names(policy):
    assert request(policy.url, "GET", "/v1/models", headers={"Host": "gw.test:443"}).status == 200
    assert request(policy.url, "GET", "/v1/models", headers={"Host": "localhost"}).status == 403


# --- headers, bodies and connections --------------------------------------------------------------------

@pytest.mark.parametrize("path, dialect", [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")])
def test_oversized_headers_get_431_in_dialect(tight, path, dialect):
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nanthropic-version: 2023-06-01\r\n" if dialect == "anthropic" \
        else f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
    raw = raw_exchange(tight.port, head.encode() + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    status, _, body = status_and_json(raw)
    assert status == 431
    if dialect == "anthropic":
        assert body["type"] == "error" and "headers" in body["error"]["message"]
    else:
        assert "headers" in body["error"]["message"]


def test_oversized_headers_with_curl(tight):
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "X-Big: " + "b" * 40_000,
                          "-H", "Content-Type: application/json", "-d", "{}", tight.url + "/v1/chat/completions"],
                         capture_output=True, timeout=30)
    body, _, code = out.stdout.rpartition(b"\n")
    assert code == b"431" and "headers" in json.loads(body)["error"]["message"]


def test_slow_headers_are_dropped(tight):
    """Slowloris: a header line a byte at a time never completes; the connection is closed."""
    with socket.create_connection(("127.0.0.1", tight.port), timeout=15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        closed = False
        for _ in range(100):  # 20 s of trickle at most; the header timeout is 1 s
            try:
                s.sendall(b"X")
                s.settimeout(0.2)
                closed = s.recv(1) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed
    assert health(tight)["status"] == "ok"


def test_stalled_body_is_dropped(tight):
    with socket.create_connection(("127.0.0.1", tight.port), timeout=15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"model\": ")
        assert read_all(s) == b""  # closed by the body timeout (1 s), never answered or held
    assert health(tight)["inflight"] == 0


def test_chunked_upload_over_the_limit_is_413_in_dialect(tight):
    """A chunked body has no declared size: it is kept up to the limit only
    and answered 413 there (it used to be buffered up to 4x, then a bare 400)."""
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Transfer-Encoding: chunked",
                          "-H", "Content-Type: application/json", "-H", "anthropic-version: 2023-06-01",
                          "--data-binary", "@-", tight.url + "/v1/messages"],
                         input=b"x" * (6 * LIMIT), capture_output=True, timeout=60)
    body, _, code = out.stdout.rpartition(b"\n")
    assert code == b"413", out
    assert json.loads(body)["error"]["type"] == "request_too_large"
    assert health(tight)["status"] == "ok"


def test_chunked_upload_under_the_limit_is_served(tight):
    data = json.dumps({"model": GPT, "messages": USER}).encode()
    out = subprocess.run(["curl", "-s", "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/json",
                          "--data-binary", "@-", tight.url + "/v1/chat/completions"],
                         input=data, capture_output=True, timeout=30)
    assert json.loads(out.stdout)["object"] == "chat.completion"


def test_connections_over_the_cap_are_refused_then_served(policy):
    idle = [socket.create_connection(("127.0.0.1", policy.port)) for _ in range(CAP)]
    try:
        wait_for(lambda: False, 0.3)  # let the gateway accept them all
        with socket.create_connection(("127.0.0.1", policy.port), timeout=10) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nanthropic-version: 2023-06-01\r\n\r\n")
            status, head, body = status_and_json(read_all(s))
        assert status in (503, 529) and "retry-after: 1" in head and body["type"] == "error"
    finally:
        for s in idle:
            s.close()
    resp = wait_for(lambda: post(policy.url, "/v1/chat/completions", {"model": GPT, "messages": USER}).status == 200)
    assert resp


# --- file descriptors ----------------------------------------------------------------------------------

def test_soft_fd_limit_is_raised_to_the_hard_one(fakes):
    gw = start_gateway(config(fakes), env=GATEWAY_ENV, fd_limit=(256, 4096))
    try:
        limits = open(f"/proc/{gw.proc.pid}/limits").read()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
    finally:
        gw.stop()


@pytest.mark.parametrize("cap", [None, 100_000], ids=["default-cap", "no-cap"])
def test_out_of_file_descriptors(fakes, cap):
    """Under a 256-descriptor limit, 300 idle connections: without a cap the
    accept loop runs out of descriptors (and pauses, logging once), with the
    default cap the excess is refused; either way nothing floods the log and
    requests are served again once the connections go."""
    listener = {"max_connections": cap} if cap else {}
    gw = start_gateway(config(fakes, listener=listener), env=GATEWAY_ENV, fd_limit=(256, 256))
    idle = []
    try:
        before = len(gw.output())
        for _ in range(300):
            try:
                idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
            except OSError:
                break
        wait_for(lambda: False, 1.5)
        grown = len(gw.output()) - before
        assert grown < 20_000, gw.output()[-3000:]
        for s in idle:
            s.close()
        idle = []
        for _ in range(4):
            resp = wait_for(lambda: _served(gw), 10)
            assert resp, gw.output()[-3000:]
        assert gw.proc.poll() is None
    finally:
        for s in idle:
            s.close()
        gw.stop()


def _served(gw):
    try:
        return post(gw.url, "/v1/chat/completions", {"model": GPT, "messages": USER}, timeout=5).status == 200
    except OSError:
        return False


# --- fuzz ------------------------------------------------------------------------------------------------

_LINES = st.sampled_from([
    b"POST /v1/chat/completions HTTP/1.1\r\n", b"POST /v1/messages HTTP/1.1\r\n", b"GET /healthz HTTP/1.1\r\n",
    b"OPTIONS /v1/messages HTTP/1.1\r\n", b"POST /v1/chat/completions HTTP/1.0\r\n", b"BREW / HTCPCP/1.0\r\n",
    b"Host: localhost\r\n", b"Content-Length: 10\r\n", b"Content-Length: -5\r\n", b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Content-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n", b"Origin: https://evil.example\r\n", b"x-request-id: \xff\xfe\x01\r\n",
    b"Content-Type: text/plain\r\n", b"\r\n", b"-5\r\n", b"ffffffffffffffff\r\n", b"0\r\n\r\n",
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}', b"\x00\x01\x02",
])


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(_LINES, st.binary(max_size=64)), max_size=12), close_early=st.booleans())
def test_fuzz_misbehaving_clients(tight, parts, close_early):
    """Random request lines, headers, bodies and garbage, sometimes cut off:
    the gateway answers or closes, and keeps serving others."""
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as s:
        try:
            s.sendall(b"".join(parts))
            if not close_early:
                s.shutdown(socket.SHUT_WR)
                s.settimeout(3)
                read_all(s)
        except OSError:
            pass
    assert health(tight)["status"] == "ok"
