"""Routing: wildcard providers and alias patterns, routing rules, balanced
deployments with outlier ejection, preference routing through a router model,
and the `x-arch-route` header that explains every decision.

Every test drives the real gateway process over sockets with the official SDKs
or raw HTTP, against the fake providers, and checks what the fakes received.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import GATEWAY_ENV, anthropic_client, free_port, launch, openai_client, start_gateway
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


# ---------------------------------------------------------------------------------------------
# routing rules
# ---------------------------------------------------------------------------------------------

LONG = "word " * 3000  # about 3,750 tokens by the gateway's estimate
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 40000}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def rules_gw(fakes, tmp_path_factory):
    rules_dir = tmp_path_factory.mktemp("rules")
    (rules_dir / "routing.yaml").write_text(
        "routing_rules:\n  - {name: from-rules-dir, when: \"headers.\\\"x-team\\\" == 'research'\", target: gpt-4o}\n")
    cfg = config(fakes, providers=[{"model": "openai/chatgpt-4o-latest", "access_key": "$OPENAI_API_KEY",
                                    "base_url": fakes[0].url}],
                 aliases={"auto": {"target": "gpt-4o-mini", "routing_rules": [
        {"name": "long-context", "when": "input_tokens > `2000`", "target": "claude-3-5-sonnet-20241022"},
        {"name": "vision", "when": "has_images", "target": "gpt-4o"},
        {"name": "thinking", "when": "has_thinking", "target": "claude-3-5-sonnet-20241022"},
        {"name": "tools", "when": "has_tools", "target": "gpt-4o"},
        {"name": "streams", "when": "stream", "target": "llama3.1"},
        {"name": "anthropic-clients", "when": "dialect == 'anthropic'", "target": "claude-3-5-sonnet-20241022"},
        {"name": "ask-for-code", "when": "contains(last_user_message, 'python')", "target": "gpt-4o"},
        {"name": "cold", "when": "body.temperature == `0`", "target": "llama3.1"},
    ]}})
    cfg["routing_rules"] = [
        {"name": "free-tier", "when": "headers.\"x-tier\" == 'free'", "target": "fast-model"},
        {"name": "legacy-name", "when": "model == 'gpt-3.5-turbo'", "target": "auto"},
        # rules/models.yaml: chatgpt-4o-latest has no tool support
        {"name": "needs-tools", "when": "has_tools && model_facts && !(model_facts.tools)", "target": "gpt-4o"},
    ]
    cfg["rules"] = [str(rules_dir)]
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def routed(gw, body, headers=None, path="/v1/chat/completions"):
    """(x-arch-route, the model the provider was asked for) for one raw request."""
    resp = request(gw.url, "POST", path, body, headers)
    assert resp.status == 200, resp.body
    return resp.headers["x-arch-route"], resp.json()["model"]


@pytest.mark.parametrize("body, why, model", [
    ({"messages": USER}, "auto default -> openai/gpt-4o-mini", "gpt-4o-mini"),
    ({"messages": [{"role": "user", "content": LONG}]}, "auto rule long-context -> anthropic/claude-3-5-sonnet-20241022",
     "claude-3-5-sonnet-20241022"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it"}, IMAGE]}]},
     "auto rule vision -> openai/gpt-4o", "gpt-4o"),  # the image's base64 is not counted as tokens
    ({"messages": USER, "reasoning_effort": "high"}, "auto rule thinking -> anthropic/claude-3-5-sonnet-20241022",
     "claude-3-5-sonnet-20241022"),
    ({"messages": USER, "tools": TOOLS}, "auto rule tools -> openai/gpt-4o", "gpt-4o"),
    ({"messages": [{"role": "user", "content": "write python"}]}, "auto rule ask-for-code -> openai/gpt-4o", "gpt-4o"),
    ({"messages": USER, "temperature": 0}, "auto rule cold -> ollama/llama3.1", "llama3.1"),
], ids=["default", "input_tokens", "has_images", "has_thinking", "has_tools", "last_user_message", "body"])
def test_alias_rules_on_every_fact(rules_gw, body, why, model):
    assert routed(rules_gw, {"model": "auto", **body}) == (why, model)


def test_image_in_a_tool_result_is_an_image(rules_gw):
    """A screenshot a tool returned (Anthropic's tool_result blocks): a vision model's, and
    its base64 is no text for input_tokens either."""
    screenshot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 40000}}
    body = {"model": "auto", "max_tokens": 20, "messages": [
        {"role": "user", "content": "take a screenshot"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [screenshot]}]}]}
    assert routed(rules_gw, body, path="/v1/messages") == ("auto rule vision -> openai/gpt-4o", "gpt-4o")


def test_rule_on_model_facts_avoids_a_model_without_tools(rules_gw):
    assert routed(rules_gw, {"model": "chatgpt-4o-latest", "messages": USER, "tools": TOOLS}) == \
        ("rule needs-tools -> openai/gpt-4o", "gpt-4o")
    assert routed(rules_gw, {"model": "chatgpt-4o-latest", "messages": USER}) == \
        ("-> openai/chatgpt-4o-latest", "chatgpt-4o-latest")
    assert routed(rules_gw, {"model": "gpt-4o-mini", "messages": USER, "tools": TOOLS}) == \
        ("-> openai/gpt-4o-mini", "gpt-4o-mini")  # it has tools: the rule does not hold


def test_rule_on_stream_and_dialect(rules_gw, fakes):
    with openai_client(rules_gw) as client:
        chunks = list(client.chat.completions.create(model="auto", messages=USER, stream=True))
    assert chunks[-1].model == "llama3.1" and fakes[2].last["body"]["stream"] is True
    with anthropic_client(rules_gw) as client:
        raw = client.messages.with_raw_response.create(model="auto", max_tokens=20, messages=USER)
    assert raw.headers["x-arch-route"] == "auto rule anthropic-clients -> anthropic/claude-3-5-sonnet-20241022"
    assert raw.parse().model == "claude-3-5-sonnet-20241022"


def test_global_rules_on_headers_and_model_then_alias_rules(rules_gw):
    # a header overrides whatever model was asked for; the rule's target is an alias
    assert routed(rules_gw, {"model": "gpt-4o", "messages": USER}, {"x-tier": "free"}) == \
        ("rule free-tier -> openai/gpt-4o-mini", "gpt-4o-mini")
    # a rule on the requested name sends it to `auto`, whose own rules then decide
    assert routed(rules_gw, {"model": "gpt-3.5-turbo", "messages": USER, "tools": TOOLS}) == \
        ("rule legacy-name auto rule tools -> openai/gpt-4o", "gpt-4o")
    # the rules directory's routing.yaml comes after the config's rules
    assert routed(rules_gw, {"model": "gpt-4o-mini", "messages": USER}, {"x-team": "research"}) == \
        ("rule from-rules-dir -> openai/gpt-4o", "gpt-4o")
    assert routed(rules_gw, {"model": "gpt-4o-mini", "messages": USER}) == ("-> openai/gpt-4o-mini", "gpt-4o-mini")


def test_rule_decisions_in_access_log_and_metrics(fakes, tmp_path):
    cfg = config(fakes)
    cfg["routing_rules"] = [{"name": "free-tier", "when": "headers.\"x-tier\" == 'free'", "target": "gpt-4o-mini"}]
    cfg["access_log"] = {"file": str(tmp_path / "access.log")}
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    try:
        assert routed(gw, {"model": "gpt-4o", "messages": USER}, {"x-tier": "free"})[1] == "gpt-4o-mini"
        metrics = request(gw.url, "GET", "/metrics").text
    finally:
        gw.stop()
    line = json.loads((tmp_path / "access.log").read_text().splitlines()[-1])
    assert line["route"] == "rule free-tier -> openai/gpt-4o-mini" and line["requested_model"] == "gpt-4o"
    assert 'arch_routing_decisions_total{decided_by="free-tier",target="gpt-4o-mini"} 1.0' in metrics


def test_validate_reports_bad_rules_with_their_path(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners: {egress_traffic: {port: 12000}}
        llm_providers:
          - model: openai/gpt-4o
            access_key: k
        routing_rules:
          - {when: "input_tokens >", target: gpt-4o}
          - {name: nowhere, when: has_images, target: gpt-9}
        model_aliases:
          auto:
            target: gpt-4o
            routing_rules:
              - {when: "has_tools && [", target: gpt-4o}
        """)
    code, out = archgw("validate", str(path))
    assert code == 1, out
    assert "routing_rules[0].when: invalid JMESPath 'input_tokens >'" in out
    assert "routing_rules[1].target: 'gpt-9' is not a configured model, alias or routing preference" in out
    assert "model_aliases.auto.routing_rules[0].when: invalid JMESPath" in out


