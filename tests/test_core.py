"""Both endpoints, aliases, streaming, errors, secrets.

Real clients (the `openai` and `anthropic` SDKs, curl, http.client) talk to the
real gateway over sockets; the gateway talks to the fake providers, which
record what they received. Every test checks both ends where there are two:
what the client got and what the provider was sent.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import subprocess

import anthropic
import openai
import pytest

from conftest import GATEWAY_ENV, anthropic_client, free_port, openai_client, start_gateway
from fakes import parse_sse, vector, vector_json

CLIENT_KEY = "test-key"
OPENAI_KEY = GATEWAY_ENV["OPENAI_API_KEY"]      # sk-openai-secret
ANTHROPIC_KEY = GATEWAY_ENV["ANTHROPIC_API_KEY"]  # sk-ant-secret
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY)
CLAUDE = "claude-3-5-sonnet-20241022"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def assert_clean(body: bytes | str, headers: dict | None = None, secrets=SECRETS):
    """Nothing a client receives may hold a stack trace or a provider key."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    assert "Traceback" not in text
    for secret in secrets:
        assert secret not in text
        for name, value in (headers or {}).items():
            assert secret not in value, f"provider key in response header {name}"


def raw_request(gw, method, path, body=None, headers=None, secrets=SECRETS):
    """One request over http.client; returns (status, lowercased headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    assert_clean(out[2], out[1], secrets)
    return out


def assert_no_client_key(req):
    """The client's own key never travels upstream: not in any header, not in the body."""
    for name, value in req["headers"].items():
        assert CLIENT_KEY not in value, f"client key forwarded in upstream header {name}"
    assert CLIENT_KEY.encode() not in req["raw"]


def assert_openai_upstream(req, model, key=OPENAI_KEY):
    assert req["method"] == "POST"
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == model
    if key is None:
        assert "authorization" not in req["headers"]
    else:
        assert req["headers"]["authorization"] == f"Bearer {key}"
    assert "x-api-key" not in req["headers"]
    assert_no_client_key(req)


def assert_anthropic_upstream(req, model=CLAUDE):
    assert req["method"] == "POST"
    assert req["path"] == "/v1/messages"
    assert req["body"]["model"] == model
    assert req["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", req["headers"]["anthropic-version"])
    assert "authorization" not in req["headers"]
    assert_no_client_key(req)


