"""Streaming: cross-dialect SSE translation through real sockets.

OpenAI SDK streams from the Anthropic model and Anthropic SDK streams from
OpenAI-compatible models, fed by the recorded transcripts in tests/vectors.
Checked with the SDKs' own parsers/accumulators and, where framing matters,
on the raw bytes. Pitfall numbers refer to the list in docs/wire-formats.md.
"""
from __future__ import annotations

import json
import threading

import anthropic
import openai
import pytest

from conftest import anthropic_client, openai_client
from fakes import token_count, vector, vector_json
from translate_util import (CLAUDE, GPT, LLAMA, USER, anthropic_events, anth_text_stream, oai_chunk, oai_sse,
                            oai_text_stream, openai_frames, parse_sse, raw_post, vector_text)

TOOLS_OAI = vector_json("openai/request_parallel_tools.json")["tools"]
TOOLS_ANTH = vector_json("anthropic/request_parallel_tools.json")["tools"]


def oai_stream(oai, **kwargs):
    """All ChatCompletionChunks of a streamed create()."""
    kwargs.setdefault("model", CLAUDE)
    kwargs.setdefault("messages", USER)
    return list(oai.chat.completions.create(stream=True, **kwargs))


def raw_oai(gateway, **body):
    body = {"model": CLAUDE, "messages": USER, "stream": True, **body}
    status, headers, data = raw_post(gateway, "/v1/chat/completions", body)
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    return openai_frames(data)


def raw_anth(gateway, **body):
    body = {"model": GPT, "max_tokens": 100, "messages": USER, "stream": True, **body}
    status, headers, data = raw_post(gateway, "/v1/messages", body)
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    return anthropic_events(data)


