"""Routing: wildcard providers and alias patterns, routing rules, balanced
deployments with outlier ejection, preference routing through a router model,
and the `x-arch-route` header that explains every decision.

Every test drives the real gateway process over sockets with the official SDKs
or raw HTTP, against the fake providers, and checks what the fakes received.
"""
from __future__ import annotations

import pytest

from conftest import GATEWAY_ENV, anthropic_client, openai_client, start_gateway
from reliability_util import config, request
from test_config import archgw, write

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def fakes(openai_fake, anthropic_fake, ollama_fake):
    return openai_fake, anthropic_fake, ollama_fake


# ---------------------------------------------------------------------------------------------
# wildcard providers and alias patterns
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wild_gw(fakes):
    openai_fake, anthropic_fake, ollama_fake = fakes
    cfg = config(fakes, providers=[
        # any OpenAI id, at another host than the exact gpt-4o-mini entry, so a test sees which answered
        {"model": "openai/*", "access_key": "$OPENAI_API_KEY", "base_url": ollama_fake.url},
        {"model": "anthropic/*", "access_key": "$ANTHROPIC_API_KEY", "base_url": anthropic_fake.url},
    ], aliases={"legacy-*": {"target": "gpt-4o"}, "legacy-mini-*": {"target": "gpt-4o-mini"}})
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def test_wildcard_provider_forwards_any_id_as_given(wild_gw, fakes):
    openai_fake, anthropic_fake, ollama_fake = fakes
    with openai_client(wild_gw) as client:
        assert client.chat.completions.create(model="gpt-5.1-preview", messages=USER).model == "gpt-5.1-preview"
        assert ollama_fake.last["body"]["model"] == "gpt-5.1-preview"
        client.chat.completions.create(model="openai/o3-mini", messages=USER)
        assert ollama_fake.last["body"]["model"] == "o3-mini"  # the provider prefix is the gateway's, not the id
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # an exact entry beats the pattern
        assert openai_fake.last["body"]["model"] == "gpt-4o-mini" and len(ollama_fake.requests) == 2
    with anthropic_client(wild_gw) as client:
        message = client.messages.create(model="claude-sonnet-4-20250514", max_tokens=20, messages=USER)
        assert message.content[0].text == "Hello from claude-sonnet-4-20250514!"
        assert anthropic_fake.last["body"]["model"] == "claude-sonnet-4-20250514"


def test_literal_star_is_not_a_model(wild_gw, fakes):
    resp = request(wild_gw.url, "POST", "/v1/chat/completions", {"model": "*", "messages": USER})
    assert resp.status == 404 and "does not exist" in resp.json()["error"]["message"]
    assert not any(f.requests for f in fakes)


def test_alias_patterns_most_specific_wins(wild_gw, fakes):
    openai_fake = fakes[0]
    with openai_client(wild_gw) as client:
        client.chat.completions.create(model="legacy-davinci", messages=USER)
        assert openai_fake.last["body"]["model"] == "gpt-4o"
        client.chat.completions.create(model="legacy-mini-2023", messages=USER)
        assert openai_fake.last["body"]["model"] == "gpt-4o-mini"


def test_models_lists_patterns(wild_gw):
    with openai_client(wild_gw) as client:
        ids = {m.id: m for m in client.models.list().data}
    assert {"openai/*", "anthropic/*", "claude-*", "gpt-*", "legacy-*", "openai/gpt-4o-mini"} <= set(ids)
    assert ids["claude-*"].owned_by == "anthropic"


def test_validate_reports_overlapping_patterns(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners: {egress_traffic: {port: 12000}}
        llm_providers:
          - model: openai/*
            access_key: k
          - model: openai/*
            name: eu/*
            access_key: k
            base_url: https://eu.example.com/v1
        model_aliases:
          claude-*: {target: gpt-4o}
          claude-3*: {target: gpt-4o-mini}
        """)
    code, out = archgw("validate", str(path))
    assert code == 0, out
    assert ("patterns 'claude-3*' (alias claude-3*) and 'claude-*' (alias claude-*) overlap:"
            " a name matching both goes to alias claude-3* (more specific)") in out
    # two wildcard entries claim the same ids: the first declared wins
    assert ("patterns 'gpt-*' (openai/*) and 'gpt-*' (eu/*) overlap:"
            " a name matching both goes to openai/* (declared first)") in out
    assert "OK (0 model(s), 0 alias(es), 10 pattern(s)" in out
