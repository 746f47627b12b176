"""A non-editable install works: the wheel carries the built-in rules and
schemas, and the installed `archgw` finds them from wherever it is run.

The wheel is built from a copy of the sources (a stale build/ never leaks into
it) and installed with --no-deps into a venv that sees this interpreter's
site-packages, so no dependency is downloaded; the venv's own copy of `arch`
comes first on its path, which the test checks before trusting the rest.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import GATEWAY_ENV, ROOT, free_port, launch

SOURCES = ("setup.py", "README.md", "arch", "rules", "schemas")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, a working directory outside the repository)."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)],
                   check=True, cwd=base, env=env, capture_output=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    wheel = next((base / "dist").glob("archgw-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, cwd=base, env=env, capture_output=True)
    shutil.rmtree(src)  # nothing of the sources is left to fall back on
    work = base / "elsewhere"
    work.mkdir()
    return venv / "bin", work, env


def test_wheel_installs_its_own_rules_and_schemas(installed):
    bin_dir, work, env = installed
    where = subprocess.run([str(bin_dir / "python"), "-c",
                            "import arch.schemas, arch.rules.load as l; print(arch.schemas.SCHEMAS); print(l.BUILTIN)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    venv = str(bin_dir.parent)
    assert all(p.startswith(venv) for p in where), where  # the venv's copy, not the checkout
    assert {p.name for p in (Path(where[1]) / "providers").glob("*.yaml")} >= {"openai.yaml", "anthropic.yaml"}


def test_installed_archgw_validates_and_serves_from_another_directory(installed, openai_fake):
    bin_dir, work, env = installed
    config = {"version": "v0.1.0",
              "listeners": {"egress_traffic": {"address": "127.0.0.1", "port": free_port()}},
              "llm_providers": [{"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY",
                                 "base_url": openai_fake.url}]}
    workdir = work / "gw"
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**env, **GATEWAY_ENV}

    checked = subprocess.run([str(bin_dir / "archgw"), "validate", "gw/config.yaml"], cwd=work, env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK (1 model(s)" in checked.stdout

    gw = launch(workdir, config["listeners"]["egress_traffic"]["port"], env,
                command=(str(bin_dir / "archgw"),), cwd=work)
    try:
        request = urllib.request.Request(gw.url + "/v1/messages", method="POST", headers={
            "content-type": "application/json", "anthropic-version": "2023-06-01"},
            data=json.dumps({"model": "gpt-4o-mini", "max_tokens": 20,
                             "messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as resp:
            answer = json.load(resp)
        assert answer["type"] == "message"  # translated by the installed rules
        assert answer["content"][0]["text"] == "Hello from gpt-4o-mini!"
    finally:
        gw.stop()
