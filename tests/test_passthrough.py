"""What the gateway validates and what it passes on: requests are checked only for what
no provider would accept or what the rules read; roles, block types and fields the
gateway does not know reach a provider of the client's own dialect untouched, and a
translation either maps them or refuses them with a 400 naming them."""
from __future__ import annotations

import anthropic
import openai
import pytest

from fakes import vector_json
from translate_util import CLAUDE, GPT, USER, anth_text_stream, raw_post

# Claude Code 2.1 sends its agent list as a system message inside `messages`, with this beta.
MID_SYSTEM_BETA = "mid-conversation-system-2026-04-07"
CLAUDE_CODE_MESSAGES = [{"role": "user", "content": "hi"},
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "list the files"}]}]


def test_system_message_inside_messages_reaches_anthropic_untouched(gateway, anthropic_fake):
    body = {"model": CLAUDE, "max_tokens": 50, "messages": CLAUDE_CODE_MESSAGES}
    status, _, _ = raw_post(gateway, "/v1/messages", body, {"anthropic-beta": MID_SYSTEM_BETA})
    assert status == 200
    sent = anthropic_fake.last
    assert sent["body"]["messages"] == CLAUDE_CODE_MESSAGES
    assert sent["headers"]["anthropic-beta"] == MID_SYSTEM_BETA


def test_system_message_inside_messages_becomes_an_openai_system_message_in_place(anth, openai_fake):
    msg = anth.messages.create(model=GPT, max_tokens=50, system="You are Claude Code.",
                               messages=CLAUDE_CODE_MESSAGES, extra_headers={"anthropic-beta": MID_SYSTEM_BETA})
    assert msg.content[0].text == f"Hello from {GPT}!"
    assert openai_fake.last["body"]["messages"] == [
        {"role": "system", "content": "You are Claude Code."}, {"role": "user", "content": "hi"},
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "list the files"}]


def test_unknown_fields_blocks_and_roles_pass_through_to_the_same_dialect(gateway, anthropic_fake, openai_fake):
    anth_body = {"model": CLAUDE, "max_tokens": 50, "speed": "fast", "context_management": {"edits": []},
                 "messages": [{"role": "user", "content": [{"type": "future_block", "data": 1}]},
                              {"role": "critic", "content": "hm"}],
                 "tool_choice": {"type": "future_choice"}, "thinking": {"type": "adaptive"}}
    assert raw_post(gateway, "/v1/messages", anth_body)[0] == 200
    assert anthropic_fake.last["body"] == anth_body
    oai_body = {"model": GPT, "verbosity": "low", "messages": [{"role": "critic", "content": "hm"}, *USER],
                "response_format": {"type": "future_format"}}
    assert raw_post(gateway, "/v1/chat/completions", oai_body)[0] == 200
    assert openai_fake.last["body"] == oai_body


def test_unknown_role_across_dialects_is_a_400_naming_it(anth, oai, openai_fake, anthropic_fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        anth.messages.create(model=GPT, max_tokens=10, messages=[*USER, {"role": "critic", "content": "hm"}])
    assert "messages[1].role" in info.value.message and "critic" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CLAUDE, messages=[*USER, {"role": "critic", "content": "hm"}])
    assert info.value.param == "messages[1].role" and "critic" in info.value.message
    assert openai_fake.requests == [] and anthropic_fake.requests == []


def test_unknown_block_type_across_dialects_is_a_400_naming_it(anth, openai_fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        anth.messages.create(model=GPT, max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "text", "text": "see"}, {"type": "search_result", "source": "x", "title": "t", "content": []}]}])
    assert "search_result" in info.value.message and "messages[0].content[1]" in info.value.message
    assert openai_fake.requests == []


def test_thinking_blocks_in_history_are_dropped_not_refused(anth, openai_fake):
    req = vector_json("anthropic/request_multiturn_thinking_tool_result.json")
    req.update(model=GPT, stream=False)
    anth.messages.create(**req)
    assert "thinking" not in str(openai_fake.last["body"]["messages"])


@pytest.mark.parametrize("extra, param", [
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
    ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}, "tool_choice"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
])
def test_openai_fields_anthropic_cannot_honour_are_refused(oai, anthropic_fake, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CLAUDE, messages=USER, **extra)
    assert info.value.param == param
    assert anthropic_fake.requests == []


@pytest.mark.parametrize("extra, name", [
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop sequences"),
    ({"tool_choice": {"type": "future_choice"}, "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
     "tool_choice"),
    ({"extra_body": {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}}, "MCP"),
])
def test_anthropic_fields_openai_cannot_honour_are_refused(anth, openai_fake, extra, name):
    with pytest.raises(anthropic.BadRequestError) as info:
        anth.messages.create(model=GPT, max_tokens=10, messages=USER, **extra)
    assert name in info.value.message
    assert openai_fake.requests == []


@pytest.mark.parametrize("path, body, param", [
    ("/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": "hi"}, "messages"),
    ("/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": 5, "content": "x"}]}, "messages[0].role"),
    ("/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": USER, "thinking": {"type": "enabled",
                                                                                       "budget_tokens": "lots"}},
     "thinking.budget_tokens"),
    ("/v1/chat/completions", {"model": GPT, "messages": USER, "response_format": "json"}, "response_format"),
    ("/v1/chat/completions", {"model": GPT, "messages": USER, "reasoning_effort": 3}, "reasoning_effort"),
])
def test_wrong_types_for_fields_the_rules_read_are_still_a_400(gateway, anthropic_fake, openai_fake, path, body, param):
    status, _, raw = raw_post(gateway, path, body)
    assert status == 400 and param.encode() in raw
    assert anthropic_fake.requests == [] and openai_fake.requests == []


def test_an_end_marker_inside_the_text_does_not_end_a_passed_through_stream(anth, anthropic_fake):
    pieces = ["event: message_stop", " and data: [DONE]", " are just words here"]
    anthropic_fake.enqueue(sse=anth_text_stream(pieces))
    with anth.messages.stream(model=CLAUDE, max_tokens=50, messages=USER) as stream:
        assert stream.get_final_text() == "".join(pieces)
