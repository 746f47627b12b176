"""Non-streaming: cross-dialect translation through real sockets.

An OpenAI SDK client calls the Anthropic model (served by `anthropic_fake`) and
an Anthropic SDK client calls OpenAI-compatible models (`openai_fake`,
`ollama_fake`). Each test checks both ends: what the SDK returned and what the
provider received (`fake.last["body"]`). Fake answers are the recorded vectors
in tests/vectors where one fits.
"""
from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from conftest import GATEWAY_ENV, ROOT, gateway_config, openai_client, start_gateway
from fakes import vector, vector_json
from translate_util import CLAUDE, GPT, LLAMA, USER, anth_message, oai_chunk, oai_completion, oai_sse, raw_post

TOOLS_OAI = vector_json("openai/request_parallel_tools.json")["tools"]
TOOLS_ANTH = vector_json("anthropic/request_parallel_tools.json")["tools"]


def _body(fake):
    return fake.last["body"]


# --- text, both ways ------------------------------------------------------------------------

def test_openai_client_text_from_anthropic(oai, anthropic_fake):
    vec = vector_json("anthropic/message_text.json")
    anthropic_fake.enqueue(json=vec)
    before = int(time.time())
    resp = oai.chat.completions.create(model=CLAUDE, max_tokens=100,
                                       messages=[{"role": "system", "content": "Be brief."}, *USER])
    assert resp.object == "chat.completion"
    assert resp.id == "chatcmpl-" + vec["id"]
    assert before - 1 <= resp.created <= int(time.time()) + 1
    choice = resp.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content == vec["content"][0]["text"]
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (705, 31, 736)

    req = anthropic_fake.last
    assert req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == "sk-ant-secret"
    assert "anthropic-version" in req["headers"]
    body = req["body"]
    assert body["model"] == CLAUDE
    assert body["max_tokens"] == 100
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "stream" not in body or body["stream"] in (False, None)


def test_anthropic_client_text_from_openai(anth, openai_fake):
    vec = vector_json("openai/chat_completion_text.json")
    openai_fake.enqueue(json=vec)
    msg = anth.messages.create(model=GPT, max_tokens=100, system="Be brief.", messages=USER)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == vec["choices"][0]["message"]["content"]
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (14, 37)

    req = openai_fake.last
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-openai-secret"
    body = req["body"]
    assert body["model"] == GPT
    assert body["max_completion_tokens"] == 100  # OpenAI's name for it (rules/providers/openai.yaml `rename`)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_anthropic_client_text_from_ollama(anth, ollama_fake):
    msg = anth.messages.create(model=LLAMA, max_tokens=50, messages=USER)
    assert msg.content[0].text == "Hello from llama3.1!"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 3
    assert _body(ollama_fake)["model"] == LLAMA
    assert _body(ollama_fake)["messages"] == USER


