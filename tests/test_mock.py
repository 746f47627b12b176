"""The built-in mock provider: answers with no key and no network, in both
dialects (through the translation rules), streaming, tool calls, structured
output, configured latency and errors. And the shipped arch_config.yaml with
the README's first curl, on a machine with no key set.
"""
import json
import os
import re
import subprocess

import anthropic
import httpx
import openai
import pydantic
import pytest

from conftest import ROOT, anthropic_client, openai_client, start_gateway
from fakes import parse_sse

USER = [{"role": "user", "content": "Hello mock"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"]}}}
NO_KEYS = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


@pytest.fixture(scope="module")
def mock_gw():
    gw = start_gateway({"version": "v0.1.0", "listeners": {"egress_traffic": {"port": 0, "max_retries": 0,
                                                                              "idle_timeout": "1s"}},
                        "llm_providers": [
                            {"model": "mock/mock-model", "name": "mock"},
                            {"model": "mock/broken", "mock_error": 429},
                            {"model": "mock/slow", "mock_latency": "5s"},
                            {"model": "mock/dribble", "mock_chunk_delay": "20ms"}]}, env=NO_KEYS)
    yield gw
    gw.stop()


def test_readme_first_curl_works_with_the_shipped_config_and_no_keys():
    readme = (ROOT / "README.md").read_text()
    install = readme.index("pip install -e . && archgw up")
    curl = re.search(r"```sh\n(curl [^\n]+)\n```", readme[install:]).group(1)
    assert "_KEY" not in curl and "api-key" not in curl.lower()
    gw = start_gateway((ROOT / "arch_config.yaml").read_text(), env=NO_KEYS)
    try:
        out = subprocess.run(["bash", "-c", curl.replace("127.0.0.1:12000", f"127.0.0.1:{gw.port}")],
                             capture_output=True, text=True, timeout=30, env={**NO_KEYS, "NO_PROXY": "*"})
    finally:
        gw.stop()
    answer = json.loads(out.stdout)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == 'Mock answer from mock-model: you said "Hello!"'


def test_openai_client_answer_is_deterministic(mock_gw):
    with openai_client(mock_gw) as client:
        first = client.chat.completions.create(model="mock", messages=USER)
        again = client.chat.completions.create(model="mock", messages=USER)
    assert first.choices[0].message.content == 'Mock answer from mock-model: you said "Hello mock"'
    assert first.id == again.id and first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.prompt_tokens > 0 and first.choices[0].finish_reason == "stop"


def test_openai_client_stream_with_usage(mock_gw):
    with openai_client(mock_gw) as client:
        chunks = list(client.chat.completions.create(model="mock", messages=USER, stream=True,
                                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == 'Mock answer from mock-model: you said "Hello mock"'
    assert len(chunks) > 5 and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8  # one per word


def test_openai_client_tool_call_then_answer(mock_gw):
    with openai_client(mock_gw) as client:
        with client.chat.completions.stream(model="mock", messages=USER, tools=[WEATHER]) as stream:
            final = stream.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        assert final.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock", "unit": "c"}
        history = USER + [final.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"}]
        answer = client.chat.completions.create(model="mock", messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == 'Mock answer from mock-model: the tool said "21 degrees"'


def test_openai_structured_output_parses(mock_gw):
    class Person(pydantic.BaseModel):
        name: str
        age: int
        tags: list[str]

    with openai_client(mock_gw) as client:
        parsed = client.chat.completions.parse(model="mock", messages=USER, response_format=Person)
    assert parsed.choices[0].message.parsed == Person(name="mock", age=1, tags=[])


def test_anthropic_client_through_the_translation_rules(mock_gw):
    with anthropic_client(mock_gw) as client:
        message = client.messages.create(model="mock", max_tokens=100, messages=USER)
        assert message.content[0].text == 'Mock answer from mock-model: you said "Hello mock"'
        assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0
        with client.messages.stream(model="mock", max_tokens=100, messages=USER) as stream:
            assert "".join(stream.text_stream) == 'Mock answer from mock-model: you said "Hello mock"'
        tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
        with client.messages.stream(model="mock", max_tokens=100, messages=USER, tools=tools) as stream:
            final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "mock", "unit": "c"}


def test_configured_error_in_each_dialect(mock_gw):
    with openai_client(mock_gw) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="broken", messages=USER)
    assert "mock error 429" in info.value.message
    with anthropic_client(mock_gw) as client, pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="broken", max_tokens=10, messages=USER)


def test_configured_latency_meets_the_gateway_timeouts(mock_gw):
    # 5 s of mock latency against a 1 s idle_timeout: the same 504 a slow provider gets
    with openai_client(mock_gw) as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=USER)
    assert info.value.status_code == 504


def test_chunk_delay_streams_event_by_event(mock_gw):
    with httpx.stream("POST", mock_gw.url + "/v1/chat/completions", json={"model": "dribble", "messages": USER,
                                                                         "stream": True}) as resp:
        reads = [chunk for chunk in resp.iter_raw()]
    assert len(reads) > 5  # one event per write, not one block at the end
    events = parse_sse(b"".join(reads))
    assert events[-1] == (None, "[DONE]")
