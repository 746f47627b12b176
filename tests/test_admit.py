"""Gateway keys, limits and budgets on one gateway process (in-memory state),
driven by the official SDKs and plain HTTP against the fake providers."""
import calendar
import hashlib
import json
import re
import subprocess
import sys
import threading
import time

import anthropic
import openai
import pytest

from conftest import (GATEWAY_ENV, ROOT, anthropic_client, gateway_config, openai_client, start_gateway)
from reliability_util import post, request

KEYS = {"team-a": "ka-secret-0001-team-a", "hashed": "kh-secret-0002", "rpm": "kr-secret-0003",
        "tpm": "kt-secret-0004", "tpm-stream": "kt-secret-0014", "par": "kp-secret-0005", "budget": "kb-secret-0006",
        "hdr": "kl-secret-0008"}
ADMIN = "adm-secret-0009"
USER = [{"role": "user", "content": "Hi"}]
HEADER_LIMITS = {"requests_per_day": 1000, "tokens_per_day": 100000}


def admit_config(fakes, **extra):
    """The standard config plus gateway keys, an admin key and `extra` top-level settings."""
    config = gateway_config(*(f.url for f in fakes))
    config["gateway_keys"] = [
        {"name": "team-a", "key": "$TEAM_A_KEY", "models": ["fast-model", "claude-*"], "tags": {"team": "a"}},
        {"name": "hashed", "key_sha256": hashlib.sha256(KEYS["hashed"].encode()).hexdigest()},
        {"name": "rpm", "key": KEYS["rpm"], "limits": {"requests_per_hour": 3}},
        {"name": "tpm", "key": KEYS["tpm"], "limits": {"tokens_per_hour": 400}},
        {"name": "tpm-stream", "key": KEYS["tpm-stream"], "limits": {"tokens_per_hour": 400}},
        {"name": "par", "key": KEYS["par"], "limits": {"max_parallel_requests": 2}},
        {"name": "budget", "key": KEYS["budget"], "budget": {"usd": 0.00002, "per": "day"}},
        {"name": "hdr", "key": KEYS["hdr"], "limits": HEADER_LIMITS},
    ]
    config["admin_key"] = "$ARCH_ADMIN_KEY"
    config["ratelimits"] = [  # the original Arch format, plus `requests`
        {"model": "gpt-4o", "selector": {"key": "x-user", "value": "*"}, "limit": {"requests": 2, "unit": "hour"}},
        {"model": "llama3.1", "limit": {"requests": 2, "unit": "hour"}}]  # everyone's requests to the model
    config.update(extra)
    return config


ADMIT_ENV = {**GATEWAY_ENV, "TEAM_A_KEY": KEYS["team-a"], "ARCH_ADMIN_KEY": ADMIN}


@pytest.fixture(scope="module")
def fakes(openai_fake, anthropic_fake, ollama_fake):
    return openai_fake, anthropic_fake, ollama_fake


@pytest.fixture(scope="module")
def gw(fakes):
    g = start_gateway(admit_config(fakes), env=ADMIT_ENV)
    yield g
    g.stop()


def test_keys_in_either_header_and_never_forwarded(gw, openai_fake, anthropic_fake):
    with openai_client(gw, KEYS["team-a"]) as oai:
        assert oai.chat.completions.create(model="fast-model", messages=USER).choices[0].message.content
    with anthropic_client(gw, KEYS["team-a"]) as anth:  # x-api-key
        assert anth.messages.create(model="claude-3-5-sonnet-20241022", max_tokens=5, messages=USER).content
        # an OpenAI model, reached through the Anthropic SDK, with a hashed key
    with anthropic_client(gw, KEYS["hashed"]) as anth:
        assert anth.messages.create(model="gpt-4o-mini", max_tokens=5, messages=USER).content
    sent = openai_fake.requests + anthropic_fake.requests
    assert len(sent) == 3
    for req in sent:
        for secret in KEYS.values():
            assert not any(secret in v for v in req["headers"].values()), req["headers"]
    assert openai_fake.requests[0]["headers"]["authorization"] == "Bearer sk-openai-secret"
    assert anthropic_fake.requests[0]["headers"]["x-api-key"] == "sk-ant-secret"


def test_missing_or_unknown_key_is_401_in_each_dialect(gw, openai_fake, anthropic_fake):
    for key in ("not-a-key", KEYS["team-a"] + "x"):
        with openai_client(gw, key) as oai, pytest.raises(openai.AuthenticationError) as e:
            oai.chat.completions.create(model="fast-model", messages=USER)
        assert e.value.body["code"] == "invalid_api_key"
        with anthropic_client(gw, key) as anth, pytest.raises(anthropic.AuthenticationError) as e:
            anth.messages.create(model="fast-model", max_tokens=5, messages=USER)
        assert e.value.body["error"]["type"] == "authentication_error"
    r = post(gw.url, "/v1/chat/completions", json.dumps({"model": "fast-model", "messages": USER}))
    assert r.status == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    r = post(gw.url, "/v1/messages", json.dumps({"model": "fast-model", "max_tokens": 5, "messages": USER}),
             headers={"anthropic-version": "2023-06-01"})
    assert r.status == 401 and r.json()["error"]["type"] == "authentication_error"
    assert openai_fake.requests == [] and anthropic_fake.requests == []