def test_raw_anthropic_response_shape(gateway, openai_fake):
    """The JSON itself (not only the lenient SDK view): every required field present."""
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    status, headers, data = raw_post(gateway, "/v1/messages", {"model": GPT, "max_tokens": 10, "messages": USER})
    assert status == 200
    body = json.loads(data)
    assert {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"} <= body.keys()
    assert body["stop_sequence"] is None
    assert {"input_tokens", "output_tokens"} <= body["usage"].keys()


def test_raw_openai_response_shape(gateway, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    status, headers, data = raw_post(gateway, "/v1/chat/completions", {"model": CLAUDE, "messages": USER})
    assert status == 200
    body = json.loads(data)
    assert {"id", "object", "created", "model", "choices", "usage"} <= body.keys()
    msg = body["choices"][0]["message"]
    assert {"role", "content", "refusal"} <= msg.keys()
    assert body["choices"][0]["logprobs"] is None
    assert "end_turn" not in data.decode()  # the source vocabulary never leaks


# --- tools ---------------------------------------------------------------------------------

def test_tool_definitions_openai_to_anthropic(oai, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_parallel_tool_use.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, tools=TOOLS_OAI)
    tools = _body(anthropic_fake)["tools"]
    assert [t["name"] for t in tools] == ["add", "multiply"]
    for sent, got in zip(TOOLS_OAI, tools):
        assert got["input_schema"] == sent["function"]["parameters"]
        assert got["description"] == sent["function"]["description"]
        assert "function" not in got and "parameters" not in got


def test_tool_definitions_anthropic_to_openai(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_parallel_tool_calls.json"))
    anth.messages.create(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH)
    tools = _body(openai_fake)["tools"]
    assert [t["type"] for t in tools] == ["function", "function"]
    for sent, got in zip(TOOLS_ANTH, tools):
        assert got["function"]["name"] == sent["name"]
        assert got["function"]["description"] == sent["description"]
        assert got["function"]["parameters"] == sent["input_schema"]


def test_tool_without_schema_gets_an_object_schema(oai, anthropic_fake):
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "ok"}]))
    oai.chat.completions.create(model=CLAUDE, messages=USER, tools=[{"type": "function", "function": {"name": "ping"}}])
    assert _body(anthropic_fake)["tools"] == [{"name": "ping", "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "multiply"}}, None, {"type": "tool", "name": "multiply"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_tool_choice_openai_to_anthropic(oai, anthropic_fake, choice, parallel, expected):
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "ok"}]))
    kwargs = {}
    if choice is not None:
        kwargs["tool_choice"] = choice
    if parallel is not None:
        kwargs["parallel_tool_calls"] = parallel
    oai.chat.completions.create(model=CLAUDE, messages=USER, tools=TOOLS_OAI, **kwargs)
    assert _body(anthropic_fake)["tool_choice"] == expected


def test_no_tools_no_tool_choice_upstream(oai, anthropic_fake):
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "ok"}]))
    oai.chat.completions.create(model=CLAUDE, messages=USER)
    body = _body(anthropic_fake)
    assert "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize("choice, expected, parallel", [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "tool", "name": "add"}, {"type": "function", "function": {"name": "add"}}, None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
])
def test_tool_choice_anthropic_to_openai(anth, openai_fake, choice, expected, parallel):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH, tool_choice=choice)
    body = _body(openai_fake)
    assert body["tool_choice"] == expected
    assert body.get("parallel_tool_calls") == parallel


def test_parallel_tool_calls_anthropic_to_openai_response(oai, anthropic_fake):
    vec = vector_json("anthropic/message_parallel_tool_use.json")
    anthropic_fake.enqueue(json=vec)
    resp = oai.chat.completions.create(model=CLAUDE, messages=USER, tools=TOOLS_OAI)
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.content == vec["content"][0]["text"]
    uses = [b for b in vec["content"] if b["type"] == "tool_use"]
    assert [c.id for c in msg.tool_calls] == [u["id"] for u in uses]
    assert [c.type for c in msg.tool_calls] == ["function", "function"]
    assert [c.function.name for c in msg.tool_calls] == ["add", "multiply"]
    assert [json.loads(c.function.arguments) for c in msg.tool_calls] == [u["input"] for u in uses]


def test_parallel_tool_calls_openai_to_anthropic_response(anth, openai_fake):
    vec = vector_json("openai/chat_completion_parallel_tool_calls.json")
    openai_fake.enqueue(json=vec)
    msg = anth.messages.create(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH)
    calls = vec["choices"][0]["message"]["tool_calls"]
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["tool_use", "tool_use"]  # content:null -> no empty text block
    assert [b.id for b in msg.content] == [c["id"] for c in calls]
    assert [b.name for b in msg.content] == ["GetWeatherArgs", "get_stock_price"]
    assert [b.input for b in msg.content] == [json.loads(c["function"]["arguments"]) for c in calls]


