"""Claude Code, the real CLI (pinned in tests/agents), through the gateway.

`claude -p` runs non-interactively with its default tool set, a throwaway HOME,
ANTHROPIC_BASE_URL pointing at the gateway and a dummy key, the way a user puts it
behind a gateway; telemetry, auto-update and other non-essential traffic are off,
so its only peer is the gateway. The fake providers answer in their own dialect:
fake Anthropic for its default model (same dialect), fake OpenAI for an alias
(translated both ways).

The golden vector `anthropic/claude_code_request.json` is a request body this
version of Claude Code sent (machine-specific values scrubbed); the plain tests at
the end replay it without the CLI.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from conftest import GATEWAY_ENV, gateway_config, start_gateway
from fakes import FakeAnthropic, tool_loop, vector_json
from translate_util import anthropic_events, raw_post

DEFAULT_MODEL = "claude-opus-5-5"   # what this Claude Code version asks for when given no --model
CLIENT_KEY = "sk-ant-client-dummy"
VECTOR = "anthropic/claude_code_request.json"
RESPONSES_ONLY = "gpt-5-codex"      # served only by OpenAI's Responses API (rules/models.yaml)


@pytest.fixture(scope="module")
def gw(openai_fake, anthropic_fake, ollama_fake):
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["llm_providers"].append({"model": f"anthropic/{DEFAULT_MODEL}", "access_key": "$ANTHROPIC_API_KEY",
                                    "base_url": anthropic_fake.url})
    config["llm_providers"].append({"model": f"openai/{RESPONSES_ONLY}", "access_key": "$OPENAI_API_KEY",
                                    "base_url": openai_fake.url})
    gw = start_gateway(config, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def claude(npm_bin, gw, tmp_path, prompt, *args):
    """Run `claude -p prompt *args` in tmp_path/project; return its stdout (the answer)."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir(exist_ok=True)
    project.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": gw.url,
           "ANTHROPIC_API_KEY": CLIENT_KEY, "NO_PROXY": "127.0.0.1,localhost",
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    done = subprocess.run([str(npm_bin / "claude"), "-p", prompt, *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"claude exited {done.returncode}\n{done.stdout}\n{done.stderr}\n{gw.output()[-3000:]}"
    return done.stdout.strip()


# Same dialect: the default model, served by fake Anthropic. Crossed: an alias to gpt-4o, served by
# fake OpenAI's chat completions, and a model fake OpenAI serves only by its Responses API.
ROUTES = {"same-dialect": ((), DEFAULT_MODEL), "to-openai": (("--model", "smart-model"), "gpt-4o"),
          "to-responses": (("--model", RESPONSES_ONLY), RESPONSES_ONLY)}


@pytest.fixture(params=ROUTES, ids=list(ROUTES))
def route(request, anthropic_fake, openai_fake):
    args, model = ROUTES[request.param]
    return args, model, anthropic_fake if model == DEFAULT_MODEL else openai_fake


def test_default_run_answered(npm_bin, gw, tmp_path, route):
    args, model, fake = route
    assert claude(npm_bin, gw, tmp_path, "Say hi", *args) == f"Hello from {model}!"
    body, headers = fake.last["body"], fake.last["headers"]
    assert body["model"] == model and body["stream"] is True
    assert CLIENT_KEY not in json.dumps(headers)
    golden = vector_json(VECTOR)
    if isinstance(fake, FakeAnthropic):
        # Untouched: the mid-conversation system message and every tool, as Claude Code sent them;
        # and shaped like the golden vector, so its replays below test what this version sends.
        assert [m["role"] for m in body["messages"]] == ["user", "system"]
        assert list(body) == list(golden)
        assert [t["name"] for t in body["tools"]] == [t["name"] for t in golden["tools"]]
        assert headers["x-api-key"] == GATEWAY_ENV["ANTHROPIC_API_KEY"]
        assert "claude-code-20250219" in headers["anthropic-beta"]
    elif model == RESPONSES_ONLY:
        # Translated: the system prompt as instructions, the system message in its place.
        assert [i["role"] for i in body["input"]] == ["user", "developer"] and body["instructions"]
        assert "Available agent types" in json.dumps(body["input"][1]["content"])
        assert [t["name"] for t in body["tools"]] == [t["name"] for t in golden["tools"]]
    else:
        # Translated: the system prompt first, then the system message in its place.
        assert [m["role"] for m in body["messages"]] == ["system", "user", "system"]
        assert "Available agent types" in json.dumps(body["messages"][2]["content"])
        assert [t["function"]["name"] for t in body["tools"]] == [t["name"] for t in golden["tools"]]


def test_two_turn_tool_loop(npm_bin, gw, tmp_path, route):
    """The provider asks for Read of a file; Claude Code runs it and sends the result
    back through the gateway; the provider answers with what it read."""
    args, model, fake = route
    (tmp_path / "project").mkdir()
    note = tmp_path / "project" / "note.txt"
    note.write_text("the token is arch-7f3c\n")
    fake.script(tool_loop("Read", {"file_path": str(note)},
                          answer=lambda result: "READ " + ("ok" if "arch-7f3c" in result else "missing")))
    assert claude(npm_bin, gw, tmp_path, "What is in note.txt?", *args) == "READ ok"
    calls = [r for r in fake.requests if r["path"].endswith(("/messages", "/chat/completions", "/responses"))]
    assert len(calls) == 2


# --- the golden vector, replayed without the CLI ------------------------------------------

# What Claude Code sends with the vector's body (its betas included).
CLAUDE_CODE_HEADERS = {
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
                      "per-turn-control-2026-07-01,mid-conversation-tool-changes-2026-07-01,"
                      "thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,effort-2025-11-24",
    "x-api-key": CLIENT_KEY, "user-agent": "claude-cli/2.1.332 (external, sdk-cli)", "x-app": "cli"}


def streamed_text(data: bytes) -> str:
    return "".join(e["delta"]["text"] for e in anthropic_events(data)
                   if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta")


def test_golden_vector_same_dialect_untouched(gw, anthropic_fake):
    """Every field Claude Code sends (system message in `messages`, adaptive thinking,
    context management, deferred tools...) reaches an Anthropic provider as sent."""
    body = vector_json(VECTOR)
    status, _, data = raw_post(gw, "/v1/messages?beta=true", body, CLAUDE_CODE_HEADERS)
    assert status == 200, data
    assert anthropic_fake.last["body"] == body
    assert anthropic_fake.last["headers"]["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]
    assert streamed_text(data) == f"Hello from {DEFAULT_MODEL}!"


def test_golden_vector_translated_to_openai(gw, openai_fake):
    """The same conversation to an OpenAI model: system messages in place, the
    tool call and its result paired, every tool offered, nothing Anthropic-only
    left in the body; the answer comes back as an Anthropic stream."""
    golden = vector_json(VECTOR)
    status, _, data = raw_post(gw, "/v1/messages?beta=true", {**golden, "model": "smart-model"},
                               CLAUDE_CODE_HEADERS)
    assert status == 200, data
    assert streamed_text(data) == "Hello from gpt-4o!"
    sent = openai_fake.last["body"]
    assert not {"system", "thinking", "context_management", "output_config", "metadata", "max_tokens"} & set(sent)
    messages = sent["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "system", "assistant", "tool"]
    system_text = json.dumps(messages[0]["content"])
    assert all(json.dumps(block["text"])[1:-1] in system_text for block in golden["system"])
    assert messages[2]["content"] == golden["messages"][1]["content"]
    use = golden["messages"][2]["content"][0]
    (call,) = messages[3]["tool_calls"]
    assert call["id"] == use["id"] and call["function"]["name"] == "Read"
    assert json.loads(call["function"]["arguments"]) == use["input"]
    assert messages[4]["tool_call_id"] == use["id"] and "arch-7f3c" in json.dumps(messages[4]["content"])
    assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in golden["tools"]]
    assert [t["function"]["parameters"] for t in sent["tools"]] == [t["input_schema"] for t in golden["tools"]]
    assert sent["user"] == hashlib.sha256(golden["metadata"]["user_id"].encode()).hexdigest()   # OpenAI takes 64 characters


def test_golden_vector_translated_to_a_responses_only_model(gw, openai_fake):
    """The same conversation to a model served only by the Responses API: the system prompt
    as instructions, the system message in place, the tool call and its result paired by id,
    the effort kept, nothing Anthropic-only in the body; the answer as an Anthropic stream."""
    golden = vector_json(VECTOR)
    status, _, data = raw_post(gw, "/v1/messages?beta=true", {**golden, "model": RESPONSES_ONLY},
                               CLAUDE_CODE_HEADERS)
    assert status == 200, data
    assert streamed_text(data) == f"Hello from {RESPONSES_ONLY}!"
    assert openai_fake.last["path"] == "/v1/responses"
    sent = openai_fake.last["body"]
    assert not {"system", "thinking", "context_management", "output_config", "metadata", "max_tokens", "user",
                "messages"} & set(sent)
    assert sent["store"] is False and sent["stream"] is True
    assert all(block["text"] in sent["instructions"] for block in golden["system"])
    assert [(i["type"], i.get("role")) for i in sent["input"]] == [
        ("message", "user"), ("message", "developer"), ("function_call", None), ("function_call_output", None)]
    use = golden["messages"][2]["content"][0]
    call, result = sent["input"][2:]
    assert (call["call_id"], call["name"], json.loads(call["arguments"])) == (use["id"], "Read", use["input"])
    assert result["call_id"] == use["id"] and "arch-7f3c" in json.dumps(result["output"])
    # adaptive thinking, effort medium, its text not shown (display: omitted): sealed reasoning only
    assert sent["reasoning"] == {"effort": "medium"} and sent["include"] == ["reasoning.encrypted_content"]
    assert sent["safety_identifier"] == hashlib.sha256(golden["metadata"]["user_id"].encode()).hexdigest()
    assert [t["name"] for t in sent["tools"]] == [t["name"] for t in golden["tools"]]
    assert [t["parameters"] for t in sent["tools"]] == [t["input_schema"] for t in golden["tools"]]
