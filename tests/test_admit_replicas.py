"""Limits and budgets shared through Redis: three gateway processes on three
ports, one real Redis, driven at once. What one replica admits, the others see."""
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import yaml

from conftest import GATEWAY_ENV, ROOT, SHARED_REDIS, gateway_config, openai_client, start_gateway
from test_admit import HEADER_LIMITS, check_rate_limit_headers, limited_answers
from reliability_util import request

PRICES = yaml.safe_load((ROOT / "rules" / "prices.yaml").read_text())
USER = [{"role": "user", "content": "Hi"}]
KEYS = {"rpm": "kr-replica-1", "tpm": "kt-replica-2", "budget": "kb-replica-3", "hdr": "kl-replica-4"}
ADMIN = "adm-replica-9"
RPM, TOKENS, BUDGET = 20, 2000, 0.0002


def replica_config(fakes, redis_url, prefix, **extra):
    config = gateway_config(*(f.url for f in fakes))
    config["gateway_keys"] = [
        {"name": "rpm", "key": KEYS["rpm"], "limits": {"requests_per_minute": RPM}},
        {"name": "tpm", "key": KEYS["tpm"], "limits": {"tokens_per_hour": TOKENS}},
        {"name": "budget", "key": KEYS["budget"], "budget": {"usd": BUDGET, "per": "month"}},
        {"name": "hdr", "key": KEYS["hdr"], "limits": HEADER_LIMITS},
    ]
    config["admin_key"] = ADMIN
    config["state"] = {"redis": redis_url, "prefix": prefix}
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def replicas(openai_fake, anthropic_fake, ollama_fake):
    prefix = f"archtest-{os.urandom(6).hex()}"
    config = replica_config((openai_fake, anthropic_fake, ollama_fake), SHARED_REDIS, prefix)
    gws = [start_gateway(config, env=GATEWAY_ENV) for _ in range(3)]
    yield gws
    for g in gws:
        g.stop()
    keys = os.popen(f"redis-cli --scan --pattern '*{prefix}*'").read().split()
    if keys:
        os.popen("redis-cli DEL " + " ".join(f"'{k}'" for k in keys)).read()


def fan_out(gws, key, n, **create):
    """`n` chat requests spread over the replicas from 12 threads: (answers, refusals)."""
    clients = [openai_client(g, key) for g in gws]

    def one(i):
        try:
            return clients[i % len(clients)].chat.completions.create(model="gpt-4o-mini", messages=USER, **create)
        except openai.RateLimitError as e:
            return e

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(n)))
    for c in clients:
        c.close()
    return [r for r in results if not isinstance(r, Exception)], [r for r in results if isinstance(r, Exception)]