def user_text(message):
    """The text of an upstream user message, whether content is a string or blocks."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(b["text"] for b in content if b["type"] == "text")


def run_curl(gw, command):
    """Run a seed cURL example as written, with only the port changed."""
    command = command.replace("127.0.0.1:12000", f"127.0.0.1:{gw.port}")
    args = shlex.split(command.replace("\\\n", " "))
    assert args[0] == "curl"
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*"}
    result = subprocess.run(args, capture_output=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    return result.stdout


def curl_payload(command):
    """The bytes curl sends for `-d '...'`."""
    return shlex.split(command.replace("\\\n", " "))[-1].encode()


def anthropic_final_from_sse(text):
    """What the Anthropic SDK should assemble from a recorded stream: (stop_reason, content blocks)."""
    blocks, partial, stop_reason = {}, {}, None
    for _, data in parse_sse(text):
        e = json.loads(data)
        if e["type"] == "content_block_start":
            blocks[e["index"]] = dict(e["content_block"])
            partial[e["index"]] = ""
        elif e["type"] == "content_block_delta":
            block, d = blocks[e["index"]], e["delta"]
            if d["type"] == "text_delta":
                block["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                block["thinking"] += d["thinking"]
            elif d["type"] == "signature_delta":
                block["signature"] = d["signature"]
            elif d["type"] == "input_json_delta":
                partial[e["index"]] += d["partial_json"]
        elif e["type"] == "content_block_stop":
            block = blocks[e["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads(partial[e["index"]] or "{}")
        elif e["type"] == "message_delta":
            stop_reason = e["delta"]["stop_reason"]
    return stop_reason, [blocks[i] for i in sorted(blocks)]


BLOCK_FIELDS = {"text": ("text",), "thinking": ("thinking", "signature"), "tool_use": ("id", "name", "input")}


def block_view(block: dict):
    return {"type": block["type"], **{k: block[k] for k in BLOCK_FIELDS[block["type"]]}}


# ---------------------------------------------------------------------------------------------
# 1. The seed document, example by example (client-libraries.txt)
# ---------------------------------------------------------------------------------------------

def test_seed_openai_basic_usage(oai, openai_fake, anthropic_fake, ollama_fake):
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello, how are you?"}],
    )
    assert completion.choices[0].message.content == "Hello from gpt-4o-mini!"
    assert completion.object == "chat.completion"
    [req] = openai_fake.requests
    assert_openai_upstream(req, "gpt-4o-mini")
    assert req["body"]["messages"] == [{"role": "user", "content": "Hello, how are you?"}]
    assert req["body"]["max_tokens"] == 50
    assert anthropic_fake.requests == [] and ollama_fake.requests == []


def test_seed_openai_streaming(oai, openai_fake):
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=50,
        messages=[{"role": "user", "content": "Tell me a short story"}],
        stream=True,
    )
    printed = []
    for chunk in stream:  # the seed's loop, verbatim: every chunk must have a choice
        if chunk.choices[0].delta.content:
            printed.append(chunk.choices[0].delta.content)
    assert "".join(printed) == "Hello from gpt-4o-mini!"
    req = openai_fake.last
    assert_openai_upstream(req, "gpt-4o-mini")
    assert req["body"]["stream"] is True


def test_seed_openai_sdk_with_claude(oai, anthropic_fake, openai_fake):
    completion = oai.chat.completions.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        messages=[{"role": "user", "content": "Explain quantum computing briefly"}],
    )
    assert completion.choices[0].message.content == f"Hello from {CLAUDE}!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 3
    [req] = anthropic_fake.requests
    assert_anthropic_upstream(req)
    assert req["body"]["max_tokens"] == 50
    assert [m["role"] for m in req["body"]["messages"]] == ["user"]
    assert user_text(req["body"]["messages"][0]) == "Explain quantum computing briefly"
    assert openai_fake.requests == []


def test_seed_openai_sdk_with_ollama(oai, ollama_fake, openai_fake):
    completion = oai.chat.completions.create(
        model="llama3.1",
        max_tokens=50,
        messages=[{"role": "user", "content": "What's the capital of France?"}],
    )
    assert completion.choices[0].message.content == "Hello from llama3.1!"
    [req] = ollama_fake.requests
    assert_openai_upstream(req, "llama3.1", key=None)  # Ollama is configured without a key
    assert req["body"]["messages"] == [{"role": "user", "content": "What's the capital of France?"}]
    assert openai_fake.requests == []


def test_seed_anthropic_basic_usage(anth, anthropic_fake):
    message = anth.messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello, please respond briefly!"}],
    )
    assert message.content[0].text == f"Hello from {CLAUDE}!"
    assert message.stop_reason == "end_turn"
    [req] = anthropic_fake.requests
    assert_anthropic_upstream(req)
    assert req["body"]["max_tokens"] == 50
    assert req["body"]["messages"] == [{"role": "user", "content": "Hello, please respond briefly!"}]


def test_seed_anthropic_streaming(anth, anthropic_fake):
    with anth.messages.stream(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        messages=[{"role": "user", "content": "Tell me about artificial intelligence"}],
    ) as stream:
        texts = [text for text in stream.text_stream]
        final_message = stream.get_final_message()
        final_text = "".join(block.text for block in final_message.content if block.type == "text")
    assert texts == ["Hello", " from", f" {CLAUDE}!"]
    assert final_text == f"Hello from {CLAUDE}!"
    assert final_message.stop_reason == "end_turn"
    req = anthropic_fake.last
    assert_anthropic_upstream(req)
    assert req["body"]["stream"] is True


def test_seed_anthropic_sdk_with_openai_model(anth, openai_fake, anthropic_fake):
    message = anth.messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        messages=[{"role": "user", "content": "Explain machine learning in simple terms"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "Hello from gpt-4o-mini!"
    assert message.stop_reason == "end_turn"
    [req] = openai_fake.requests
    assert_openai_upstream(req, "gpt-4o-mini")
    assert req["body"]["max_completion_tokens"] == 50 and "max_tokens" not in req["body"]  # rules/providers/openai.yaml
    assert [user_text(m) for m in req["body"]["messages"]] == ["Explain machine learning in simple terms"]
    assert anthropic_fake.requests == []


def test_seed_anthropic_sdk_with_ollama(anth, ollama_fake):
    message = anth.messages.create(
        model="llama3.1",
        max_tokens=50,
        messages=[{"role": "user", "content": "What is Python programming?"}],
    )
    assert message.content[0].text == "Hello from llama3.1!"
    [req] = ollama_fake.requests
    assert_openai_upstream(req, "llama3.1", key=None)
    assert [user_text(m) for m in req["body"]["messages"]] == ["What is Python programming?"]


CURL_OPENAI_BASIC = """curl -X POST http://127.0.0.1:12000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer test-key" \\
  -d '{
    "model": "gpt-4o-mini",
    "messages": [
      {"role": "user", "content": "Hello!"}
    ],
    "max_tokens": 50
  }'"""

CURL_OPENAI_ALIAS = """curl -X POST http://127.0.0.1:12000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "fast-model",
    "messages": [
      {"role": "user", "content": "Summarize this text..."}
    ],
    "max_tokens": 100
  }'"""

CURL_OPENAI_STREAM = """curl -X POST http://127.0.0.1:12000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4o-mini",
    "messages": [
      {"role": "user", "content": "Tell me a story"}
    ],
    "stream": true,
    "max_tokens": 200
  }'"""

CURL_ANTHROPIC_BASIC = """curl -X POST http://127.0.0.1:12000/v1/messages \\
  -H "Content-Type: application/json" \\
  -H "x-api-key: test-key" \\
  -H "anthropic-version: 2023-06-01" \\
  -d '{
    "model": "claude-3-5-sonnet-20241022",
    "max_tokens": 50,
    "messages": [
      {"role": "user", "content": "Hello Claude!"}
    ]
  }'"""


def test_seed_curl_openai_basic(gateway, openai_fake):
    out = json.loads(run_curl(gateway, CURL_OPENAI_BASIC))
    assert out["choices"][0]["message"]["content"] == "Hello from gpt-4o-mini!"
    req = openai_fake.last
    assert_openai_upstream(req, "gpt-4o-mini")
    assert req["raw"] == curl_payload(CURL_OPENAI_BASIC)  # same dialect, same model: bytes untouched


