"""The Responses API (POST /v1/responses and its stored-response endpoints) through
the gateway, driven by the openai SDK's responses helpers: passed through to
OpenAI models, translated for Anthropic and OpenAI-compatible (chat) models, in
streams and not, with previous_response_id chains kept by the gateway.
"""
from __future__ import annotations

import json
import subprocess
import time

import anthropic
import openai
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from conftest import (GATEWAY_ENV, SHARED_REDIS, anthropic_client, gateway_config, openai_client, redis_keys,
                      start_gateway)
from fakes import Turn, named_sse, parse_sse, responses_events, token_count, vector, vector_json
from translate_util import (CLAUDE, GPT, LLAMA, anth_message, anthropic_events, oai_chunk, oai_completion,
                            oai_sse, raw_post)

VECTORS = "openai_responses"
WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]
_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def stream_events(data: bytes) -> list[dict]:
    """A Responses stream's events; each frame's `event:` must equal data.type, and each parses as an SDK event."""
    out = []
    for name, text in parse_sse(data):
        event = json.loads(text)
        assert name == event["type"], (name, event["type"])
        _EVENTS.validate_python(event)
        out.append(event)
    return out


def raw_stream(gateway, **body) -> list[dict]:
    status, headers, data = raw_post(gateway, "/v1/responses", {"stream": True, **body})
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    return stream_events(data)


