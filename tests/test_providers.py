"""The provider catalogue as rules, user rules directories, /v1/models,
/v1/messages/count_tokens and missing keys.

One gateway serves every provider in rules/providers/ (plus a
`provider_interface: openai` one), each pointed at a fake with its own key, so
a single request per provider shows the exact URL, query and auth header the
provider would receive. Real SDKs (max_retries=0) and raw HTTP over sockets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import anthropic
import openai
import pytest
import yaml

from conftest import ROOT, anthropic_client, openai_client, start_gateway
from fakes import token_count

CLIENT_KEY = "sk-client-key-must-not-leak"
UNSET_VAR = "ARCH_TEST_UNSET_KEY_ISSUE4"
LISTENER = {"egress_traffic": {"address": "127.0.0.1", "port": 0, "message_format": "openai", "timeout": "30s"}}
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def key_for(name):
    return f"sk-{name}-secret-value"


def var_for(name):
    return "ARCH_TEST_KEY_" + name.upper().replace("-", "_")


# name -> (model, what follows the fake's URL in base_url ("" = host only, so the rule's own
# prefix must be kept), the exact path the provider receives). Every entry has its own key.
CATALOGUE = {
    "p-openai":        ("openai/gpt-4o-mini", "", "/v1/chat/completions"),
    "p-openai-v1":     ("openai/gpt-4o-mini", "/v1", "/v1/chat/completions"),
    "p-openai-proxy":  ("openai/gpt-4o-mini", "/proxy/openai", "/proxy/openai/chat/completions"),
    "p-gemini":        ("gemini/gemini-2.0-flash", "/v1beta/openai", "/v1beta/openai/chat/completions"),
    "p-gemini-host":   ("gemini/gemini-2.0-flash", "", "/v1beta/openai/chat/completions"),
    "p-gemini-slash":  ("gemini/gemini-2.0-flash", "/v1beta/openai/", "/v1beta/openai/chat/completions"),
    "p-mistral":       ("mistral/mistral-large-latest", "/v1", "/v1/chat/completions"),
    "p-mistral-host":  ("mistral/mistral-large-latest", "", "/v1/chat/completions"),
    "p-groq":          ("groq/llama-3.3-70b-versatile", "/openai/v1", "/openai/v1/chat/completions"),
    "p-groq-host":     ("groq/llama-3.3-70b-versatile", "", "/openai/v1/chat/completions"),
    "p-deepseek":      ("deepseek/deepseek-chat", "/v1", "/v1/chat/completions"),
    "p-deepseek-host": ("deepseek/deepseek-chat", "", "/v1/chat/completions"),
    "p-xai":           ("xai/grok-2-latest", "/v1", "/v1/chat/completions"),
    "p-xai-host":      ("xai/grok-2-latest", "", "/v1/chat/completions"),
    "p-together":      ("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", "/v1", "/v1/chat/completions"),
    "p-together-host": ("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", "", "/v1/chat/completions"),
    "p-openrouter":    ("openrouter/anthropic/claude-3.5-sonnet", "/api/v1", "/api/v1/chat/completions"),
    "p-openrouter-host": ("openrouter/anthropic/claude-3.5-sonnet", "", "/api/v1/chat/completions"),
    "p-moonshot":      ("moonshotai/kimi-k2-0711-preview", "/v1", "/v1/chat/completions"),
    "p-moonshot-host": ("moonshotai/kimi-k2-0711-preview", "", "/v1/chat/completions"),
    "p-zhipu":         ("zhipu/glm-4-plus", "/api/paas/v4", "/api/paas/v4/chat/completions"),
    "p-zhipu-host":    ("zhipu/glm-4-plus", "", "/api/paas/v4/chat/completions"),
    "p-qwen":          ("qwen/qwen-plus", "/compatible-mode/v1", "/compatible-mode/v1/chat/completions"),
    "p-qwen-host":     ("qwen/qwen-plus", "", "/compatible-mode/v1/chat/completions"),
    "p-ollama-host":   ("ollama/llama3.1", "", "/v1/chat/completions"),
    "p-ollama-v1":     ("ollama/llama3.1", "/v1", "/v1/chat/completions"),
    "p-ollama-slash":  ("ollama/llama3.1", "/", "/v1/chat/completions"),
    "p-custom":        ("my_llm/some-model", "/v1", "/v1/chat/completions"),
    "p-custom-host":   ("my_llm/some-model", "", "/v1/chat/completions"),
    "p-custom-root":   ("my_llm/some-model", "/serve", "/serve/chat/completions"),
}
AZURE_DEPLOYMENT = "my-gpt4o-deployment"
AZURE_PATH = f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"


def catalogue_config(openai_url, anthropic_url):
    providers = []
    for name, (model, prefix, _) in CATALOGUE.items():
        entry = {"model": model, "name": name, "base_url": openai_url + prefix}
        if not name.startswith("p-ollama"):  # Ollama needs no key
            entry["access_key"] = f"${var_for(name)}"
        if model.startswith("my_llm/"):
            entry["provider_interface"] = "openai"
        providers.append(entry)
    providers += [
        {"model": f"azure_openai/{AZURE_DEPLOYMENT}", "name": "p-azure", "base_url": openai_url,
         "access_key": f"${{{var_for('p-azure')}}}"},
        {"model": f"azure_openai/{AZURE_DEPLOYMENT}", "name": "p-azure-preview", "base_url": openai_url,
         "access_key": f"${var_for('p-azure-preview')}", "api_version": "2025-01-01-preview"},
        {"model": f"anthropic/{ANTHROPIC_MODEL}", "name": "p-anthropic", "base_url": anthropic_url,
         "access_key": f"${var_for('p-anthropic')}"},
        {"model": f"anthropic/{ANTHROPIC_MODEL}", "name": "p-anthropic-v1", "base_url": anthropic_url + "/v1",
         "access_key": f"${var_for('p-anthropic-v1')}"},
        # base_url from the environment
        {"model": "openai/gpt-4o", "name": "p-env-base", "base_url": "${ARCH_TEST_BASE_URL}/gw",
         "access_key": f"${var_for('p-env-base')}"},
        # a key variable that is not set, in the ${VAR} form
        {"model": "mistral/open-mistral-nemo", "name": "p-nokey", "base_url": openai_url + "/v1",
         "access_key": f"${{{UNSET_VAR}}}"},
        # a provider that is neither in the catalogue nor given a provider_interface
        {"model": "unknownvendor/foo-1", "base_url": openai_url, "access_key": "$" + var_for("p-openai")},
    ]
    return {
        "version": "v0.1.0",
        "listeners": LISTENER,
        "llm_providers": providers,
        "model_aliases": {"fast-model": {"target": "p-openai"}, "reasoning-model": {"target": "p-anthropic"}},
    }


def catalogue_env():
    names = [*CATALOGUE, "p-azure", "p-azure-preview", "p-anthropic", "p-anthropic-v1", "p-env-base"]
    return {var_for(n): key_for(n) for n in names}


ALL_KEYS = list(catalogue_env().values())


@pytest.fixture(scope="module")
def gw(openai_fake, anthropic_fake):
    assert UNSET_VAR not in os.environ
    g = start_gateway(catalogue_config(openai_fake.url, anthropic_fake.url),
                      env={**catalogue_env(), "ARCH_TEST_BASE_URL": openai_fake.url})
    yield g
    g.stop()


@pytest.fixture
def oai(gw):
    with openai_client(gw, CLIENT_KEY) as client:
        yield client


@pytest.fixture
def anth(gw):
    with anthropic_client(gw, CLIENT_KEY) as client:
        yield client


def assert_no_client_key(req):
    leaked = {k: v for k, v in req["headers"].items() if CLIENT_KEY in v}
    assert not leaked, f"the client's key reached the provider: {leaked}"
    assert CLIENT_KEY.encode() not in req["raw"]


def http(gw, method, path, body=None, headers=None):
    """(status, parsed JSON body) of one raw request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(gw.url + path, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with _direct.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "arch", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


# --- 1. the catalogue --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CATALOGUE))
def test_openai_compatible_provider_url_and_auth(name, oai, openai_fake):
    model, _, path = CATALOGUE[name]
    model_id = model.partition("/")[2]
    resp = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == f"Hello from {model_id}!"
    req = openai_fake.last
    assert (req["method"], req["path"], req["query"]) == ("POST", path, {})
    assert req["body"]["model"] == model_id
    if name.startswith("p-ollama"):
        assert "authorization" not in req["headers"]
    else:
        assert req["headers"]["authorization"] == f"Bearer {key_for(name)}"
    assert "api-key" not in req["headers"] and "x-api-key" not in req["headers"]
    assert_no_client_key(req)


@pytest.mark.parametrize("name, version", [("p-azure", "2024-10-21"), ("p-azure-preview", "2025-01-01-preview")])
def test_azure_openai_deployment_path_api_version_and_api_key(name, version, oai, openai_fake):
    resp = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == f"Hello from {AZURE_DEPLOYMENT}!"
    req = openai_fake.last
    assert (req["path"], req["query"]) == (AZURE_PATH, {"api-version": version})
    assert req["headers"]["api-key"] == key_for(name)
    assert "authorization" not in req["headers"]
    assert_no_client_key(req)


@pytest.mark.parametrize("name", ["p-anthropic", "p-anthropic-v1"])
def test_anthropic_path_and_auth_headers(name, oai, anthropic_fake):
    resp = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == f"Hello from {ANTHROPIC_MODEL}!"
    req = anthropic_fake.last
    assert (req["path"], req["query"]) == ("/v1/messages", {})
    assert req["body"]["model"] == ANTHROPIC_MODEL
    assert req["headers"]["x-api-key"] == key_for(name)
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req["headers"]
    assert_no_client_key(req)


def test_every_builtin_provider_is_covered():
    builtin = {p.stem for p in (ROOT / "rules" / "providers").glob("*.yaml")}
    # openai_compatible is what the `provider_interface: openai` entry (my_llm/...) uses; mock has tests/test_mock.py
    covered = {m.partition("/")[0] for m, _, _ in CATALOGUE.values()} | {"azure_openai", "anthropic", "openai_compatible",
                                                                        "mock"}
    assert builtin <= covered, f"providers without a test: {builtin - covered}"


@pytest.mark.parametrize("provider, entry", [
    ("ollama", {"model": "ollama/llama3.1"}),
    ("qwen", {"model": "qwen/qwen-plus", "access_key": "x"}),
    ("azure_openai", {"model": "azure_openai/dep", "access_key": "x"}),
])
def test_validate_requires_base_url(provider, entry, tmp_path):
    config = {"version": "v0.1.0", "listeners": LISTENER,
              "llm_providers": [{"model": "openai/gpt-4o", "access_key": "x"}, entry]}
    path = tmp_path / "arch_config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out = run_cli("validate", path)
    assert code == 1, out
    assert f"llm_providers[1].base_url: required for provider '{provider}'" in out
    assert str(path) in out


def test_base_url_from_environment(oai, openai_fake):
    oai.chat.completions.create(model="p-env-base", messages=[{"role": "user", "content": "hi"}])
    req = openai_fake.last
    assert req["path"] == "/gw/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {key_for('p-env-base')}"


def test_validate_rejects_base_url_from_unset_variable(tmp_path):
    # Falling back to the rule's default host would send the key to api.openai.com.
    config = {"version": "v0.1.0", "listeners": LISTENER, "llm_providers": [
        {"model": "my_llm/some-model", "provider_interface": "openai", "access_key": "secret",
         "base_url": f"${UNSET_VAR}_BASE"}]}
    path = tmp_path / "arch_config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out = run_cli("validate", path)
    assert code == 1, out
    assert f"llm_providers[0].base_url: environment variable {UNSET_VAR}_BASE is not set" in out


def test_validate_lists_every_missing_base_url(tmp_path):
    config = {"version": "v0.1.0", "listeners": LISTENER, "llm_providers": [
        {"model": "ollama/llama3.1"}, {"model": "qwen/qwen-plus"}, {"model": "azure_openai/dep"}]}
    path = tmp_path / "arch_config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out = run_cli("validate", path)
    assert code == 1
    for n in range(3):
        assert f"llm_providers[{n}].base_url" in out


def test_validate_rejects_unknown_provider_interface(tmp_path):
    config = {"version": "v0.1.0", "listeners": LISTENER, "llm_providers": [
        {"model": "my_llm/some-model", "provider_interface": "opneai", "base_url": "http://10.0.0.5:8000"}]}
    path = tmp_path / "arch_config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out = run_cli("validate", path)
    assert code == 1, out
    assert "llm_providers[0].provider_interface: no provider rules named 'opneai'" in out


def test_unknown_provider_prefix_warns_and_is_not_served(gw, oai, openai_fake):
    assert "provider 'unknownvendor' is not supported" in gw.output()
    for name in ("unknownvendor/foo-1", "foo-1"):
        with pytest.raises(openai.NotFoundError):
            oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert openai_fake.requests == []


# --- 2. user rules directories ------------------------------------------------------------------

ACME_RULE = {
    "name": "acme", "dialect": "openai", "base_url": "https://llm.acme.example/api/v2",
    "path": "/engines/{model}/chat/completions",
    "auth": {"header": "X-Acme-Key", "value": "Token {key}"},
    "headers": {"x-acme-tenant": "arch-tests"},
}
OPENAI_OVERRIDE = {
    "name": "openai", "dialect": "openai", "base_url": "https://api.openai.com/v1", "path": "/chat/completions",
    "auth": {"header": "X-Override-Auth", "value": "Key {key}"},
}


def write_rules(root, files):
    for rel, spec in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return root


def user_rules_config(openai_url, rules=None):
    config = {"version": "v0.1.0", "listeners": LISTENER, "llm_providers": [
        {"model": "acme/acme-large", "access_key": "$ACME_KEY", "base_url": openai_url},
        {"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_KEY", "base_url": openai_url},
        {"model": "mistral/mistral-small", "access_key": "$MISTRAL_KEY", "base_url": openai_url},
    ]}
    if rules:
        config["rules"] = rules
    return config


USER_ENV = {"ACME_KEY": "sk-acme-secret", "OPENAI_KEY": "sk-openai-secret", "MISTRAL_KEY": "sk-mistral-secret"}


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    return write_rules(tmp_path_factory.mktemp("user-rules"),
                       {"providers/acme.yaml": ACME_RULE, "providers/openai.yaml": OPENAI_OVERRIDE})


@pytest.fixture(scope="module", params=["config", "--rules"])
def rules_gw(request, rules_dir, openai_fake):
    if request.param == "config":
        g = start_gateway(user_rules_config(openai_fake.url, [str(rules_dir)]), env=USER_ENV)
    else:
        g = start_gateway(user_rules_config(openai_fake.url), env=USER_ENV, extra_args=["--rules", str(rules_dir)])
    yield g
    g.stop()


def chat(gw, model):
    with openai_client(gw, CLIENT_KEY) as client:
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_user_rules_add_a_provider(rules_gw, openai_fake):
    resp = chat(rules_gw, "acme/acme-large")
    assert resp.choices[0].message.content == "Hello from acme-large!"
    req = openai_fake.last
    assert (req["path"], req["query"]) == ("/api/v2/engines/acme-large/chat/completions", {})
    assert req["headers"]["x-acme-key"] == "Token sk-acme-secret"
    assert req["headers"]["x-acme-tenant"] == "arch-tests"
    assert "authorization" not in req["headers"]
    assert_no_client_key(req)


def test_user_rules_override_builtin_file_by_file(rules_gw, openai_fake):
    chat(rules_gw, "gpt-4o-mini")
    req = openai_fake.last
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["x-override-auth"] == "Key sk-openai-secret"
    assert "authorization" not in req["headers"]
    # the files the user did not override are still the built-in ones
    chat(rules_gw, "mistral-small")
    assert openai_fake.last["headers"]["authorization"] == "Bearer sk-mistral-secret"


def _validate_with_rules(tmp_path, files, openai_url="http://127.0.0.1:9"):
    rules = write_rules(tmp_path / "rules", files)
    config = tmp_path / "arch_config.yaml"
    config.write_text(yaml.safe_dump(user_rules_config(openai_url)))
    return rules, *run_cli("validate", config, "--rules", rules)


def test_validate_accepts_good_user_rules(tmp_path):
    _, code, out = _validate_with_rules(tmp_path, {"providers/acme.yaml": ACME_RULE})
    assert code == 0, out


def test_config_rules_dir_is_relative_to_the_config_file(tmp_path):
    write_rules(tmp_path / "my-rules", {"providers/acme.yaml": ACME_RULE})
    config = tmp_path / "arch_config.yaml"
    config.write_text(yaml.safe_dump(user_rules_config("http://127.0.0.1:9", ["my-rules"])))
    code, out = run_cli("validate", config)  # run from the repository, not from tmp_path
    assert code == 0, out
    assert "not supported" not in out and "OK (3 model(s)" in out


def test_validate_rejects_rules_file_breaking_its_schema(tmp_path):
    bad = {**ACME_RULE, "path": "engines/{model}", "auth": {"header": "X-Acme-Key", "value": "no placeholder"}}
    rules, code, out = _validate_with_rules(tmp_path, {"providers/acme.yaml": bad})
    assert code == 1, out
    where = str(rules / "providers" / "acme.yaml")
    assert f"{where}: path: " in out
    assert f"{where}: auth.value: " in out


def test_validate_rejects_invalid_jmespath_in_a_translation_copy(tmp_path):
    source = (ROOT / "rules" / "dialects" / "openai_to_anthropic.yaml").read_text()
    spec = yaml.safe_load(source)
    spec["request"]["max_tokens"] = "max_completion_tokens ||| max_tokens"
    rules, code, out = _validate_with_rules(tmp_path, {"dialects/openai_to_anthropic.yaml": spec})
    assert code == 1, out
    assert f"{rules / 'dialects' / 'openai_to_anthropic.yaml'}: request.max_tokens: invalid JMESPath" in out


def test_validate_rejects_unparsable_rules_yaml(tmp_path):
    rules, code, out = _validate_with_rules(tmp_path, {"providers/acme.yaml": "name: acme\npath: [unclosed\n"})
    assert code == 1, out
    assert str(rules / "providers" / "acme.yaml") in out


def test_validate_names_missing_dialect(tmp_path):
    rules, code, out = _validate_with_rules(tmp_path, {"providers/acme.yaml": {**ACME_RULE, "dialect": "klingon"}})
    assert code == 1, out
    assert f"{rules / 'providers' / 'acme.yaml'}: dialect: " in out


# --- 4. GET /v1/models --------------------------------------------------------------------------

def test_models_openai_shape(gw, oai):
    models = {m.id: m for m in oai.models.list()}
    expected = {*CATALOGUE, "p-azure", "p-azure-preview", "p-anthropic", "p-anthropic-v1", "p-nokey"}
    assert expected <= set(models)
    assert "unknownvendor/foo-1" not in models
    assert models["fast-model"].model_extra.get("target") == "p-openai"
    assert models["reasoning-model"].model_extra.get("target") == "p-anthropic"
    assert "target" not in models["p-openai"].model_extra
    assert models["p-anthropic"].owned_by == "anthropic"
    assert models["p-gemini"].owned_by == "gemini"
    status, body = http(gw, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert all(m["object"] == "model" for m in body["data"])


def test_models_anthropic_shape(gw, anth):
    models = {m.id: m for m in anth.models.list()}
    assert {"p-anthropic", "p-openai", "fast-model", "reasoning-model"} <= set(models)
    assert all(m.type == "model" for m in models.values())
    assert "p-anthropic" in models["reasoning-model"].display_name
    assert models["p-openai"].display_name == "p-openai"
    status, body = http(gw, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert status == 200 and body["has_more"] is False
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]


# --- 5. POST /v1/messages/count_tokens ----------------------------------------------------------

MESSAGES = [{"role": "user", "content": "How many tokens is this sentence?"}]


def test_count_tokens_forwarded_to_anthropic(anth, anthropic_fake):
    result = anth.messages.count_tokens(model="reasoning-model", messages=MESSAGES, system="Be brief.")
    req = anthropic_fake.last
    assert (req["path"], req["query"]) == ("/v1/messages/count_tokens", {})
    assert req["body"]["model"] == ANTHROPIC_MODEL
    assert req["body"]["messages"] == MESSAGES and req["body"]["system"] == "Be brief."
    assert req["headers"]["x-api-key"] == key_for("p-anthropic")
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert_no_client_key(req)
    assert result.input_tokens == token_count(req["raw"])


def test_count_tokens_provider_error_in_anthropic_envelope(anth, anthropic_fake):
    anthropic_fake.enqueue(429, json={"type": "error", "error": {"type": "rate_limit_error",
                                                                 "message": "Number of requests exceeded"}},
                           headers={"retry-after": "7"})
    with pytest.raises(anthropic.RateLimitError) as e:
        anth.messages.count_tokens(model="p-anthropic", messages=MESSAGES)
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "Number of requests exceeded" in body["error"]["message"]
    assert anthropic_fake.last["path"] == "/v1/messages/count_tokens"


def test_count_tokens_estimated_locally_for_openai_models(anth, openai_fake):
    def count(text):
        return anth.messages.count_tokens(model="p-openai", messages=[{"role": "user", "content": text}]).input_tokens

    short = count("hello")
    assert short > 0
    assert count("hello") == short
    longer = count("hello " * 200)
    assert longer > short + 100
    assert openai_fake.requests == []


def test_count_tokens_missing_messages_is_anthropic_400(gw):
    status, body = http(gw, "POST", "/v1/messages/count_tokens", {"model": "p-anthropic"},
                        headers={"anthropic-version": "2023-06-01"})
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "messages" in body["error"]["message"]


def test_count_tokens_unknown_model_is_anthropic_404(anth):
    with pytest.raises(anthropic.NotFoundError) as e:
        anth.messages.count_tokens(model="no-such-model", messages=MESSAGES)
    assert e.value.response.json()["type"] == "error"


# --- 6. missing keys ----------------------------------------------------------------------------

def test_missing_key_warned_at_start(gw):
    out = gw.output()
    assert f"environment variable {UNSET_VAR} is not set" in out
    assert "p-nokey" in out


def _assert_names_var_not_keys(text):
    assert UNSET_VAR in text
    for key in ALL_KEYS:
        assert key not in text


def test_missing_key_openai_client(oai, openai_fake):
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model="p-nokey", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code in (401, 500, 503)
    body = e.value.response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    _assert_names_var_not_keys(e.value.response.text)
    assert openai_fake.requests == []


def test_missing_key_anthropic_client(anth, openai_fake):
    with pytest.raises(anthropic.APIStatusError) as e:
        anth.messages.create(model="p-nokey", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code in (401, 500, 503)
    body = e.value.response.json()
    assert body["type"] == "error" and {"type", "message"} <= set(body["error"])
    _assert_names_var_not_keys(e.value.response.text)
    assert openai_fake.requests == []


def test_no_key_value_in_startup_output(gw):
    out = gw.output()
    for key in ALL_KEYS:
        assert key not in out
