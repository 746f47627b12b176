"""Structured output and reasoning across dialects, through the SDKs' own helpers.

OpenAI `response_format` reaches Claude as `output_config.format` when the model has
structured outputs (rules/models.yaml) and as a forced `json_output` tool otherwise,
whose input comes back as the message content; Anthropic `output_config.format` reaches
OpenAI models as `response_format`. `reasoning_effort` and `thinking` map to each other
for models that reason. The fakes answer as the real providers would: JSON only when the
request asks for it in a way they honour."""
from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from conftest import GATEWAY_ENV, gateway_config, start_gateway
from fakes import Turn
from translate_util import CLAUDE, GPT, USER

SONNET_45 = "claude-sonnet-4-5-20250929"   # has structured outputs and thinking
O4 = "o4-mini"                             # an OpenAI reasoning model


class Person(BaseModel):
    name: str
    age: int


ANSWER = {"name": "Ada", "age": 36}


def answers_as_asked(req):
    """A provider's behaviour: JSON when the request asks for it in a way it honours, prose otherwise."""
    body = req["body"]
    if any(t.get("name") == "json_output" for t in body.get("tools") or ()):   # Anthropic: the answer tool offered
        return Turn(tool_calls=[("json_output", ANSWER)])
    if (body.get("output_config") or {}).get("format") or (body.get("response_format") or {}).get("type") in (
            "json_schema", "json_object"):
        return Turn([json.dumps(ANSWER)[:9], json.dumps(ANSWER)[9:]])
    return Turn("Ada is thirty-six.")


@pytest.fixture(scope="module")
def gw(openai_fake, anthropic_fake, ollama_fake):
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["llm_providers"] += [
        {"model": f"anthropic/{SONNET_45}", "access_key": "$ANTHROPIC_API_KEY", "base_url": anthropic_fake.url},
        {"model": f"openai/{O4}", "access_key": "$OPENAI_API_KEY", "base_url": openai_fake.url}]
    gw = start_gateway(config, env=GATEWAY_ENV)
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def providers_answer_as_asked(openai_fake, anthropic_fake):
    openai_fake.script(answers_as_asked)
    anthropic_fake.script(answers_as_asked)


@pytest.fixture
def gateway(gw):
    """This module's gateway for conftest's `oai` and `anth` clients."""
    return gw


# --- OpenAI client, Claude model ------------------------------------------------------------

def test_parse_to_claude_without_structured_outputs_uses_a_forced_tool(oai, anthropic_fake):
    completion = oai.chat.completions.parse(model=CLAUDE, messages=USER, response_format=Person)
    message = completion.choices[0].message
    assert message.parsed == Person(**ANSWER)
    assert json.loads(message.content) == ANSWER and message.tool_calls in (None, [])
    assert completion.choices[0].finish_reason == "stop"
    body = anthropic_fake.last["body"]
    assert body["tool_choice"] == {"type": "tool", "name": "json_output"}
    assert body["tools"][0]["name"] == "json_output"
    assert body["tools"][0]["input_schema"]["properties"].keys() == {"name", "age"}
    assert "output_config" not in body


