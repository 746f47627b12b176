"""Codex CLI (`codex exec`, non-interactive, the Responses API) through the gateway to
a Claude model and to an OpenAI-compatible one: the model asks for a shell command,
Codex runs it and sends the result back, the model answers from it."""
from __future__ import annotations

import os
import subprocess

import pytest

from fakes import Turn, tool_result
from translate_util import CLAUDE, LLAMA

COMMAND = "echo codex-was-here > proof.txt && cat proof.txt"


def respond(req):
    """The model's side: run the command with Codex's shell tool, then report what it printed."""
    body = req["body"]
    result = tool_result(body)
    if result is None:
        names = [t.get("name") or t.get("function", {}).get("name") for t in body.get("tools") or ()]
        assert "exec_command" in names, names
        return Turn(tool_calls=[("exec_command", {"cmd": COMMAND})])
    return Turn("The command printed: " + ("codex-was-here" if "codex-was-here" in result else "nothing"))


def codex_exec(npm_bin, gateway, model, tmp_path, settings=""):
    """`codex exec` in a fresh HOME whose config.toml sends `model` to the gateway's Responses API."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".codex").mkdir(parents=True)
    work.mkdir()
    (home / ".codex" / "config.toml").write_text(f'''
model = "{model}"
model_provider = "archgw"
{settings}

[model_providers.archgw]
name = "archgw"
base_url = "{gateway.url}/v1"
wire_api = "responses"
env_key = "ARCHGW_TEST_KEY"
''')
    done = subprocess.run(
        [str(npm_bin / "codex"), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
         "Write codex-was-here into proof.txt with a shell command and tell me what it printed."],
        cwd=work, env={"HOME": str(home), "PATH": os.environ["PATH"], "ARCHGW_TEST_KEY": "test-key"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    return done, work


# Codex offers OpenAI's web search by default: Claude runs it as Anthropic's web search;
# an OpenAI-compatible model has none, so Codex is told not to offer it.
@pytest.mark.parametrize("model", [CLAUDE, LLAMA])
def test_codex_runs_a_shell_command(npm_bin, gateway, anthropic_fake, ollama_fake, model, tmp_path):
    fake = anthropic_fake if model == CLAUDE else ollama_fake
    fake.script(respond)
    done, work = codex_exec(npm_bin, gateway, model, tmp_path,
                            "" if model == CLAUDE else 'web_search = "disabled"')
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (work / "proof.txt").read_text().strip() == "codex-was-here"
    assert "The command printed: codex-was-here" in done.stdout
    first, second = fake.requests[-2:]
    assert "codex-was-here" in tool_result(second["body"])
    assert first["body"].get("stream") is True
    if model == CLAUDE:
        assert {"type": "web_search_20250305", "name": "web_search"} in first["body"]["tools"]