def test_compat_tool_call_without_id_gets_one(anth, openai_fake):
    """Compat servers (Ollama) may omit the call id: a tool_use still has one."""
    openai_fake.enqueue(json=oai_completion({"tool_calls": [{"type": "function", "function": {
        "name": "add", "arguments": {"a": 1, "b": 2}}}]}, finish="tool_calls"))
    msg = anth.messages.create(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH)
    assert msg.content[0].type == "tool_use"
    assert msg.content[0].id
    assert msg.content[0].input == {"a": 1, "b": 2}


def test_two_turn_tool_conversation_openai_client(oai, anthropic_fake):
    """OpenAI `tool` messages become ONE user turn of tool_result blocks, in order, ids kept;
    a user message after them joins that turn after the results."""
    req = vector_json("openai/request_multiturn_tool_results.json")
    req["model"] = CLAUDE
    req["messages"].append({"role": "user", "content": "And now in words?"})
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    resp = oai.chat.completions.create(**req)
    assert resp.choices[0].message.content.startswith("The results are")

    body = _body(anthropic_fake)
    assert body["max_tokens"] == 4000
    assert body["system"] == [{"type": "text", "text": req["messages"][0]["content"]}]
    assert body["tool_choice"] == {"type": "auto"}
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] in ("Add and multiply the number 2 and 3",
                                  [{"type": "text", "text": "Add and multiply the number 2 and 3"}])
    calls = req["messages"][2]["tool_calls"]
    assert msgs[1]["content"] == [
        {"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": {"a": 2, "b": 3}} for c in calls]
    last = msgs[2]["content"]
    assert [b["type"] for b in last] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in last[:2]] == [c["id"] for c in calls]
    assert last[0]["content"] in ("5", [{"type": "text", "text": "5"}])
    assert last[1]["content"] in ("6", [{"type": "text", "text": "6"}])
    assert last[2] == {"type": "text", "text": "And now in words?"}


def test_two_turn_tool_conversation_openai_client_vector_as_is(oai, anthropic_fake):
    req = vector_json("openai/request_multiturn_tool_results.json")
    req["model"] = CLAUDE
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(**req)
    msgs = _body(anthropic_fake)["messages"]
    assert len(msgs) == 3 and msgs[2]["role"] == "user"
    assert [(b["type"], b["tool_use_id"]) for b in msgs[2]["content"]] == [
        ("tool_result", "call_fifE5poZ3dg3JDUKGFi48NGq"), ("tool_result", "call_cvvIly4eGLZUYOMhAviT8jAF")]


def test_two_turn_tool_conversation_anthropic_client(anth, openai_fake):
    """Anthropic tool_result blocks become `tool` messages first, then the turn's other
    content as one user message."""
    req = vector_json("anthropic/request_multiturn_tool_results.json")
    req["model"] = GPT
    req["messages"][2]["content"].append({"type": "text", "text": "And now in words?"})
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(**req)

    body = _body(openai_fake)
    assert body["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in body
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert msgs[0]["content"] == req["system"][0]["text"]
    assert msgs[1]["content"] in ("Add and multiply the number 2 and 3",
                                  [{"type": "text", "text": "Add and multiply the number 2 and 3"}])
    assistant = msgs[2]
    assert assistant["content"] == "I'll add and multiply the numbers 2 and 3 for you."
    uses = [b for b in req["messages"][1]["content"] if b["type"] == "tool_use"]
    assert [c["id"] for c in assistant["tool_calls"]] == [u["id"] for u in uses]
    assert [c["type"] for c in assistant["tool_calls"]] == ["function", "function"]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["add", "multiply"]
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [{"a": 2, "b": 3}] * 2
    assert [(m["tool_call_id"], m["content"]) for m in msgs[3:5]] == [(uses[0]["id"], "5"), (uses[1]["id"], "6")]
    assert msgs[5]["content"] in ("And now in words?", [{"type": "text", "text": "And now in words?"}])


def test_tool_result_error_is_marked(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=100, messages=[
        USER[0],
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                      "content": "boom"}]}])
    tool = _body(openai_fake)["messages"][2]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "toolu_1"
    assert "boom" in tool["content"] and tool["content"] != "boom"


