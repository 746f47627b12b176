"""Bad input never hurts anyone else.

Hand-picked bad requests (invalid JSON, wrong types, huge and deeply nested
bodies, invalid UTF-8, unknown roles, wrong content types, a client sending
its body a byte at a time) each get a clear 4xx in the endpoint's dialect
while other clients are served. Then hypothesis: random request bodies built
from both request schemas (schemas/*_request.schema.yaml), valid-ish and
mutated, and random splits and garbage in the SSE streams providers send.
The gateway answers every request and stays up.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import anthropic
import openai
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GATEWAY_ENV, ROOT, anthropic_client, openai_client, start_gateway
from fakes import parse_sse
from reliability_util import CLAUDE, USER, anth_sse, assert_dialect_error, config, fd_count, health, oai_sse, post

GPT = "gpt-4o-mini"
LIMIT = 1 << 20  # max_body_size of the fuzz gateway: 1 MB
ENDPOINTS = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fakes(openai_fake, anthropic_fake, ollama_fake):
    return openai_fake, anthropic_fake, ollama_fake


@pytest.fixture(scope="module")
def gw(fakes):
    gw = start_gateway(config(fakes, listener={"max_body_size": "1MB"}), env=GATEWAY_ENV)
    yield gw
    gw.stop()


def read_response(sock):
    """One whole HTTP response (content-length framed) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def minimal(path, model=GPT):
    return {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}


def assert_ok_or_dialect_error(path, resp):
    """A success, or a well-formed error in the endpoint's dialect; never a 5xx (the fakes send none)."""
    assert resp.status < 500, (resp.status, resp.body[:500])
    if resp.status >= 400:
        return assert_dialect_error(ENDPOINTS[path], resp)
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        assert_well_formed_stream(ENDPOINTS[path], resp.body)
        return None
    return resp.json()


def assert_well_formed_stream(dialect, raw):
    """Every event is JSON; the stream ends with the dialect's end, or with its error event."""
    frames = parse_sse(raw)
    assert frames, raw[:300]
    for name, data in frames:
        if data == "[DONE]":
            continue
        event = json.loads(data)
        assert isinstance(event, dict), data
        if dialect == "anthropic":
            assert name == event.get("type"), (name, data)  # the anthropic SDK needs event name == data.type
    name, data = frames[-1]
    if dialect == "openai":
        assert data == "[DONE]" or "error" in json.loads(data), frames[-3:]
        assert sum(d == "[DONE]" for _, d in frames) <= 1
    else:
        assert name in ("message_stop", "error"), frames[-3:]
        assert frames[0][0] in ("message_start", "error"), frames[0]
    return frames


# =====================================================================================================
# Hand-picked bad input
# =====================================================================================================

@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [b"", b"{", b"{'model': 'x'}", b"not json at all", b'{"model": "gpt-4o-mini",}',
                                 b"[]", b'"a string"', b"null", b"42", b"\x00\x01\x02",
                                 b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]} trailing'])