def check_sequence(events):
    """Numbered 0, 1, 2... ; created and in_progress first; the final event last; every
    output item added before its deltas and done after them, items one after another."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids.pop().startswith("resp_")
    open_index = None
    for e in events[2:-1]:
        if e["type"] == "response.output_item.added":
            assert open_index is None
            open_index = e["output_index"]
        elif e["type"] == "response.output_item.done":
            assert e["output_index"] == open_index
            open_index = None
        else:
            assert e["output_index"] == open_index, e
    assert open_index is None


# --- wire vectors and the fake ------------------------------------------------------------

@pytest.mark.parametrize("name", ["response_text", "response_parallel_function_calls", "response_reasoning"])
def test_vectors_are_what_the_sdk_reads(name):
    """The recorded shapes parse as the SDK's own types, streams event by event, and the
    fake's stream of a response rebuilds that response in the SDK's accumulator."""
    Response.model_validate(vector_json(f"{VECTORS}/{name}.json"))
    events = stream_events(vector(f"{VECTORS}/stream_{name[9:]}.sse").encode())
    assert events[-1]["response"] == vector_json(f"{VECTORS}/{name}.json")
    assert events == responses_events(vector_json(f"{VECTORS}/{name}.json"))


# --- OpenAI models: passed through ----------------------------------------------------------

def test_native_pass_through_untouched(gateway, openai_fake, oai):
    r = oai.responses.create(model=GPT, input="Hi", instructions="Be brief.", store=False,
                             include=["reasoning.encrypted_content"], tools=[{"type": "web_search"}])
    sent = openai_fake.last
    assert sent["path"] == "/v1/responses"
    assert sent["headers"]["authorization"] == "Bearer " + GATEWAY_ENV["OPENAI_API_KEY"]
    assert sent["body"]["tools"] == [{"type": "web_search"}]          # built-in tools reach OpenAI
    assert sent["body"]["include"] == ["reasoning.encrypted_content"]
    assert r.id == "resp_fake1" and r.output_text == f"Hello from {GPT}!"


def test_native_bytes_kept_and_alias_renamed(gateway, openai_fake):
    body = b'{"model": "gpt-4o-mini",   "input": "Hi", "store": false}'
    status, _, _ = raw_post(gateway, "/v1/responses", json.loads(body))
    assert status == 200
    status, _, data = raw_post(gateway, "/v1/responses", {"model": "fast-model", "input": "Hi", "store": False})
    assert status == 200 and json.loads(data)["model"] == GPT
    assert openai_fake.last["body"] == {"model": GPT, "input": "Hi", "store": False}


def test_native_stream_passes_through(gateway, openai_fake, oai):
    openai_fake.enqueue(sse=vector(f"{VECTORS}/stream_parallel_function_calls.sse"))
    with oai.responses.stream(model=GPT, input="Weather in Paris and Bogotá?", tools=WEATHER) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [c.call_id for c in final.output] == ["call_unLAR8MvFNptuiZK6K6HCy5k", "call_7cT8oTLFb2tdHXAjY0AAAAAa"]
    # stored: the gateway can continue it, and GET returns it
    assert oai.responses.retrieve(final.id).output[1].arguments == '{"location":"Bogot\u00e1, Colombia"}'


def test_native_stream_cut_short_fails(gateway, openai_fake):
    sse = vector(f"{VECTORS}/stream_text.sse")
    openai_fake.enqueue(sse=sse, close_after=len(sse.encode()) // 2)
    events = raw_stream(gateway, model=GPT, input="Hi")
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(set(numbers))   # the failure continues the provider's numbering


def test_compact_passes_to_openai_refused_elsewhere(gateway, openai_fake, oai):
    compacted = {"id": "resp_cmp1", "object": "response.compaction", "created_at": 1764967971,
                 "output": [{"id": "cmp_1", "type": "compaction", "encrypted_content": "gAAA..."}],
                 "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                           "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}}
    openai_fake.enqueue(json=compacted)
    out = oai.responses.compact(model="fast-model", input="a long conversation")
    assert out.output[0].type == "compaction"
    assert openai_fake.last["path"] == "/v1/responses/compact" and openai_fake.last["body"]["model"] == GPT
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.compact(model=CLAUDE, input="a long conversation")
    assert "only available for OpenAI models" in e.value.message and e.value.body["param"] == "model"


# --- Anthropic models: translated -------------------------------------------------------------

def test_anthropic_request_translation(gateway, anthropic_fake, oai):
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "ok"}]))
    r = oai.responses.create(
        model=CLAUDE, instructions="Be brief.", max_output_tokens=300, temperature=1.5, top_p=0.9,
        parallel_tool_calls=False, tool_choice="required", metadata={"k": "v"}, user="u1",
        input=[{"role": "developer", "content": "Use metric units."},
               {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0K"}]},
               {"type": "function_call", "call_id": "toolu_1", "name": "get_weather", "arguments": '{"location":"Rome"}'},
               {"type": "function_call_output", "call_id": "toolu_1", "output": "21C"}],
        tools=WEATHER)
    sent = anthropic_fake.last["body"]
    assert sent["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}]
    assert sent["max_tokens"] == 300 and sent["temperature"] == 1 and sent["top_p"] == 0.9
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "iVBORw0K"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"location": "Rome"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"}]}]
    assert sent["tools"] == [{"name": "get_weather", "input_schema": WEATHER[0]["parameters"],
                              "description": "Weather for a city."}]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["metadata"] == {"user_id": "u1"}
    assert r.id.startswith("resp_") and r.output_text == "ok" and r.metadata == {"k": "v"}
    assert r.usage.input_tokens == 10 and r.usage.output_tokens == 5


def test_anthropic_thinking_round_trip_with_signature(gateway, anthropic_fake, oai):
    """Thinking becomes a reasoning item carrying its signature, and goes back to
    Anthropic as the same signed thinking block, before the same tool_use id."""
    message = vector_json("anthropic/message_thinking_tool_use.json")
    anthropic_fake.enqueue(json=message)
    tools = [{**WEATHER[0], "name": "weather"}]
    r = oai.responses.create(model=CLAUDE, input="Weather in Florence?", tools=tools, reasoning={"effort": "low"})
    sent = anthropic_fake.last["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and sent["max_tokens"] == 2048 + 4096
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == message["content"][0]["signature"]
    assert reasoning.summary[0].text == message["content"][0]["thinking"]
    assert call.type == "function_call" and call.call_id == "toolu_014azqsWLU8Djh6RhmBGRC2u"
    assert json.loads(call.arguments) == {"location": "Florence, Italy"}

    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "Sunny."}]))
    r2 = oai.responses.create(model=CLAUDE, previous_response_id=r.id, tools=tools, reasoning={"effort": "low"},
                              input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    turns = anthropic_fake.last["body"]["messages"]
    assert turns[1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": message["content"][0]["thinking"], "signature": message["content"][0]["signature"]},
        {"type": "tool_use", "id": "toolu_014azqsWLU8Djh6RhmBGRC2u", "name": "weather", "input": {"location": "Florence, Italy"}}]}
    assert turns[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_014azqsWLU8Djh6RhmBGRC2u", "content": "Sunny"}]}
    assert r2.output_text == "Sunny." and r2.previous_response_id == r.id


def test_custom_and_namespace_tools_restored(gateway, anthropic_fake, oai):
    anthropic_fake.enqueue(json=anth_message([
        {"type": "tool_use", "id": "toolu_a", "name": "apply_patch", "input": {"input": "*** Begin Patch\n"}},
        {"type": "tool_use", "id": "toolu_b", "name": "crm__lookup", "input": {"email": "a@b.c"}}], "tool_use"))
    tools = [{"type": "custom", "name": "apply_patch", "description": "Edit files."},
             {"type": "namespace", "name": "crm", "description": "CRM tools", "tools": [
                 {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"email": {"type": "string"}}}}]}]
    r = oai.responses.create(model=CLAUDE, input="go", tools=tools, tool_choice={"type": "custom", "name": "apply_patch"})
    sent = anthropic_fake.last["body"]
    assert [t["name"] for t in sent["tools"]] == ["apply_patch", "crm__lookup"]
    assert sent["tools"][0]["input_schema"]["required"] == ["input"]
    assert sent["tool_choice"] == {"type": "tool", "name": "apply_patch"}
    patch, lookup = r.output
    assert (patch.type, patch.name, patch.input, patch.call_id) == ("custom_tool_call", "apply_patch", "*** Begin Patch\n", "toolu_a")
    assert (lookup.type, lookup.name, lookup.namespace) == ("function_call", "lookup", "crm")
    # and back: the calls go out under the provider's names again
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "done"}]))
    oai.responses.create(model=CLAUDE, previous_response_id=r.id, tools=tools, input=[
        {"type": "custom_tool_call_output", "call_id": "toolu_a", "output": "patched"},
        {"type": "function_call_output", "call_id": "toolu_b", "output": "found"}])
    assistant = anthropic_fake.last["body"]["messages"][1]["content"]
    assert [(b["name"], b["input"]) for b in assistant] == [("apply_patch", {"input": "*** Begin Patch\n"}),
                                                            ("crm__lookup", {"email": "a@b.c"})]


def test_built_in_tools_refused_where_there_is_no_counterpart(gateway, anthropic_fake, ollama_fake, oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=CLAUDE, input="find it", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert "'file_search'" in e.value.message and e.value.body["param"] == "tools[0]"
    with pytest.raises(openai.BadRequestError) as e:   # Codex CLI's cached web search: Anthropic's is live
        oai.responses.create(model=CLAUDE, input="news?", tools=[{"type": "web_search", "external_web_access": False}])
    assert 'web_search = "disabled"' in e.value.message and 'web_search = "live"' in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=LLAMA, input="news?", tools=[{"type": "web_search"}])
    assert "'web_search'" in e.value.message and 'Codex CLI: set web_search = "disabled"' in e.value.message
    assert anthropic_fake.requests == [] and ollama_fake.requests == []


SHANNON = "Claude Shannon was born on April 30, 1916, in Petoskey, Michigan"


def test_web_search_on_anthropic(gateway, anthropic_fake, oai):
    """OpenAI's web search tool runs as Anthropic's; the search comes back as a web_search_call
    and the cited answer as one message with url_citation annotations, streamed or not."""
    message = vector_json("anthropic/message_web_search.json")
    anthropic.types.Message.model_validate(message)   # the recorded shape is the SDK's
    anthropic_fake.enqueue(json=message)
    search_tool = {"type": "web_search", "filters": {"allowed_domains": ["wikipedia.org", "britannica.com"]},
                   "user_location": {"type": "approximate", "country": "US", "city": "Boston"},
                   "search_context_size": "low"}
    r = oai.responses.create(model=CLAUDE, input="When was Claude Shannon born?", max_tool_calls=3,
                             tools=[*WEATHER, search_tool])
    assert anthropic_fake.last["body"]["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER[0]["parameters"], "description": WEATHER[0]["description"]},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3,
         "allowed_domains": ["wikipedia.org", "britannica.com"],
         "user_location": {"type": "approximate", "city": "Boston", "country": "US"}}]
    intro, search, answer = r.output
    assert intro.content[0].text == "I'll search for when Claude Shannon was born."
    assert (search.type, search.status, search.action.query) == ("web_search_call", "completed",
                                                                 "claude shannon birth date")
    assert [s.url for s in search.action.sources] == ["https://en.wikipedia.org/wiki/Claude_Shannon",
                                                      "https://www.britannica.com/biography/Claude-Shannon"]
    [text] = answer.content
    assert text.text == SHANNON + ", and died on February 24, 2001."
    assert [a.model_dump() for a in text.annotations] == [
        {"type": "url_citation", "start_index": 0, "end_index": len(SHANNON),
         "url": "https://en.wikipedia.org/wiki/Claude_Shannon", "title": "Claude Shannon - Wikipedia"}]
    # streamed: the same items, announced and finished one after another
    anthropic_fake.enqueue(sse=vector("anthropic/stream_web_search.sse"))
    events = raw_stream(gateway, model=CLAUDE, input="When was Claude Shannon born?", tools=[search_tool])
    check_sequence(events)
    assert [e["type"] for e in events if "web_search_call" in e["type"]] == [
        "response.web_search_call.in_progress", "response.web_search_call.searching",
        "response.web_search_call.completed"]
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [(e["annotation_index"], e["annotation"]) for e in added] == [(0, text.annotations[0].model_dump())]
    assert added[0]["item_id"] == events[-1]["response"]["output"][2]["id"]

    def same(items):
        return [{k: v for k, v in item.items() if k != "id"} for item in items]
    assert same(events[-1]["response"]["output"]) == same(r.model_dump(exclude_none=True)["output"])
    # the next turn, as Codex sends it (the whole history, nothing stored): the search is not
    # sent back (Anthropic's results are not in it), the answer is
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "You're welcome."}]))
    oai.responses.create(model=CLAUDE, store=False, tools=[search_tool], input=[
        {"role": "user", "content": "When was Claude Shannon born?"},
        *[item.model_dump(exclude_none=True) for item in r.output], {"role": "user", "content": "Thanks!"}])
    assert anthropic_fake.last["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "When was Claude Shannon born?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": intro.content[0].text},
                                          {"type": "text", "text": text.text}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]}]


def test_structured_output_parse_to_anthropic(gateway, anthropic_fake, oai):
    class City(pydantic.BaseModel):
        name: str
        population: int

    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": '{"name": "Rome", "population": 2800000}'}]))
    r = oai.responses.parse(model=CLAUDE, input="Largest city in Italy?", text_format=City)
    assert r.output_parsed == City(name="Rome", population=2800000)
    fmt = anthropic_fake.last["body"]["output_config"]["format"]
    assert fmt["type"] == "json_schema" and fmt["schema"]["required"] == ["name", "population"]


def test_anthropic_stream_thinking_and_tool(gateway, anthropic_fake, oai):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_thinking_then_tool_use.sse"))
    events = raw_stream(gateway, model=CLAUDE, input="Weather in Florence?", tools=[{**WEATHER[0], "name": "weather"}])
    check_sequence(events)
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [i["type"] for i in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][0]["encrypted_content"] and final["output"][0]["summary"][0]["text"].startswith("The user")
    # the same sequence OpenAI sends for this output
    assert [e["type"] for e in events] == [e["type"] for e in responses_events(final, pieces=1)] or \
        [e["type"] for e in events if "delta" not in e["type"]] == \
        [e["type"] for e in responses_events(final) if "delta" not in e["type"]]
    assert final["usage"]["input_tokens"] == 424


def test_anthropic_stream_with_sdk_helper(gateway, anthropic_fake, oai):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"))
    with oai.responses.stream(model=CLAUDE, input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.output_text
    assert oai.responses.retrieve(final.id).output_text == final.output_text


def test_anthropic_midstream_error_fails_the_response(gateway, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_error_midstream_overloaded.sse"))
    events = raw_stream(gateway, model=CLAUDE, input="Hi")
    assert events[-1]["type"] == "response.failed" and "verloaded" in events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_anthropic_stream_cut_short_fails(gateway, anthropic_fake):
    sse = vector("anthropic/stream_text.sse")
    anthropic_fake.enqueue(sse=sse, close_after=len(sse.encode()) // 2)
    events = raw_stream(gateway, model=CLAUDE, input="Hi")
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_anthropic_error_in_responses_shape(gateway, anthropic_fake, oai):
    anthropic_fake.enqueue(429, body=vector("anthropic/error_429_rate_limit.json"))
    with pytest.raises(openai.RateLimitError) as e:
        oai.responses.create(model=CLAUDE, input="Hi")
    assert e.value.body["type"] == "requests"


# --- OpenAI-compatible (chat) models: translated ----------------------------------------------

def test_chat_request_and_parallel_calls(gateway, ollama_fake, oai):
    ollama_fake.enqueue(json=vector_json("openai/chat_completion_parallel_tool_calls.json"))
    r = oai.responses.create(
        model=LLAMA, instructions="Be brief.", input="Weather in two cities?", tools=WEATHER, max_output_tokens=50,
        reasoning={"effort": "low"}, tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}})
    sent = ollama_fake.last["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in two cities?"}]
    assert sent["max_tokens"] == 50 and sent["reasoning_effort"] == "low"
    assert sent["tools"][0] == {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER[0]["parameters"],
                                                                "description": "Weather for a city."}}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}
    calls = [i for i in r.output if i.type == "function_call"]
    expected = vector_json("openai/chat_completion_parallel_tool_calls.json")["choices"][0]["message"]["tool_calls"]
    assert [c.call_id for c in calls] == [c["id"] for c in expected]
    assert len({c.id for c in calls}) == len(calls)

    ollama_fake.enqueue(json=oai_completion({"content": "Both sunny."}))
    oai.responses.create(model=LLAMA, previous_response_id=r.id, tools=WEATHER, input=[
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls])
    messages = ollama_fake.last["body"]["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in two cities?"}   # instructions are not carried over
    assert [c["id"] for c in messages[1]["tool_calls"]] == [c["id"] for c in expected]
    assert [(m["role"], m["tool_call_id"]) for m in messages[2:]] == [("tool", c["id"]) for c in expected]


def test_chat_stream_parallel_calls(gateway, ollama_fake):
    ollama_fake.enqueue(sse=vector("openai/stream_parallel_tool_calls_with_usage.sse"))
    events = raw_stream(gateway, model=LLAMA, input="Weather?", tools=WEATHER)
    check_sequence(events)
    final = events[-1]["response"]
    calls = final["output"]
    assert [c["type"] for c in calls] == ["function_call"] * len(calls) and len(calls) >= 2
    assert len({c["call_id"] for c in calls}) == len(calls)
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == list(range(len(calls)))
    for c in calls:
        json.loads(c["arguments"])
    assert final["usage"]["input_tokens"] > 0
    assert ollama_fake.last["body"]["stream_options"] == {"include_usage": True}


def test_chat_refusal_is_a_refusal_part_streamed_or_not(gateway, ollama_fake, oai):
    ollama_fake.enqueue(json=oai_completion({"refusal": "I can't help with that."}))
    r = oai.responses.create(model=LLAMA, input="Something bad")
    ollama_fake.enqueue(sse=oai_sse([oai_chunk({"role": "assistant", "content": "", "refusal": None}),
                                     oai_chunk({"refusal": "I can't "}), oai_chunk({"refusal": "help with that."}),
                                     oai_chunk({}, "stop")]))
    events = raw_stream(gateway, model=LLAMA, input="Something bad")
    check_sequence(events)
    assert [e["delta"] for e in events if e["type"] == "response.refusal.delta"] == ["I can't ", "help with that."]
    assert [e["refusal"] for e in events if e["type"] == "response.refusal.done"] == ["I can't help with that."]
    [message] = events[-1]["response"]["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
    assert [p.model_dump() for p in r.output[0].content] == message["content"]


def test_chat_stream_with_sdk(gateway, ollama_fake, oai):
    with oai.responses.stream(model=LLAMA, input="Hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == f"Hello from {LLAMA}!"
    assert final.usage.output_tokens == 3


# --- stored responses --------------------------------------------------------------------------

def test_chain_survives_model_switches(gateway, anthropic_fake, ollama_fake, openai_fake, oai):
    r1 = oai.responses.create(model=CLAUDE, input="one")
    r2 = oai.responses.create(model=LLAMA, input="two", previous_response_id=r1.id)
    r3 = oai.responses.create(model=GPT, input="three", previous_response_id=r2.id)
    assert ollama_fake.last["body"]["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": f"Hello from {CLAUDE}!"},
        {"role": "user", "content": "two"}]
    sent = openai_fake.last["body"]
    assert "previous_response_id" not in sent
    texts = [(i["role"], i["content"] if isinstance(i["content"], str) else i["content"][0]["text"]) for i in sent["input"]]
    assert texts == [("user", "one"), ("assistant", f"Hello from {CLAUDE}!"), ("user", "two"),
                     ("assistant", f"Hello from {LLAMA}!"), ("user", "three")]
    assert r3.output_text == f"Hello from {GPT}!"
    items = oai.responses.input_items.list(r2.id)
    assert [i.content[0].text for i in items.data] == ["two"]   # its own input, not the conversation's
    assert oai.responses.retrieve(r1.id).output_text == f"Hello from {CLAUDE}!"


def test_input_items_pages(gateway, oai):
    r = oai.responses.create(model=LLAMA, input=[{"role": "user", "content": str(n)} for n in range(5)])
    newest = oai.responses.input_items.list(r.id, limit=2)
    assert [i.content[0].text for i in newest.data] == ["4", "3"] and newest.has_more
    assert [i.content[0].text for i in oai.responses.input_items.list(r.id)] == ["4", "3", "2", "1", "0"]  # all pages
    ids = [i.id for i in oai.responses.input_items.list(r.id, order="asc").data]
    page = oai.responses.input_items.list(r.id, order="asc", after=ids[0], limit=2)
    assert [i.id for i in page.data] == ids[1:3] and page.has_more


def test_get_delete_and_unknown_ids(gateway, oai):
    r = oai.responses.create(model=CLAUDE, input="keep me")
    assert oai.responses.retrieve(r.id).id == r.id
    oai.responses.delete(r.id)
    for call in (lambda: oai.responses.retrieve(r.id), lambda: oai.responses.delete(r.id),
                 lambda: oai.responses.input_items.list(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model=CLAUDE, input="again", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found" and e.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(gateway, oai):
    r = oai.responses.create(model=LLAMA, input="forget me", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_unknown_previous_id_for_openai_goes_to_openai(gateway, openai_fake, oai):
    """An id the gateway never stored may be OpenAI's own: OpenAI answers for it."""
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=GPT, input="x", previous_response_id="resp_nope")
    assert e.value.body["code"] == "previous_response_not_found"
    assert openai_fake.last["body"]["previous_response_id"] == "resp_nope"


