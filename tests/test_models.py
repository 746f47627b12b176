"""Model facts (rules/models.yaml): output-token requests above a model's maximum are
lowered to it, and a request needing a capability the model lacks is refused up front.
Driven through the real SDKs against the fake providers."""
from __future__ import annotations

import base64
import time

import anthropic
import openai
import pytest
import yaml

from conftest import GATEWAY_ENV, ROOT, anthropic_client, gateway_config, openai_client, start_gateway
from fakes import vector_json
from translate_util import CLAUDE, USER

from arch.rules.models import ModelTable

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _wait_for(gateway, text):
    for _ in range(100):
        if text in gateway.output():
            return True
        time.sleep(0.05)
    return False


def test_claude_code_max_tokens_to_gpt_4o_is_lowered_to_its_maximum(gateway, anth, openai_fake):
    """Claude Code asks 32000 output tokens; gpt-4o allows 16384."""
    with anth.messages.stream(model="gpt-4o", max_tokens=32000, messages=USER) as stream:
        assert stream.get_final_message().content[0].text == "Hello from gpt-4o!"
    assert openai_fake.last["body"]["max_completion_tokens"] == 16384
    assert _wait_for(gateway, "max_completion_tokens 32000 is above gpt-4o's maximum output; sent 16384")


def test_same_dialect_max_tokens_lowered_and_field_kept(oai, openai_fake):
    oai.chat.completions.create(model="gpt-4o", max_tokens=50000, messages=USER)
    body = openai_fake.last["body"]
    assert body["max_tokens"] == 16384 and "max_completion_tokens" not in body


def test_max_tokens_within_the_limit_goes_out_untouched(oai, openai_fake):
    oai.chat.completions.create(model="gpt-4o", max_completion_tokens=16384, messages=USER)
    assert openai_fake.last["body"]["max_completion_tokens"] == 16384


def test_openai_client_to_claude_3_5_sonnet_lowered(oai, anthropic_fake):
    anthropic_fake.enqueue(json=vector_json("anthropic/message_text.json"))
    oai.chat.completions.create(model=CLAUDE, max_completion_tokens=20000, messages=USER)
    assert anthropic_fake.last["body"]["max_tokens"] == 8192


@pytest.fixture(scope="module")
def limited(tmp_path_factory, openai_fake, anthropic_fake, ollama_fake):
    """A gateway whose rules directory says llama3.1 has no vision and no tools, and
    adds a Responses-only model."""
    rules = tmp_path_factory.mktemp("rules")
    table = yaml.safe_load((ROOT / "rules/models.yaml").read_text())
    table["llama3.1"] = {"context_window": 131072, "capabilities": []}
    table["gpt-4o-mini"] = {"capabilities": ["tools"], "max_output_tokens": 100}
    table["qwen-responses"] = {"capabilities": ["responses_only"]}
    (rules / "models.yaml").write_text(yaml.safe_dump(table))
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["llm_providers"].append({"model": "openai/o3-pro", "access_key": "$OPENAI_API_KEY",
                                    "base_url": openai_fake.url})
    config["llm_providers"].append({"model": "ollama/qwen-responses", "base_url": ollama_fake.url})
    config["rules"] = [str(rules)]
    gw = start_gateway(config, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def test_image_to_a_model_without_vision_is_a_400_naming_it(limited, ollama_fake):
    with openai_client(limited) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama3.1", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert "vision" in info.value.message and "llama3.1" in info.value.message
    assert info.value.param == "messages"
    assert ollama_fake.requests == []


def test_image_from_anthropic_client_to_a_model_without_vision(limited, ollama_fake):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",")[1]}}
    with anthropic_client(limited) as client, pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="llama3.1", max_tokens=10, messages=[{"role": "user", "content": [image]}])
    assert "vision" in str(info.value) and "llama3.1" in str(info.value)
    assert ollama_fake.requests == []


def test_tools_to_a_model_without_tools_is_a_400(limited, ollama_fake):
    with openai_client(limited) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama3.1", messages=USER, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert "tools" in info.value.message and info.value.param == "tools"
    assert ollama_fake.requests == []


def test_text_to_the_same_model_is_served(limited, ollama_fake):
    with openai_client(limited) as client:
        assert client.chat.completions.create(model="llama3.1", messages=USER).choices[0].message.content
    assert ollama_fake.last["body"]["messages"] == USER


def test_user_rules_override_the_builtin_facts(limited, openai_fake):
    with openai_client(limited) as client:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=500, messages=USER)
    assert openai_fake.last["body"]["max_tokens"] == 100


def test_responses_only_model_is_reached_at_its_responses_endpoint(limited, openai_fake, ollama_fake):
    """Chat and Anthropic clients reach it through their translations to the Responses API
    (tests/test_responses.py); a provider without that API cannot serve it at all."""
    with anthropic_client(limited) as client:
        assert client.messages.create(model="o3-pro", max_tokens=10, messages=USER).content[0].text
    assert openai_fake.last["path"] == "/v1/responses"
    with anthropic_client(limited) as client, pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="qwen-responses", max_tokens=10, messages=USER)
    assert "Responses API" in info.value.message
    with openai_client(limited) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="qwen-responses", messages=USER)
    assert "Responses API" in info.value.message
    assert ollama_fake.requests == []


def test_lookup_exact_then_most_specific_pattern():
    table = ModelTable(yaml.safe_load((ROOT / "rules/models.yaml").read_text()))
    assert table.get("gpt-4o").max_output_tokens == 16384
    assert table.get("gpt-4o-2024-08-06").model == "gpt-4o*"
    assert table.get("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini*"
    assert table.get("gpt-5-codex").model == "gpt-5*codex*"
    assert "structured_output" in table.get("claude-sonnet-4-5-20250929").capabilities
    assert "structured_output" not in table.get("claude-sonnet-4-20250514").capabilities
    assert table.get("claude-sonnet-9").model == "claude-*"
    assert table.get("some-local-model") is None
