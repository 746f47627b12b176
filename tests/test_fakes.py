"""Self-test of the fake providers, over raw HTTP and the real SDKs (no gateway).

If these fail, gateway test failures mean nothing: the fakes are the reference
for what a real upstream says on the wire.
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

from conftest import _with_port, anthropic_client, openai_client
from fakes import Turn, parse_sse, token_count, tool_loop, tool_result, vector, vector_json

ANTH_HEADERS = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}


def request(fake, method, path, body=None, headers=None, timeout=5):
    """One raw request; returns (status, lowercased headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(fake.url.rsplit(":", 1)[1]), timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def raw_exchange(fake, path="/x"):
    """Send a GET with `connection: close` on a bare socket and return every byte
    the server sent, so chunk framing and truncation can be inspected."""
    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % path.encode())
        data = b""
        while block := s.recv(65536):
            data += block
    return data


def dechunk(raw):
    """Split a raw chunked response into (head, [chunk payloads], complete?)."""
    head, rest = raw.split(b"\r\n\r\n", 1)
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, chunks, True
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    return head, chunks, False


def test_openai_default_completion(openai_fake):
    status, headers, body = request(openai_fake, "POST", "/v1/chat/completions",
                                    {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "req_1"
    c = json.loads(body)
    assert c["object"] == "chat.completion" and c["model"] == "gpt-4o"
    assert c["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello from gpt-4o!", "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}]
    u = c["usage"]
    assert u["prompt_tokens"] == token_count(openai_fake.last["raw"])
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert "cached_tokens" in u["prompt_tokens_details"]


def test_openai_default_stream_with_usage(openai_fake):
    status, headers, body = request(openai_fake, "POST", "/v1/chat/completions",
                                    {"model": "gpt-4o-mini", "messages": [], "stream": True,
                                     "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    events = parse_sse(body)
    assert all(name is None for name, _ in events)  # data-only framing
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == "Hello from gpt-4o-mini!" and len(chunks[1:-2]) == 3
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_openai_stream_without_usage_has_no_usage(openai_fake):
    _, _, body = request(openai_fake, "POST", "/v1/chat/completions", {"model": "m", "messages": [], "stream": True})
    chunks = [json.loads(d) for _, d in parse_sse(body)[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_openai_models_and_unknown_path(openai_fake, ollama_fake):
    _, _, body = request(ollama_fake, "GET", "/v1/models")
    assert json.loads(body) == {"object": "list", "data": [
        {"id": "llama3.1", "object": "model", "created": 1700000000, "owned_by": "system"}]}
    status, _, body = request(openai_fake, "POST", "/v1/nope", {})
    assert status == 404
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_openai_rejects_bad_json(openai_fake):
    status, _, body = request(openai_fake, "POST", "/v1/chat/completions", b"{nope")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert openai_fake.last["body"] == b"{nope"


# -- Anthropic defaults -----------------------------------------------------------------

def test_anthropic_default_message(anthropic_fake):
    status, headers, body = request(anthropic_fake, "POST", "/v1/messages",
                                    {"model": "claude-x", "max_tokens": 10, "messages": []}, ANTH_HEADERS)
    assert status == 200 and headers["request-id"] == "req_1"
    m = json.loads(body)
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant"
    assert m["model"] == "claude-x"
    assert m["content"] == [{"type": "text", "text": "Hello from claude-x!"}]
    assert (m["stop_reason"], m["stop_sequence"]) == ("end_turn", None)
    assert m["usage"] == {"input_tokens": token_count(anthropic_fake.last["raw"]), "output_tokens": 3,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def test_anthropic_default_stream(anthropic_fake):
    status, headers, body = request(anthropic_fake, "POST", "/v1/messages",
                                    {"model": "claude-x", "max_tokens": 10, "messages": [], "stream": True},
                                    ANTH_HEADERS)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(body)
    data = [json.loads(d) for _, d in events]
    assert all(name == d["type"] for (name, _), d in zip(events, data))
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = data[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    assert "".join(d["delta"]["text"] for d in data[3:6]) == "Hello from claude-x!"
    assert data[7]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[7]["usage"] == {"output_tokens": 3}


def test_anthropic_count_tokens(anthropic_fake):
    status, _, body = request(anthropic_fake, "POST", "/v1/messages/count_tokens",
                              {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}, ANTH_HEADERS)
    assert status == 200 and json.loads(body) == {"input_tokens": token_count(anthropic_fake.last["raw"])}


@pytest.mark.parametrize("headers, status, kind", [
    ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ({"authorization": "Bearer k"}, 400, "invalid_request_error"),
    (ANTH_HEADERS, 404, "not_found_error"),
])
def test_anthropic_errors(anthropic_fake, headers, status, kind):
    got, resp_headers, body = request(anthropic_fake, "POST", "/v1/other", {}, headers)
    err = json.loads(body)
    assert got == status
    assert err["type"] == "error" and err["error"]["type"] == kind
    assert err["request_id"] == resp_headers["request-id"]


def test_anthropic_requires_max_tokens(anthropic_fake):
    status, _, body = request(anthropic_fake, "POST", "/v1/messages", {"model": "m", "messages": []}, ANTH_HEADERS)
    assert status == 400 and json.loads(body)["error"]["message"] == "max_tokens: Field required"


# -- recording and scripting ---------------------------------------------------------------

def test_records_requests(openai_fake):
    request(openai_fake, "POST", "/v1/chat/completions?api-version=2024-10-21&x=",
            {"model": "m", "messages": []}, {"Authorization": "Bearer sk-1", "X-Custom": "v"})
    r = openai_fake.last
    assert (r["method"], r["path"]) == ("POST", "/v1/chat/completions")
    assert r["query"] == {"api-version": "2024-10-21", "x": ""}
    assert r["headers"]["authorization"] == "Bearer sk-1" and r["headers"]["x-custom"] == "v"
    assert r["body"] == {"model": "m", "messages": []} and json.loads(r["raw"]) == r["body"]


def test_records_chunked_request_body(openai_fake):
    conn = http.client.HTTPConnection("127.0.0.1", int(openai_fake.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("POST", "/v1/chat/completions", body=iter([b'{"model":"m",', b'"messages":[]}']),
                 headers={"transfer-encoding": "chunked"}, encode_chunked=True)
    assert conn.getresponse().status == 200
    assert openai_fake.last["body"] == {"model": "m", "messages": []}


def test_enqueue_is_fifo_whatever_the_path_and_reset_clears(openai_fake):
    openai_fake.enqueue(429, vector("openai/error_429_rate_limit_exceeded.json"), headers={"retry-after": "1"})
    openai_fake.enqueue(json={"ok": True}, headers={"x-request-id": "req_custom"})
    openai_fake.enqueue(json={"never": "served"})
    status, headers, body = request(openai_fake, "GET", "/anything")
    assert status == 429 and headers["retry-after"] == "1" and headers["x-request-id"] == "req_1"
    assert json.loads(body) == vector_json("openai/error_429_rate_limit_exceeded.json")
    status, headers, body = request(openai_fake, "POST", "/v1/chat/completions", {})
    assert (status, headers["x-request-id"], json.loads(body)) == (200, "req_custom", {"ok": True})
    openai_fake.reset()
    assert openai_fake.requests == []
    status, headers, _ = request(openai_fake, "GET", "/v1/models")
    assert status == 200 and headers["x-request-id"] == "req_1"


def test_sse_vector_is_replayed_byte_for_byte_one_event_per_chunk(anthropic_fake):
    text = vector("anthropic/stream_text.sse")
    anthropic_fake.enqueue(sse=text)
    head, chunks, complete = dechunk(raw_exchange(anthropic_fake))
    assert complete and b"".join(chunks) == text.encode()
    assert len(chunks) == len(parse_sse(text.encode())) and all(c.endswith(b"\n\n") for c in chunks)
    assert b"content-type: text/event-stream; charset=utf-8" in head.lower()


def test_chunks_arrive_as_separate_writes(openai_fake):
    parts = [b'data: {"a"', b':1}\n', b"\ndata: [DONE]\n\n"]
    openai_fake.enqueue(chunks=parts, delay=0.2)
    conn = http.client.HTTPConnection("127.0.0.1", int(openai_fake.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    arrivals = []
    while block := resp.read1():
        arrivals.append((block, time.monotonic()))
    assert [b for b, _ in arrivals] == parts
    assert all(t2 - t1 >= 0.15 for (_, t1), (_, t2) in zip(arrivals, arrivals[1:]))


def test_close_after_truncates_a_stream(openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"), close_after=300)
    _, chunks, complete = dechunk(raw_exchange(openai_fake))
    assert not complete and len(b"".join(chunks)) == 300


def test_close_after_truncates_a_json_body(openai_fake):
    openai_fake.enqueue(json={"padding": "x" * 100}, close_after=10)
    with pytest.raises(http.client.IncompleteRead) as e:
        request(openai_fake, "GET", "/")
    assert len(e.value.partial) == 10


def test_delay_before_a_json_body(openai_fake):
    openai_fake.enqueue(json={}, delay=0.3)
    t0 = time.monotonic()
    request(openai_fake, "GET", "/")
    assert time.monotonic() - t0 >= 0.3


def test_hang_never_answers(openai_fake):
    openai_fake.enqueue(hang=True)
    with pytest.raises(TimeoutError):
        request(openai_fake, "POST", "/v1/chat/completions", {"model": "m"}, timeout=0.5)
    assert len(openai_fake.requests) == 1


def test_keep_alive_and_concurrency(openai_fake):
    conn = http.client.HTTPConnection("127.0.0.1", int(openai_fake.url.rsplit(":", 1)[1]), timeout=5)
    for _ in range(2):  # both on one connection: the first response must be fully delimited
        conn.request("POST", "/v1/chat/completions", body=b'{"model":"m","messages":[],"stream":true}')
        assert conn.getresponse().read().endswith(b"data: [DONE]\n\n")
    for _ in range(20):
        openai_fake.enqueue(json={}, delay=0.3)
    threads = [threading.Thread(target=request, args=(openai_fake, "GET", "/")) for _ in range(20)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 3
    assert len(openai_fake.requests) == 22


# -- the real SDKs accept the fakes ---------------------------------------------------------

def test_openai_sdk(openai_fake):
    client = openai_client(openai_fake, "sk")
    msgs = [{"role": "user", "content": "hi"}]
    c = client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert c.choices[0].message.content == "Hello from gpt-4o!" and c._request_id == "req_1"
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from gpt-4o!"
    assert chunks[-1].usage.completion_tokens == 3
    with client.chat.completions.stream(model="gpt-4o", messages=msgs) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "Hello from gpt-4o!" and final.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "gpt-4o"]
    assert openai_fake.last["headers"]["authorization"] == "Bearer sk"


def test_openai_sdk_errors(openai_fake):
    client = openai_client(openai_fake, "sk")
    openai_fake.enqueue(404, vector("openai/error_404_model_not_found.json"))
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nonexistent", messages=[])
    assert e.value.code == "model_not_found" and e.value.request_id == "req_1"
    openai_fake.enqueue(sse=vector("openai/stream_error_midstream.sse"))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="m", messages=[], stream=True))
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"), close_after=500)
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model="m", messages=[], stream=True))


def test_anthropic_sdk(anthropic_fake):
    client = anthropic_client(anthropic_fake, "sk-ant")
    kw = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    m = client.messages.create(**kw)
    assert m.content[0].text == "Hello from claude-x!" and m._request_id == "req_1"
    with client.messages.stream(**kw) as s:
        final = s.get_final_message()
    assert final.content[0].text == "Hello from claude-x!"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    n = client.messages.count_tokens(model="claude-x", messages=kw["messages"]).input_tokens
    assert n == token_count(anthropic_fake.last["raw"])


def test_scripted_turns_with_the_openai_sdk(openai_fake):
    """A responder's tool calls and text, as the SDK reads them, plain and streamed."""
    openai_fake.script(tool_loop("get_weather", {"city": "Paris"}))
    client = openai_client(openai_fake, "sk")
    msgs = [{"role": "user", "content": "Weather?"}]
    c = client.chat.completions.create(model="gpt-4o", messages=msgs)
    (call,) = c.choices[0].message.tool_calls
    assert c.choices[0].finish_reason == "tool_calls" and c.choices[0].message.content is None
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1_0", "get_weather",
                                                                                  {"city": "Paris"})
    with client.chat.completions.stream(model="gpt-4o", messages=msgs) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    msgs += [c.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    assert tool_result(openai_fake.requests[0]["body"]) is None
    answer = client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert answer.choices[0].message.content == "The tool said: sunny"
    openai_fake.script(lambda req: Turn(["a", "b"]))
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=msgs, stream=True))
    assert [ch.choices[0].delta.content for ch in chunks][1:3] == ["a", "b"]


def test_scripted_turns_with_the_anthropic_sdk(anthropic_fake):
    anthropic_fake.script(tool_loop("get_weather", {"city": "Paris"}))
    client = anthropic_client(anthropic_fake, "sk-ant")
    kw = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Weather?"}]}
    m = client.messages.create(**kw)
    with client.messages.stream(**kw) as s:
        final = s.get_final_message()
    for msg in (m, final):
        (use,) = msg.content
        assert (msg.stop_reason, use.type, use.name, use.input) == ("tool_use", "tool_use", "get_weather",
                                                                   {"city": "Paris"})
    kw["messages"] += [{"role": "assistant", "content": [use.model_dump()]},
                       {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                     "content": [{"type": "text", "text": "sunny"}]}]}]
    with client.messages.stream(**kw) as s:
        assert s.get_final_message().content[0].text == "The tool said: sunny"
    anthropic_fake.reset()
    assert client.messages.create(**kw).content[0].text == "Hello from claude-x!"


def test_anthropic_sdk_errors(anthropic_fake):
    client = anthropic_client(anthropic_fake, "sk-ant")
    kw = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(**kw)
    anthropic_fake.enqueue(sse=vector("anthropic/stream_error_midstream_overloaded.sse"))
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(**kw) as s:
            s.get_final_message()
    assert e.value.status_code == 200
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"), close_after=500)
    # anthropic 2.x lets the transport's RemoteProtocolError escape unwrapped
    with pytest.raises(Exception, match="incomplete chunked read"):
        with client.messages.stream(**kw) as s:
            s.get_final_message()


# -- harness helpers -----------------------------------------------------------------------

def test_with_port_sets_the_listener_and_leaves_other_configs_alone():
    cfg = {"listeners": {"egress_traffic": {"address": "0.0.0.0", "port": 1, "timeout": "30s"}}}
    assert "port: 4242" in _with_port(cfg, 4242) and cfg["listeners"]["egress_traffic"]["port"] == 1
    assert "address: 127.0.0.1" in _with_port("listeners:\n  egress_traffic: {port: 1}\n", 4242)
    assert _with_port("listeners: [oops", 4242) == "listeners: [oops"