def test_bad_requests_in_responses_shape(gateway, oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=CLAUDE, input=[{"type": "message", "role": "robot", "content": "x"}])
    assert e.value.body["param"].startswith("input") and "robot" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=LLAMA, input=[{"type": "web_search_call", "id": "ws_1", "status": "completed"}])
    assert "'web_search_call'" in e.value.message
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="x")
    status, _, body = raw_post(gateway, "/v1/responses", {"model": CLAUDE, "input": "x", "background": True})
    assert status == 400 and json.loads(body)["error"]["param"] == "background"


def test_store_is_bounded(openai_fake, anthropic_fake, ollama_fake):
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["state"] = {"responses": {"max_entries": 2, "ttl": "1h"}}
    gw = start_gateway(config, env=GATEWAY_ENV)
    try:
        with openai_client(gw) as client:
            ids = [client.responses.create(model=LLAMA, input=str(n)).id for n in range(3)]
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(ids[0])
            assert [client.responses.retrieve(i).id for i in ids[1:]] == ids[1:]
            kept = client.responses.retrieve(ids[1]).output[0].id
            client.responses.create(model=LLAMA, input=[{"type": "item_reference", "id": kept}], store=False)
            client.responses.create(model=LLAMA, input="3")  # drops ids[1]
            with pytest.raises(openai.BadRequestError) as e:   # its items are gone with it
                client.responses.create(model=LLAMA, input=[{"type": "item_reference", "id": kept}])
            assert kept in e.value.message
    finally:
        gw.stop()