def fresh_minute(needed=25):
    """Wait, if need be, until at least `needed` seconds of the current minute remain, so a
    burst lands in one fixed window."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)


def test_requests_per_minute_admits_exactly_the_limit_in_total(replicas, openai_fake):
    fresh_minute()
    answers, refusals = fan_out(replicas, KEYS["rpm"], 3 * RPM)
    assert len(answers) == RPM and len(refusals) == 2 * RPM
    assert len(openai_fake.requests) == RPM
    assert {r.response.headers["x-ratelimit-limit-requests"] for r in refusals} == {str(RPM)}


def test_tokens_admitted_within_one_request_of_the_limit(replicas):
    answers, _ = fan_out(replicas, KEYS["tpm"], 90, max_tokens=100)
    used = sum(a.usage.total_tokens for a in answers)
    # then one at a time until refused: the window is full to within one request's reservation
    with openai_client(replicas[0], KEYS["tpm"]) as oai:
        for _ in range(100):
            try:
                used += oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=100).usage.total_tokens
            except openai.RateLimitError:
                break
    reserve = 100 + 5  # max_tokens plus the prompt's estimate
    assert TOKENS - reserve < used <= TOKENS


def test_rate_limit_headers_count_every_replica(replicas):
    """Each answer's remaining requests count the requests every replica made before it asked
    Redis, and then its own one by one."""
    check_rate_limit_headers(limited_answers(replicas, KEYS["hdr"]), HEADER_LIMITS, len(replicas))


def test_a_replica_that_stops_gives_back_its_leases(openai_fake, anthropic_fake, ollama_fake):
    """A lease is counted in Redis at once; what a replica leased and did not use goes back when
    it shuts down, not only a second later."""
    prefix = f"archtest-{os.urandom(6).hex()}"
    config = replica_config((openai_fake, anthropic_fake, ollama_fake), SHARED_REDIS, prefix)
    config["gateway_keys"] = [{"name": "lease", "key": "kl-lease", "limits": {"requests_per_day": 1600}}]
    gw = start_gateway(config, env=GATEWAY_ENV)
    counter = f"{{{prefix}}}:w:k:lease:requests:day:{int(time.time() // 86400)}"
    read = lambda: os.popen(f"redis-cli GET '{counter}'").read().strip()  # noqa: E731
    try:
        with openai_client(gw, "kl-lease") as oai:
            for _ in range(3):
                oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert read() == "100"  # the first request and a lease of 1599 // 16, two requests from it
    finally:
        gw.stop()
    assert read() == "3"
    os.popen(f"redis-cli DEL '{counter}'").read()


def cost(answer):
    price = PRICES[answer.model]
    return (answer.usage.prompt_tokens * price["input"] + answer.usage.completion_tokens * price["output"]) / 1e6


def test_budget_stops_spend_on_every_replica(replicas):
    answers, refusals = fan_out(replicas, KEYS["budget"], 100)
    spent = sum(cost(a) for a in answers)
    most = max(cost(a) for a in answers)
    assert refusals and all(r.body["code"] == "insufficient_quota" for r in refusals)
    # spend is checked before a call and added after it: at most the calls in flight overshoot
    assert BUDGET <= spent < BUDGET + 12 * most
    for g in replicas:
        with openai_client(g, KEYS["budget"]) as oai, pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert e.value.body["type"] == "insufficient_quota"
    # usage by key, the same on every replica
    for g in replicas:
        usage = json.loads(request(g.url, "GET", "/v1/usage", headers={"x-api-key": ADMIN}).body)
        row = next(r for r in usage["data"] if r["key"] == "budget")
        assert row["cost_usd"] == pytest.approx(spent, rel=1e-6)
        assert row["requests"] == len(answers)  # refused requests are not usage


def metric(gw, name, **labels):
    text = request(gw.url, "GET", "/metrics", headers={"x-api-key": ADMIN}).body.decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_redis_lost_mid_run_follows_the_policy_and_recovers(own_redis, openai_fake, anthropic_fake, ollama_fake):
    fakes = (openai_fake, anthropic_fake, ollama_fake)
    prefix = f"archtest-{os.urandom(6).hex()}"
    open_gw = start_gateway(replica_config(fakes, own_redis.url, prefix), env=GATEWAY_ENV)
    closed_gw = start_gateway(replica_config(fakes, own_redis.url, prefix, on_state_error="fail_closed"),
                              env=GATEWAY_ENV)
    try:
        fresh_minute(40)
        stop = threading.Event()
        statuses = {"open": [], "closed": []}

        def drive(gw, name):
            with openai_client(gw, KEYS["rpm"]) as oai:
                while not stop.is_set():
                    try:
                        oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
                        statuses[name].append(200)
                    except openai.APIStatusError as e:
                        statuses[name].append(e.status_code)

        threads = [threading.Thread(target=drive, args=(g, n)) for g, n in ((open_gw, "open"), (closed_gw, "closed"))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while min(len(v) for v in statuses.values()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        own_redis.stop()  # mid-run
        mark = {n: len(v) for n, v in statuses.items()}
        while min(len(v) - mark[n] for n, v in statuses.items()) < 40 and time.monotonic() < deadline + 20:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(10)
        during = {n: v[mark[n] + 2:] for n, v in statuses.items()}  # after the requests in flight at the kill
        # fail_open admits past the limit of 20 a minute; fail_closed refuses with 503
        assert during["open"].count(200) > RPM and set(during["open"]) == {200}
        assert set(during["closed"]) == {503}
        assert metric(open_gw, "arch_state_errors_total", stage="admit", policy="fail_open") > 0
        assert metric(closed_gw, "arch_state_errors_total", stage="admit", policy="fail_closed") > 0
        assert "shared state unreachable" in open_gw.output() and "WITHOUT limits" in open_gw.output()

        own_redis.start()  # back, empty: limits apply again on both, shared
        time.sleep(1.1)  # the client's fail-fast interval after an error
        answers, refusals = fan_out([open_gw, closed_gw], KEYS["rpm"], 2 * RPM + 10)
        assert len(answers) == RPM and len(refusals) == RPM + 10
        assert "shared state is back" in open_gw.output()
    finally:
        open_gw.stop()
        closed_gw.stop()
