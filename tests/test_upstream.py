"""The connection to providers: keep-alive expiry, a retry on a fresh
connection, HTTP proxies from the environment, the User-Agent we send.

Between the gateway and the fake provider sits a `FakeProxy`: as a relay it
plays the NAT or load balancer that forgets an idle connection without a word
(`blackhole_after`) or closes connections as a request arrives (`poison`); as
an HTTP proxy it records what the gateway asked of it.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest
import yaml

from conftest import GATEWAY_ENV, ROOT, openai_client, start_gateway
from fakes import FakeProxy

USER = [{"role": "user", "content": "Hi"}]


def config(url, **listener):
    return {"version": "v0.1.0",
            "listeners": {"egress_traffic": {"port": 0, "max_retries": 0, **listener}},
            "llm_providers": [{"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY", "base_url": url}]}


@pytest.fixture
def relay(openai_fake):
    proxy = FakeProxy(upstream=("127.0.0.1", int(openai_fake.url.rsplit(":", 1)[1])), blackhole_after=0.3).start()
    yield proxy
    proxy.stop()


def ask(gw):
    with openai_client(gw) as client:
        return client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content


def test_an_idle_connection_older_than_keepalive_is_not_reused(relay):
    # the relay forgets a connection quiet for 0.3 s; the gateway keeps one for 0.2 s at most
    gw = start_gateway(config(relay.url, keepalive_timeout="200ms", idle_timeout="3s"), env=GATEWAY_ENV)
    try:
        assert ask(gw) == "Hello from gpt-4o-mini!"
        time.sleep(0.6)
        assert ask(gw) == "Hello from gpt-4o-mini!"  # not a 504 after waiting on a dead connection
        assert relay.connections == 2
    finally:
        gw.stop()


def test_connections_are_reused_within_keepalive(relay, openai_fake):
    gw = start_gateway(config(relay.url), env=GATEWAY_ENV)  # the default: 50 s
    try:
        for _ in range(3):
            assert ask(gw) == "Hello from gpt-4o-mini!"
        assert relay.connections == 1
    finally:
        gw.stop()


def test_a_reused_connection_that_fails_before_any_byte_is_retried_on_a_fresh_one(relay, openai_fake):
    gw = start_gateway(config(relay.url), env=GATEWAY_ENV)
    try:
        # two requests at once leave two idle connections in the pool
        openai_fake.enqueue(json=None, delay=0.3, body=b'{"choices": []}')
        openai_fake.enqueue(json=None, delay=0.3, body=b'{"choices": []}')
        with openai_client(gw) as client:
            threads = [threading.Thread(target=client.chat.completions.create,
                                        kwargs={"model": "gpt-4o-mini", "messages": USER}) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert relay.connections == 2
        relay.poison()  # both close as soon as they carry the next request
        assert ask(gw) == "Hello from gpt-4o-mini!"  # one retry, on a new connection, not the other stale one
        assert relay.connections == 3
    finally:
        gw.stop()


def test_http_provider_through_http_proxy_uses_absolute_form(openai_fake):
    proxy = FakeProxy().start()
    try:
        gw = start_gateway(config(openai_fake.url), env={**GATEWAY_ENV, "HTTP_PROXY": proxy.url, "NO_PROXY": ""})
        try:
            assert ask(gw) == "Hello from gpt-4o-mini!"
        finally:
            gw.stop()
        assert proxy.requests == [f"POST {openai_fake.url}/v1/chat/completions HTTP/1.1"]
        assert openai_fake.last["path"] == "/v1/chat/completions"
    finally:
        proxy.stop()


def test_no_proxy_bypasses_the_proxy(openai_fake):
    proxy = FakeProxy().start()
    try:
        gw = start_gateway(config(openai_fake.url), env={**GATEWAY_ENV, "HTTP_PROXY": proxy.url,
                                                         "NO_PROXY": "example.com,127.0.0.1"})
        try:
            assert ask(gw) == "Hello from gpt-4o-mini!"
        finally:
            gw.stop()
        assert proxy.requests == []
    finally:
        proxy.stop()


def test_a_proxy_that_is_down_is_a_502_naming_it(openai_fake):
    with socket.socket() as dead:  # bound, never listening: connections are refused, and the port stays ours
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        gw = start_gateway(config(openai_fake.url),
                           env={**GATEWAY_ENV, "HTTP_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": ""})
        try:
            with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            assert info.value.status_code == 502
            assert "through the proxy" in info.value.message and str(port) not in info.value.message
            assert f"through the proxy 127.0.0.1:{port}" in gw.output()  # the operator's log has where
        finally:
            gw.stop()


def test_user_agent_is_the_gateways_not_the_clients(gateway, oai, openai_fake, anthropic_fake):
    oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert openai_fake.last["headers"]["user-agent"] == "archgw/0.1.0"
    oai.chat.completions.create(model="claude-3-5-sonnet-20241022", messages=USER)
    assert anthropic_fake.last["headers"]["user-agent"] == "archgw/0.1.0"


def test_a_rule_may_forward_the_clients_user_agent(tmp_path, openai_fake):
    rules = tmp_path / "rules" / "providers"
    rules.mkdir(parents=True)
    rules.joinpath("openai.yaml").write_text(
        "name: openai\ndialect: openai\nbase_url: https://api.openai.com/v1\npath: /chat/completions\n"
        "auth: {header: Authorization, value: 'Bearer {key}'}\nforward_headers: [user-agent]\n")
    gw = start_gateway({**config(openai_fake.url), "rules": [str(tmp_path / "rules")]}, env=GATEWAY_ENV)
    try:
        with openai_client(gw) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert openai_fake.last["headers"]["user-agent"].startswith("OpenAI/Python")
    finally:
        gw.stop()


def test_a_proxy_that_is_not_plain_http_is_refused_at_start(tmp_path, openai_fake):
    path = tmp_path / "arch_config.yaml"
    path.write_text(yaml.safe_dump(config(openai_fake.url)))
    env = {**os.environ, **GATEWAY_ENV, "HTTPS_PROXY": "socks5://me:s3cret@127.0.0.1:1080"}
    result = subprocess.run([sys.executable, "-m", "arch", "validate", str(path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out
    assert "HTTPS_PROXY=socks5://127.0.0.1:1080: only http:// proxies are supported" in out
    assert "s3cret" not in out