# --- stored responses in Redis: shared by gateways, kept over restarts ---------------------------

def redis_gateway(fakes, redis_url, prefix):
    config = gateway_config(*(f.url for f in fakes))
    config["state"] = {"redis": redis_url, "prefix": prefix, "responses": {"ttl": "1h"}}
    return start_gateway(config, env=GATEWAY_ENV)


def test_redis_chain_survives_a_gateway_restart(openai_fake, anthropic_fake, ollama_fake, redis_prefix):
    fakes = (openai_fake, anthropic_fake, ollama_fake)
    gw = redis_gateway(fakes, SHARED_REDIS, redis_prefix)
    try:
        with openai_client(gw) as client:
            r1 = client.responses.create(model=CLAUDE, input="one")
            r2 = client.responses.create(model=LLAMA, input="two", previous_response_id=r1.id)
    finally:
        gw.stop()
    keys = redis_keys(f"{redis_prefix}}}:resp:")
    assert sorted(keys) == sorted(f"{{{redis_prefix}}}:resp:{r.id}" for r in (r1, r2))
    ttl = int(subprocess.run(["redis-cli", "PTTL", keys[0]], capture_output=True, text=True).stdout)
    assert 3500_000 < ttl <= 3600_000
    gw = redis_gateway(fakes, SHARED_REDIS, redis_prefix)  # a new process: nothing in its memory
    try:
        with openai_client(gw) as client:
            r3 = client.responses.create(model=CLAUDE, input="three", previous_response_id=r2.id)
            assert client.responses.retrieve(r1.id).output_text == f"Hello from {CLAUDE}!"
            assert [i.content[0].text for i in client.responses.input_items.list(r2.id).data] == ["two"]
    finally:
        gw.stop()
    assert [(m["role"], m["content"][0]["text"]) for m in anthropic_fake.last["body"]["messages"]] == [
        ("user", "one"), ("assistant", f"Hello from {CLAUDE}!"), ("user", "two"),
        ("assistant", f"Hello from {LLAMA}!"), ("user", "three")]
    assert r3.output_text == f"Hello from {CLAUDE}!"


