"""Providers are reached over HTTPS: certificates are checked, streams work.

Every other test talks plain HTTP to its fakes; real providers are all HTTPS.
Here a fake serves TLS with a certificate made for the test; the gateway trusts
it only through SSL_CERT_FILE, the standard OpenSSL way to add a CA.
"""
import base64
import shutil
import ssl
import subprocess

import openai
import pytest

from conftest import GATEWAY_ENV, openai_client, start_gateway
from fakes import FakeOpenAI, FakeProxy

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = FakeOpenAI().start(tls=context)
    fake.cert = cert
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _fresh(tls_fake):
    tls_fake.reset()


def config(fake):
    return {"version": "v0.1.0", "listeners": {"egress_traffic": {"port": 0, "max_retries": 0}},
            "llm_providers": [{"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY", "base_url": fake.url}]}


def client(gw):
    return openai_client(gw)


def assert_answers(c):
    """The provider's answer reaches the client whole and streamed."""
    r = c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == "Hello from gpt-4o-mini!"
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True) if ch.choices)
    assert text == "Hello from gpt-4o-mini!"


def test_https_provider_non_stream_and_stream(tls_fake):
    assert tls_fake.url.startswith("https://")
    gw = start_gateway(config(tls_fake), env={**GATEWAY_ENV, "SSL_CERT_FILE": str(tls_fake.cert)})
    try:
        with client(gw) as c:
            assert_answers(c)
        assert tls_fake.last["headers"]["authorization"] == "Bearer sk-openai-secret"
        assert len(tls_fake.requests) == 2
    finally:
        gw.stop()


def test_an_untrusted_certificate_is_refused(tls_fake):
    gw = start_gateway(config(tls_fake), env=GATEWAY_ENV)  # no SSL_CERT_FILE: the test CA is unknown
    try:
        with client(gw) as c, pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert info.value.status_code == 502
        assert "certificate" in info.value.message.lower()
        assert tls_fake.requests == []  # nothing, not even the key, went to the impostor
    finally:
        gw.stop()


def test_https_provider_through_https_proxy_uses_connect(tls_fake):
    proxy = FakeProxy().start()
    try:
        env = {**GATEWAY_ENV, "SSL_CERT_FILE": str(tls_fake.cert), "HTTPS_PROXY": f"http://u:p%40ss@127.0.0.1:{proxy.port}",
               "NO_PROXY": ""}
        gw = start_gateway(config(tls_fake), env=env)
        try:
            with client(gw) as c:
                assert_answers(c)
            assert "u:p@ss" not in gw.output() and "p%40ss" not in gw.output()
        finally:
            gw.stop()
        host = tls_fake.url.removeprefix("https://")
        assert proxy.requests == [f"CONNECT {host} HTTP/1.1"]  # one tunnel, kept alive for both requests
        assert f"Proxy-Authorization: Basic {base64.b64encode(b'u:p@ss').decode()}" in proxy.heads[0]
        assert tls_fake.last["headers"]["authorization"] == "Bearer sk-openai-secret"  # inside the tunnel
    finally:
        proxy.stop()
