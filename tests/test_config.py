"""Configuration and command line: `archgw validate`, `archgw up`, the
original Arch config forms, `$VAR`/`${VAR}` and `.env`.

`validate` runs as a subprocess the way a user runs it; configs that need a
served gateway are started with `start_gateway`, or with `launch` below when
the test must own the directory (a `.env` beside the config) or the listener
form (a listener list, which `start_gateway` does not rewrite).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from arch.config import load_config
from conftest import (GATEWAY_ENV, ROOT, GatewayStartError, anthropic_client,
                      free_port, launch, openai_client, start_gateway)

CLAUDE = "claude-3-5-sonnet-20241022"


def archgw(*args, env=None, cwd=ROOT):
    """`python -m arch ARGS`; returns (exit code, stdout + stderr)."""
    base = {k: v for k, v in os.environ.items() if k not in GATEWAY_ENV}
    result = subprocess.run([sys.executable, "-m", "arch", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60, env={**base, **(env or {})})
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    return result.returncode, output


def write(directory: Path, text: str, name="arch_config.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problem_lines(output, path):
    """The indented problem lines `validate` printed for `path`."""
    return [line.strip() for line in output.splitlines() if line.startswith("  ") and str(path) in line]


def env_without_keys(**extra):
    return {**{k: v for k, v in os.environ.items() if k not in GATEWAY_ENV}, **extra}


# ---------------------------------------------------------------------------------------------
# archgw validate
# ---------------------------------------------------------------------------------------------

def test_validate_repo_config_ok():
    code, out = archgw("validate", "arch_config.yaml", env=GATEWAY_ENV)
    assert code == 0, out
    assert "arch_config.yaml: OK" in out
    assert "problem" not in out
    assert "OPENAI_API_KEY is not set" not in out and "ANTHROPIC_API_KEY is not set" not in out


def test_deploy_examples_validate_and_agree():
    """deploy/: the replicas' shared config loads cleanly (keys, limits, Redis), and compose and
    Kubernetes run the gateway on the path where they mount it, next to a Redis it names."""
    code, out = archgw("validate", "deploy/arch_config.yaml", env={**GATEWAY_ENV, "ARCH_ADMIN_KEY": "a"})
    assert code == 0 and "deploy/arch_config.yaml: OK" in out and "warning" not in out, out
    config = yaml.safe_load((ROOT / "deploy" / "arch_config.yaml").read_text())
    assert config["state"]["redis"] == "redis://redis:6379/0"
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    mounted = compose["gateway"]["volumes"][0].split(":")[1]
    assert mounted in compose["gateway"]["command"] and "redis" in compose
    kube = {d["kind"] + "/" + d["metadata"]["name"]: d for f in ("gateway.yaml", "redis.yaml")
            for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / f).read_text())}
    pod = kube["Deployment/archgw"]["spec"]["template"]["spec"]
    path = pod["containers"][0]["volumeMounts"][0]["mountPath"] + "/arch_config.yaml"
    assert path in pod["containers"][0]["args"] and path == mounted and "Service/redis" in kube


def test_validate_default_config_is_arch_config_yaml():
    code, out = archgw("validate", env=GATEWAY_ENV)
    assert code == 0, out
    assert "arch_config.yaml: OK" in out


def test_archgw_console_script():
    exe = shutil.which("archgw")
    if exe is None:
        pytest.skip("archgw is not installed (pip install -e .)")
    result = subprocess.run([exe, "validate", "arch_config.yaml"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, **GATEWAY_ENV})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_validate_names_unset_key_variables():
    code, out = archgw("validate", "arch_config.yaml")  # OPENAI_API_KEY/ANTHROPIC_API_KEY removed
    assert code == 0, out  # a missing key is a warning: the other models can still be served
    assert re.search(r"llm_providers\[\d\]\.access_key: environment variable OPENAI_API_KEY is not set", out)
    assert re.search(r"llm_providers\[\d\]\.access_key: environment variable ANTHROPIC_API_KEY is not set", out)


def test_validate_lists_every_schema_problem(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners:
          egress_traffic:
            address: 0.0.0.0
            port: twelve-thousand
            timeout: 30s
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
          - access_key: $OPENAI_API_KEY
          - model: ollama/llama3.1
            base_url: localhost:11434
        llm_provider_typo: {}
        """)
    code, out = archgw("validate", str(path), env=GATEWAY_ENV)
    assert code == 1
    lines = problem_lines(out, path)
    assert len(lines) == 4, out  # one line per problem, nothing else
    assert f"{path}: 4 problem(s)" in out
    assert any("llm_providers[1]" in line and "'model' is a required property" in line for line in lines)
    assert any("llm_providers[2].base_url" in line and "localhost:11434" in line for line in lines)
    assert any("listeners.egress_traffic.port" in line for line in lines)
    assert any("llm_provider_typo" in line for line in lines)