def test_redis_store_shared_by_two_gateways(openai_fake, anthropic_fake, ollama_fake, redis_prefix):
    fakes = (openai_fake, anthropic_fake, ollama_fake)
    one, two = (redis_gateway(fakes, SHARED_REDIS, redis_prefix) for _ in range(2))
    try:
        with openai_client(one) as a, openai_client(two) as b:
            r1 = a.responses.create(model=LLAMA, input="one")
            assert b.responses.retrieve(r1.id).output_text == f"Hello from {LLAMA}!"
            with b.responses.stream(model=LLAMA, input="two", previous_response_id=r1.id) as stream:
                r2 = stream.get_final_response()
            assert a.responses.retrieve(r2.id).output_text == f"Hello from {LLAMA}!"
            assert [m["content"] for m in ollama_fake.last["body"]["messages"]] == [
                "one", f"Hello from {LLAMA}!", "two"]
            b.responses.delete(r1.id)
            with pytest.raises(openai.NotFoundError):
                a.responses.retrieve(r1.id)
            before = redis_keys(f"{redis_prefix}}}:resp:")
            forgotten = a.responses.create(model=LLAMA, input="forget me", store=False)
            with b.responses.stream(model=CLAUDE, input="me too", store=False) as stream:
                stream.get_final_response()
            assert redis_keys(f"{redis_prefix}}}:resp:") == before == [f"{{{redis_prefix}}}:resp:{r2.id}"]
            with pytest.raises(openai.NotFoundError):
                b.responses.retrieve(forgotten.id)
    finally:
        one.stop()
        two.stop()


def test_redis_unreachable_is_a_503_never_a_wait(openai_fake, anthropic_fake, ollama_fake, own_redis):
    gw = redis_gateway((openai_fake, anthropic_fake, ollama_fake), own_redis.url, "archtest")
    try:
        with openai_client(gw, timeout=10) as client:
            r1 = client.responses.create(model=LLAMA, input="one")
            own_redis.pause()  # it answers nothing: only the gateway's own timeout ends the wait
            try:
                started = time.monotonic()
                for call in (lambda: client.responses.create(model=LLAMA, input="two", previous_response_id=r1.id),
                             lambda: client.responses.create(model=LLAMA, input=[{"id": r1.output[0].id}]),
                             lambda: client.responses.retrieve(r1.id),
                             lambda: client.responses.delete(r1.id),
                             lambda: client.responses.input_items.list(r1.id)):
                    with pytest.raises(openai.InternalServerError) as e:
                        call()
                    assert e.value.status_code == 503 and "Redis" in e.value.message
                    assert str(own_redis.port) not in e.value.message
                    assert e.value.body["type"] == "server_error"
                # the answer is made: it reaches the client, unstored
                unstored = client.responses.create(model=LLAMA, input="three")
                assert unstored.output_text == f"Hello from {LLAMA}!"
                assert time.monotonic() - started < 5
            finally:
                own_redis.resume()
            time.sleep(1.1)  # past the fail-fast interval: Redis is asked again
            assert client.responses.retrieve(r1.id).id == r1.id
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(unstored.id)
    finally:
        gw.stop()
    assert "not stored" in gw.output()