def finish_reasons(chunks):
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def text_of(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def check_anthropic_grammar(events):
    """The Anthropic stream grammar: message_start, (start/delta*/stop with index 0,1,2...)*, message_delta, message_stop, EOF."""
    types = [e["type"] for e in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    assert types.count("message_delta") == 1 and types.count("message_stop") == 1
    assert events[0]["message"]["content"] == [] and isinstance(events[0]["message"]["usage"], dict)
    open_block, next_index = None, 0
    for e in events[1:-2]:
        if e["type"] == "content_block_start":
            assert open_block is None, "a block started before the previous one stopped"
            assert e["index"] == next_index
            open_block, next_index = e["index"], next_index + 1
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_block
        elif e["type"] == "content_block_stop":
            assert e["index"] == open_block
            open_block = None
        else:
            assert e["type"] == "ping", e
    assert open_block is None, "a block was never stopped"
    delta = events[-2]
    assert delta["delta"]["stop_reason"]
    assert isinstance(delta["usage"]["output_tokens"], int)
    return [e for e in events if e["type"] == "content_block_start"]


# --- text, both ways ---------------------------------------------------------------------------

def test_openai_client_stream_text_from_anthropic(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"))
    chunks = oai_stream(oai)
    assert anthropic_fake.last["body"]["stream"] is True
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].id == "chatcmpl-msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == "Hello there!"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    # no usage chunk unless asked for (docs/wire-formats.md, pitfall 9): every chunk has a choice
    assert all(len(c.choices) == 1 and c.usage is None for c in chunks)


def test_openai_raw_stream_ends_with_done_and_has_no_pings(gateway, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"))
    frames = raw_oai(gateway)
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    for f in frames[:-1]:
        assert f["object"] == "chat.completion.chunk" and len(f["choices"]) == 1, f
        assert f["choices"][0]["finish_reason"] in (None, "stop")
        assert "error" not in f


def test_openai_client_stream_usage_chunk_only_when_asked(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"))
    chunks = oai_stream(oai, stream_options={"include_usage": True})
    usage_chunks = [c for c in chunks if not c.choices]
    assert usage_chunks == [chunks[-1]], "exactly one usage chunk, the last"
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (11, 6, 17)
    assert finish_reasons(chunks) == ["stop"]
    assert text_of(chunks) == "Hello there!"
    assert "stream_options" not in anthropic_fake.last["body"]


def test_openai_raw_stream_usage_chunk_precedes_done(gateway, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text.sse"))
    frames = raw_oai(gateway, stream_options={"include_usage": True})
    assert frames[-1] == "[DONE]"
    assert frames[-2]["choices"] == [] and frames[-2]["usage"]["total_tokens"] == 17
    assert all(f["choices"] for f in frames[:-2])


def test_anthropic_client_stream_text_from_openai(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"))
    expected = vector_text("openai/stream_text_with_usage.sse")
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == expected
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (14, 30)
    body = openai_fake.last["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_event_sequence(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        types = [e.type for e in stream if e.type not in ("text",)]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_raw_event_order(gateway, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"))
    events = raw_anth(gateway)
    starts = check_anthropic_grammar(events)
    assert [s["content_block"] for s in starts] == [{"type": "text", "text": ""}]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"]["output_tokens"] == 30
    assert events[-2]["usage"]["input_tokens"] == 14
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == vector_text("openai/stream_text_with_usage.sse")


def test_anthropic_client_stream_from_ollama(anth, ollama_fake):
    with anth.messages.stream(model=LLAMA, max_tokens=100, messages=USER) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text == "Hello from llama3.1!"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3


def test_anthropic_stream_with_create(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_text_with_usage.sse"))
    events = list(anth.messages.create(model=GPT, max_tokens=100, messages=USER, stream=True))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"


# --- parallel tool calls, streamed -----------------------------------------------------------------

def test_openai_client_streamed_parallel_tool_calls_from_anthropic(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_parallel_tool_use.sse"))
    chunks = oai_stream(oai, tools=TOOLS_OAI)
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert {f.index for f in fragments} == {0, 1}  # tool-call indexes, not block indexes 1, 2 (docs/wire-formats.md, pitfall 1)
    indexes = [f.index for f in fragments]
    assert indexes == sorted(indexes), "calls are emitted one after another"
    calls = {}
    for f in fragments:
        if f.index not in calls:
            assert f.id and f.type == "function" and f.function.name, "first fragment carries id/type/name"
            calls[f.index] = {"id": f.id, "name": f.function.name, "args": f.function.arguments or ""}
        else:
            assert f.id is None and f.type is None and f.function.name is None, "id/name only once (pitfall 3)"
            assert f.function is not None
            calls[f.index]["args"] += f.function.arguments or ""
    assert [(calls[i]["id"], calls[i]["name"]) for i in (0, 1)] == [
        ("toolu_01UYxUYC2zRPY8wiutnF48eP", "add"), ("toolu_01VaRx1jpWCvPhi7L4kywAcd", "multiply")]
    assert [json.loads(calls[i]["args"]) for i in (0, 1)] == [{"a": 2, "b": 3}, {"a": 2, "b": 3}]
    assert text_of(chunks) == "I'll add and multiply the numbers 2 and 3 for you."
    assert finish_reasons(chunks) == ["tool_calls"]


def test_openai_stream_helper_final_completion_with_parallel_tools(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_parallel_tool_use.sse"))
    with oai.chat.completions.stream(model=CLAUDE, messages=USER, tools=TOOLS_OAI) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll add and multiply the numbers 2 and 3 for you."
    assert [c.id for c in choice.message.tool_calls] == ["toolu_01UYxUYC2zRPY8wiutnF48eP",
                                                         "toolu_01VaRx1jpWCvPhi7L4kywAcd"]
    assert [c.function.name for c in choice.message.tool_calls] == ["add", "multiply"]
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [{"a": 2, "b": 3}] * 2


def test_openai_stream_helper_text_then_single_tool(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_text_then_tool_use.sse"))
    with oai.chat.completions.stream(model=CLAUDE, messages=USER, tools=TOOLS_OAI) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", {"location": "Paris"})


def test_anthropic_client_streamed_parallel_tool_calls_from_openai(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_parallel_tool_calls_with_usage.sse"))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use", "tool_use"]
    assert [(b.id, b.name) for b in final.content] == [
        ("call_JMW1whyEaYG438VE1OIflxA2", "GetWeatherArgs"), ("call_DNYTawLBoN8fj3KN6qU9N1Ou", "get_stock_price")]
    assert [b.input for b in final.content] == [{"city": "Edinburgh", "country": "GB", "units": "c"},
                                                {"ticker": "AAPL", "exchange": "NASDAQ"}]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (149, 60)


def test_anthropic_raw_events_for_parallel_tool_calls(gateway, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_parallel_tool_calls_with_usage.sse"))
    events = raw_anth(gateway, tools=TOOLS_ANTH)
    starts = check_anthropic_grammar(events)
    assert [s["content_block"] for s in starts] == [
        {"type": "tool_use", "id": "call_JMW1whyEaYG438VE1OIflxA2", "name": "GetWeatherArgs", "input": {}},
        {"type": "tool_use", "id": "call_DNYTawLBoN8fj3KN6qU9N1Ou", "name": "get_stock_price", "input": {}}]
    for i, expected in enumerate([{"city": "Edinburgh", "country": "GB", "units": "c"},
                                  {"ticker": "AAPL", "exchange": "NASDAQ"}]):
        deltas = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == i]
        assert deltas and all(d["type"] == "input_json_delta" for d in deltas)
        assert json.loads("".join(d["partial_json"] for d in deltas)) == expected
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_client_modern_parallel_stream(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_parallel_tool_calls_modern.sse"))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH) as stream:
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content] == [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})]
    assert final.usage.input_tokens == 106 and final.usage.output_tokens == 50


def test_anthropic_client_text_then_tool_stream(anth, openai_fake):
    """Text then a tool call in one stream: two blocks, text closed before the tool opens."""
    openai_fake.enqueue(sse=oai_sse([
        oai_chunk({"role": "assistant", "content": ""}),
        oai_chunk({"content": "Let me check."}),
        oai_chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]}),
        oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Paris\"}"}}]}),
        oai_chunk({}, "tool_calls"),
    ]))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check."
    assert (final.content[1].id, final.content[1].input) == ("call_9", {"city": "Paris"})