# ---------------------------------------------------------------------------------------------
# load balancing, outlier ejection, affinity
# ---------------------------------------------------------------------------------------------

def balanced_gw(fakes, balancing=None, alias=None):
    """gpt-4o served by two deployments: [0] the openai fake, [1] the ollama fake (both
    speak OpenAI), under the name `gpt`; `alias` adds model_aliases.pool."""
    openai_fake, _, ollama_fake = fakes
    cfg = config(fakes, providers=[
        {"model": "openai/gpt-4o", "name": "gpt", "access_key": "$OPENAI_API_KEY", "base_url": openai_fake.url,
         "weight": 3},
        {"model": "openai/gpt-4o", "name": "gpt", "access_key": "$OPENAI_API_KEY", "base_url": ollama_fake.url},
    ], aliases={"pool": alias} if alias else None)
    cfg["load_balancing"] = balancing or {}
    return start_gateway(cfg, env=GATEWAY_ENV)


def send(gw, n, model="gpt", headers=None, messages=USER):
    """n sequential requests on one connection; the x-arch-route of each."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        out = []
        for _ in range(n):
            resp = request(gw.url, "POST", "/v1/chat/completions", {"model": model, "messages": messages},
                           headers, conn=conn)
            assert resp.status == 200, resp.body
            out.append(resp.headers["x-arch-route"])
        return out
    finally:
        conn.close()


def counts(fakes):
    return len(fakes[0].requests), len(fakes[2].requests)


@pytest.mark.parametrize("strategy", ["weighted", "round_robin"])
def test_weights_over_many_requests(fakes, strategy):
    gw = balanced_gw(fakes, {"strategy": strategy})
    try:
        routes = send(gw, 400)
    finally:
        gw.stop()
    first, second = counts(fakes)
    assert first + second == 400
    if strategy == "round_robin":  # smooth weighted round robin is exact: 3, 1, 3, 1...
        assert (first, second) == (300, 100)
        assert routes[:4] == ["-> gpt[0] openai/gpt-4o (round_robin)"] * 2 + \
            ["-> gpt[1] openai/gpt-4o (round_robin)", "-> gpt[0] openai/gpt-4o (round_robin)"]
    else:  # binomial(400, 0.75): standard deviation 8.7; 45 is more than 5 of them
        assert abs(first - 300) <= 45, (first, second)


def test_least_inflight_spreads_concurrent_slow_requests(fakes):
    """Ten requests in flight at once, every answer slow: least in-flight keeps the load per
    unit of weight level (weights 3 and 1: 7 and 3 in flight), instead of piling onto one."""
    import concurrent.futures
    gw = balanced_gw(fakes, {"strategy": "least_inflight"})
    reply = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}]}
    for fake in (fakes[0], fakes[2]):
        for _ in range(10):
            fake.enqueue(json=reply, delay=1.0)
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: request(gw.url, "POST", "/v1/chat/completions",
                                                       {"model": "gpt", "messages": USER}).status, range(10)))
    finally:
        gw.stop()
    assert statuses == [200] * 10
    assert counts(fakes) == (7, 3)


def test_least_inflight_avoids_a_slow_deployment(fakes):
    import concurrent.futures
    import time as _time
    gw = balanced_gw(fakes, {"strategy": "least_inflight"})
    reply = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}]}
    for _ in range(20):
        fakes[2].enqueue(json=reply, delay=3.0)  # deployment [1] is slow; [0] (weight 3) answers at once
    try:
        def one(i):
            _time.sleep(0.1 * i)
            return request(gw.url, "POST", "/v1/chat/completions", {"model": "gpt", "messages": USER}).status
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            assert list(pool.map(one, range(20))) == [200] * 20
    finally:
        gw.stop()
    fast, slow = counts(fakes)
    assert slow <= 3 and fast >= 17, (slow, fast)  # requests wait there: the one answering at once gets the rest


def test_lowest_latency_prefers_the_fast_deployment(fakes):
    gw = balanced_gw(fakes, {"strategy": "lowest_latency"})
    reply = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}]}
    for _ in range(40):
        fakes[0].enqueue(json=reply, delay=0.2)
    try:
        send(gw, 40)
    finally:
        gw.stop()
    slow, fast = counts(fakes)
    assert slow <= 8 and fast >= 32, (slow, fast)  # each measured once, then 1 in 20 explores


def test_ejection_failover_and_recovery(fakes):
    import time as _time
    from reliability_util import health, wait_for
    gw = balanced_gw(fakes, {"strategy": "round_robin", "consecutive_failures": 2, "base_ejection": "1s"})
    for _ in range(2):
        fakes[0].enqueue(500, json={"error": {"message": "boom", "type": "server_error", "param": None,
                                              "code": None}})
    try:
        # r1 -> [0] fails, the same request goes on to [1]; r2 -> [0] again (weight 3), fails: ejected
        assert send(gw, 2)[0] == "-> gpt[0] openai/gpt-4o (round_robin)"
        assert counts(fakes) == (2, 2)
        ejected = [d for d in health(gw)["deployments"] if d["ejected_for_s"]]
        assert [d["deployment"] for d in ejected] == ["gpt[0] openai/gpt-4o"]
        assert ejected[0]["reason"] == "2 failures in a row (last 500), ejected 1s"
        assert 'arch_deployment_ejected{deployment="gpt[0] openai/gpt-4o"} 1.0' in request(gw.url, "GET", "/metrics").text
        assert set(send(gw, 6)) == {"-> gpt[1] openai/gpt-4o (round_robin)"}
        assert counts(fakes) == (2, 8)
        # the ejection ends by itself; [0] is chosen again and answers
        assert wait_for(lambda: not any(d["ejected_for_s"] for d in health(gw)["deployments"]), timeout=5)
        _time.sleep(0.05)
        assert "-> gpt[0] openai/gpt-4o (round_robin)" in send(gw, 4)
        assert counts(fakes)[0] >= 3
        log = gw.output()
    finally:
        gw.stop()
    assert "deployment gpt[0] openai/gpt-4o: 2 failures in a row (last 500), ejected 1s" in log


def test_an_alias_and_the_name_it_balances_share_their_deployments(fakes):
    """An ejection learned through an alias holds for requests by the name behind it (one
    state per deployment, not per pool), and /healthz lists each deployment once."""
    from reliability_util import health
    gw = balanced_gw(fakes, {"strategy": "round_robin", "consecutive_failures": 1}, alias={"target": ["gpt"]})
    fakes[0].enqueue(500, json={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    try:
        assert send(gw, 1, "pool") == ["-> gpt[0] openai/gpt-4o (round_robin)"]  # fails, [1] answers
        deployments = health(gw)["deployments"]
        assert [(d["deployment"], bool(d["ejected_for_s"])) for d in deployments] == \
            [("gpt[0] openai/gpt-4o", True), ("gpt[1] openai/gpt-4o", False)]
        assert set(send(gw, 4, "gpt")) == {"-> gpt[1] openai/gpt-4o (round_robin)"}
    finally:
        gw.stop()
    assert counts(fakes) == (1, 5)


def test_429_cools_for_retry_after_and_all_ejected_tries_least_bad(fakes):
    from reliability_util import health
    gw = balanced_gw(fakes, {"strategy": "round_robin"})
    limited = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}}
    fakes[0].enqueue(429, json=limited, headers={"retry-after": "40"})
    fakes[2].enqueue(429, json=limited, headers={"retry-after": "20"})
    fakes[0].enqueue(429, json=limited, headers={"retry-after": "40"})
    try:
        # [0] 429 -> cooled 40s, [1] 429 -> cooled 20s: the request fails with the last 429
        resp = request(gw.url, "POST", "/v1/chat/completions", {"model": "gpt", "messages": USER})
        assert resp.status == 429
        reasons = {d["deployment"]: d["reason"] for d in health(gw)["deployments"]}
        assert reasons == {"gpt[0] openai/gpt-4o": "429, cooling 40s", "gpt[1] openai/gpt-4o": "429, cooling 20s"}
        # all ejected: the one back soonest is tried first, rather than failing fast
        assert send(gw, 1) == ["-> gpt[1] openai/gpt-4o (all ejected, least bad)"]
    finally:
        gw.stop()


def test_session_affinity_by_header_and_by_prefix(fakes):
    gw = balanced_gw(fakes, alias={"target": ["gpt"], "affinity": "x-session-id"})
    gw2 = balanced_gw(fakes, alias={"target": ["gpt"], "affinity": "prefix"})
    try:
        for session in ("alpha", "beta", "gamma"):
            assert len(set(send(gw, 8, "pool", {"x-session-id": session}))) == 1, session
        chosen = {send(gw, 1, "pool", {"x-session-id": f"s{i}"})[0] for i in range(24)}
        assert len(chosen) == 2  # different sessions still spread over both
        for start in ("plan a trip", "write a poem"):
            convo = [{"role": "user", "content": start}]
            seen = set()
            for turn in range(6):  # the conversation grows; its start stays the same
                convo = convo + [{"role": "assistant", "content": f"a{turn}"}, {"role": "user", "content": f"q{turn}"}]
                seen.update(send(gw2, 1, "pool", messages=convo))
            assert len(seen) == 1 and "(affinity)" in seen.pop()
    finally:
        gw.stop()
        gw2.stop()


def test_fallbacks_after_every_deployment_failed(fakes):
    gw = balanced_gw(fakes, alias={"targets": [{"model": "gpt", "weight": 1}],
                                   "fallbacks": ["claude-3-5-sonnet-20241022"]})
    boom = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    fakes[0].enqueue(503, json=boom)
    fakes[2].enqueue(503, json=boom)
    try:
        with openai_client(gw) as client:
            answer = client.chat.completions.create(model="pool", messages=USER)
    finally:
        gw.stop()
    assert answer.choices[0].message.content == "Hello from claude-3-5-sonnet-20241022!"
    assert counts(fakes) == (1, 1)


def test_plano_alias_forms(tmp_path):
    path = write(tmp_path, """
        version: v0.3.0
        listeners:
          - {type: model, name: llms, port: 12000}
        model_providers:
          - {model: openai/gpt-4o, access_key: k}
          - {model: openai/gpt-4o-mini, access_key: k}
        model_aliases:
          both: {target: [gpt-4o, gpt-4o-mini]}
          nothing: {target: []}
        """)
    code, out = archgw("validate", str(path))
    assert code == 1 and "model_aliases.nothing.target: [] should be non-empty" in out, out
    path.write_text(path.read_text().replace("  nothing: {target: []}\n", ""))
    code, out = archgw("validate", str(path))
    assert code == 0 and "OK (2 model(s), 1 alias(es)" in out, out


# ---------------------------------------------------------------------------------------------
# preference-aligned routing through a router model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def router_fake():
    from fakes import FakeRouter
    fake = FakeRouter().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_router(request):
    if "router_fake" in request.fixturenames:
        request.getfixturevalue("router_fake").reset()


def preference_config(fakes, router_fake, **routing):
    cfg = config(fakes, providers=[
        {"model": "arch/Arch-Router", "name": "arch-router", "provider_interface": "openai",
         "base_url": router_fake.url},
    ], aliases={"auto": {"target": "gpt-4o-mini", "routing_preferences": True}})
    cfg["llm_providers"][0]["default"] = True  # gpt-4o-mini: where nothing fits goes
    cfg["routing_preferences"] = [
        {"name": "code_generation", "description": "writing or fixing code",
         "models": ["claude-3-5-sonnet-20241022", "gpt-4o"]},
        {"name": "cheap_chat", "description": "small talk", "models": ["gpt-4o", "gpt-4o-mini"],
         "selection_policy": {"prefer": "cheapest"}},
    ]
    cfg["routing"] = {"model": "arch-router", **routing}
    return cfg


@pytest.fixture(scope="module")
def pref_gw(fakes, router_fake):
    gw = start_gateway(preference_config(fakes, router_fake, timeout="1s"), env=GATEWAY_ENV)
    yield gw
    gw.stop()


def test_request_without_model_routes_by_preference(pref_gw, router_fake, fakes):
    router_fake.routes = {"python": "code_generation", "weather": "cheap_chat"}
    code = {"messages": [{"role": "user", "content": "write python to sort a list"}]}
    assert routed(pref_gw, code) == ("preference code_generation (router) -> anthropic/claude-3-5-sonnet-20241022",
                                     "claude-3-5-sonnet-20241022")
    asked = router_fake.last["body"]
    assert asked["model"] == "Arch-Router" and asked["temperature"] == 0
    assert '"name": "code_generation", "description": "writing or fixing code"' in asked["messages"][0]["content"]
    # cheapest of [gpt-4o, gpt-4o-mini] by rules/prices.yaml
    assert routed(pref_gw, {"messages": [{"role": "user", "content": "nice weather"}]}) == \
        ("preference cheap_chat (router) -> openai/gpt-4o-mini", "gpt-4o-mini")
    # the same conversation again: decided from the cache, the router is not asked twice
    assert routed(pref_gw, code)[0] == "preference code_generation (cached) -> anthropic/claude-3-5-sonnet-20241022"
    assert len(router_fake.requests) == 2


@pytest.mark.parametrize("mode, why", [("other", "preference other (router)"), ("hang", "preference none (router timeout)"),
                                       ("error", "preference none (router HTTP 500)"),
                                       ("garbage", "preference none (router answer unparseable)")])
def test_router_failures_go_to_the_default(pref_gw, router_fake, mode, why):
    if mode != "other":
        router_fake.mode = mode
    body = {"model": "auto", "messages": [{"role": "user", "content": f"something {mode}"}]}
    assert routed(pref_gw, body) == (f"auto {why} -> default openai/gpt-4o-mini", "gpt-4o-mini")


def test_tool_loop_stays_on_the_turns_model(pref_gw, router_fake, fakes):
    """A Claude-Code-like turn: the user asks, the model calls a tool, the tool result goes
    back (a user message of only tool_result blocks): every step goes to the model the turn
    started on, and the router is asked once."""
    router_fake.routes = {"refactor": "code_generation", "thanks": "cheap_chat"}
    anthropic_fake = fakes[1]
    tool_use = {"id": "msg_t", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20241022",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}}],
                "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 5}}
    anthropic_fake.enqueue(json=tool_use)
    anthropic_fake.enqueue(json=tool_use)
    tools = [{"name": "Read", "description": "read a file", "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": "refactor a.py please"}]
    with anthropic_client(pref_gw) as client:
        for step in range(3):
            raw = client.messages.with_raw_response.create(model="auto", max_tokens=100, tools=tools,
                                                           messages=messages)
            assert raw.headers["x-arch-route"].startswith("auto preference code_generation"), raw.headers
            answer = raw.parse()
            messages = messages + [{"role": "assistant", "content": [b.model_dump() for b in answer.content]},
                                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                                 "content": f"step {step}"}]}]
        assert len(router_fake.requests) == 1 and len(anthropic_fake.requests) == 3
        # a new question starts a new turn: asked again
        messages[-1]["content"].append({"type": "text", "text": "thanks, now small talk"})
        raw = client.messages.with_raw_response.create(model="auto", max_tokens=100, messages=messages)
    assert raw.headers["x-arch-route"] == "auto preference cheap_chat (router) -> openai/gpt-4o-mini"
    assert len(router_fake.requests) == 2


def test_prefer_fastest_by_measured_time_to_first_byte(fakes, router_fake):
    """`prefer: fastest`: before any measurement the listed order; a model not measured yet
    is tried first (once); then the lowest measured time to first byte wins."""
    cfg = preference_config(fakes, router_fake)
    cfg["routing_preferences"] = [{"name": "quick", "description": "quick answers",
                                   "models": ["gpt-4o", "claude-3-5-sonnet-20241022"],
                                   "selection_policy": {"prefer": "fastest"}}]
    router_fake.routes = {"quick": "quick"}
    reply = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}]}
    fakes[0].enqueue(json=reply, delay=0.5)  # gpt-4o's first answer is slow; Claude's are at once
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    try:
        def ask(n):  # a new conversation each time: the router is asked, nothing cached
            return routed(gw, {"messages": [{"role": "user", "content": f"quick question {n}"}]})[0]
        assert ask(1) == "preference quick (router) -> openai/gpt-4o"  # nothing measured: as listed
        assert ask(2) == "preference quick (router) -> anthropic/claude-3-5-sonnet-20241022"  # not measured yet
        for n in range(3, 6):  # both measured: Claude answered faster
            assert ask(n) == "preference quick (router) -> anthropic/claude-3-5-sonnet-20241022"
    finally:
        gw.stop()
    assert len(fakes[0].requests) == 1 and len(fakes[1].requests) == 4


def test_rule_targets_a_preference_and_plano_forms_load(fakes, router_fake, tmp_path):
    """Plano's v0.3 inline routing_preferences (migrated, with a warning) and
    overrides.llm_routing_model; a routing rule may name a preference route."""
    cfg = config(fakes, providers=[
        {"model": "arch/Arch-Router", "name": "arch-router", "provider_interface": "openai",
         "base_url": router_fake.url},
    ])
    cfg["llm_providers"][1]["routing_preferences"] = [{"name": "code", "description": "code generation"}]
    cfg["overrides"] = {"llm_routing_model": "arch-router"}
    cfg["routing_rules"] = [{"name": "vip", "when": "headers.\"x-tier\" == 'vip'", "target": "code"}]
    router_fake.routes = {"code": "code"}
    gw = start_gateway(cfg, env=GATEWAY_ENV)
    try:
        assert routed(gw, {"messages": [{"role": "user", "content": "some code"}]}) == \
            ("preference code (router) -> openai/gpt-4o", "gpt-4o")
        assert routed(gw, {"model": "gpt-4o-mini", "messages": USER}, {"x-tier": "vip"}) == \
            ("rule vip preference code -> openai/gpt-4o", "gpt-4o")
        assert len(router_fake.requests) == 1  # a rule naming a preference needs no router
        output = gw.output()
    finally:
        gw.stop()
    assert "llm_providers[1].routing_preferences: the inline (v0.3) form" in output


PLANO_V04 = """
version: v0.4.0
listeners:
  - {{type: model, name: model_listener, port: 12000}}