# --- item_reference: items of stored responses named by id -------------------------------------

ITEM_KEYS = {"a": "ki-secret-0001-a", "b": "ki-secret-0002-b"}


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_item_references_resolved_from_the_store(openai_fake, anthropic_fake, ollama_fake, redis_prefix, store):
    """References to output items (a message; a function call, its output following) and to
    input items (by the id `input_items` lists) reach chat and Anthropic models as the items;
    OpenAI gets them as they are; an unknown id, or another key's, is a 400 naming it."""
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["gateway_keys"] = [{"name": name, "key": key} for name, key in ITEM_KEYS.items()]
    if store == "redis":
        config["state"] = {"redis": SHARED_REDIS, "prefix": redis_prefix, "responses": {"ttl": "1h"}}
    gw = start_gateway(config, env=GATEWAY_ENV)
    try:
        with openai_client(gw, key=ITEM_KEYS["a"]) as a, openai_client(gw, key=ITEM_KEYS["b"]) as b:
            r1 = a.responses.create(model=LLAMA, input="one")
            asked = a.responses.input_items.list(r1.id).data[0].id
            r2 = a.responses.create(model=CLAUDE, input=[
                {"id": asked}, {"type": "item_reference", "id": r1.output[0].id}, {"role": "user", "content": "two"}])
            assert [(m["role"], m["content"][0]["text"]) for m in anthropic_fake.last["body"]["messages"]] == [
                ("user", "one"), ("assistant", f"Hello from {LLAMA}!"), ("user", "two")]
            # stored as the items they named: the conversation goes on without the references
            assert [i.type for i in a.responses.input_items.list(r2.id, order="asc").data] == ["message"] * 3
            a.responses.create(model=LLAMA, input="three", previous_response_id=r2.id)
            assert [m["content"] for m in ollama_fake.last["body"]["messages"]] == [
                "one", f"Hello from {LLAMA}!", "two", f"Hello from {CLAUDE}!", "three"]

            ollama_fake.enqueue(json=oai_completion({"tool_calls": [{
                "id": "call_rome", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'}}]},
                finish="tool_calls"))
            r3 = a.responses.create(model=LLAMA, input="Weather?", tools=WEATHER)
            call, weather = r3.output[0], a.responses.input_items.list(r3.id).data[0].id
            then = [{"type": "item_reference", "id": weather},
                    {"type": "item_reference", "id": call.id},
                    {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
            a.responses.create(model=CLAUDE, input=then, tools=WEATHER)
            assert anthropic_fake.last["body"]["messages"] == [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_rome", "name": "get_weather",
                                                   "input": {"location": "Rome"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_rome", "content": "sunny"}]}]
            with a.responses.stream(model=LLAMA, input=then, tools=WEATHER) as stream:
                stream.get_final_response()
            sent = ollama_fake.last["body"]["messages"]
            assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
            assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == "call_rome"
            a.responses.create(model=GPT, input=then, tools=WEATHER)
            assert openai_fake.last["body"]["input"] == then   # OpenAI resolves its own
            own = {"type": "item_reference", "id": "fc_openai_own"}
            a.responses.create(model=GPT, input=[then[1], own], previous_response_id=r1.id)  # rebuilt by the gateway:
            assert [i.get("id") for i in openai_fake.last["body"]["input"][2:]] == [call.id, own["id"]]  # its own in place
            assert openai_fake.last["body"]["input"][2]["type"] == "function_call"

            for client, input_ in ((a, [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_nope"}]),
                                   (b, [{"role": "user", "content": "x"}, {"type": "item_reference", "id": call.id}])):
                for model in (LLAMA, CLAUDE):
                    with pytest.raises(openai.BadRequestError) as e:
                        client.responses.create(model=model, input=input_)
                    assert e.value.body["param"] == "input[1]" and f"'{input_[1]['id']}'" in e.value.message
            if store == "redis":
                index = redis_keys(f"{redis_prefix}}}:item:a:")
                assert f"{{{redis_prefix}}}:item:a:{call.id}" in index and not redis_keys(f"{redis_prefix}}}:item:b:")
                ttl = int(subprocess.run(["redis-cli", "PTTL", index[0]], capture_output=True, text=True).stdout)
                assert 3500_000 < ttl <= 3600_000
            a.responses.delete(r3.id)   # its items go with it (the call stays: later inputs hold it too)
            with pytest.raises(openai.BadRequestError) as e:
                a.responses.create(model=CLAUDE, input=then, tools=WEATHER)
            assert e.value.body["param"] == "input[0]" and weather in e.value.message
            if store == "redis":
                index = redis_keys(f"{redis_prefix}}}:item:a:")
                assert f"{{{redis_prefix}}}:item:a:{weather}" not in index and f"{{{redis_prefix}}}:item:a:{call.id}" in index
    finally:
        gw.stop()


# --- the reverse: Chat Completions clients of models served only by the Responses API -----------

CODEX = "gpt-5-codex"   # responses_only in rules/models.yaml


@pytest.fixture(scope="module")
def codex_gateway(openai_fake, anthropic_fake, ollama_fake):
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["llm_providers"].append({"model": f"openai/{CODEX}", "access_key": "$OPENAI_API_KEY",
                                    "base_url": openai_fake.url})
    gw = start_gateway(config, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def test_chat_client_reaches_responses_only_model(codex_gateway, openai_fake):
    openai_fake.script(lambda req: Turn(tool_calls=[("get_weather", {"location": "Rome"})]))
    with openai_client(codex_gateway) as client:
        out = client.chat.completions.create(
            model=CODEX, max_tokens=100, reasoning_effort="low", tools=[{"type": "function", "function": {
                "name": "get_weather", "parameters": WEATHER[0]["parameters"]}}],
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Rome?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "call_0", "content": "try again"}])
    sent = openai_fake.last
    assert sent["path"] == "/v1/responses"
    assert sent["body"]["input"] == [
        {"type": "message", "role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": "Weather in Rome?"},
        {"type": "function_call", "call_id": "call_0", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_0", "output": "try again"}]
    assert sent["body"]["max_output_tokens"] == 100 and sent["body"]["reasoning"] == {"effort": "low"}
    assert sent["body"]["tools"] == [{"type": "function", "name": "get_weather", "parameters": WEATHER[0]["parameters"]}]
    assert out.choices[0].finish_reason == "tool_calls"
    call = out.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"location": "Rome"})
    assert out.usage.prompt_tokens > 0


def test_chat_stream_from_responses_only_model(codex_gateway, openai_fake):
    with openai_client(codex_gateway) as client:
        chunks = list(client.chat.completions.create(model=CODEX, stream=True, stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "Hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Hello from {CODEX}!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == 3
    assert openai_fake.last["body"]["stream"] is True


# --- Anthropic clients of models served only by the Responses API --------------------------------

TOOL = {"name": "weather.get", "description": "Weather for a city.",   # a name OpenAI would refuse
        "input_schema": WEATHER[0]["parameters"]}
REASONING = vector_json(f"{VECTORS}/response_reasoning.json")
SEALED = REASONING["output"][0]


def test_anthropic_client_reaches_responses_only_model(codex_gateway, openai_fake):
    openai_fake.script(lambda req: Turn(text="Checking.", tool_calls=[("weather_get", {"location": "Rome"})]))
    with anthropic_client(codex_gateway) as client:
        out = client.messages.create(
            model=CODEX, max_tokens=100, system="Be brief.", tools=[TOOL],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            messages=[{"role": "user", "content": "Weather in Rome?"},
                      {"role": "assistant", "content": [{"type": "tool_use", "id": "call_0", "name": "weather.get",
                                                         "input": {"location": "Rome"}}]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0",
                                                    "content": "timed out", "is_error": True},
                                                   {"type": "text", "text": "Try again."}]}])
    sent = openai_fake.last
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == {
        "model": CODEX, "instructions": "Be brief.", "max_output_tokens": 100, "store": False,
        "input": [{"type": "message", "role": "user", "content": "Weather in Rome?"},
                  {"type": "function_call", "call_id": "call_0", "name": "weather_get",
                   "arguments": '{"location":"Rome"}'},
                  {"type": "function_call_output", "call_id": "call_0", "output": "Error: timed out"},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Try again."}]}],
        "tools": [{"type": "function", "name": "weather_get", "description": "Weather for a city.",
                   "parameters": WEATHER[0]["parameters"]}],
        "tool_choice": "auto", "parallel_tool_calls": False}
    assert out.stop_reason == "tool_use" and out.id.startswith("msg_")
    assert [b.type for b in out.content] == ["text", "tool_use"] and out.content[0].text == "Checking."
    call = out.content[1]
    assert (call.id, call.name, call.input) == ("call_1_0", "weather.get", {"location": "Rome"})  # ids kept
    assert out.usage.input_tokens == token_count(sent["raw"]) and out.usage.output_tokens == 2


def test_anthropic_thinking_round_trips_as_openai_reasoning(codex_gateway, openai_fake):
    """Thinking asked for: the reasoning item comes as a thinking block whose signature is the
    sealed item, and the block sent back is that item again (OpenAI stores nothing for us)."""
    openai_fake.enqueue(json=REASONING)
    ask = {"model": CODEX, "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 10000}}
    with anthropic_client(codex_gateway) as client:
        first = client.messages.create(**ask, messages=[{"role": "user", "content": "Capital of France?"}])
        sent = openai_fake.last["body"]
        assert sent["reasoning"] == {"effort": "medium", "summary": "auto"}
        assert sent["include"] == ["reasoning.encrypted_content"]
        thinking, text = first.content
        assert thinking.type == "thinking" and thinking.thinking == SEALED["summary"][0]["text"]
        assert text.text == "Paris."
        assert first.usage.output_tokens == 97
        client.messages.create(**ask, messages=[
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "And of Italy?"}])
    assert openai_fake.last["body"]["input"] == [
        {"type": "message", "role": "user", "content": "Capital of France?"},
        {"type": "reasoning", "id": SEALED["id"], "encrypted_content": SEALED["encrypted_content"],
         "summary": SEALED["summary"]},
        {"type": "message", "role": "assistant", "content": "Paris."},
        {"type": "message", "role": "user", "content": "And of Italy?"}]
    # without thinking asked for, no reasoning is shown or asked for
    openai_fake.enqueue(json=REASONING)
    with anthropic_client(codex_gateway) as client:
        plain = client.messages.create(model=CODEX, max_tokens=100, messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "an Anthropic thought",
                                               "signature": "EqQBCkYIBxgCKkB"}, {"type": "text", "text": "Hello"}]},
            {"role": "user", "content": "Capital of France?"}])
    assert [b.type for b in plain.content] == ["text"]
    sent = openai_fake.last["body"]
    assert "reasoning" not in sent and "include" not in sent
    assert [i["type"] for i in sent["input"]] == ["message"] * 3   # Anthropic's own signed thinking: dropped


def test_anthropic_stream_from_responses_only_model(codex_gateway, openai_fake):
    openai_fake.enqueue(sse=b"".join(named_sse(responses_events(REASONING))))
    openai_fake.script(lambda req: Turn(text=["Let me ", "check."], tool_calls=[("weather_get", {"location": "Rome"}),
                                                                                 ("weather_get", {"location": "Oslo"})]))
    with anthropic_client(codex_gateway) as client:
        with client.messages.stream(model=CODEX, max_tokens=20000, thinking={"type": "enabled", "budget_tokens": 2000},
                                    messages=[{"role": "user", "content": "Capital of France?"}]) as stream:
            first = stream.get_final_message()
        assert openai_fake.last["body"]["stream"] is True
        assert openai_fake.last["body"]["reasoning"] == {"effort": "low", "summary": "auto"}
        thinking, text = first.content
        assert thinking.thinking == SEALED["summary"][0]["text"] and text.text == "Paris."
        assert thinking.signature == f"openai:{SEALED['id']}:{SEALED['encrypted_content']}"
        assert first.stop_reason == "end_turn" and first.usage.output_tokens == 97
        with client.messages.stream(model=CODEX, max_tokens=100, tools=[TOOL],
                                    messages=[{"role": "user", "content": "Weather in Rome and Oslo?"}]) as stream:
            second = stream.get_final_message()
    assert [b.type for b in second.content] == ["text", "tool_use", "tool_use"]
    assert second.content[0].text == "Let me check."
    assert [(b.id, b.name, b.input) for b in second.content[1:]] == [
        ("call_2_0", "weather.get", {"location": "Rome"}), ("call_2_1", "weather.get", {"location": "Oslo"})]
    assert second.stop_reason == "tool_use" and second.usage.output_tokens == 4


def test_anthropic_web_search_on_responses_only_model(codex_gateway, openai_fake):
    """Anthropic's web search tool runs as OpenAI's; the search comes back as the blocks
    Anthropic's makes, the cited span as a text block with its citation."""
    found = vector_json(f"{VECTORS}/response_web_search.json")
    Response.model_validate(found)   # the recorded shape is the SDK's
    [note] = found["output"][1]["content"][0]["annotations"]
    text = found["output"][1]["content"][0]["text"]
    ask = {"model": CODEX, "max_tokens": 1000, "messages": [{"role": "user", "content": "When does Artemis II launch?"}],
           "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5,
                      "allowed_domains": ["nasa.gov"]}]}
    openai_fake.enqueue(json=found)
    with anthropic_client(codex_gateway) as client:
        out = client.messages.create(**ask)
    sent = openai_fake.last["body"]
    assert sent["tools"] == [{"type": "web_search", "filters": {"allowed_domains": ["nasa.gov"]}}]
    assert sent["max_tool_calls"] == 5 and sent["include"] == ["web_search_call.action.sources"]
    search, results, *texts = out.content
    assert (search.type, search.name, search.input) == ("server_tool_use", "web_search", {"query": "Artemis II launch date"})
    assert results.type == "web_search_tool_result" and results.tool_use_id == search.id
    assert [r.url for r in results.content] == [s["url"] for s in found["output"][0]["action"]["sources"]]
    assert "".join(t.text for t in texts) == text
    cited = texts[1]
    assert cited.text == text[note["start_index"]:note["end_index"]] and not texts[0].citations
    assert [(c.url, c.title, c.cited_text) for c in cited.citations] == [(note["url"], note["title"], cited.text)]
    assert out.usage.server_tool_use.web_search_requests == 1 and out.stop_reason == "end_turn"
    # streamed: the same search blocks; the citation joins the text block it arrives in
    events = responses_events(found)
    last_delta = max(n for n, e in enumerate(events) if e["type"] == "response.output_text.delta")
    events.insert(last_delta + 1, {"type": "response.output_text.annotation.added", "item_id": found["output"][1]["id"],
                                   "output_index": 1, "content_index": 0, "annotation_index": 0, "annotation": note})
    openai_fake.enqueue(sse=b"".join(named_sse([{**e, "sequence_number": n} for n, e in enumerate(events)])))
    with anthropic_client(codex_gateway) as client:
        with client.messages.stream(**ask) as stream:
            streamed = stream.get_final_message()
    assert [b.model_dump() for b in streamed.content[:2]] == [b.model_dump() for b in out.content[:2]]
    [answer] = streamed.content[2:]
    assert answer.text == text
    assert [(c.url, c.cited_text) for c in answer.citations] == [(note["url"], cited.text)]
    assert streamed.usage.server_tool_use.web_search_requests == 1
    # the next turn: the search is not sent back (OpenAI takes none), the answer is
    openai_fake.enqueue(json=REASONING)
    with anthropic_client(codex_gateway) as client:
        client.messages.create(**{**ask, "messages": [*ask["messages"],
                                                      {"role": "assistant", "content": [b.model_dump() for b in out.content]},
                                                      {"role": "user", "content": "Thanks!"}]})
    assert openai_fake.last["body"]["input"] == [
        {"type": "message", "role": "user", "content": "When does Artemis II launch?"},
        {"type": "message", "role": "assistant", "content": text},
        {"type": "message", "role": "user", "content": "Thanks!"}]


def test_anthropic_stream_failure_and_refusals(codex_gateway, openai_fake):
    started = {**REASONING, "status": "in_progress", "output": [], "usage": None}
    failed = {**started, "status": "failed", "error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    openai_fake.enqueue(sse=b"".join(named_sse([{"type": "response.created", "response": started, "sequence_number": 0},
                                                {"type": "response.failed", "response": failed, "sequence_number": 1}])))
    status, _, data = raw_post(codex_gateway, "/v1/messages", {"model": CODEX, "max_tokens": 10, "stream": True,
                                                              "messages": [{"role": "user", "content": "Hi"}]})
    events = anthropic_events(data)
    assert status == 200 and [e["type"] for e in events] == ["message_start", "error"]
    assert events[-1]["error"] == {"type": "rate_limit_error", "message": "slow down"}
    refused = {**REASONING, "output": [{"id": "msg_r", "type": "message", "status": "completed", "role": "assistant",
                                        "content": [{"type": "refusal", "refusal": "I can't help with that."}]}]}
    openai_fake.enqueue(json=refused)
    with anthropic_client(codex_gateway) as client:
        out = client.messages.create(model=CODEX, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert out.stop_reason == "refusal" and out.content[0].text == "I can't help with that."
    with anthropic_client(codex_gateway) as client, pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=CODEX, max_tokens=10, stop_sequences=["END"],
                               messages=[{"role": "user", "content": "Hi"}])
    assert "stop_sequences" in e.value.message
    assert len(openai_fake.requests) == 2   # the refused request never reached the provider
