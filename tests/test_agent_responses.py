"""The OpenAI Agents SDK in its default mode (the Responses API) through the gateway
to a Claude model (fake Anthropic): a triage agent hands off to a weather agent,
which calls its function tool and answers from the result, plain and streamed."""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from fakes import Turn, tool_result
from translate_util import CLAUDE

set_tracing_disabled(True)   # the SDK would otherwise export traces to OpenAI


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def respond(req):
    """Claude's side: hand off to the weather agent, call the tool, answer from its result."""
    body = req["body"]
    names = [t["name"] for t in body.get("tools") or ()]
    result = tool_result(body) or ""
    if "get_weather" in names:
        if "sunny" in result:
            return Turn(f"It is {result}.")
        return Turn(tool_calls=[("get_weather", {"city": "Paris"})])
    handoff = next(n for n in names if n.startswith("transfer_to_"))
    return Turn(tool_calls=[(handoff, {})])


async def run(gateway, streamed):
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="test-key", max_retries=0) as client:
        model = OpenAIResponsesModel(model=CLAUDE, openai_client=client)
        weather = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather], model=model)
        triage = Agent(name="triage", instructions="Hand weather questions to the weather agent.",
                       handoffs=[weather], model=model)
        if not streamed:
            return await Runner.run(triage, "Weather in Paris?")
        result = Runner.run_streamed(triage, "Weather in Paris?")
        async for _ in result.stream_events():
            pass
        return result


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_handoff_and_tool_to_claude(gateway, anthropic_fake, streamed):
    anthropic_fake.script(respond)
    result = asyncio.run(run(gateway, streamed))
    assert result.final_output == "It is sunny in Paris."
    assert result.last_agent.name == "weather"
    first, second, third = anthropic_fake.requests
    assert [t["name"] for t in first["body"]["tools"]] == ["transfer_to_weather"]
    assert "Hand weather questions" in json.dumps(first["body"]["system"])
    assert [t["name"] for t in second["body"]["tools"]] == ["get_weather"]
    # the conversation reaches Claude whole: the handoff call and its result, then the tool call and its result
    uses = [b for m in third["body"]["messages"] if isinstance(m["content"], list) for b in m["content"]
            if b["type"] in ("tool_use", "tool_result")]
    assert [b["type"] for b in uses] == ["tool_use", "tool_result", "tool_use", "tool_result"]
    assert uses[2]["id"] == uses[3]["tool_use_id"] and uses[3]["content"] == "sunny in Paris"
    assert all(bool(r["body"].get("stream")) is streamed for r in anthropic_fake.requests)