def test_seed_curl_openai_alias(gateway, openai_fake):
    out = json.loads(run_curl(gateway, CURL_OPENAI_ALIAS))
    assert out["choices"][0]["message"]["content"] == "Hello from gpt-4o-mini!"
    req = openai_fake.last
    assert_openai_upstream(req, "gpt-4o-mini")  # alias rewritten to the upstream id
    sent = json.loads(curl_payload(CURL_OPENAI_ALIAS))
    assert {**req["body"], "model": "fast-model"} == sent  # nothing else changed


def test_seed_curl_openai_streaming(gateway, openai_fake):
    out = run_curl(gateway, CURL_OPENAI_STREAM)
    events = [data for _, data in parse_sse(out)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from gpt-4o-mini!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    req = openai_fake.last
    assert_openai_upstream(req, "gpt-4o-mini")
    assert req["body"]["stream"] is True and req["body"]["max_tokens"] == 200


def test_seed_curl_anthropic_basic(gateway, anthropic_fake):
    out = json.loads(run_curl(gateway, CURL_ANTHROPIC_BASIC))
    assert out["type"] == "message"
    assert out["content"] == [{"type": "text", "text": f"Hello from {CLAUDE}!"}]
    req = anthropic_fake.last
    assert_anthropic_upstream(req)
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert req["body"] == json.loads(curl_payload(CURL_ANTHROPIC_BASIC))


def test_seed_cross_client_openai_sdk_claude(gateway, anthropic_fake):
    from openai import OpenAI
    client = OpenAI(base_url=gateway.url + "/v1", api_key="test", max_retries=0)
    response = client.chat.completions.create(
        model="claude-3-5-sonnet-20241022",  # Claude model
        messages=[{"role": "user", "content": "Hello"}]
    )
    assert response.choices[0].message.content == f"Hello from {CLAUDE}!"
    req = anthropic_fake.last
    assert_anthropic_upstream(req)
    assert isinstance(req["body"]["max_tokens"], int) and req["body"]["max_tokens"] > 0  # required upstream
    assert "test" not in req["headers"].get("x-api-key", "")


def test_seed_cross_client_anthropic_sdk_openai_model(gateway, openai_fake):
    client = anthropic_client(gateway, "test")
    response = client.messages.create(
        model="gpt-4o-mini",  # OpenAI model
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello"}]
    )
    assert response.content[0].text == "Hello from gpt-4o-mini!"
    assert_openai_upstream(openai_fake.last, "gpt-4o-mini")


def test_seed_mix_and_match_alias(gateway, anthropic_fake):
    from openai import OpenAI

    def ask_question(client, question):
        return client.chat.completions.create(
            model="reasoning-model",  # Alias could point to any provider
            messages=[{"role": "user", "content": question}]
        )

    openai_client = OpenAI(base_url=gateway.url + "/v1", api_key="test", max_retries=0)
    response = ask_question(openai_client, "Solve this math problem...")
    assert response.choices[0].message.content == f"Hello from {CLAUDE}!"
    req = anthropic_fake.last
    assert_anthropic_upstream(req, CLAUDE)  # reasoning-model -> claude-3-5-sonnet-20241022
    assert user_text(req["body"]["messages"][0]) == "Solve this math problem..."


def test_seed_openai_error_handling_unknown_model(gateway, openai_fake, anthropic_fake, ollama_fake):
    client = openai_client(gateway, "test")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="nonexistent-model",
            messages=[{"role": "user", "content": "Hello"}]
        )
    e = info.value
    assert e.status_code == 404
    assert "nonexistent-model" in e.message
    for available in ("fast-model", "reasoning-model", "gpt-4o-mini", "llama3.1"):
        assert available in e.message
    assert set(e.body) == {"message", "type", "param", "code"}
    assert_clean(e.response.text)
    assert openai_fake.requests == anthropic_fake.requests == ollama_fake.requests == []


def test_seed_anthropic_error_handling_unknown_model(gateway, openai_fake, anthropic_fake):
    client = anthropic_client(gateway, "test")
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="nonexistent-model",
            max_tokens=50,
            messages=[{"role": "user", "content": "Hello"}]
        )
    e = info.value
    assert e.status_code == 404
    assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error"
    message = e.body["error"]["message"]
    assert "nonexistent-model" in message
    for available in ("fast-model", CLAUDE, "gpt-4o-mini"):
        assert available in message
    assert openai_fake.requests == anthropic_fake.requests == []


@pytest.mark.parametrize("model", ["fast-model", "openai/gpt-4o-mini"])
def test_seed_best_practice_model_names(oai, openai_fake, model):
    """'Good - uses semantic alias' and 'Less ideal - hardcoded provider model' both work."""
    response = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}])
    assert response.choices[0].message.content == "Hello from gpt-4o-mini!"
    assert_openai_upstream(openai_fake.last, "gpt-4o-mini")


@pytest.mark.parametrize("env_value", [None, "fast-model", "reasoning-model"])
def test_seed_environment_based_alias(oai, openai_fake, anthropic_fake, monkeypatch, env_value):
    if env_value is None:
        monkeypatch.delenv("MODEL_ALIAS", raising=False)
    else:
        monkeypatch.setenv("MODEL_ALIAS", env_value)
    client = oai
    # Development uses cheaper/faster models
    model = os.getenv("MODEL_ALIAS", "dev.chat.v1")
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello"}]
    )
    if env_value == "reasoning-model":
        assert response.choices[0].message.content == f"Hello from {CLAUDE}!"
        assert_anthropic_upstream(anthropic_fake.last)
    else:  # dev.chat.v1 and fast-model both target gpt-4o-mini
        assert response.choices[0].message.content == "Hello from gpt-4o-mini!"
        assert_openai_upstream(openai_fake.last, "gpt-4o-mini")


