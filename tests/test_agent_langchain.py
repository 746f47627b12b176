"""LangChain's chat models through the gateway, each to a model of the other dialect:
`ChatOpenAI` to a Claude model (fake Anthropic) and `ChatAnthropic` to a GPT model
(fake OpenAI). Invoke, stream, a tool-call round trip and `with_structured_output()`
in both of its methods, parsed by LangChain itself."""
from __future__ import annotations

import json

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from fakes import Turn, tool_loop
from translate_util import CLAUDE, GPT


@pytest.fixture(params=["ChatOpenAI-to-claude", "ChatAnthropic-to-gpt"])
def chat(request, gateway, openai_fake, anthropic_fake):
    """(LangChain chat model, the model it names, the fake that serves it)."""
    if request.param.startswith("ChatOpenAI"):
        return ChatOpenAI(model=CLAUDE, base_url=gateway.url + "/v1", api_key="test-key", max_retries=0), \
            CLAUDE, anthropic_fake
    return ChatAnthropic(model=GPT, base_url=gateway.url, api_key="test-key", max_retries=0, max_tokens=256), \
        GPT, openai_fake


def test_invoke(chat):
    llm, model, fake = chat
    assert llm.invoke("Hi").text == f"Hello from {model}!"
    assert not fake.last["body"].get("stream")


def test_stream(chat):
    llm, model, fake = chat
    chunks = [c.text for c in llm.stream("Hi")]
    assert "".join(chunks) == f"Hello from {model}!" and len([c for c in chunks if c]) == 3
    assert fake.last["body"]["stream"] is True


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_tool_call_round_trip(chat):
    llm, _, fake = chat
    fake.script(tool_loop("get_weather", {"city": "Paris"}))
    llm = llm.bind_tools([get_weather])
    question = HumanMessage("Weather in Paris?")
    asked = llm.invoke([question])
    (call,) = asked.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    answer = llm.invoke([question, asked, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert answer.text == "The tool said: sunny in Paris"


class Person(BaseModel):
    name: str
    age: int


def forced_tool(body) -> str | None:
    """The tool a request forces the model to call (either dialect), if any."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return None
    return choice.get("name") or (choice.get("function") or {}).get("name")


def output_schema(body) -> dict | None:
    """The JSON schema a request asks the answer to follow: OpenAI `response_format`,
    Anthropic `output_config.format`, or the parameters of the tool it forces."""
    fmt = body.get("response_format") or (body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema") or fmt["json_schema"]["schema"]
    for t in body.get("tools") or ():
        if forced_tool(body) in (t.get("name"), (t.get("function") or {}).get("name")):
            return t.get("input_schema") or t["function"]["parameters"]
    return None


def structured(answer: dict):
    """A responder answering like a provider that honours structured output: through
    the tool it is forced to call, or as JSON text when asked for a schema; anything
    else gets the default prose, which LangChain cannot parse."""
    def respond(req):
        body = req["body"]
        if name := forced_tool(body):
            return Turn(tool_calls=[(name, answer)])
        return Turn(json.dumps(answer)) if output_schema(body) else None
    return respond


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(chat, method):
    llm, _, fake = chat
    fake.script(structured({"name": "Ada", "age": 36}))
    assert llm.with_structured_output(Person, method=method).invoke("Who?") == Person(name="Ada", age=36)
    schema = output_schema(fake.last["body"])
    assert schema and set(schema["properties"]) == {"name", "age"}