def test_model_not_allowed_is_403_naming_the_model_not_the_key(gw, openai_fake):
    with openai_client(gw, KEYS["team-a"]) as oai, pytest.raises(openai.PermissionDeniedError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert "'gpt-4o'" in e.value.message and KEYS["team-a"] not in e.value.message
    with anthropic_client(gw, KEYS["team-a"]) as anth, pytest.raises(anthropic.PermissionDeniedError):
        anth.messages.create(model="gpt-4o-mini", max_tokens=5, messages=USER)  # only through fast-model
    with anthropic_client(gw, KEYS["team-a"]) as anth, pytest.raises(anthropic.PermissionDeniedError):
        anth.messages.count_tokens(model="gpt-4o", messages=USER)
    assert openai_fake.requests == []
    models = json.loads(request(gw.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEYS['team-a']}"}).body)
    assert sorted(m["id"] for m in models["data"]) == ["anthropic/claude-3-5-sonnet-20241022", "fast-model"]


def test_admin_endpoints_take_the_admin_key_only(gw):
    for path in ("/metrics", "/v1/usage"):
        assert request(gw.url, "GET", path).status == 401
        assert request(gw.url, "GET", path, headers={"x-api-key": KEYS["team-a"]}).status == 403
        assert request(gw.url, "GET", path, headers={"Authorization": f"Bearer {ADMIN}"}).status == 200
    assert request(gw.url, "GET", "/healthz").status == 200


def test_access_log_names_the_key_never_the_secret(gw):
    with openai_client(gw, KEYS["team-a"]) as oai:
        oai.chat.completions.create(model="fast-model", messages=USER, extra_headers={"x-request-id": "keylog-1"})
    deadline = time.monotonic() + 5
    while "keylog-1" not in gw.output() and time.monotonic() < deadline:
        time.sleep(0.02)
    line = json.loads(next(x for x in gw.output().splitlines() if '"keylog-1"' in x))
    assert line["key"] == "team-a" and line["tags"] == {"team": "a"}
    assert not any(secret in gw.output() for secret in (*KEYS.values(), ADMIN))


def test_request_limit_is_429_with_openai_and_anthropic_headers(gw, openai_fake):
    with openai_client(gw, KEYS["rpm"]) as oai:
        for _ in range(3):
            oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    h = e.value.response.headers
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s") and 1 <= int(h["retry-after"]) <= 3600
    assert e.value.body["code"] == "rate_limit_exceeded" and "3 requests per hour" in e.value.message
    with anthropic_client(gw, KEYS["rpm"]) as anth, pytest.raises(anthropic.RateLimitError) as e:
        anth.messages.create(model="gpt-4o-mini", max_tokens=5, messages=USER)
    h = e.value.response.headers
    assert h["anthropic-ratelimit-requests-limit"] == "3" and h["anthropic-ratelimit-requests-remaining"] == "0"
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z") and int(h["retry-after"]) >= 1
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert len(openai_fake.requests) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_reserved_then_corrected_by_reported_usage(gw, stream):
    """400 tokens an hour. A request reserves its prompt estimate plus max_tokens; once
    answered, the reservation becomes the usage the provider reported. Without the
    correction the second request (350 + 300 reserved) would not fit."""
    with openai_client(gw, KEYS["tpm-stream" if stream else "tpm"]) as oai:
        first = oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=350, stream=stream)
        if stream:
            list(first)
        second = oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=300, stream=stream)
        if stream:
            list(second)
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=390)
    assert e.value.response.headers["x-ratelimit-limit-tokens"] == "400"
    assert "400 tokens per hour" in e.value.message


def limited_answers(gws, key):
    """(client dialect, headers) of answers to `key` read through the SDKs' raw response access,
    taking turns over `gws`: OpenAI chat, chat stream and Responses, Anthropic messages and stream."""
    calls = [
        ("openai", False, lambda oai, anth: oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=USER, max_tokens=20)),
        ("openai", True, lambda oai, anth: oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=USER, max_tokens=20, stream=True)),
        ("openai", False, lambda oai, anth: oai.responses.with_raw_response.create(
            model="gpt-4o-mini", input="Hi", max_output_tokens=20)),
        ("anthropic", False, lambda oai, anth: anth.messages.with_raw_response.create(
            model="claude-3-5-sonnet-20241022", max_tokens=20, messages=USER)),
        ("anthropic", True, lambda oai, anth: anth.messages.with_raw_response.create(
            model="claude-3-5-sonnet-20241022", max_tokens=20, messages=USER, stream=True)),
    ]
    seen = []
    for i, (dialect, stream, call) in enumerate(calls):
        g = gws[i % len(gws)]
        with openai_client(g, key) as oai, anthropic_client(g, key) as anth:
            raw = call(oai, anth)
            answer = raw.parse()
            assert list(answer) if stream else answer.id
            seen.append((dialect, raw.headers))
    return seen