def chat_with_fallback(client, messages, primary_model="smart-model", fallback_model="fast-model"):
    try:
        return client.chat.completions.create(model=primary_model, messages=messages)
    except Exception as e:
        print(f"Primary model failed, trying fallback: {e}")
        return client.chat.completions.create(model=fallback_model, messages=messages)


def test_seed_graceful_fallback_primary_answers(oai, openai_fake):
    response = chat_with_fallback(oai, [{"role": "user", "content": "Hello"}])
    assert response.choices[0].message.content == "Hello from gpt-4o!"
    assert [r["body"]["model"] for r in openai_fake.requests] == ["gpt-4o"]  # smart-model -> gpt-4o


def test_seed_graceful_fallback_primary_fails(oai, openai_fake, capsys):
    openai_fake.enqueue(500, vector("openai/error_500_server_error.json"))
    response = chat_with_fallback(oai, [{"role": "user", "content": "Hello"}])
    assert response.choices[0].message.content == "Hello from gpt-4o-mini!"
    assert [r["body"]["model"] for r in openai_fake.requests] == ["gpt-4o", "gpt-4o-mini"]
    assert "Primary model failed" in capsys.readouterr().out
    for req in openai_fake.requests:
        assert_openai_upstream(req, req["body"]["model"])


# ---------------------------------------------------------------------------------------------
# 2./3. Same-dialect fidelity
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["openai/chat_completion_tool_call.json", "openai/chat_completion_text.json",
                                  "openai/chat_completion_parallel_tool_calls.json"])
def test_openai_nonstream_body_as_provider_sent_it(gateway, openai_fake, name):
    sent = vector_json(name)
    openai_fake.enqueue(body=vector(name))
    status, headers, body = raw_request(gateway, "POST", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "weather in Paris?"}]})
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    got = json.loads(body)
    assert got.pop("model") in (sent.pop("model"), "gpt-4o-mini")  # the model may be rewritten
    assert got == sent


def test_openai_nonstream_tool_calls_through_sdk(oai, openai_fake):
    sent = vector_json("openai/chat_completion_parallel_tool_calls.json")
    openai_fake.enqueue(json=sent)
    completion = oai.chat.completions.create(model="fast-model", messages=[{"role": "user", "content": "x"}])
    got = [(c.id, c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls]
    want = [(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in sent["choices"][0]["message"]["tool_calls"]]
    assert got == want and len(want) > 1
    assert completion.choices[0].finish_reason == sent["choices"][0]["finish_reason"]
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == \
        (sent["usage"]["prompt_tokens"], sent["usage"]["total_tokens"])


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_stream_usage_chunk_only_when_asked(oai, openai_fake, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **extra))
    req = openai_fake.last
    if include_usage:  # (the gateway may ask for usage itself, for its accounting: not checked when not asked)
        assert req["body"]["stream_options"] == {"include_usage": True}
    usage_chunks = [c for c in chunks if c.usage is not None]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from gpt-4o-mini!"
    if include_usage:
        assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == 3
        assert chunks[-1].usage.prompt_tokens == len(req["raw"]) // 4 + 1
    else:
        assert usage_chunks == []
        assert all(c.choices for c in chunks)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "fast-model"])
@pytest.mark.parametrize("name", ["openai/stream_tool_call_with_usage.sse", "openai/stream_parallel_tool_calls_modern.sse"])
def test_openai_stream_bytes_exactly_as_sent(gateway, openai_fake, model, name):
    openai_fake.enqueue(sse=vector(name))
    status, headers, body = raw_request(gateway, "POST", "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "weather?"}], "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == vector(name).encode()
    assert_openai_upstream(openai_fake.last, "gpt-4o-mini")


def test_openai_stream_tool_call_through_sdk(oai, openai_fake):
    text = vector("openai/stream_tool_call_with_usage.sse")
    openai_fake.enqueue(sse=text)
    chunks = list(oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], stream=True,
        stream_options={"include_usage": True}))
    expected = [json.loads(d) for _, d in parse_sse(text) if d != "[DONE]"]
    assert [c.model_dump(exclude_unset=True) for c in chunks] == expected
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(args)  # the argument fragments reassemble into JSON


@pytest.mark.parametrize("name,model,upstream", [
    ("openai/request_multiturn_tool_results.json", "gpt-4o", "gpt-4o"),
    ("openai/request_image_data_url.json", "gpt-4o-mini", "gpt-4o-mini"),
    ("openai/request_parallel_tools.json", "fast-model", "gpt-4o-mini"),
    ("openai/request_stream_parallel_tools.json", "smart-model", "gpt-4o"),
])
def test_openai_request_tools_and_multipart_untouched(gateway, openai_fake, name, model, upstream):
    body = {**vector_json(name), "model": model}
    raw = json.dumps(body, indent=1).encode()
    status, _, _ = raw_request(gateway, "POST", "/v1/chat/completions", raw)
    assert status == 200
    req = openai_fake.last
    assert_openai_upstream(req, upstream)
    if model == upstream:
        assert req["raw"] == raw  # fast path: the very bytes the client sent
    assert {**req["body"], "model": model} == body