def test_compat_whole_tool_calls_without_index(anth, ollama_fake):
    """Ollama-style: each call whole in one chunk, no index, finish_reason "stop"."""
    ollama_fake.enqueue(sse=oai_sse([
        oai_chunk({"role": "assistant", "content": ""}),
        oai_chunk({"tool_calls": [{"id": "call_a", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}),
        oai_chunk({"tool_calls": [{"id": "call_m", "function": {"name": "multiply", "arguments": "{\"a\": 2, \"b\": 3}"}}]}),
        oai_chunk({}, "stop"),
    ]))
    with anth.messages.stream(model=LLAMA, max_tokens=100, messages=USER, tools=TOOLS_ANTH) as stream:
        final = stream.get_final_message()
    assert [(b.id, b.name, b.input) for b in final.content] == [
        ("call_a", "add", {"a": 2, "b": 3}), ("call_m", "multiply", {"a": 2, "b": 3})]
    assert final.stop_reason == "tool_use"


# --- stop reasons, streamed ------------------------------------------------------------------------

@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"),
    ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
])
def test_stream_stop_reason_to_finish_reason(oai, anthropic_fake, stop_reason, finish):
    anthropic_fake.enqueue(sse=anth_text_stream(["a", "b"], stop_reason))
    chunks = oai_stream(oai)
    assert finish_reasons(chunks) == [finish]