@pytest.mark.parametrize("content", ["", None])
def test_empty_assistant_content_with_tool_calls_has_no_empty_text_block(oai, anthropic_fake, content):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=[
        USER[0],
        {"role": "assistant", "content": content, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": ""}])
    msgs = _body(anthropic_fake)["messages"]
    assert msgs[1] == {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "add", "input": {}}]}
    # an empty tool result is sent without content, not as an empty text block
    assert msgs[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1"}]}

    def texts(node):
        if isinstance(node, dict):
            if node.get("type") == "text":
                yield node.get("text")
            for v in node.values():
                yield from texts(v)
        elif isinstance(node, list):
            for v in node:
                yield from texts(v)

    assert all(t and t.strip() for t in texts(msgs))


# --- system, images, parameters ---------------------------------------------------------------

def test_several_system_and_developer_messages_all_kept_in_order(oai, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=[
        {"role": "system", "content": "S1"},
        {"role": "developer", "content": "D2"},
        {"role": "user", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": "S3a"}, {"type": "text", "text": "S3b"}]},
        {"role": "assistant", "content": "hi"},
        {"role": "developer", "content": "D4"},
        {"role": "user", "content": "go"},
    ])
    body = _body(anthropic_fake)
    system = body["system"]
    joined = system if isinstance(system, str) else "\n".join(b["text"] for b in system)
    positions = [joined.find(s) for s in ("S1", "D2", "S3a", "S3b", "D4")]
    assert -1 not in positions and positions == sorted(positions), system
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert all(m["role"] != "system" for m in body["messages"])


def test_system_only_request_becomes_a_user_turn(oai, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=[{"role": "system", "content": "Tell a joke"}])
    body = _body(anthropic_fake)
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    assert "Tell a joke" in json.dumps(body["messages"])


def test_anthropic_system_blocks_to_openai_system_message(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=100, messages=USER,
                         system=[{"type": "text", "text": "First rule."},
                                 {"type": "text", "text": "Second rule.", "cache_control": {"type": "ephemeral"}}])
    msgs = _body(openai_fake)["messages"]
    assert msgs[0]["role"] == "system"
    content = msgs[0]["content"]
    text = content if isinstance(content, str) else "\n".join(p["text"] for p in content)
    assert text.index("First rule.") < text.index("Second rule.")
    assert "cache_control" not in json.dumps(msgs)
    assert msgs[1:] == USER


def test_image_data_url_to_base64_source(oai, anthropic_fake):
    """openai/request_image_data_url.json becomes exactly anthropic/request_image_base64.json."""
    req = vector_json("openai/request_image_data_url.json")
    req["model"] = CLAUDE
    expected = vector_json("anthropic/request_image_base64.json")
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(**req)
    body = _body(anthropic_fake)
    assert body["messages"] == expected["messages"]
    assert body["system"] == expected["system"]
    assert body["max_tokens"] == expected["max_tokens"]


def test_image_base64_source_to_data_url(anth, openai_fake):
    """anthropic/request_image_base64.json becomes exactly openai/request_image_data_url.json."""
    req = vector_json("anthropic/request_image_base64.json")
    req["model"] = GPT
    expected = vector_json("openai/request_image_data_url.json")
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(**req)
    body = _body(openai_fake)
    assert body["messages"] == expected["messages"]


def test_image_http_url_both_ways(oai, anth, anthropic_fake, openai_fake):
    url = "https://example.com/cat.png"
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])
    assert _body(anthropic_fake)["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"}, {"type": "image", "source": {"type": "url", "url": url}}]

    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=10, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image", "source": {"type": "url", "url": url}}]}])
    assert _body(openai_fake)["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, 4096),
    ({"max_tokens": 55}, 55),
    ({"max_completion_tokens": 77}, 77),
    ({"max_tokens": 55, "max_completion_tokens": 77}, 77),
])
def test_max_tokens_openai_to_anthropic(oai, anthropic_fake, kwargs, expected):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, **kwargs)
    body = _body(anthropic_fake)
    assert body["max_tokens"] == expected
    assert "max_completion_tokens" not in body