def test_validate_lists_every_bad_alias_target(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners:
          egress_traffic: {address: 0.0.0.0, port: 12000}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
        model_aliases:
          fast-model:
            target: gpt-5-nope
          ok-model:
            target: gpt-4o-mini
          other:
            target: also-nope
        """)
    code, out = archgw("validate", str(path), env=GATEWAY_ENV)
    assert code == 1
    lines = problem_lines(out, path)
    assert len(lines) == 2, out
    assert "model_aliases.fast-model" in lines[0] and "'gpt-5-nope'" in lines[0]
    assert "model_aliases.other" in lines[1] and "'also-nope'" in lines[1]


def test_validate_lists_schema_and_alias_problems_together(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners:
          egress_traffic: {address: 0.0.0.0, port: 12000}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
          - access_key: $OPENAI_API_KEY
        model_aliases:
          fast-model:
            target: gpt-5-nope
        """)
    code, out = archgw("validate", str(path), env=GATEWAY_ENV)
    assert code == 1
    lines = problem_lines(out, path)
    assert any("llm_providers[1]" in line for line in lines)
    assert any("model_aliases.fast-model" in line for line in lines)


def test_validate_yaml_syntax_error(tmp_path):
    path = write(tmp_path, """
        version: v0.1
        listeners:
          egress_traffic: {port: 12000
        llm_providers: []
        """)
    code, out = archgw("validate", str(path))
    assert code == 1
    assert f"{path}: 1 problem(s)" in out
    assert "not valid YAML" in out
    assert "line 3" in out