def test_stream_refusal_vector(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_refusal.sse"))
    chunks = oai_stream(oai)
    assert finish_reasons(chunks) == ["content_filter"]
    with pytest.raises(openai.ContentFilterFinishReasonError):
        anthropic_fake.enqueue(sse=vector("anthropic/stream_refusal.sse"))
        with oai.chat.completions.stream(model=CLAUDE, messages=USER) as stream:
            stream.get_final_completion()


def test_stream_max_tokens_truncated_tool_input(oai, anthropic_fake):
    """The last block never gets content_block_stop; still one finish_reason "length", then [DONE]."""
    anthropic_fake.enqueue(sse=vector("anthropic/stream_max_tokens_truncated_tool_input.sse"))
    chunks = oai_stream(oai, tools=TOOLS_OAI)
    assert finish_reasons(chunks) == ["length"]
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert {f.index for f in fragments} == {0}
    assert fragments[0].function.name == "make_file"
    args = "".join(f.function.arguments or "" for f in fragments)
    assert args.startswith('{"filename": "taxes.txt", "lines_of_text": [')
    assert text_of(chunks).startswith("I'll create a comprehensive tax guide")
    anthropic_fake.enqueue(sse=vector("anthropic/stream_max_tokens_truncated_tool_input.sse"))
    with pytest.raises(openai.LengthFinishReasonError):
        with oai.chat.completions.stream(model=CLAUDE, messages=USER, tools=TOOLS_OAI) as stream:
            stream.get_final_completion()


@pytest.mark.parametrize("finish, stop_reason", [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"),
    ("tool_calls", "tool_use"), ("function_call", "tool_use"),
])
def test_stream_finish_reason_to_stop_reason(anth, openai_fake, finish, stop_reason):
    openai_fake.enqueue(sse=oai_text_stream(["a", "b"], finish))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == stop_reason
    assert final.content[0].text == "ab"


def test_stream_compat_stop_with_tool_calls_is_tool_use(anth, openai_fake):
    vec = vector("openai/stream_tool_call_with_usage.sse").replace('"finish_reason":"tool_calls"',
                                                                  '"finish_reason":"stop"')
    assert '"tool_calls"' not in vec.split('"finish_reason":"stop"')[-1]
    openai_fake.enqueue(sse=vec)
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER, tools=TOOLS_ANTH) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [("get_weather", {"city": "New York City"})]


def test_stream_openai_refusal_to_anthropic(anth, openai_fake):
    """A streamed OpenAI refusal becomes text and stop_reason "refusal"."""
    openai_fake.enqueue(sse=vector("openai/stream_refusal_with_usage.sse"))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text == "I'm sorry, I can't assist with that request."
    assert final.stop_reason == "refusal"


# --- usage in streams ---------------------------------------------------------------------------------

def test_stream_usage_with_cache_tokens_anthropic_to_openai(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=anth_text_stream(
        ["x"], usage_start={"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300,
                            "output_tokens": 1},
        usage_delta={"output_tokens": 50}))
    chunks = oai_stream(oai, stream_options={"include_usage": True})
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (420, 50, 470)
    assert u.prompt_tokens_details.cached_tokens == 300


def test_stream_usage_message_delta_overwrites(oai, anthropic_fake):
    """message_delta usage values are cumulative and replace message_start's."""
    anthropic_fake.enqueue(sse=vector("anthropic/stream_parallel_tool_use.sse"))
    chunks = oai_stream(oai, tools=TOOLS_OAI, stream_options={"include_usage": True})
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (502, 137, 639)


def test_stream_usage_with_cache_tokens_openai_to_anthropic(gateway, anth, openai_fake):
    usage = {"prompt_tokens": 500, "completion_tokens": 40, "total_tokens": 540,
             "prompt_tokens_details": {"cached_tokens": 200, "audio_tokens": 0}}
    openai_fake.enqueue(sse=oai_text_stream(["x"], usage=usage))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (300, 40)
    assert final.usage.cache_read_input_tokens == 200
    openai_fake.enqueue(sse=oai_text_stream(["x"], usage=usage))
    events = raw_anth(gateway)
    assert events[0]["message"]["usage"]["output_tokens"] == 0
    assert events[-2]["usage"]["input_tokens"] == 300
    assert events[-2]["usage"]["cache_read_input_tokens"] == 200
    assert events[-2]["usage"]["output_tokens"] == 40