def test_max_tokens_anthropic_to_openai(anth, openai_fake, ollama_fake):
    """OpenAI's reasoning models refuse max_tokens: OpenAI gets max_completion_tokens, other
    compatible servers the max_tokens they all know."""
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=321, messages=USER)
    body = _body(openai_fake)
    assert body["max_completion_tokens"] == 321 and "max_tokens" not in body
    anth.messages.create(model="llama3.1", max_tokens=123, messages=USER)
    body = _body(ollama_fake)
    assert body["max_tokens"] == 123 and "max_completion_tokens" not in body


def test_openai_client_max_tokens_passes_through_to_openai(oai, openai_fake):
    """A client speaking OpenAI chose its own field: the rename is for translations only."""
    oai.chat.completions.create(model=GPT, max_tokens=77, messages=USER)
    body = _body(openai_fake)
    assert body["max_tokens"] == 77 and "max_completion_tokens" not in body


@pytest.mark.parametrize("stop, expected", [
    ("END", ["END"]),
    (["a", "b"], ["a", "b"]),
    (["a", "  ", "b"], ["a", "b"]),   # whitespace-only sequences are rejected upstream
])
def test_stop_to_stop_sequences(oai, anthropic_fake, stop, expected):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, stop=stop)
    body = _body(anthropic_fake)
    assert body["stop_sequences"] == expected
    assert "stop" not in body


def test_stop_sequences_to_stop(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=10, messages=USER, stop_sequences=["x", "y"])
    body = _body(openai_fake)
    assert body["stop"] == ["x", "y"]
    assert "stop_sequences" not in body


@pytest.mark.parametrize("sent, expected", [(1.7, 1), (0.3, 0.3), (0, 0), (1, 1)])
def test_temperature_clamped_for_anthropic(oai, anthropic_fake, sent, expected):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, temperature=sent, top_p=0.9)
    body = _body(anthropic_fake)
    assert body["temperature"] == expected
    assert body["top_p"] == 0.9


def test_temperature_top_p_anthropic_to_openai(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=10, messages=USER,
                         extra_body={"temperature": 0.5, "top_p": 0.8, "top_k": 40})
    body = _body(openai_fake)
    assert (body["temperature"], body["top_p"]) == (0.5, 0.8)
    assert "top_k" not in body


def test_user_to_metadata_user_id(oai, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, user="u-42", seed=7, presence_penalty=0.5)
    body = _body(anthropic_fake)
    assert body["metadata"] == {"user_id": "u-42"}
    for dropped in ("user", "seed", "presence_penalty"):
        assert dropped not in body


def test_metadata_user_id_to_user(anth, openai_fake):
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=10, messages=USER, metadata={"user_id": "u-7"})
    body = _body(openai_fake)
    assert body["user"] == "u-7"
    assert "metadata" not in body


def test_n_greater_than_one_is_a_400_in_openai_envelope(oai, anthropic_fake):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=CLAUDE, messages=USER, n=2)
    err = exc.value
    assert err.status_code == 400
    assert set(err.body) >= {"message", "type", "param", "code"}
    assert err.body["type"] == "invalid_request_error"
    assert err.body["param"] == "n"
    assert anthropic_fake.requests == []


def test_anthropic_server_tools_on_openai_model_is_a_400_in_anthropic_envelope(anth, openai_fake):
    with pytest.raises(anthropic.BadRequestError) as exc:
        anth.messages.create(model=GPT, max_tokens=10, messages=USER,
                             tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}])
    err = exc.value
    assert err.status_code == 400
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "invalid_request_error"
    assert openai_fake.requests == []


# --- stop reasons (non-stream) ------------------------------------------------------------------