def test_validate_missing_file(tmp_path):
    code, out = archgw("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "nope.yaml" in out and "cannot read" in out


ORIGINAL_V01 = """
    version: v0.1

    listeners:
      ingress_traffic:
        address: 0.0.0.0
        port: 10000
        message_format: openai
        timeout: 5s
      egress_traffic:
        address: 0.0.0.0
        port: 12000
        message_format: openai
        timeout: 30s

    # Arch creates a round-robin load balancing between different endpoints, managed via the cluster subsystem.
    endpoints:
      app_server:
        endpoint: 127.0.0.1:80
        connect_timeout: 0.005s

    llm_providers:
      - name: openai/gpt-4o
        access_key: $OPENAI_API_KEY
        model: openai/gpt-4o
        default: true

      - model: openai/gpt-4o-mini
        access_key: $OPENAI_API_KEY

      - model: anthropic/claude-3-5-sonnet-20241022
        access_key: $ANTHROPIC_API_KEY

      - model: ollama/llama3.1
        base_url: http://host.docker.internal:11434
        routing_preferences:
          - name: code generation
            description: generating new code snippets, functions, or boilerplate

    # Model aliases - friendly names that map to actual provider names
    model_aliases:
      arch.summarize.v1:
        target: gpt-4o-mini
      arch.v1:
        target: gpt-4o

    overrides:
      prompt_target_intent_matching_threshold: 0.60

    system_prompt: You are a network assistant that just offers facts.

    prompt_targets:
      - name: information_extraction
        default: true
        description: handle all scenarios that are question and answer in nature.
        endpoint:
          name: app_server
          path: /agent/summary

    tracing:
      random_sampling: 100
    """

ORIGINAL_V03 = """
    version: v0.3.0

    listeners:
      - type: model
        name: model_1
        address: 0.0.0.0
        port: 12000
        timeout: 30s
      - type: agent
        name: travel_booking_service
        port: 8001
        address: 0.0.0.0
      - type: prompt
        name: prompt_listener
        address: 0.0.0.0
        port: 10000

    model_providers:
      - model: openai/gpt-4o
        access_key: $OPENAI_API_KEY
        default: true
      - model: anthropic/claude-sonnet-4-0
        access_key: $ANTHROPIC_API_KEY

    model_aliases:
      fast-llm:
        target: gpt-4o
      smart-llm:
        target: claude-sonnet-4-0

    tracing:
      random_sampling: 100
      trace_arch_internal: true
    """


def test_original_v01_file_loads_and_reports_what_is_not_supported(tmp_path):
    path = write(tmp_path, ORIGINAL_V01)
    code, out = archgw("validate", str(path), env=GATEWAY_ENV)
    assert code == 0, out
    assert re.search(r"OK \(4 model\(s\), 2 alias\(es\)", out)
    # tracing.random_sampling is implemented (observability), so it is not in this list
    for key in ("endpoints", "overrides.prompt_target_intent_matching_threshold", "system_prompt",
                "prompt_targets", "listeners.ingress_traffic"):
        assert re.search(rf"{re.escape(key)}: .*not supported", out), f"{key} dropped silently:\n{out}"
    # routing preferences are served: the inline form is read as the top-level one, said once
    assert "llm_providers[3].routing_preferences: the inline (v0.3) form, read as top-level" in out


def test_original_v03_listener_list_file_loads(tmp_path):
    path = write(tmp_path, ORIGINAL_V03)
    code, out = archgw("validate", str(path), env=GATEWAY_ENV)
    assert code == 0, out
    assert re.search(r"OK \(2 model\(s\), 2 alias\(es\)", out)
    assert re.search(r"tracing(\.trace_arch_internal)?: .*not supported", out), out
    for key in ("listeners[1]", "listeners[2]"):
        assert re.search(rf"{re.escape(key)}: .*not supported", out), f"{key} dropped silently:\n{out}"


# ---------------------------------------------------------------------------------------------
# archgw up
# ---------------------------------------------------------------------------------------------

def test_up_prints_where_it_listens_models_and_aliases(gateway):
    out = gateway.output()
    assert f"127.0.0.1:{gateway.port}" in out
    for model in ("openai/gpt-4o-mini", "openai/gpt-4o", f"anthropic/{CLAUDE}", "ollama/llama3.1"):
        assert re.search(rf"model\s+{re.escape(model)}\b", out), model
    for alias, target in (("fast-model", "gpt-4o-mini"), ("smart-model", "gpt-4o"),
                          ("reasoning-model", CLAUDE), ("dev.chat.v1", "gpt-4o-mini")):
        assert re.search(rf"alias\s+{re.escape(alias)}\s+->\s+{re.escape(target)}\b", out), alias


def test_up_refuses_a_broken_config_listing_problems():
    config = {"version": "v0.1", "listeners": {"egress_traffic": {"port": 0}},
              "llm_providers": [{"model": "openai/gpt-4o-mini"}, {"access_key": "x"},
                                {"model": "ollama/llama3.1", "base_url": "ftp://nowhere"}]}
    with pytest.raises(GatewayStartError) as info:
        start_gateway(config, env=GATEWAY_ENV)
    out = info.value.output
    assert "exited with code 1" in str(info.value)
    assert "llm_providers[1]" in out and "llm_providers[2].base_url" in out
    assert "Traceback" not in out


def test_up_host_and_port_flags_override_the_config(workdir, openai_fake):
    config_port, port = free_port(), free_port()
    (workdir / "config.yaml").write_text(textwrap.dedent(f"""
        version: v0.1.0
        listeners:
          egress_traffic: {{address: 0.0.0.0, port: {config_port}}}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
            base_url: {openai_fake.url}
        """))
    gw = launch(workdir, port, {**os.environ, **GATEWAY_ENV}, extra_args=["--host", "127.0.0.1", "--port", str(port)])
    try:
        assert f"listening on http://127.0.0.1:{port}" in gw.output()
        with openai_client(gw) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        gw.stop()


def test_up_on_a_busy_port_is_one_line_not_a_traceback(gateway, tmp_path):
    path = write(tmp_path, f"""
        version: v0.1.0
        listeners:
          egress_traffic: {{address: 127.0.0.1, port: {gateway.port}}}
        llm_providers:
          - model: ollama/llama3.1
            base_url: http://127.0.0.1:1
        """)
    code, out = archgw("up", str(path))  # archgw() also checks there is no traceback
    assert code == 1
    assert f"archgw: cannot listen on 127.0.0.1:{gateway.port}: Address already in use" in out
    assert "--port" in out


def _workers(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in found}


def test_workers_that_keep_crashing_are_restarted_with_backoff_then_stop_the_gateway(openai_fake):
    gw = start_gateway({"version": "v0.1.0", "listeners": {"egress_traffic": {"port": 0}},
                        "llm_providers": [{"model": "openai/gpt-4o-mini", "access_key": "x",
                                           "base_url": openai_fake.url}]},
                       env=GATEWAY_ENV, extra_args=["--workers", "2"])
    try:
        killed = set()
        deadline = time.monotonic() + 60
        while gw.proc.poll() is None and time.monotonic() < deadline:
            alive = _workers(gw.proc.pid) - killed
            if alive:
                victim = min(alive)
                os.kill(victim, signal.SIGKILL)
                killed.add(victim)
            time.sleep(0.05)
        assert gw.proc.poll() == 1, "the supervisor kept restarting crashing workers"
        out = gw.output()
        assert "starting another in 0.25s" in out and "starting another in 0.50s" in out
        assert "workers kept crashing" in out and "Traceback" not in out
        assert not _workers(gw.proc.pid)
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def v01_gateway(openai_fake, anthropic_fake, ollama_fake):
    """The original v0.1 file, base_urls pointed at the fakes."""
    text = textwrap.dedent(ORIGINAL_V01)
    text = text.replace("  - name: openai/gpt-4o\n", f"  - name: openai/gpt-4o\n    base_url: {openai_fake.url}\n")
    text = text.replace("  - model: openai/gpt-4o-mini\n", f"  - model: openai/gpt-4o-mini\n    base_url: {openai_fake.url}\n")
    text = text.replace("    access_key: $ANTHROPIC_API_KEY\n",
                        f"    access_key: $ANTHROPIC_API_KEY\n    base_url: {anthropic_fake.url}\n")
    text = text.replace("http://host.docker.internal:11434", ollama_fake.url)
    assert text.count("127.0.0.1:") >= 4
    gw = start_gateway(text, env=GATEWAY_ENV)
    yield gw
    gw.stop()


def test_original_v01_file_serves(v01_gateway, openai_fake, anthropic_fake, ollama_fake):
    out = v01_gateway.output()
    assert re.search(r"prompt_targets: .*not supported", out)
    assert re.search(r"listeners.ingress_traffic: .*not supported", out)
    with openai_client(v01_gateway) as client:
        r = client.chat.completions.create(model="arch.summarize.v1", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from gpt-4o-mini!"
        assert openai_fake.last["body"]["model"] == "gpt-4o-mini"
        assert openai_fake.last["headers"]["authorization"] == "Bearer sk-openai-secret"
        r = client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from gpt-4o!"
        r = client.chat.completions.create(model="llama3.1", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from llama3.1!"
        assert ollama_fake.last["path"] == "/v1/chat/completions"
    with anthropic_client(v01_gateway) as client:
        m = client.messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert m.content[0].text == f"Hello from {CLAUDE}!"
        assert anthropic_fake.last["headers"]["x-api-key"] == "sk-ant-secret"


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="arch-cfg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_listener_list_and_model_providers_serve(workdir, openai_fake, anthropic_fake):
    port = free_port()
    text = textwrap.dedent(ORIGINAL_V03).replace("port: 12000", f"port: {port}").replace(
        "address: 0.0.0.0\n    port: %d" % port, "address: 127.0.0.1\n    port: %d" % port)
    text = text.replace("    access_key: $OPENAI_API_KEY\n", f"    access_key: $OPENAI_API_KEY\n    base_url: {openai_fake.url}\n")
    text = text.replace("    access_key: $ANTHROPIC_API_KEY\n",
                        f"    access_key: $ANTHROPIC_API_KEY\n    base_url: {anthropic_fake.url}\n")
    (workdir / "config.yaml").write_text(text)
    gw = launch(workdir, port, {**os.environ, **GATEWAY_ENV})
    try:
        assert re.search(r"listeners\[1\]: .*not supported", gw.output())
        with openai_client(gw) as client:
            r = client.chat.completions.create(model="fast-llm", messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content == "Hello from gpt-4o!"
            assert openai_fake.last["body"]["model"] == "gpt-4o"
            r = client.chat.completions.create(model="smart-llm", messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content == "Hello from claude-sonnet-4-0!"
            assert anthropic_fake.last["body"]["model"] == "claude-sonnet-4-0"
            assert anthropic_fake.last["headers"]["x-api-key"] == "sk-ant-secret"
    finally:
        gw.stop()


def test_dotenv_beside_the_config_supplies_keys(workdir, openai_fake, anthropic_fake):
    (workdir / ".env").write_text(textwrap.dedent("""
        # keys for local runs
        OPENAI_API_KEY=sk-from-dotenv-openai
        export ARCH_TEST_ANTH_KEY="sk-from-dotenv-anthropic"
        """))
    (workdir / "config.yaml").write_text(textwrap.dedent(f"""
        version: v0.1.0
        listeners:
          egress_traffic: {{address: 127.0.0.1, port: PORT, timeout: 30s, max_retries: 0}}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
            base_url: {openai_fake.url}
          - model: anthropic/claude-3-5-sonnet-20241022
            access_key: ${{ARCH_TEST_ANTH_KEY}}
            base_url: {anthropic_fake.url}
        """))
    port = free_port()
    config = workdir / "config.yaml"
    config.write_text(config.read_text().replace("PORT", str(port)))
    env = env_without_keys()
    assert "ARCH_TEST_ANTH_KEY" not in env
    gw = launch(workdir, port, env)
    try:
        assert "is not set" not in gw.output()
        with openai_client(gw) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert openai_fake.last["headers"]["authorization"] == "Bearer sk-from-dotenv-openai"
            client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
            assert anthropic_fake.last["headers"]["x-api-key"] == "sk-from-dotenv-anthropic"
        for key in ("sk-from-dotenv-openai", "sk-from-dotenv-anthropic"):
            assert key not in gw.output()
    finally:
        gw.stop()


def test_dotenv_trailing_comments_and_multiline_values(workdir, openai_fake):
    (workdir / ".env").write_text(textwrap.dedent("""
        CA_BUNDLE="-----BEGIN CERTIFICATE-----
        MIIBszCCAVmgAwIBAgI=
        -----END CERTIFICATE-----"
        OPENAI_API_KEY=sk-dotenv-key   # rotated monthly
        HASH='abc#def'
        """))
    from arch.config import read_dotenv
    values = read_dotenv(workdir / ".env")
    assert values["CA_BUNDLE"].splitlines() == ["-----BEGIN CERTIFICATE-----", "MIIBszCCAVmgAwIBAgI=",
                                                "-----END CERTIFICATE-----"]
    assert values["HASH"] == "abc#def" and "MIIBszCCAVmgAwIBAgI" not in values
    port = free_port()
    (workdir / "config.yaml").write_text(textwrap.dedent(f"""
        version: v0.1.0
        listeners:
          egress_traffic: {{address: 127.0.0.1, port: {port}, max_retries: 0}}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: $OPENAI_API_KEY
            base_url: {openai_fake.url}
        """))
    gw = launch(workdir, port, env_without_keys())
    try:
        with openai_client(gw) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert openai_fake.last["headers"]["authorization"] == "Bearer sk-dotenv-key"
    finally:
        gw.stop()


def test_env_var_in_base_url(workdir, openai_fake):
    port = free_port()
    host = openai_fake.url.removeprefix("http://")
    (workdir / ".env").write_text(f"FAKE_HOST={host}\n")
    (workdir / "config.yaml").write_text(textwrap.dedent(f"""
        version: v0.1.0
        listeners:
          egress_traffic: {{address: 127.0.0.1, port: {port}, max_retries: 0}}
        llm_providers:
          - model: openai/gpt-4o-mini
            access_key: ${{ARCH_TEST_KEY_FROM_ENV}}
            base_url: http://${{FAKE_HOST}}
        """))
    gw = launch(workdir, port, env_without_keys(ARCH_TEST_KEY_FROM_ENV="sk-from-environment"))
    try:
        with openai_client(gw) as client:
            r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from gpt-4o-mini!"
        assert openai_fake.last["headers"]["authorization"] == "Bearer sk-from-environment"
    finally:
        gw.stop()


@pytest.mark.parametrize("listener, hosts, listed", [
    ({"address": "127.0.0.1"}, {"localhost", "127.0.0.1", "::1"}, True),
    ({"address": "::1"}, {"localhost", "127.0.0.1", "::1"}, True),
    ({"address": "0.0.0.0"}, None, False),
    ({"address": "0.0.0.0", "allowed_hosts": ["gw.example.com"], "list_models_in_errors": True},
     {"gw.example.com"}, True),
    ({"address": "127.0.0.1", "allowed_hosts": ["*"], "list_models_in_errors": False}, None, False),
])
def test_host_check_and_model_list_default_by_address(tmp_path, listener, hosts, listed):
    """A loopback listener checks Host (DNS rebinding) and lists models in a 404; one
    reachable from elsewhere does neither unless told to."""
    config = load_config(write(tmp_path, yaml.safe_dump({"listeners": {"egress_traffic": listener}})))
    assert config.allowed_hosts == (None if hosts is None else frozenset(hosts))
    assert config.list_models is listed