# --- thinking ---------------------------------------------------------------------------------------

def test_stream_thinking_to_reasoning_content(oai, anthropic_fake):
    name = "anthropic/stream_thinking_then_tool_use.sse"
    thinking = "".join(json.loads(d)["delta"].get("thinking", "") for n, d in parse_sse(vector(name).encode())
                       if n == "content_block_delta")
    assert len(thinking) > 50
    anthropic_fake.enqueue(sse=vector(name))
    chunks = oai_stream(oai, tools=TOOLS_OAI)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert reasoning == thinking
    assert not text_of(chunks)  # never glued into the answer text (docs/wire-formats.md, pitfall 6)
    assert "signature" not in json.dumps([c.model_dump() for c in chunks])
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert {f.index for f in fragments} == {0}
    assert json.loads("".join(f.function.arguments or "" for f in fragments)) == {"location": "Florence, Italy"}
    assert finish_reasons(chunks) == ["tool_calls"]


def test_openai_reasoning_stream_to_anthropic_thinking_block(anth, openai_fake):
    openai_fake.enqueue(sse=oai_sse([
        oai_chunk({"role": "assistant", "content": ""}),
        oai_chunk({"reasoning_content": "Let me think. "}),
        oai_chunk({"reasoning_content": "Done."}),
        oai_chunk({"content": "Answer"}),
        oai_chunk({}, "stop"),
    ]))
    with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "Answer"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think. Done."


# --- errors -------------------------------------------------------------------------------------------

def test_stream_request_upfront_529_is_an_http_error(oai, anthropic_fake):
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(openai.InternalServerError) as exc:
        oai_stream(oai)
    assert exc.value.body["message"] == "Overloaded"


def test_stream_request_upfront_429_is_an_http_error(anth, openai_fake):
    openai_fake.enqueue(429, vector("openai/error_429_rate_limit_exceeded.json"))
    with pytest.raises(anthropic.RateLimitError) as exc:
        with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
            stream.get_final_message()
    assert exc.value.body["error"]["type"] == "rate_limit_error"