def test_openai_request_tools_and_multipart_via_sdk(oai, openai_fake):
    body = vector_json("openai/request_multiturn_tool_results.json")
    image = vector_json("openai/request_image_data_url.json")
    messages = body["messages"] + image["messages"][1:]
    oai.chat.completions.create(model="gpt-4o", messages=messages, tools=body["tools"], tool_choice="auto")
    req = openai_fake.last
    assert_openai_upstream(req, "gpt-4o")
    assert req["body"]["messages"] == messages
    assert req["body"]["tools"] == body["tools"]


@pytest.mark.parametrize("name", ["anthropic/stream_text_then_tool_use.sse", "anthropic/stream_thinking_then_tool_use.sse",
                                  "anthropic/stream_parallel_tool_use.sse", "anthropic/stream_text.sse"])
def test_anthropic_stream_vector_through_sdk(anth, anthropic_fake, name):
    text = vector(name)
    stop_reason, blocks = anthropic_final_from_sse(text)
    anthropic_fake.enqueue(sse=text)
    with anth.messages.stream(model=CLAUDE, max_tokens=1024,
                              messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert [block_view(b.model_dump()) for b in final.content] == [block_view(b) for b in blocks]
    assert final.stop_reason == stop_reason
    assert "message_stop" in events
    assert_anthropic_upstream(anthropic_fake.last)


@pytest.mark.parametrize("model", [CLAUDE, "reasoning-model"])
@pytest.mark.parametrize("name", ["anthropic/stream_text_then_tool_use.sse", "anthropic/stream_thinking_then_tool_use.sse"])
def test_anthropic_stream_bytes_exactly_as_sent(gateway, anthropic_fake, name, model):
    anthropic_fake.enqueue(sse=vector(name))
    status, headers, body = raw_request(gateway, "POST", "/v1/messages", {
        "model": model, "max_tokens": 1024, "stream": True,
        "messages": [{"role": "user", "content": "weather?"}]},
        headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == vector(name).encode()  # complete, in order, byte for byte
    assert_anthropic_upstream(anthropic_fake.last)


def test_anthropic_nonstream_body_as_provider_sent_it(gateway, anthropic_fake):
    sent = vector_json("anthropic/message_thinking_tool_use.json")
    anthropic_fake.enqueue(body=vector("anthropic/message_thinking_tool_use.json"))
    status, _, body = raw_request(gateway, "POST", "/v1/messages", {
        "model": CLAUDE, "max_tokens": 1024, "messages": [{"role": "user", "content": "x"}]},
        headers={"anthropic-version": "2023-06-01"})
    assert status == 200
    got = json.loads(body)
    assert got.pop("model") in (sent.pop("model"), CLAUDE)
    assert got == sent


def test_anthropic_request_untouched(gateway, anthropic_fake):
    body = {**vector_json("anthropic/request_multiturn_thinking_tool_result.json"), "model": CLAUDE}
    raw = json.dumps(body).encode()
    status, _, _ = raw_request(gateway, "POST", "/v1/messages", raw,
                               headers={"authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01"})
    assert status == 200
    req = anthropic_fake.last
    assert_anthropic_upstream(req)
    assert req["body"] == body


# ---------------------------------------------------------------------------------------------
# 4. Errors in the client's dialect
# ---------------------------------------------------------------------------------------------

def assert_openai_envelope(body: bytes, status_type=None):
    doc = json.loads(body)
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    if status_type:
        assert doc["error"]["type"] == status_type
    return doc["error"]


def assert_anthropic_envelope(body: bytes, error_type=None):
    doc = json.loads(body)
    assert doc["type"] == "error"
    assert set(doc["error"]) == {"type", "message"}
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    if error_type:
        assert doc["error"]["type"] == error_type
    return doc["error"]


@pytest.mark.parametrize("raw", [b'{"model": "gpt-4o-mini", "messages": [', b"not json at all", b""])
def test_invalid_json_openai(gateway, openai_fake, raw):
    status, headers, body = raw_request(gateway, "POST", "/v1/chat/completions", raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    err = assert_openai_envelope(body, "invalid_request_error")
    assert "JSON" in err["message"]
    assert openai_fake.requests == []


@pytest.mark.parametrize("raw", [b'{"model": "claude", "max_tokens": 5', b"\xff\xfe"])
def test_invalid_json_anthropic(gateway, anthropic_fake, raw):
    status, headers, body = raw_request(gateway, "POST", "/v1/messages", raw,
                                        headers={"anthropic-version": "2023-06-01"})
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    err = assert_anthropic_envelope(body, "invalid_request_error")
    assert "JSON" in err["message"]
    assert anthropic_fake.requests == []


@pytest.mark.parametrize("path,envelope", [("/v1/chat/completions", assert_openai_envelope),
                                           ("/v1/messages", assert_anthropic_envelope)])
@pytest.mark.parametrize("raw", [b"[]", b'"hello"', b"42", b"null"])
def test_json_that_is_not_an_object(gateway, path, envelope, raw):
    status, _, body = raw_request(gateway, "POST", path, raw)
    assert status == 400
    envelope(body)


def test_anthropic_without_max_tokens(anth, anthropic_fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        anth.post("/v1/messages", cast_to=object,
                  body={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]})
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]
    assert anthropic_fake.requests == []


def test_openai_without_messages(oai, openai_fake):
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/chat/completions", cast_to=object, body={"model": "gpt-4o-mini"})
    e = info.value
    assert e.status_code == 400
    assert e.param == "messages"
    assert "messages" in e.message
    assert openai_fake.requests == []


def test_openai_role_of_the_wrong_type(oai, openai_fake):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": 7, "content": "hi"}])
    assert info.value.param == "messages[0].role"
    assert "messages[0].role" in info.value.message
    assert openai_fake.requests == []


def test_anthropic_role_of_the_wrong_type(anth, anthropic_fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        anth.messages.create(model=CLAUDE, max_tokens=10,
                             messages=[{"role": "user", "content": "a"}, {"role": None, "content": "hi"}])
    assert "messages[1].role" in info.value.body["error"]["message"]
    assert anthropic_fake.requests == []


def test_openai_missing_model(gateway, openai_fake):
    status, _, body = raw_request(gateway, "POST", "/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 400
    err = assert_openai_envelope(body, "invalid_request_error")
    assert err["param"] == "model"
    assert openai_fake.requests == []


OPENAI_CLASSES = {401: openai.AuthenticationError, 404: openai.NotFoundError, 429: openai.RateLimitError,
                  500: openai.InternalServerError, 503: openai.InternalServerError}
ANTHROPIC_CLASSES = {401: anthropic.AuthenticationError, 404: anthropic.NotFoundError, 429: anthropic.RateLimitError,
                     500: anthropic.InternalServerError, 529: anthropic.OverloadedError}
OPENAI_ERROR_VECTORS = {401: "openai/error_401_invalid_api_key.json", 404: "openai/error_404_model_not_found.json",
                        429: "openai/error_429_rate_limit_exceeded.json", 500: "openai/error_500_server_error.json"}
ANTHROPIC_ERROR_VECTORS = {401: "anthropic/error_401_authentication.json", 404: "anthropic/error_404_not_found.json",
                           429: "anthropic/error_429_rate_limit.json", 500: "anthropic/error_500_api_error.json",
                           529: "anthropic/error_529_overloaded.json"}
RETRY_HEADERS = {429: {"retry-after": "17"}}


@pytest.mark.parametrize("status", sorted(OPENAI_ERROR_VECTORS))
def test_upstream_error_openai_client_openai_provider(oai, openai_fake, status):
    name = OPENAI_ERROR_VECTORS[status]
    openai_fake.enqueue(status, vector(name), headers=RETRY_HEADERS.get(status))
    with pytest.raises(OPENAI_CLASSES[status]) as info:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    e, sent = info.value, vector_json(name)["error"]
    assert e.status_code == status
    assert_clean(e.response.text, dict(e.response.headers))
    assert (e.type, e.code) == (sent["type"], sent["code"])
    if status != 401:  # the 401 vector echoes a (masked) key, which the gateway redacts
        assert e.body == sent
    if status == 429:
        assert e.response.headers["retry-after"] == "17"


@pytest.mark.parametrize("status", sorted(ANTHROPIC_ERROR_VECTORS))
def test_upstream_error_anthropic_client_anthropic_provider(anth, anthropic_fake, status):
    name = ANTHROPIC_ERROR_VECTORS[status]
    anthropic_fake.enqueue(status, vector(name), headers=RETRY_HEADERS.get(status))
    with pytest.raises(ANTHROPIC_CLASSES[status]) as info:
        anth.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    e = info.value
    assert e.status_code == status
    assert_clean(e.response.text, dict(e.response.headers))
    assert e.body == vector_json(name)
    if status == 429:
        assert e.response.headers["retry-after"] == "17"


@pytest.mark.parametrize("status", sorted(ANTHROPIC_ERROR_VECTORS))
def test_upstream_error_openai_client_anthropic_provider(oai, anthropic_fake, status):
    name = ANTHROPIC_ERROR_VECTORS[status]
    anthropic_fake.enqueue(status, vector(name), headers=RETRY_HEADERS.get(status))
    # 529 is Anthropic-only; OpenAI clients get the nearest status they know (rules/dialects/openai.yaml)
    expected = 503 if status == 529 else status
    with pytest.raises(OPENAI_CLASSES[expected]) as info:
        oai.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    e = info.value
    assert e.status_code == expected
    err = assert_openai_envelope(e.response.content)
    assert err["message"] == vector_json(name)["error"]["message"]
    assert_clean(e.response.text, dict(e.response.headers))
    if status == 429:
        assert e.response.headers["retry-after"] == "17"


@pytest.mark.parametrize("status", sorted(OPENAI_ERROR_VECTORS))
def test_upstream_error_anthropic_client_openai_provider(anth, openai_fake, status):
    name = OPENAI_ERROR_VECTORS[status]
    openai_fake.enqueue(status, vector(name), headers=RETRY_HEADERS.get(status))
    with pytest.raises(ANTHROPIC_CLASSES[status]) as info:
        anth.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    e = info.value
    assert e.status_code == status
    err = assert_anthropic_envelope(e.response.content)
    if status != 401:
        assert err["message"] == vector_json(name)["error"]["message"]
    assert_clean(e.response.text, dict(e.response.headers))
    if status == 429:
        assert e.response.headers["retry-after"] == "17"


def test_upstream_503_reaches_anthropic_client_as_overloaded(anth, openai_fake):
    openai_fake.enqueue(503, json={"error": {"message": "The engine is currently overloaded", "type": "server_error",
                                             "param": None, "code": None}})
    with pytest.raises(anthropic.OverloadedError) as info:
        anth.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 529
    assert "overloaded" in info.value.body["error"]["message"]


def test_openai_stream_with_upstream_error_is_json_not_sse(gateway, oai, openai_fake):
    openai_fake.enqueue(429, vector("openai/error_429_rate_limit_exceeded.json"), headers={"retry-after": "3"})
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    openai_fake.enqueue(500, vector("openai/error_500_server_error.json"))
    status, headers, body = raw_request(gateway, "POST", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert status == 500
    assert headers["content-type"].startswith("application/json")
    assert_openai_envelope(body, "server_error")


def test_anthropic_stream_with_upstream_error_is_json_not_sse(gateway, anth, anthropic_fake):
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(anthropic.OverloadedError):
        with anth.messages.stream(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    status, headers, body = raw_request(gateway, "POST", "/v1/messages", {
        "model": CLAUDE, "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"})
    assert status == 529
    assert headers["content-type"].startswith("application/json")
    assert_anthropic_envelope(body, "overloaded_error")


def test_cross_dialect_stream_with_upstream_error_is_json(gateway, openai_fake, anthropic_fake):
    """OpenAI client streaming from Claude, Anthropic client streaming from GPT: errors stay JSON."""
    anthropic_fake.enqueue(429, vector("anthropic/error_429_rate_limit.json"), headers={"retry-after": "2"})
    status, headers, body = raw_request(gateway, "POST", "/v1/chat/completions", {
        "model": CLAUDE, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert (status, headers["retry-after"]) == (429, "2")
    assert headers["content-type"].startswith("application/json")
    assert_openai_envelope(body)
    openai_fake.enqueue(401, vector("openai/error_401_invalid_api_key.json"))
    status, headers, body = raw_request(gateway, "POST", "/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401
    assert headers["content-type"].startswith("application/json")
    assert_anthropic_envelope(body, "authentication_error")


# ---------------------------------------------------------------------------------------------
# 5. Secrets
# ---------------------------------------------------------------------------------------------

def test_provider_401_echoing_openai_key_is_redacted(gateway, oai, anth, openai_fake):
    leak = {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}. You can find your API key at "
                                 "https://platform.openai.com/account/api-keys.",
                      "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    openai_fake.enqueue(401, json=leak, headers={"www-authenticate": "Bearer"})
    with pytest.raises(openai.AuthenticationError) as info:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert OPENAI_KEY not in info.value.response.text
    assert "Incorrect API key provided" in info.value.message
    assert_clean(info.value.response.text, dict(info.value.response.headers))
    openai_fake.enqueue(401, json=leak)
    with pytest.raises(anthropic.AuthenticationError) as info:
        anth.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert_clean(info.value.response.text, dict(info.value.response.headers))
    openai_fake.enqueue(401, json=leak)
    status, _, body = raw_request(gateway, "POST", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401 and b"Incorrect API key provided" in body


def test_provider_401_echoing_anthropic_key_is_redacted(oai, anth, anthropic_fake):
    leak = {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {ANTHROPIC_KEY}"}}
    anthropic_fake.enqueue(401, json=leak)
    with pytest.raises(anthropic.AuthenticationError) as info:
        anth.messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert_clean(info.value.response.text, dict(info.value.response.headers))
    assert "invalid x-api-key" in info.value.response.text
    anthropic_fake.enqueue(401, json=leak)
    with pytest.raises(openai.AuthenticationError) as info:
        oai.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    assert_clean(info.value.response.text, dict(info.value.response.headers))


def test_response_headers_never_carry_provider_keys(gateway, openai_fake, anthropic_fake):
    for path, model in (("/v1/chat/completions", "gpt-4o-mini"), ("/v1/messages", CLAUDE)):
        status, headers, _ = raw_request(gateway, "POST", path, {
            "model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            headers={"anthropic-version": "2023-06-01"})
        assert status == 200
        assert_clean(b"", headers)
        assert not any(h in headers for h in ("x-api-key", "authorization"))


# ---------------------------------------------------------------------------------------------
# 6. /v1/models, /healthz, unknown paths
# ---------------------------------------------------------------------------------------------

def test_models_list(gateway, oai, openai_fake):
    ids = [m.id for m in oai.models.list()]
    for alias in ("fast-model", "smart-model", "reasoning-model", "dev.chat.v1"):
        assert alias in ids
    for model in ("gpt-4o-mini", "gpt-4o", CLAUDE, "llama3.1"):
        assert any(i == model or i.endswith("/" + model) for i in ids), model
    status, _, body = raw_request(gateway, "GET", "/v1/models")
    doc = json.loads(body)
    assert status == 200 and doc["object"] == "list"
    assert all(m["object"] == "model" and {"id", "created", "owned_by"} <= set(m) for m in doc["data"])
    assert len(ids) == len(set(ids))
    assert openai_fake.requests == []  # answered from the config, not from a provider


def test_healthz(gateway):
    status, headers, body = raw_request(gateway, "GET", "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/v1/completions"), ("GET", "/v1/chat")])
def test_unknown_path_openai_404(gateway, method, path):
    status, headers, body = raw_request(gateway, method, path, b"{}" if method == "POST" else None)
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert path in assert_openai_envelope(body)["message"]


def test_unknown_path_anthropic_404(gateway):
    status, _, body = raw_request(gateway, "POST", "/v1/messages/batches/x", b"{}",
                                  headers={"anthropic-version": "2023-06-01"})
    assert status == 404
    assert_anthropic_envelope(body, "not_found_error")


def test_wrong_method_is_json(gateway):
    status, _, body = raw_request(gateway, "GET", "/v1/chat/completions")
    assert status == 405
    assert_openai_envelope(body)


# ---------------------------------------------------------------------------------------------
# Provider unreachable, timeout, missing key: a gateway with a 1 s listener timeout
# ---------------------------------------------------------------------------------------------

PLAIN_KEY = "plainSECRETvalue42x"  # a key with no sk- prefix (Azure, Gemini, Groq... keys look like this)
UNSET_VAR = "ARCH_TEST_SURELY_UNSET_KEY"


@pytest.fixture(scope="module")
def aux(openai_fake, anthropic_fake):
    assert UNSET_VAR not in os.environ
    closed = free_port()  # bound once and released: nothing listens there
    config = {
        "version": "v0.1.0",
        "listeners": {"egress_traffic": {"address": "127.0.0.1", "port": 0, "message_format": "openai",
                                         "timeout": "1s", "max_retries": 0}},
        "llm_providers": [
            {"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY", "base_url": openai_fake.url},
            {"model": "openai/gpt-dead", "access_key": "$OPENAI_API_KEY", "base_url": f"http://127.0.0.1:{closed}"},
            {"model": "anthropic/claude-3-5-sonnet-20241022", "access_key": "${%s}" % UNSET_VAR,
             "base_url": anthropic_fake.url},
            {"model": "openai/gpt-4o", "access_key": "$ARCH_TEST_PLAIN_KEY", "base_url": openai_fake.url},
        ],
    }
    gw = start_gateway(config, env={**GATEWAY_ENV, "ARCH_TEST_PLAIN_KEY": PLAIN_KEY})
    yield gw
    gw.stop()
    for secret in (*SECRETS, PLAIN_KEY):
        assert secret not in gw.output()


@pytest.fixture
def aux_oai(aux):
    with openai_client(aux, CLIENT_KEY) as client:
        yield client


@pytest.fixture
def aux_anth(aux):
    with anthropic_client(aux, CLIENT_KEY) as client:
        yield client


def test_provider_unreachable_is_502(aux, aux_oai, aux_anth):
    with pytest.raises(openai.APIStatusError) as info:
        aux_oai.chat.completions.create(model="gpt-dead", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert "gpt-dead" in info.value.message
    assert_clean(info.value.response.text)
    assert_openai_envelope(info.value.response.content)
    with pytest.raises(anthropic.APIStatusError) as info:
        aux_anth.messages.create(model="gpt-dead", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert_anthropic_envelope(info.value.response.content, "api_error")
    status, headers, body = raw_request(aux, "POST", "/v1/chat/completions", {
        "model": "gpt-dead", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 502 and headers["content-type"].startswith("application/json")


def test_upstream_timeout_is_504(aux, aux_oai, openai_fake):
    openai_fake.enqueue(hang=True)
    with pytest.raises(openai.InternalServerError) as info:
        aux_oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 504
    assert_openai_envelope(info.value.response.content, "timeout")
    assert_clean(info.value.response.text)
    assert len(openai_fake.requests) == 1


def test_upstream_timeout_streaming_is_504_json(aux, openai_fake):
    openai_fake.enqueue(hang=True)
    status, headers, body = raw_request(aux, "POST", "/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 504
    assert headers["content-type"].startswith("application/json")
    assert_anthropic_envelope(body, "timeout_error")


def test_unset_key_variable_named_never_the_key(aux, aux_oai, aux_anth, anthropic_fake):
    assert UNSET_VAR in aux.output()  # reported at start
    with pytest.raises(openai.APIStatusError) as info:
        aux_oai.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code >= 500
    assert UNSET_VAR in info.value.message
    with pytest.raises(anthropic.APIStatusError) as info:
        aux_anth.messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert UNSET_VAR in info.value.body["error"]["message"]
    assert anthropic_fake.requests == []  # never sent without a key


def test_key_without_sk_prefix_is_redacted_too(aux, aux_oai, aux_anth, openai_fake):
    leak = {"error": {"message": f"Incorrect API key provided: {PLAIN_KEY}.", "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}}
    openai_fake.enqueue(401, json=leak)
    with pytest.raises(openai.AuthenticationError) as info:
        aux_oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert openai_fake.last["headers"]["authorization"] == f"Bearer {PLAIN_KEY}"
    assert_clean(info.value.response.text, dict(info.value.response.headers), secrets=(PLAIN_KEY,))
    openai_fake.enqueue(401, json=leak)
    with pytest.raises(anthropic.AuthenticationError) as info:
        aux_anth.messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert_clean(info.value.response.text, dict(info.value.response.headers), secrets=(PLAIN_KEY,))


# ---------------------------------------------------------------------------------------------
# Last: the session gateway's log, after everything above went through it
# ---------------------------------------------------------------------------------------------

def test_gateway_log_never_contains_provider_keys(gateway, oai, openai_fake):
    openai_fake.enqueue(401, json={"error": {"message": f"bad key {OPENAI_KEY}", "type": "invalid_request_error",
                                             "param": None, "code": "invalid_api_key"}})
    with pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    log = gateway.output()
    assert "/v1/chat/completions" in log  # the log does record requests
    for secret in SECRETS:
        assert secret not in log