def test_invalid_json_is_a_400_in_dialect(gw, path, raw):
    resp = post(gw.url, path, raw)
    body = assert_dialect_error(ENDPOINTS[path], resp, 400)
    assert body["error"]["type"] == "invalid_request_error"  # the same name in both dialects


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("field,value,param", [
    ("model", 5, "model"), ("model", "", "model"), ("model", None, "model"),
    ("messages", "Hi", "messages"), ("messages", {"role": "user"}, "messages"),
    ("max_tokens", "many", "max_tokens"), ("max_tokens", 0, "max_tokens"),
    ("temperature", "hot", "temperature"), ("stream", "yes", "stream"),
])
def test_wrong_types_are_a_400_naming_the_field(gw, path, field, value, param):
    body = {**minimal(path), field: value}
    resp = post(gw.url, path, body)
    err = assert_dialect_error(ENDPOINTS[path], resp, 400)
    message = err["error"]["message"]
    assert param in message, message
    if ENDPOINTS[path] == "openai":
        assert err["error"]["param"] == param


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("messages,param", [
    ([], "messages"),
    ([{"role": "wizard", "content": "Hi"}], "messages[0].role"),
    ([{"role": "user", "content": "Hi"}, {"role": "robot", "content": "x"}], "messages[1].role"),
    ([{"content": "Hi"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    (["Hi"], "messages[0]"),
])
def test_unknown_roles_and_empty_messages_are_a_400(gw, path, messages, param):
    """Across dialects (an unknown role reaches a provider of the client's own dialect as sent)."""
    model = CLAUDE if ENDPOINTS[path] == "openai" else GPT
    resp = post(gw.url, path, {**minimal(path, model), "messages": messages})
    err = assert_dialect_error(ENDPOINTS[path], resp, 400)
    assert param in err["error"]["message"], err


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_body_over_max_body_size_is_a_413_in_dialect(gw, path):
    body = {**minimal(path), "messages": [{"role": "user", "content": "x" * (2 * LIMIT)}]}
    resp = post(gw.url, path, body)
    err = assert_dialect_error(ENDPOINTS[path], resp, 413)
    if ENDPOINTS[path] == "anthropic":
        assert err["error"]["type"] == "request_too_large"
    assert health(gw)["status"] == "ok"


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_huge_body_is_still_a_413_in_dialect(gw, path):
    body = {**minimal(path), "messages": [{"role": "user", "content": "x" * (10 * LIMIT)}]}
    try:
        resp = post(gw.url, path, body)
    except OSError as e:
        pytest.fail(f"connection dropped: {e!r}")
    assert_dialect_error(ENDPOINTS[path], resp, 413)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_deeply_nested_json_is_a_400(gw, path):
    depth = 100_000
    raw = b'{"model": "gpt-4o-mini", "max_tokens": 5, "messages": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) < LIMIT
    err = assert_dialect_error(ENDPOINTS[path], post(gw.url, path, raw), 400)
    assert "nested" in err["error"]["message"]
    assert health(gw)["status"] == "ok"


def _nest(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"type": "object", "properties": {"a": value}}
    return value


@pytest.mark.parametrize("path,model", [("/v1/chat/completions", CLAUDE), ("/v1/messages", GPT),
                                        ("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE)])
@pytest.mark.parametrize("depth", [300, 3000])
def test_deep_but_parseable_json_in_free_form_fields_never_crashes(gw, path, model, depth):
    """Deep schemas in tool parameters and metadata get through translation or get a 400, never a 500."""
    deep = _nest(depth)
    body = {**minimal(path, model), "metadata": {"user_id": "u", "x": deep}}
    if path == "/v1/chat/completions":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    else:
        body["tools"] = [{"name": "f", "input_schema": deep}]
    raw = json.dumps(body).encode() if depth < 900 else _dumps_deep(body)
    resp = post(gw.url, path, raw)
    assert_ok_or_dialect_error(path, resp)


def _dumps_deep(obj):
    """json.dumps for objects deeper than the recursion limit allows."""
    import sys
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        return json.dumps(obj).encode()
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "gpt-4o-mini\xc3", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}',
    b'{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
])
def test_invalid_utf8_is_a_400(gw, path, raw):
    err = assert_dialect_error(ENDPOINTS[path], post(gw.url, path, raw), 400)
    assert "JSON" in err["error"]["message"] or "UTF-8" in err["error"]["message"].upper()


@pytest.mark.parametrize("path,model", [("/v1/chat/completions", CLAUDE), ("/v1/messages", GPT),
                                        ("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE)])
@pytest.mark.parametrize("stream", [False, True])
def test_lone_surrogate_escapes_are_carried_not_crashed_on(gw, fakes, path, model, stream):
    """`"\\ud83d"` is valid JSON text for half an emoji; it must not turn into a 500 on the way
    (Python cannot encode a lone surrogate as UTF-8), in the request nor in the answer."""
    raw = (b'{"model": "%s", "max_tokens": 5, "stream": %s, "messages": [{"role": "user", "content": "a\\ud83db"}]}'
           % (model.encode(), b"true" if stream else b"false"))
    fake = fakes[1] if model == CLAUDE else fakes[0]
    half = "x\ud83d"  # the provider answers with half an emoji too
    if stream:
        fake.enqueue(chunks=anth_sse(["a", half], model=model) if model == CLAUDE else oai_sse(["a", half], model=model))
    elif model == CLAUDE:
        fake.enqueue(json={"id": "msg_1", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
                           "stop_sequence": None, "content": [{"type": "text", "text": half}],
                           "usage": {"input_tokens": 1, "output_tokens": 1}})
    else:
        fake.enqueue(json={"id": "c", "object": "chat.completion", "created": 1, "model": model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": half}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    resp = post(gw.url, path, raw)
    assert resp.status in (200, 400), (resp.status, resp.body[:300])
    if resp.status == 400:
        assert_dialect_error(ENDPOINTS[path], resp)
        return
    assert fake.last["body"]["messages"][-1]["content"] in ("a\ud83db", [{"type": "text", "text": "a\ud83db"}])
    if stream:
        frames = assert_well_formed_stream(ENDPOINTS[path], resp.body)
        assert frames[-1][0] != "error" and "error" not in frames[-1][1][:12], frames[-1]
        assert "x\\ud83d" in resp.text
    else:
        assert "x\\ud83d" in resp.text and "x\ud83d" in json.dumps(resp.json(), ensure_ascii=False)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o-mini", "max_tokens": 5, "temperature": NaN, "messages": [{"role": "user", "content": "Hi"}]}',
    b'{"model": "gpt-4o-mini", "max_tokens": 5, "top_p": Infinity, "messages": [{"role": "user", "content": "Hi"}]}',
])
def test_non_standard_json_constants_are_a_400(gw, fakes, path, raw):
    """NaN/Infinity are not JSON (RFC 8259): Python would read them and write them on to the provider."""
    assert_dialect_error(ENDPOINTS[path], post(gw.url, path, raw), 400)
    assert fakes[0].requests == []


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "multipart/form-data; boundary=xyz", "application/xml", None])
def test_wrong_content_type_never_breaks_the_gateway(gw, path, ctype):
    """A JSON body with the wrong content-type is read as JSON (as the SDKs and OpenAI do; curl -d
    sends form-urlencoded). A non-JSON body is a 400 in dialect."""
    headers = {"content-type": ctype} if ctype else {"content-type": ""}
    ok = post(gw.url, path, minimal(path), headers=headers)
    assert ok.status == 200, ok.body[:300]
    assert "Hello from" in ok.text
    bad = post(gw.url, path, b"a=1&b=2", headers=headers)
    assert_dialect_error(ENDPOINTS[path], bad, 400)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_slow_client_byte_at_a_time_is_served_and_does_not_block_others(gw, path):
    body = json.dumps(minimal(path)).encode()
    head = b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        path.encode(), len(body))
    result = {}

    def slow():
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            for i in range(len(head + body)):
                sock.sendall((head + body)[i:i + 1])
                time.sleep(0.01)
            result["raw"] = read_response(sock)

    thread = threading.Thread(target=slow)
    thread.start()
    served = 0
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    while thread.is_alive():
        start = time.monotonic()
        resp = post(gw.url, path, minimal(path), conn=conn)
        assert resp.status == 200 and time.monotonic() - start < 0.5
        served += 1
    thread.join()
    conn.close()
    assert served > 20, served
    assert result["raw"].startswith(b"HTTP/1.1 200"), result["raw"][:300]
    assert b"Hello from" in result["raw"]


def test_garbage_on_the_socket_does_not_hurt_the_gateway(gw):
    baseline = fd_count(gw.proc.pid)
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
                 b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n",       # huge header
                 b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 b"\r\n\r\n\r\n", b"HELLO\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            try:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
    assert post(gw.url, "/v1/chat/completions", minimal("/v1/chat/completions")).status == 200
    time.sleep(0.1)
    assert fd_count(gw.proc.pid) <= baseline + 1
    assert health(gw)["inflight"] == 0


# =====================================================================================================
# Property-based: request bodies from the request schemas
# =====================================================================================================

SCHEMAS = {path: yaml.safe_load((ROOT / "schemas" / f"{dialect}_request.schema.yaml").read_text())
           for path, dialect in ENDPOINTS.items()}
MODELS = [GPT, "gpt-4o", CLAUDE, "fast-model", "reasoning-model", "llama3.1"]
# strings the rules look at, so random structures reach the interesting branches of the translations
WORDS = ["text", "image", "image_url", "input_audio", "file", "document", "tool_use", "tool_result", "thinking",
         "redacted_thinking", "function", "auto", "any", "none", "required", "tool", "user", "assistant", "system",
         "developer", "base64", "url", "data:image/png;base64,iVBORw0KGgo=", "stop", "\n\nHuman:", "ephemeral"]

json_leaf = st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20) | st.sampled_from(WORDS)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(WORDS + ["type", "content", "name", "id", "input",
                                                                     "arguments", "role", "source"]) | st.text(max_size=8),
                                            inner, max_size=4), max_leaves=12)