def test_parse_to_claude_with_structured_outputs_uses_output_config(oai, anthropic_fake):
    completion = oai.chat.completions.parse(model=SONNET_45, messages=USER, response_format=Person)
    assert completion.choices[0].message.parsed == Person(**ANSWER)
    body = anthropic_fake.last["body"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert body["output_config"]["format"]["schema"]["properties"].keys() == {"name", "age"}
    assert "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize("model", [CLAUDE, SONNET_45])
def test_parse_stream_to_claude(oai, anthropic_fake, model):
    with oai.chat.completions.stream(model=model, messages=USER, response_format=Person) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Person(**ANSWER)
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls


def test_json_object_to_claude_is_a_forced_tool_with_any_object(oai, anthropic_fake):
    resp = oai.chat.completions.create(model=SONNET_45, messages=USER, response_format={"type": "json_object"})
    assert json.loads(resp.choices[0].message.content) == ANSWER
    assert anthropic_fake.last["body"]["tools"] == [{"name": "json_output", "input_schema": {"type": "object"},
                                                     "description": "Give your final answer as the input of this tool."}]


def test_json_answer_tool_next_to_the_clients_own_tools(oai, anthropic_fake):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    resp = oai.chat.completions.create(model=CLAUDE, messages=USER, tools=tools,
                                       response_format={"type": "json_object"})
    assert json.loads(resp.choices[0].message.content) == ANSWER
    body = anthropic_fake.last["body"]
    assert [t["name"] for t in body["tools"]] == ["lookup", "json_output"]
    assert body["tool_choice"] == {"type": "auto"}


# --- Anthropic client, OpenAI model -------------------------------------------------------------

def test_anthropic_parse_to_gpt_sends_response_format(anth, openai_fake):
    message = anth.messages.parse(model=GPT, max_tokens=100, messages=USER, output_format=Person)
    assert message.parsed_output == Person(**ANSWER)
    rf = openai_fake.last["body"]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"].keys() == {"name", "age"}
    assert "output_config" not in openai_fake.last["body"]


def test_anthropic_parse_stream_to_gpt(anth, openai_fake):
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER, output_format=Person) as stream:
        final = stream.get_final_message()
    assert final.parsed_output == Person(**ANSWER)
    assert openai_fake.last["body"]["response_format"]["type"] == "json_schema"


# --- reasoning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("effort, max_tokens, thinking, sent_max", [
    ("high", None, {"type": "enabled", "budget_tokens": 16384}, 4096 + 16384),
    ("low", None, {"type": "enabled", "budget_tokens": 2048}, 4096 + 2048),
    ("high", 5000, {"type": "enabled", "budget_tokens": 4999}, 5000),
    ("medium", 1000, None, 1000),          # no room for Anthropic's smallest budget
    ("none", None, None, 4096),
])
def test_reasoning_effort_to_thinking(oai, anthropic_fake, effort, max_tokens, thinking, sent_max):
    extra = {"max_completion_tokens": max_tokens} if max_tokens else {}
    oai.chat.completions.create(model=SONNET_45, messages=USER, reasoning_effort=effort, **extra)
    body = anthropic_fake.last["body"]
    assert body.get("thinking") == thinking and body["max_tokens"] == sent_max


def test_reasoning_effort_to_a_claude_model_that_does_not_think_is_not_sent(oai, anthropic_fake):
    oai.chat.completions.create(model=CLAUDE, messages=USER, reasoning_effort="high")
    body = anthropic_fake.last["body"]
    assert "thinking" not in body and body["max_tokens"] == 4096


def test_no_thinking_while_a_tool_loop_is_open(oai, anthropic_fake):
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    oai.chat.completions.create(model=SONNET_45, messages=messages, reasoning_effort="high",
                                tools=[{"type": "function", "function": {"name": "f"}}])
    assert "thinking" not in anthropic_fake.last["body"]


@pytest.mark.parametrize("kwargs, effort", [
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8000}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 30000}}, "high"),
    ({"output_config": {"effort": "max"}}, "high"),
    ({"thinking": {"type": "disabled"}}, None),
])
def test_thinking_to_reasoning_effort_for_openai_reasoning_models(anth, openai_fake, kwargs, effort):
    with anth.messages.stream(model=O4, max_tokens=32000, messages=USER, **kwargs) as stream:
        stream.get_final_message()
    assert openai_fake.last["body"].get("reasoning_effort") == effort


def test_thinking_to_a_model_that_does_not_reason_is_not_sent(anth, openai_fake):
    anth.messages.create(model=GPT, max_tokens=3000, messages=USER,
                         thinking={"type": "enabled", "budget_tokens": 2000})
    assert "reasoning_effort" not in openai_fake.last["body"]
