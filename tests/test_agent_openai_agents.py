"""The OpenAI Agents SDK in chat-completions mode (`OpenAIChatCompletionsModel`)
through the gateway to a Claude model (fake Anthropic): an agent with a function
tool runs its loop (call, tool result, answer), plain and streamed."""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

from fakes import tool_loop, tool_result
from translate_util import CLAUDE

set_tracing_disabled(True)   # the SDK would otherwise export traces to OpenAI


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def run_agent(gateway, prompt, streamed):
    """Run a weather agent on CLAUDE through the gateway; its RunResult."""
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="test-key", max_retries=0) as client:
        agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                      model=OpenAIChatCompletionsModel(model=CLAUDE, openai_client=client))
        if not streamed:
            return await Runner.run(agent, prompt)
        result = Runner.run_streamed(agent, prompt)
        async for _ in result.stream_events():
            pass
        return result


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_function_tool_loop_to_claude(gateway, anthropic_fake, streamed):
    anthropic_fake.script(tool_loop("get_weather", {"city": "Paris"}))
    result = asyncio.run(run_agent(gateway, "Weather in Paris?", streamed))
    assert result.final_output == "The tool said: sunny in Paris"
    first, second = anthropic_fake.requests
    assert "Answer with the weather tool." in json.dumps(first["body"]["system"])
    assert [t["name"] for t in first["body"]["tools"]] == ["get_weather"]
    assert first["body"]["model"] == CLAUDE and bool(first["body"].get("stream")) is streamed
    assert tool_result(second["body"]) == "sunny in Paris"