def check_rate_limit_headers(seen, limits, replicas=1):
    """Every answer carries its dialect's headers for both kinds; each request leaves one fewer.
    Over `replicas` taking turns: a replica's first answer counts every request before it, and
    then its own requests one by one (the others' as of its lease: see arch/state/leases.py)."""
    names = {"openai": "x-ratelimit-{part}-{kind}", "anthropic": "anthropic-ratelimit-{kind}-{part}"}
    left = []
    for dialect, h in seen:
        got = {(kind, part): h[names[dialect].format(kind=kind, part=part)]
               for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset")}
        for kind in ("requests", "tokens"):
            limit = limits[f"{kind}_per_day"]
            assert got[kind, "limit"] == str(limit) and 0 <= int(got[kind, "remaining"]) < limit
            reset = got[kind, "reset"]
            if dialect == "openai":
                assert re.fullmatch(r"(\d+h)?(\d+m)?\d+(\.\d+)?s", reset), reset
            else:
                assert 0 < calendar.timegm(time.strptime(reset, "%Y-%m-%dT%H:%M:%SZ")) - time.time() <= 86400
        left.append(int(got["requests", "remaining"]))
    for r in range(replicas):
        mine = left[r::replicas]
        assert mine[0] <= left[0] - r and mine == list(range(mine[0], mine[0] - len(mine), -1)), left


def test_rate_limit_headers_on_every_answer(gw):
    check_rate_limit_headers(limited_answers([gw], KEYS["hdr"]), HEADER_LIMITS)
    with openai_client(gw, KEYS["team-a"]) as oai:  # a key without limits: none
        raw = oai.chat.completions.with_raw_response.create(model="fast-model", messages=USER)
    assert not [name for name in raw.headers if "ratelimit" in name]


def test_selector_header_limits_each_value(gw, openai_fake):
    with openai_client(gw, KEYS["hashed"]) as oai:
        for user in ("bob", "bob", "alice"):
            oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers={"x-user": user})
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers={"x-user": "bob"})
        assert "(x-user: bob)" in e.value.message
        oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers={"x-user": "alice"})
        for _ in range(3):  # no selector header: not this rule's business
            oai.chat.completions.create(model="gpt-4o", messages=USER)
        oai.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers={"x-user": "bob"})


def test_model_limit_counts_every_name_and_every_key(gw):
    with openai_client(gw, KEYS["hashed"]) as oai:
        oai.chat.completions.create(model="llama3.1", messages=USER)
    with openai_client(gw, KEYS["par"]) as oai:
        oai.chat.completions.create(model="ollama/llama3.1", messages=USER)
    with anthropic_client(gw, KEYS["hashed"]) as anth, pytest.raises(anthropic.RateLimitError) as e:
        anth.messages.create(model="llama3.1", max_tokens=5, messages=USER)
    assert "model 'llama3.1': 2 requests per hour" in e.value.message


def test_parallel_requests_per_key(gw, openai_fake):
    for _ in range(2):
        openai_fake.enqueue(json={"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"},
                                               "finish_reason": "stop"}]}, delay=1.5)
    results = []

    def slow():
        with openai_client(gw, KEYS["par"]) as oai:
            results.append(oai.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(openai_fake.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with openai_client(gw, KEYS["par"]) as oai:
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert "parallel" in e.value.message
        for t in threads:
            t.join()
        assert results == ["slow", "slow"]
        assert oai.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content


def test_budget_spent_is_429_insufficient_quota(gw):
    spent = 0
    with openai_client(gw, KEYS["budget"]) as oai:
        for _ in range(30):
            try:
                oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
            except openai.RateLimitError as e:
                error = e
                break
            spent += 1
    assert 1 <= spent < 30
    assert error.body["type"] == "insufficient_quota" and error.body["code"] == "insufficient_quota"
    assert "$2e-05 per day" in error.message and int(error.response.headers["retry-after"]) <= 86400
    with anthropic_client(gw, KEYS["budget"]) as anth, pytest.raises(anthropic.RateLimitError):
        anth.messages.create(model="gpt-4o-mini", max_tokens=5, messages=USER)
    usage = json.loads(request(gw.url, "GET", "/v1/usage", headers={"x-api-key": ADMIN}).body)
    row = next(r for r in usage["data"] if r["key"] == "budget")
    assert row["cost_usd"] >= 0.00002 and row["model"] == "gpt-4o-mini"


def test_keys_whose_variables_are_unset_refuse_everyone(fakes):
    config = gateway_config(*(f.url for f in fakes))
    config["gateway_keys"] = [{"name": "ghost", "key": "$ARCH_TEST_UNSET_KEY"}]
    g = start_gateway(config, env=GATEWAY_ENV)
    try:
        assert "environment variable ARCH_TEST_UNSET_KEY is not set" in g.output()
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            r = post(g.url, "/v1/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": USER}), headers)
            assert r.status == 401, r.body
    finally:
        g.stop()


