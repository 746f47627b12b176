"""Turns an Anthropic model pauses (`pause_turn`, a long server-tool loop): the gateway
continues them for OpenAI chat and Responses clients, which cannot, and answers once,
streamed or not; an Anthropic client gets the pause as it is and continues itself.
The fake pauses a web-searching turn a given number of times (fakes.pausing).
"""
from __future__ import annotations

import json

import openai
import pytest

from conftest import GATEWAY_ENV, gateway_config, openai_client, start_gateway
from fakes import pausing, search_result, token_count, vector
from test_responses import check_sequence, raw_stream
from translate_util import CLAUDE, USER, anth_message, anth_text_stream, openai_frames, raw_post

SEARCH = [{"type": "web_search"}]


def part(n, k):
    """The content the fake's request number `n` answered with: part `k` of the turn."""
    return [{"type": "text", "text": f"Part {k}. "},
            {"type": "server_tool_use", "id": f"srvtoolu_{n}_0", "name": "web_search", "input": {"query": f"query {k}"}},
            {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{n}_0", "content": search_result(f"query {k}")}]


def check_continued(fake, parts):
    """The fake got the request, then each continuation: the same request, with the paused
    content so far as the last, assistant, message."""
    first, *more = fake.requests
    assert len(more) == parts
    for k, req in enumerate(more, 1):
        paused = [block for j in range(1, k + 1) for block in part(j, j)]
        assert req["body"] == {**first["body"], "messages": [*first["body"]["messages"],
                                                             {"role": "assistant", "content": paused}]}


def tokens(fake):
    """(input, output) tokens the fake counted over all its answers (a paused part: text and search)."""
    requests = fake.requests
    return sum(token_count(r["raw"]) for r in requests), 2 * (len(requests) - 1) + 1


def test_chat_continued(oai, anthropic_fake):
    anthropic_fake.script(pausing(2))
    r = oai.chat.completions.create(model=CLAUDE, messages=USER)
    assert r.choices[0].message.content == "Part 1. Part 2. Done."
    assert r.choices[0].finish_reason == "stop"
    check_continued(anthropic_fake, 2)
    prompt, completion = tokens(anthropic_fake)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        prompt, completion, prompt + completion)


def test_chat_stream_continued(gateway, oai, anthropic_fake):
    anthropic_fake.script(pausing(2))
    with oai.chat.completions.stream(model=CLAUDE, messages=USER, stream_options={"include_usage": True}) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "Part 1. Part 2. Done."
    assert final.choices[0].finish_reason == "stop"
    check_continued(anthropic_fake, 2)  # the content rebuilt from the stream, as the provider sent it
    assert all(r["body"]["stream"] is True for r in anthropic_fake.requests)
    prompt, completion = tokens(anthropic_fake)
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (prompt, completion)
    # one stream: one id, one role, one finish, one usage chunk, one [DONE]
    anthropic_fake.reset()
    anthropic_fake.script(pausing(2))
    status, _, data = raw_post(gateway, "/v1/chat/completions", {"model": CLAUDE, "messages": USER, "stream": True,
                                                                 "stream_options": {"include_usage": True}})
    assert status == 200
    frames = openai_frames(data)
    assert frames[-1] == "[DONE]" and "[DONE]" not in frames[:-1]
    chunks = frames[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"].get("role") for c in chunks if c["choices"]].count("assistant") == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["stop"]
    assert [c for c in chunks if c.get("usage")] == chunks[-1:]


def test_responses_continued(gateway, oai, anthropic_fake):
    anthropic_fake.script(pausing(2))
    r = oai.responses.create(model=CLAUDE, input="Find it", tools=SEARCH)
    assert r.status == "completed" and r.output_text == "Part 1. Part 2. Done."
    assert [item.type for item in r.output] == ["message", "web_search_call"] * 2 + ["message"]
    assert [item.action.query for item in r.output if item.type == "web_search_call"] == ["query 1", "query 2"]
    check_continued(anthropic_fake, 2)
    prompt, completion = tokens(anthropic_fake)
    assert (r.usage.input_tokens, r.usage.output_tokens) == (prompt, completion)
    # streamed: the SDK's accumulated response is the whole answer, made of one numbered stream
    anthropic_fake.reset()
    anthropic_fake.script(pausing(2))
    with oai.responses.stream(model=CLAUDE, input="Find it", tools=SEARCH) as s:
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == "Part 1. Part 2. Done."
    assert [item.type for item in final.output] == [item.type for item in r.output]
    check_continued(anthropic_fake, 2)
    assert (final.usage.input_tokens, final.usage.output_tokens) == tokens(anthropic_fake)
    anthropic_fake.reset()
    anthropic_fake.script(pausing(2))
    events = raw_stream(gateway, model=CLAUDE, input="Find it", tools=SEARCH)
    check_sequence(events)
    assert [e["type"] for e in events].count("response.completed") == 1
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2, 3, 4]
    # the stored answer is the whole one
    assert oai.responses.retrieve(events[-1]["response"]["id"]).output_text == "Part 1. Part 2. Done."


def test_anthropic_client_gets_the_pause(anth, anthropic_fake):
    """An Anthropic client continues itself: the pause reaches it as the provider sent it."""
    anthropic_fake.script(pausing(2))
    r = anth.messages.create(model=CLAUDE, max_tokens=100, messages=USER)
    assert r.stop_reason == "pause_turn"
    assert [b.model_dump(exclude_none=True) for b in r.content] == part(1, 1)
    with anth.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as s:
        final = s.get_final_message()
    assert final.stop_reason == "pause_turn"
    assert [b.model_dump(exclude_none=True) for b in final.content] == part(2, 1)
    assert len(anthropic_fake.requests) == 2


def test_continuations_capped(gateway, oai, anthropic_fake):
    """Still paused after the last continuation the rules allow (4): the answer so far,
    cut: chat's finish_reason length, an incomplete response."""
    anthropic_fake.script(pausing(10))
    r = oai.chat.completions.create(model=CLAUDE, messages=USER)
    assert len(anthropic_fake.requests) == 5
    assert r.choices[0].message.content == "".join(f"Part {k}. " for k in range(1, 6))
    assert r.choices[0].finish_reason == "length"
    anthropic_fake.reset()
    anthropic_fake.script(pausing(10))
    with oai.chat.completions.stream(model=CLAUDE, messages=USER) as s, \
            pytest.raises(openai.LengthFinishReasonError) as cut:   # the SDK's word for a cut answer
        s.get_final_completion()
    final = cut.value.completion
    assert len(anthropic_fake.requests) == 5
    assert final.choices[0].message.content == r.choices[0].message.content
    assert final.choices[0].finish_reason == "length"
    anthropic_fake.reset()
    anthropic_fake.script(pausing(10))
    with oai.responses.create(model=CLAUDE, input="Find it", tools=SEARCH, stream=True) as s:
        *_, last = s   # the SDK's stream helper wants a completed response: this one is not
    assert len(anthropic_fake.requests) == 5
    response = last.response
    assert last.type == "response.incomplete" and response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == r.choices[0].message.content


def test_continuation_refused(oai, anthropic_fake):
    """A continuation the provider refuses: an error, never the first part passed off as the
    answer (an HTTP error before any answer, an in-stream error once the stream started)."""
    anthropic_fake.enqueue(json=anth_message([{"type": "text", "text": "Part 1. "}], "pause_turn"))
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(openai.InternalServerError) as e:
        oai.chat.completions.create(model=CLAUDE, messages=USER)
    assert e.value.body["message"] == "Overloaded"
    anthropic_fake.enqueue(sse=anth_text_stream(["Part 1. "], "pause_turn"))
    anthropic_fake.enqueue(529, vector("anthropic/error_529_overloaded.json"))
    with pytest.raises(openai.APIError) as e:
        with oai.chat.completions.stream(model=CLAUDE, messages=USER) as s:
            s.get_final_completion()
    assert "Overloaded" in e.value.message
    assert len(anthropic_fake.requests) == 4


def test_continuations_bounded_by_size(openai_fake, anthropic_fake, ollama_fake):
    """The paused content a continuation sends back is bounded by max_response_body: past
    it, the answer so far, cut, streamed or not."""
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["listeners"]["egress_traffic"]["max_response_body"] = "1500B"
    gw = start_gateway(config, env=GATEWAY_ENV)
    try:
        with openai_client(gw) as client:
            anthropic_fake.script(pausing(10))
            r = client.chat.completions.create(model=CLAUDE, messages=USER)
            sent = len(anthropic_fake.requests)
            assert 1 < sent < 5 and r.choices[0].finish_reason == "length"
            assert r.choices[0].message.content == "".join(f"Part {k}. " for k in range(1, sent + 1))
            anthropic_fake.reset()
            anthropic_fake.script(pausing(10))
            with client.chat.completions.stream(model=CLAUDE, messages=USER) as s, \
                    pytest.raises(openai.LengthFinishReasonError):
                s.get_final_completion()
            assert 1 < len(anthropic_fake.requests) < 5
    finally:
        gw.stop()
    assert json.loads(anthropic_fake.last["raw"])["messages"][-1]["role"] == "assistant"