@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"),
])
def test_stop_reason_to_finish_reason(oai, anthropic_fake, stop_reason, finish):
    content = [{"type": "text", "text": "partial"}]
    if stop_reason == "tool_use":
        content.append({"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1}})
    anthropic_fake.enqueue(json=anth_message(content, stop_reason))
    resp = oai.chat.completions.create(model=CLAUDE, messages=USER)
    assert resp.choices[0].finish_reason == finish


@pytest.mark.parametrize("finish, message, stop_reason", [
    ("stop", {"content": "done"}, "end_turn"),
    ("length", {"content": "trunc"}, "max_tokens"),
    ("content_filter", {"content": None}, "refusal"),
    ("tool_calls", {"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
     "tool_use"),
    # compat upstreams (Ollama, Gemini) say "stop" while returning tool calls
    ("stop", {"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
     "tool_use"),
    (None, {"content": "hi"}, "end_turn"),
])
def test_finish_reason_to_stop_reason(anth, openai_fake, finish, message, stop_reason):
    openai_fake.enqueue(json=oai_completion(message, finish))
    msg = anth.messages.create(model=GPT, max_tokens=10, messages=USER)
    assert msg.stop_reason == stop_reason


def test_openai_refusal_message_to_anthropic(anth, openai_fake):
    openai_fake.enqueue(json=oai_completion({"content": None, "refusal": "I can't help with that."}, "stop"))
    msg = anth.messages.create(model=GPT, max_tokens=10, messages=USER)
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "I can't help with that."
    assert msg.stop_reason == "refusal"  # refusal -> text block + stop_reason "refusal"


# --- usage (non-stream) ------------------------------------------------------------------------

def test_usage_with_cache_tokens_anthropic_to_openai(oai, anthropic_fake):
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "x"}], usage={
        "input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 50}))
    u = oai.chat.completions.create(model=CLAUDE, messages=USER).usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (420, 50, 470)
    assert u.prompt_tokens_details.cached_tokens == 300
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_usage_with_cache_tokens_openai_to_anthropic(anth, openai_fake):
    openai_fake.enqueue(json=oai_completion({"content": "x"}, usage={
        "prompt_tokens": 500, "completion_tokens": 40, "total_tokens": 540,
        "prompt_tokens_details": {"cached_tokens": 200, "audio_tokens": 0}}))
    u = anth.messages.create(model=GPT, max_tokens=10, messages=USER).usage
    assert (u.input_tokens, u.output_tokens) == (300, 40)
    assert u.cache_read_input_tokens == 200
    assert u.cache_creation_input_tokens == 0


def test_usage_with_cache_write_tokens_openai_to_anthropic(anth, openai_fake):
    openai_fake.enqueue(json=oai_completion({"content": "x"}, usage={
        "prompt_tokens": 500, "completion_tokens": 40, "total_tokens": 540,
        "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 50}}))
    u = anth.messages.create(model=GPT, max_tokens=10, messages=USER).usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (250, 200, 50)


def test_usage_without_details_openai_to_anthropic(anth, openai_fake):
    openai_fake.enqueue(json=oai_completion({"content": "x"}, usage={
        "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}))
    u = anth.messages.create(model=GPT, max_tokens=10, messages=USER).usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens or 0) == (12, 3, 0)


# --- thinking ------------------------------------------------------------------------------------

def test_thinking_goes_to_reasoning_content_not_content(oai, anthropic_fake):
    vec = vector_json("anthropic/message_thinking_tool_use.json")
    anthropic_fake.enqueue(json=vec)
    resp = oai.chat.completions.create(model=CLAUDE, messages=USER, tools=TOOLS_OAI)
    msg = resp.choices[0].message
    thinking = vec["content"][0]["thinking"]
    assert msg.model_extra.get("reasoning_content") == thinking
    assert msg.content is None
    assert thinking not in json.dumps(resp.model_dump(exclude={"choices": {0: {"message": {"reasoning_content"}}}}))
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("weather", {"location": "Florence, Italy"})]
    assert resp.choices[0].finish_reason == "tool_calls"


def test_thinking_history_is_dropped_for_openai(anth, openai_fake):
    req = vector_json("anthropic/request_multiturn_thinking_tool_result.json")
    req.update(model=GPT, stream=False)
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(**req)
    body = _body(openai_fake)
    sent = json.dumps(body)
    assert "signature" not in sent and "thinking" not in sent
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    assert body["messages"][2]["tool_calls"][0]["id"] == "toolu_01Js4AMfx5qpTLhwTusnvT68"
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_01Js4AMfx5qpTLhwTusnvT68", "content": "40 C"}


# --- errors before any answer ---------------------------------------------------------------------

def test_anthropic_529_overloaded_reaches_openai_client_as_internal_server_error(oai, anthropic_fake):
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(openai.InternalServerError) as exc:
        oai.chat.completions.create(model=CLAUDE, messages=USER)
    err = exc.value
    assert err.status_code in (503, 529)
    assert set(err.body) == {"message", "type", "param", "code"}
    assert err.body["message"] == "Overloaded"
    assert err.body["type"] == "server_error"
    assert err.response.json()["error"] == err.body  # OpenAI-shaped body, not Anthropic's
    assert "type" not in err.response.json() or err.response.json()["type"] != "error"


def test_openai_429_reaches_anthropic_client_as_rate_limit_error(anth, openai_fake):
    openai_fake.enqueue(429, vector("openai/error_429_rate_limit_exceeded.json"), headers={"retry-after": "7"})
    with pytest.raises(anthropic.RateLimitError) as exc:
        anth.messages.create(model=GPT, max_tokens=10, messages=USER)
    err = exc.value
    assert err.status_code == 429
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.body["error"]["message"].startswith("Rate limit reached")
    assert err.response.headers.get("retry-after") == "7"


@pytest.mark.parametrize("status, name, cls, oai_type", [
    (400, "anthropic/error_400_invalid_request.json", openai.BadRequestError, "invalid_request_error"),
    (401, "anthropic/error_401_authentication.json", openai.AuthenticationError, "invalid_request_error"),
    (404, "anthropic/error_404_not_found.json", openai.NotFoundError, "invalid_request_error"),
    (429, "anthropic/error_429_rate_limit.json", openai.RateLimitError, "requests"),
    (500, "anthropic/error_500_api_error.json", openai.InternalServerError, "server_error"),
])
def test_anthropic_errors_to_openai_client(oai, anthropic_fake, status, name, cls, oai_type):
    anthropic_fake.enqueue(status, vector(name))
    with pytest.raises(cls) as exc:
        oai.chat.completions.create(model=CLAUDE, messages=USER)
    err = exc.value
    assert err.status_code == status
    assert set(err.body) == {"message", "type", "param", "code"}
    assert err.body["message"] == vector_json(name)["error"]["message"]
    assert err.body["type"] == oai_type


@pytest.mark.parametrize("status, name, cls, anth_type", [
    (400, "openai/error_400_context_length_exceeded.json", anthropic.BadRequestError, "invalid_request_error"),
    (401, "openai/error_401_invalid_api_key.json", anthropic.AuthenticationError, "authentication_error"),
    (404, "openai/error_404_model_not_found.json", anthropic.NotFoundError, "not_found_error"),
    (500, "openai/error_500_server_error.json", anthropic.InternalServerError, "api_error"),
])
def test_openai_errors_to_anthropic_client(anth, openai_fake, status, name, cls, anth_type):
    openai_fake.enqueue(status, vector(name))
    with pytest.raises(cls) as exc:
        anth.messages.create(model=GPT, max_tokens=10, messages=USER)
    err = exc.value
    assert err.status_code == status
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == anth_type
    assert err.body["error"]["message"]
    assert "sk-proj" not in json.dumps(err.body)  # provider key fragments never reach a client


def test_ollama_404_to_anthropic_client(anth, ollama_fake):
    ollama_fake.enqueue(404, vector("openai/error_404_ollama_model_not_found.json"))
    with pytest.raises(anthropic.NotFoundError) as exc:
        anth.messages.create(model=LLAMA, max_tokens=10, messages=USER)
    assert exc.value.body["error"]["type"] == "not_found_error"
    assert "try pulling it first" in exc.value.body["error"]["message"]


# --- the mapping is data: editing YAML alone changes it --------------------------------------------

def test_editing_rules_yaml_changes_the_mapping(tmp_path, openai_fake, anthropic_fake, ollama_fake):
    src = (ROOT / "rules/dialects/openai_to_anthropic.yaml").read_text()
    assert "`4096`" in src and "\n  metadata:" in src
    rules = tmp_path / "my-rules"
    (rules / "dialects").mkdir(parents=True)
    lines = []
    for line in src.splitlines():
        if line.startswith("  metadata:"):
            line = "  metadata: \"user && {user_id: join('', ['tenant-a:', user])}\""
        lines.append(line.replace("`4096`", "`1234`"))
    (rules / "dialects/openai_to_anthropic.yaml").write_text("\n".join(lines) + "\n")

    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["rules"] = [str(rules)]
    gw = start_gateway(config, env=GATEWAY_ENV)
    try:
        with openai_client(gw, "k") as client:
            anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
            client.chat.completions.create(model=CLAUDE, messages=USER, user="bob")
            body = _body(anthropic_fake)
            assert body["max_tokens"] == 1234
            assert body["metadata"] == {"user_id": "tenant-a:bob"}
            # the rest of the file still applies
            assert body["messages"] == USER
    finally:
        gw.stop()


def test_builtin_rules_default_max_tokens(oai, anthropic_fake):
    """Control for the test above: the shipped rules say 4096 and pass `user` as is."""
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, messages=USER, user="bob")
    assert _body(anthropic_fake)["max_tokens"] == 4096
    assert _body(anthropic_fake)["metadata"] == {"user_id": "bob"}


# --- tool names OpenAI would refuse (docs/wire-formats.md, pitfall 18) ----------------------------

LONG_TOOL = "mcp__github.create_pull_request_review_comment_on_a_specific_line_of_a_diff"  # 75 chars, a dot


def _short_names(body):
    return [t["function"]["name"] for t in body["tools"]]


def test_long_tool_names_are_shortened_for_openai_and_restored_for_the_client(anth, openai_fake):
    import re
    tools = [{"name": LONG_TOOL, "input_schema": {"type": "object", "properties": {}}},
             {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": LONG_TOOL, "input": {}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]
    openai_fake.enqueue(json=vector_json("openai/chat_completion_text.json"))
    anth.messages.create(model=GPT, max_tokens=50, tools=tools, messages=history,
                         tool_choice={"type": "tool", "name": LONG_TOOL})
    sent = _body(openai_fake)
    short, weather = _short_names(sent)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", short) and weather == "get_weather"  # valid names untouched
    assert sent["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == short

    # the provider calls the tool by the name it knows; the client hears its own name back
    call = {"id": "call_1", "type": "function", "function": {"name": short, "arguments": "{\"a\": 1}"}}
    openai_fake.enqueue(json=oai_completion({"tool_calls": [call]}, finish="tool_calls"))
    message = anth.messages.create(model=GPT, max_tokens=50, tools=tools, messages=USER)
    [block] = message.content
    assert (block.type, block.name, block.input) == ("tool_use", LONG_TOOL, {"a": 1})

    first = {"index": 0, "id": "call_2", "type": "function", "function": {"name": short, "arguments": ""}}
    openai_fake.enqueue(sse=oai_sse([oai_chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
                                     oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                                     oai_chunk({}, "tool_calls")]))
    with anth.messages.stream(model=GPT, max_tokens=50, tools=tools, messages=USER) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.name) for b in final.content] == [("tool_use", LONG_TOOL)]