def test_open_gateway_warns_when_not_on_loopback(tmp_path):
    config = {"version": "v0.1.0", "listeners": {"egress_traffic": {"address": "0.0.0.0", "port": 12000}},
              "llm_providers": [{"model": "openai/gpt-4o-mini", "access_key": "x"}],
              "ratelimits": [{"model": "gpt-4o-mini", "selector": {"key": "x-team", "value": "blue"},
                              "limit": {"tokens": 1000, "unit": "minute"}}]}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "arch", "validate", str(path)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout
    assert "no gateway_keys: anyone who can reach 0.0.0.0:12000" in out.stdout
    assert "ratelimits" not in out.stdout  # the original Arch format loads, no "not supported"
    config["listeners"]["egress_traffic"]["address"] = "127.0.0.1"
    path.write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "arch", "validate", str(path)], cwd=ROOT, capture_output=True,
                         text=True)
    assert "warning" not in out.stdout


def test_workers_without_redis_each_enforce_their_share(fakes):
    """In memory under --workers 2, a limit of 4 is 2 per worker: however the kernel spreads
    the connections, no more than 4 in total (and at least one worker's 2)."""
    config = admit_config(fakes)
    config["gateway_keys"].append({"name": "shared", "key": "ks-secret-0007", "limits": {"requests_per_day": 4}})
    g = start_gateway(config, env=ADMIT_ENV, extra_args=["--workers", "2"])
    try:
        statuses = []
        for _ in range(16):  # a new connection each: the kernel picks a worker each time
            with openai_client(g, "ks-secret-0007") as oai:
                try:
                    oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
                    statuses.append(200)
                except openai.RateLimitError:
                    statuses.append(429)
        assert 2 <= statuses.count(200) <= 4 and statuses.count(429) >= 12
    finally:
        g.stop()


def test_keys_with_balanced_deployments(fakes, openai_fake):
    """A name served by several deployments: a key may name it, or what a deployment is called."""
    config = gateway_config(*(f.url for f in fakes))
    providers = config.get("llm_providers") or config["model_providers"]
    first = next(p for p in providers if p["model"].startswith("openai/"))
    providers += [{**first, "name": "balanced"}, {**first, "name": "balanced"}]
    config["gateway_keys"] = [{"name": "team-b", "key": "$TEAM_A_KEY", "models": ["balanced"]}]
    g = start_gateway(config, env=ADMIT_ENV)
    try:
        with openai_client(g, key=KEYS["team-a"]) as client:
            assert client.chat.completions.create(model="balanced", messages=USER).choices[0].message.content
    finally:
        g.stop()


def test_responses_endpoints_take_keys_and_keep_answers_per_key(gw, openai_fake, anthropic_fake):
    with openai_client(gw, "not-a-key") as oai:
        with pytest.raises(openai.AuthenticationError):
            oai.responses.create(model="fast-model", input="Hi")
        with pytest.raises(openai.AuthenticationError):
            oai.responses.retrieve("resp_x")
    with openai_client(gw, KEYS["team-a"]) as oai, openai_client(gw, KEYS["hashed"]) as other:
        with pytest.raises(openai.PermissionDeniedError):
            oai.responses.create(model="gpt-4o", input="Hi")
        with pytest.raises(openai.PermissionDeniedError):
            oai.responses.compact(model="gpt-4o", input="Hi")
        mine = oai.responses.create(model="claude-3-5-sonnet-20241022", input="Hi")
        assert oai.responses.retrieve(mine.id).id == mine.id
        # another key's response is as if it did not exist
        for call in (lambda: other.responses.retrieve(mine.id), lambda: other.responses.delete(mine.id),
                     lambda: other.responses.input_items.list(mine.id),
                     lambda: other.responses.create(model="gpt-4o-mini", input="x", previous_response_id=mine.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert oai.responses.create(model="claude-3-5-sonnet-20241022", input="again",
                                    previous_response_id=mine.id).output_text
    assert len(anthropic_fake.requests) == 2
    assert openai_fake.requests == []  # another key's id is not tried at OpenAI either