def test_midstream_anthropic_error_raises_openai_api_error(oai, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_error_midstream_overloaded.sse"))
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in oai.chat.completions.create(model=CLAUDE, messages=USER, stream=True):
            got.append(chunk)
    assert not isinstance(exc.value, openai.APIStatusError)
    assert exc.value.message == "Overloaded"
    assert text_of(got) == "Hello"


def test_midstream_anthropic_error_raw_frame(gateway, anthropic_fake):
    anthropic_fake.enqueue(sse=vector("anthropic/stream_error_midstream_overloaded.sse"))
    frames = raw_oai(gateway)
    assert "[DONE]" not in frames
    assert set(frames[-1]) == {"error"}
    assert set(frames[-1]["error"]) >= {"message", "type", "param", "code"}


def test_midstream_openai_error_raises_anthropic_api_status_error(anth, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_error_midstream.sse"))
    text = []
    with pytest.raises(anthropic.APIStatusError) as exc:
        with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
            for t in stream.text_stream:
                text.append(t)
    err = exc.value
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] in ("api_error", "overloaded_error")
    assert "server had an error" in err.body["error"]["message"]
    assert "".join(text) == "I'm unable to"


def test_midstream_openai_error_raw_events(gateway, openai_fake):
    openai_fake.enqueue(sse=vector("openai/stream_error_midstream.sse"))
    events = raw_anth(gateway)
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "error"
    assert "message_stop" not in [e["type"] for e in events]


def _cut_before(transcript: str, marker: str) -> str:
    return transcript[:transcript.index(marker)]


@pytest.mark.parametrize("cut", ["event: message_stop", "event: message_delta", "event: content_block_stop"])
def test_truncated_anthropic_stream_is_an_error_for_openai_client(oai, anthropic_fake, cut):
    anthropic_fake.enqueue(sse=_cut_before(vector("anthropic/stream_text.sse"), cut))
    with pytest.raises(openai.APIError):
        oai_stream(oai)


def test_anthropic_stream_dropped_connection_is_an_error_for_openai_client(gateway, oai, anthropic_fake):
    transcript = vector("anthropic/stream_text.sse")
    cut = transcript.index('"text":" there"')
    anthropic_fake.enqueue(sse=transcript, close_after=cut)
    with pytest.raises(openai.APIError):
        oai_stream(oai)
    anthropic_fake.enqueue(sse=transcript, close_after=cut)
    frames = raw_oai(gateway)
    assert "[DONE]" not in frames and "error" in frames[-1]


def _cut_at_frame(transcript: str, needle: str) -> str:
    """The transcript up to (not including) the `data:` frame that contains `needle`."""
    return transcript[:transcript.rindex("data: ", 0, transcript.index(needle))]


@pytest.mark.parametrize("needle", ['"finish_reason":"stop"', '"content":" weather"'])
def test_truncated_openai_stream_is_an_error_for_anthropic_client(gateway, anth, openai_fake, needle):
    transcript = _cut_at_frame(vector("openai/stream_text_with_usage.sse"), needle)
    openai_fake.enqueue(sse=transcript)
    with pytest.raises(anthropic.APIStatusError) as exc:
        with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
            stream.get_final_message()
    assert exc.value.body["type"] == "error"
    openai_fake.enqueue(sse=transcript)
    events = raw_anth(gateway)
    assert events[-1]["type"] == "error"
    assert "message_stop" not in [e["type"] for e in events]


def test_openai_stream_that_finished_but_omits_done_still_ends_cleanly(gateway, openai_fake):
    """finish_reason and usage arrived, only `[DONE]` is missing (some compat servers): a
    complete answer, closed normally ("[DONE] or EOF" both end a stream); not a truncation."""
    transcript = _cut_before(vector("openai/stream_text_with_usage.sse"), "data: [DONE]")
    openai_fake.enqueue(sse=transcript)
    events = raw_anth(gateway)
    check_anthropic_grammar(events)
    assert events[-2]["usage"]["output_tokens"] == 30


def test_openai_stream_dropped_connection_is_an_error_for_anthropic_client(gateway, anth, openai_fake):
    transcript = vector("openai/stream_parallel_tool_calls_with_usage.sse")
    cut = transcript.index("get_stock_price")
    openai_fake.enqueue(sse=transcript, close_after=cut)
    with pytest.raises(anthropic.APIStatusError):
        with anth.messages.stream(model=GPT, max_tokens=100, messages=USER) as stream:
            stream.get_final_message()
    openai_fake.enqueue(sse=transcript, close_after=cut)
    events = raw_anth(gateway)
    assert events[-1]["type"] == "error"


# --- SSE events split across TCP writes -------------------------------------------------------------

def _split_points(data: bytes, *needles: bytes):
    """Offsets that cut inside each needle (its middle), in order."""
    points = []
    for needle in needles:
        at = data.index(needle, points[-1] if points else 0)
        points.append(at + max(1, len(needle) // 2))
    return points


def _pieces(data: bytes, points):
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _normalise_oai(frames):
    return [f if isinstance(f, str) else {k: v for k, v in f.items() if k != "created"} for f in frames]


def _normalise_anth(events):
    out = []
    for e in events:
        if e["type"] == "message_start":
            e = {**e, "message": {**e["message"], "id": None}}
        out.append(e)
    return out


def _two_data_lines(data: bytes, needle: bytes) -> bytes:
    """Move `needle` (and the rest of its JSON) to a second `data:` line of the same event:
    valid SSE, the lines' data joined with a newline is still the same JSON."""
    at = data.index(needle)
    return data[:at] + b"\ndata: " + data[at:]


def test_split_anthropic_events_across_writes(gateway, anthropic_fake):
    whole = vector("anthropic/stream_parallel_tool_use.sse").encode()
    anthropic_fake.enqueue(sse=whole)
    expected = _normalise_oai(raw_oai(gateway, tools=TOOLS_OAI))

    second_line = b'"index":2,"delta":{"type":"input_json_delta","partial_json":"{'
    crlf = _two_data_lines(whole, second_line).replace(b"\n", b"\r\n")
    points = _split_points(crlf, b"data: {\"type\":\"message_start\"", b"\"cache_creation\"",
                           b"event: content_block_delta", b"\"partial_json\":\"{\\\"a\\\": 2\"")
    points.append(crlf.index(b"\r\n", points[-1]) + 1)           # between \r and \n
    points.append(crlf.index(b"\r\n\r\n", points[-1]) + 3)       # between the blank line's \r and \n
    points.append(crlf.index(b"data:", points[-1]) + 2)           # "da" | "ta:"
    points.append(crlf.index(b"multiply") + 3)
    points.append(crlf.index(b"\r\ndata: " + second_line) + 1)   # between \r and \n inside one event
    anthropic_fake.enqueue(chunks=_pieces(crlf, points), delay=0.01)
    assert _normalise_oai(raw_oai(gateway, tools=TOOLS_OAI)) == expected

    anthropic_fake.enqueue(chunks=_pieces(whole, range(3, len(whole), 3)))    # every 3 bytes
    assert _normalise_oai(raw_oai(gateway, tools=TOOLS_OAI)) == expected


def test_split_openai_chunks_across_writes(gateway, openai_fake):
    whole = vector("openai/stream_parallel_tool_calls_with_usage.sse").encode()
    openai_fake.enqueue(sse=whole)
    expected = _normalise_anth(raw_anth(gateway, tools=TOOLS_ANTH))

    second_line = b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id"'
    crlf = _two_data_lines(whole, second_line).replace(b"\n", b"\r\n")
    points = _split_points(crlf, b"GetWeatherArgs", b"data: {\"id\"", b"\"Edinb")
    points.append(crlf.index(b"\r\n", points[-1]) + 1)            # between \r and \n
    points.append(crlf.index(b"\r\n\r\n", points[-1]) + 3)
    points.append(crlf.index(b"\r\ndata: " + second_line) + 1)   # between \r and \n inside one event
    points.append(crlf.index(b"data: [DONE]") + 2)                # "da" | "ta: [DONE]"
    points.append(crlf.index(b"[DONE]") + 3)                      # inside [DONE]
    openai_fake.enqueue(chunks=_pieces(crlf, points), delay=0.01)
    assert _normalise_anth(raw_anth(gateway, tools=TOOLS_ANTH)) == expected

    openai_fake.enqueue(chunks=_pieces(whole, range(5, len(whole), 5)))
    assert _normalise_anth(raw_anth(gateway, tools=TOOLS_ANTH)) == expected


def test_events_are_relayed_as_they_arrive(gateway, anthropic_fake):
    """No buffering of the whole stream: the first chunk reaches the client well before the last
    upstream event is even sent."""
    import http.client
    import time

    anthropic_fake.enqueue(sse=anth_text_stream(["a", "b", "c"]), delay=0.15)   # 7 events: 0.9 s in all
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": CLAUDE, "messages": USER, "stream": True}),
                 headers={"content-type": "application/json", "authorization": "Bearer k"})
    t0 = time.monotonic()
    resp = conn.getresponse()
    first = resp.readline()
    first_at = time.monotonic() - t0
    resp.read()
    total = time.monotonic() - t0
    conn.close()
    assert first.startswith(b"data: ")
    assert total > 0.85 and first_at < total - 0.5


# --- concurrency: state is per request -----------------------------------------------------------------

def test_twenty_concurrent_cross_dialect_streams(gateway, openai_fake, anthropic_fake):
    n_each = 10
    for k in range(n_each):
        anthropic_fake.enqueue(sse=anth_text_stream([f"claude-{k}", "-part2", "-end"], msg_id=f"msg_conc{k}",
                                                    usage_start={"input_tokens": 100 + k, "output_tokens": 1},
                                                    usage_delta={"output_tokens": 10 + k}),
                               delay=0.01)
        openai_fake.enqueue(sse=oai_sse([
            oai_chunk({"role": "assistant", "content": ""}, cid=f"chatcmpl-conc{k}"),
            oai_chunk({"content": f"gpt-{k}"}, cid=f"chatcmpl-conc{k}"),
            oai_chunk({"tool_calls": [{"index": 0, "id": f"call_c{k}", "type": "function",
                                       "function": {"name": "add", "arguments": ""}}]}, cid=f"chatcmpl-conc{k}"),
            oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": %d" % k}}]}, cid=f"chatcmpl-conc{k}"),
            oai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ", \"b\": 1}"}}]}, cid=f"chatcmpl-conc{k}"),
            oai_chunk({}, "tool_calls", cid=f"chatcmpl-conc{k}"),
            oai_chunk(cid=f"chatcmpl-conc{k}", choices=False,
                      usage={"prompt_tokens": 200 + k, "completion_tokens": 20 + k, "total_tokens": 220 + 2 * k}),
        ]), delay=0.01)

    results, errors = {}, []
    barrier = threading.Barrier(2 * n_each)

    def via_openai(i):
        with openai_client(gateway, "k") as client:
            barrier.wait()
            chunks = list(client.chat.completions.create(
                model=CLAUDE, messages=[{"role": "user", "content": f"openai-thread-{i}"}], stream=True,
                stream_options={"include_usage": True}))
            results[("o", i)] = chunks

    def via_anthropic(i):
        with anthropic_client(gateway, "k") as client:
            barrier.wait()
            with client.messages.stream(model=GPT, max_tokens=100, tools=TOOLS_ANTH,
                                        messages=[{"role": "user", "content": f"anthropic-thread-{i}"}]) as s:
                text = "".join(s.text_stream)
                results[("a", i)] = (text, s.get_final_message())

    def run(fn, i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((fn.__name__, i, repr(e)))

    threads = [threading.Thread(target=run, args=(fn, i)) for i in range(n_each) for fn in (via_openai, via_anthropic)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == 2 * n_each

    # which scripted answer each request got = its arrival order at the fake
    def served(fake, marker):
        return next(k for k, r in enumerate(fake.requests) if marker in json.dumps(r["body"]))

    for i in range(n_each):
        k = served(anthropic_fake, f"openai-thread-{i}")
        chunks = results[("o", i)]
        assert {c.id for c in chunks} == {f"chatcmpl-msg_conc{k}"}
        assert text_of(chunks) == f"claude-{k}-part2-end"
        assert finish_reasons(chunks) == ["stop"]
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (100 + k, 10 + k)

        k = served(openai_fake, f"anthropic-thread-{i}")
        text, final = results[("a", i)]
        assert text == f"gpt-{k}"
        assert [b.type for b in final.content] == ["text", "tool_use"]
        assert (final.content[1].id, final.content[1].input) == (f"call_c{k}", {"a": k, "b": 1})
        assert (final.usage.input_tokens, final.usage.output_tokens) == (200 + k, 20 + k)
        assert final.stop_reason == "tool_use"


def test_concurrent_default_replies_usage_is_per_request(gateway, anthropic_fake):
    """Unscripted fake answers: prompt tokens depend on each request's own size."""
    results, errors = {}, []

    def one(i):
        try:
            with openai_client(gateway, "k") as client:
                chunks = list(client.chat.completions.create(
                    model=CLAUDE, messages=[{"role": "user", "content": f"q{i}-" + "x" * (37 * i)}], stream=True,
                    stream_options={"include_usage": True}))
                results[i] = chunks
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for i, chunks in results.items():
        req = next(r for r in anthropic_fake.requests if f"q{i}-" in json.dumps(r["body"]))
        assert chunks[-1].usage.prompt_tokens == token_count(req["raw"])
        assert text_of(chunks) == f"Hello from {CLAUDE}!"