def from_schema(schema, depth=0):
    """A hypothesis strategy for (mostly) valid instances of a JSON Schema subset."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, depth) for s in schema.get("anyOf") or schema["oneOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, depth) for k in kind])
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        optional = {k: from_schema(v, depth + 1) for k, v in props.items() if k not in required}
        if "type" in props and "enum" not in props["type"]:  # content blocks: realistic types and fields
            optional.update({k: json_value for k in ("text", "source", "id", "name", "input", "content",
                                                     "tool_use_id", "image_url", "thinking", "cache_control")})
        base = st.fixed_dictionaries({k: from_schema(props[k], depth + 1) for k in required}, optional=optional)
        if not props:
            return st.dictionaries(st.text(max_size=8), json_value, max_size=3)
        return base
    if kind == "array":
        items = schema.get("items")
        return st.lists(from_schema(items, depth + 1) if items else json_value, min_size=schema.get("minItems", 0),
                        max_size=3)
    if kind == "string":
        return st.sampled_from(WORDS) | st.text(min_size=schema.get("minLength", 0), max_size=30)
    if kind == "integer":
        return st.integers(schema.get("minimum", -5), schema.get("maximum", 4096))
    if kind == "number":
        return st.floats(schema.get("minimum", -5), schema.get("maximum", 5), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_value


def request_bodies(path):
    base = from_schema(SCHEMAS[path]).map(dict)
    return st.tuples(base, st.sampled_from(MODELS + [None]), st.data())


def mutate(data, body):
    """Replace, delete or add a few fields anywhere in `body`."""
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        node = body
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
                node = child
                continue
            op = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                node[key] = data.draw(json_value)
            elif op == "delete" and isinstance(node, dict):
                del node[key]
            elif isinstance(node, dict):
                node[data.draw(st.sampled_from(WORDS) | st.text(max_size=8))] = data.draw(json_value)
            else:
                node.append(data.draw(json_value))
            break
    return body


class Session:
    """A keep-alive connection to the gateway, reopened when the gateway closed it."""

    def __init__(self, gw):
        self.gw, self.conn = gw, None

    def post(self, path, body):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
            try:
                resp = post(self.gw.url, path, body, conn=self.conn)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.headers.get("connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp


@pytest.mark.parametrize("path", ENDPOINTS)
def test_random_request_bodies_get_a_clean_answer(gw, fakes, path):
    session = Session(gw)
    seen = {}

    @FUZZ
    @given(request_bodies(path))
    def run(case):
        body, model, data = case
        if model is not None:
            body["model"] = model
        if data.draw(st.booleans(), label="mutate"):
            body = mutate(data, body)
        for fake in fakes:
            fake.reset()
        resp = session.post(path, json.dumps(body).encode())
        seen[resp.status] = seen.get(resp.status, 0) + 1
        assert_ok_or_dialect_error(path, resp)

    run()
    assert health(gw)["status"] == "ok"
    # the generator reaches both the gateway's checks and the providers
    assert 200 in seen and 400 in seen, seen


# =====================================================================================================
# Property-based: what providers stream
# =====================================================================================================

def _transcript(provider_dialect, model):
    pieces = ["Hel", "lo", " wor", "ld"]
    return b"".join(anth_sse(pieces, model=model) if provider_dialect == "anthropic" else oai_sse(pieces, model=model))


def _events(raw):
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e]


garbage_block = st.one_of(
    st.text(max_size=40).map(lambda t: b"data: " + t.encode() + b"\n\n"),                 # not JSON, usually
    st.binary(max_size=40).map(lambda b: b"data: " + b.replace(b"\n", b"").replace(b"\r", b"") + b"\n\n"),
    st.text(max_size=40).map(lambda t: b": " + t.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"),
    st.sampled_from([b"data: {not json\n\n", b"data: {\"type\": \n\n", b"data: [1, 2\n\n", b"data: \xff\xfe\n\n",
                     b"data: 12\n\n", b"data: \"str\"\n\n", b"retry: 10\n\n", b": keep-alive\n\n",
                     b"event: ping\n\n"]),
)


def _split(data, raw):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=12), label="cuts")))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:]) if raw[a:b]]


def _client(gw, dialect):
    if dialect == "openai":
        return openai_client(gw, "k", timeout=5)
    return anthropic_client(gw, "k", timeout=5)


def _stream_outcome(client, model):
    """('ok', text) for a stream that ended properly, ('error', exc) for an in-stream error."""
    try:
        if isinstance(client, openai.OpenAI):
            parts, finished = [], None
            for chunk in client.chat.completions.create(model=model, messages=USER, stream=True):
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finished = chunk.choices[0].finish_reason or finished
            assert finished == "stop", f"the stream ended without a finish_reason: {parts}"
            return "ok", "".join(parts)
        with client.messages.stream(model=model, max_tokens=20, messages=USER) as stream:
            message = stream.get_final_message()
        assert message.stop_reason == "end_turn", message
        return "ok", "".join(b.text for b in message.content)
    except (openai.APIError, anthropic.APIStatusError) as e:
        assert not isinstance(e, (openai.APIConnectionError, anthropic.APIConnectionError)), e
        return "error", e


COMBOS = [("openai", GPT), ("openai", CLAUDE), ("anthropic", CLAUDE), ("anthropic", GPT)]


@pytest.mark.parametrize("dialect,model", COMBOS)
def test_random_splits_and_garbage_in_provider_streams(gw, fakes, dialect, model):
    client = _client(gw, dialect)
    provider_dialect = "anthropic" if model == CLAUDE else "openai"
    fake = fakes[1] if provider_dialect == "anthropic" else fakes[0]
    events = _events(_transcript(provider_dialect, model))
    outcomes = {"ok": 0, "error": 0}

    @settings(FUZZ, max_examples=60)
    @given(st.data())
    def run(data):
        stream = list(events)
        for _ in range(data.draw(st.integers(0, 2), label="garbage")):
            stream.insert(data.draw(st.integers(0, len(stream) - 1), label="at"), data.draw(garbage_block))
        fake.reset()
        fake.enqueue(chunks=_split(data, b"".join(stream)))
        outcome, value = _stream_outcome(client, model)
        outcomes[outcome] += 1
        if outcome == "ok":
            assert value == "Hello world"

    run()
    assert health(gw)["inflight"] == 0
    assert outcomes["ok"] and outcomes["error"], outcomes


def _mutate_event(data, event):
    """One event with a field replaced by random JSON (the SSE framing stays intact)."""
    name, _, payload = event.strip().rpartition(b"data: ")
    try:
        obj = json.loads(payload)
    except ValueError:
        return event
    obj = mutate(data, obj)
    return name + b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize("path,model", [("/v1/chat/completions", CLAUDE), ("/v1/messages", GPT),
                                        ("/v1/chat/completions", GPT), ("/v1/messages", CLAUDE)])
def test_random_wrong_events_from_providers_give_a_well_formed_stream(gw, fakes, path, model):
    """Events that are JSON but not what the provider should send: what reaches
    the client is still a well-formed stream in its dialect, ended properly or by
    its error event, never cut silently and never garbage."""
    provider_dialect = "anthropic" if model == CLAUDE else "openai"
    fake = fakes[1] if provider_dialect == "anthropic" else fakes[0]
    events = _events(_transcript(provider_dialect, model))
    session = Session(gw)

    @settings(FUZZ, max_examples=60)
    @given(st.data())
    def run(data):
        stream = list(events)
        for _ in range(data.draw(st.integers(1, 3), label="wrong events")):
            i = data.draw(st.integers(0, len(stream) - 1), label="which")
            stream[i] = _mutate_event(data, stream[i])
        fake.reset()
        fake.enqueue(chunks=_split(data, b"".join(stream)))
        resp = session.post(path, {"model": model, "max_tokens": 20, "stream": True, "messages": USER})
        assert resp.status == 200, resp.body[:300]
        if path == "/v1/chat/completions" and model == GPT or path == "/v1/messages" and model == CLAUDE:
            # same dialect: bytes pass through; only the framing and the JSON are the gateway's to check
            for _, d in parse_sse(resp.body):
                assert d == "[DONE]" or isinstance(json.loads(d), dict)
        else:
            assert_well_formed_stream(ENDPOINTS[path], resp.body)

    run()
    assert health(gw)["inflight"] == 0