model_providers:
  - {{model: openai/gpt-4o, access_key: $OPENAI_API_KEY, base_url: "{openai}", default: true}}
  - {{model: openai/gpt-4o-mini, access_key: $OPENAI_API_KEY, base_url: "{openai}"}}
  - {{model: anthropic/claude-sonnet-4-20250514, access_key: $ANTHROPIC_API_KEY, base_url: "{anthropic}"}}
  - {{model: arch/Arch-Router, name: arch-router, provider_interface: openai, base_url: "{router}"}}
routing_preferences:
  - name: code generation
    description: generating new code snippets, functions, or boilerplate based on user prompts
    models: [anthropic/claude-sonnet-4-20250514, openai/gpt-4o]
    selection_policy: {{prefer: cheapest}}
  - name: general chat
    description: greetings and small talk
    models: [openai/gpt-4o-mini, openai/gpt-4o]
overrides:
  llm_routing_model: arch-router
"""


def test_plano_v04_file_routes_by_preference_as_it_is(fakes, router_fake, tmp_path):
    """A Plano v0.4 file (listener list, model_providers, top-level routing_preferences with
    ordered models and selection_policy, overrides.llm_routing_model) serves as written."""
    (tmp_path / "config.yaml").write_text(PLANO_V04.format(openai=fakes[0].url, anthropic=fakes[1].url,
                                                           router=router_fake.url))
    router_fake.routes = {"code": "code generation", "hello": "general chat"}
    port = free_port()
    gw = launch(tmp_path, port, {**os.environ, **GATEWAY_ENV}, ("--host", "127.0.0.1", "--port", str(port)))
    try:
        # cheapest of the two by rules/prices.yaml; then the listed order
        assert routed(gw, {"messages": [{"role": "user", "content": "write code to parse a date"}]}) == \
            ("preference code generation (router) -> openai/gpt-4o", "gpt-4o")
        assert routed(gw, {"messages": [{"role": "user", "content": "hello there"}]}) == \
            ("preference general chat (router) -> openai/gpt-4o-mini", "gpt-4o-mini")
        output = gw.output()
    finally:
        gw.stop()
    assert "not supported" not in output, output


def test_no_model_without_preferences_is_a_clear_400(gateway):
    resp = request(gateway.url, "POST", "/v1/chat/completions", {"messages": USER})
    assert resp.status == 400
    assert resp.json()["error"]["message"] == "model: a model is required (no routing_preferences are configured)"
