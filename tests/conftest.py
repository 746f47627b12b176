"""Test harness: fake providers plus the real gateway run as a subprocess.

The gateway is started the way a user starts it (`python -m arch up CONFIG`) and
is reached over real sockets, so tests cover config loading, the server and
the upstream HTTP client, not just the translation functions.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from fakes import FakeAnthropic, FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


class GatewayStartError(RuntimeError):
    """The gateway exited or never became healthy; `output` is what it printed."""

    def __init__(self, message, output):
        super().__init__(f"{message}\n--- gateway output ---\n{output}")
        self.output = output


class Gateway:
    """A running `python -m arch up` process."""

    def __init__(self, proc, port, workdir):
        self.proc, self.port, self.workdir = proc, port, workdir
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "config.yaml"
        self._final_output = None

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr interleaved)."""
        if self._final_output is not None:
            return self._final_output
        return (self.workdir / "output.log").read_text(errors="replace")

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited after 10 s. Idempotent."""
        if self._final_output is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._final_output = self.output()
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_port(config, port) -> str:
    """Config text for the gateway, listening on 127.0.0.1:`port`.

    The `listeners.egress_traffic` form gets its address and port set; anything
    else (e.g. deliberately invalid YAML) is written as given."""
    try:
        parsed = yaml.safe_load(config) if isinstance(config, str) else copy.deepcopy(config)
    except yaml.YAMLError:
        return config
    listeners = parsed.get("listeners") if isinstance(parsed, dict) else None
    egress = listeners.get("egress_traffic") if isinstance(listeners, dict) else None
    if isinstance(egress, dict):
        egress.update(address="127.0.0.1", port=port)
    elif isinstance(config, str):
        return config
    return yaml.safe_dump(parsed, sort_keys=False)


# urllib would otherwise honour *_proxy variables, even for 127.0.0.1.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_gateway(config, env=None, extra_args=(), timeout=15.0, fd_limit=None) -> Gateway:
    """Start the gateway on a free port with `config` (YAML text or dict) and
    `env` merged over os.environ; return once `GET /healthz` answers 200.
    `fd_limit`: (soft, hard) RLIMIT_NOFILE for the process.
    Raises GatewayStartError (with the output) if it dies or times out."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="arch-gw-"))
    (workdir / "config.yaml").write_text(_with_port(config, port))
    return launch(workdir, port, {**os.environ, **(env or {})}, extra_args, timeout, fd_limit=fd_limit)


def launch(workdir: Path, port: int, env: dict, extra_args=(), timeout=15.0,
           command=(sys.executable, "-m", "arch"), cwd=ROOT, fd_limit=None) -> Gateway:
    """`python -m arch up workdir/config.yaml` (or `command up ...`, run in `cwd`)
    with exactly `env`, listening on `port`; returns once /healthz answers,
    raises GatewayStartError if not. `fd_limit`: (soft, hard) RLIMIT_NOFILE."""
    limit = None if fd_limit is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, fd_limit))
    with open(workdir / "output.log", "wb") as log:
        proc = subprocess.Popen(
            [*command, "up", str(workdir / "config.yaml"), *extra_args],
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**env, "PYTHONUNBUFFERED": "1"}, preexec_fn=limit)
    gw = Gateway(proc, port, workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            gw.stop()
            raise GatewayStartError(f"gateway exited with code {proc.returncode}", gw.output())
        try:
            with _direct.open(gw.url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return gw
        except OSError:  # refused while starting, HTTPError for non-2xx
            pass
        time.sleep(0.05)
    gw.stop()
    raise GatewayStartError(f"gateway not healthy after {timeout}s", gw.output())


@pytest.fixture(scope="session")
def openai_fake():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def anthropic_fake():
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def ollama_fake():
    fake = FakeOpenAI(models=("llama3.1",)).start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(openai_fake, anthropic_fake, ollama_fake):
    """Each test starts with empty recordings and queues on the shared fakes."""
    for fake in (openai_fake, anthropic_fake, ollama_fake):
        fake.reset()


GATEWAY_ENV = {"OPENAI_API_KEY": "sk-openai-secret", "ANTHROPIC_API_KEY": "sk-ant-secret"}


def gateway_config(openai_url, anthropic_url, ollama_url) -> dict:
    """The standard config: every provider points at a fake."""
    return {
        "version": "v0.1.0",
        # max_retries 0: an error a fake is told to send reaches the client as it is;
        # retries and fallbacks have their own tests and gateways.
        "listeners": {"egress_traffic": {"address": "127.0.0.1", "port": 0, "message_format": "openai",
                                         "timeout": "30s", "max_retries": 0}},
        "llm_providers": [
            {"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY", "base_url": openai_url, "default": True},
            {"model": "openai/gpt-4o", "access_key": "$OPENAI_API_KEY", "base_url": openai_url},
            {"model": "anthropic/claude-3-5-sonnet-20241022", "access_key": "$ANTHROPIC_API_KEY",
             "base_url": anthropic_url},
            {"model": "ollama/llama3.1", "base_url": ollama_url},
        ],
        "model_aliases": {
            "fast-model": {"target": "gpt-4o-mini"},
            "smart-model": {"target": "gpt-4o"},
            "reasoning-model": {"target": "claude-3-5-sonnet-20241022"},
            "dev.chat.v1": {"target": "gpt-4o-mini"},
        },
    }


@pytest.fixture(scope="session")
def gateway(openai_fake, anthropic_fake, ollama_fake):
    gw = start_gateway(gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url), env=GATEWAY_ENV)
    yield gw
    gw.stop()


def openai_client(server, key="test-key", **options):
    """The official OpenAI SDK pointed at `server` (anything with a .url), no SDK retries."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, **options)


def anthropic_client(server, key="test-key", **options):
    """The official Anthropic SDK pointed at `server` (anything with a .url), no SDK retries."""
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, **options)


AGENT_CLIENTS = ROOT / "tests" / "agents"   # package.json + package-lock.json: pinned agent CLIs
TEST_CACHE = Path(os.environ.get("ARCHGW_TEST_CACHE") or Path.home() / ".cache" / "archgw-tests")


@pytest.fixture(scope="session")
def npm_bin() -> Path:
    """The `node_modules/.bin` of the agent CLIs pinned in tests/agents (`claude`,
    `codex`, ...): a test runs e.g. `npm_bin / "codex"` with a throwaway HOME and
    the client's base-URL variable pointing at a gateway.

    Installed with `npm ci` from the lock file into
    `$ARCHGW_TEST_CACHE/npm/<hash of package.json + lock>` (default
    ~/.cache/archgw-tests), so only a changed pin installs again, and concurrent
    test runs wait for one install (a file lock; the directory appears complete or
    not at all). To add a client: add it to package.json, run
    `npm install --package-lock-only` in tests/agents, commit both files.
    No npm or no registry fails the tests that use it (never a skip): these
    clients are part of what the suite proves."""
    files = [AGENT_CLIENTS / "package.json", AGENT_CLIENTS / "package-lock.json"]
    key = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    root = TEST_CACHE / "npm"
    target = root / key
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail("npm is not installed: the agent-client tests need Node.js and npm")
            staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
            for f in files:
                shutil.copy(f, staging)
            try:
                done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=staging,
                                      capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                done = None
            if done is None or done.returncode:
                shutil.rmtree(staging, ignore_errors=True)
                output = "timed out" if done is None else (done.stdout + done.stderr)[-4000:]
                pytest.fail(f"npm ci of tests/agents failed (is the npm registry reachable?):\n{output}")
            staging.rename(target)
    return target / "node_modules" / ".bin"


@pytest.fixture
def oai(gateway):
    with openai_client(gateway) as client:
        yield client


@pytest.fixture
def anth(gateway):
    with anthropic_client(gateway) as client:
        yield client


SHARED_REDIS = "redis://127.0.0.1:6379/0"


def redis_keys(prefix) -> list[str]:
    """The shared Redis's keys that contain `prefix`."""
    return subprocess.run(["redis-cli", "-p", "6379", "--scan", "--pattern", f"*{prefix}*"],
                          capture_output=True, text=True).stdout.split()


@pytest.fixture
def redis_prefix():
    """A fresh key prefix on the shared Redis (127.0.0.1:6379); its keys are deleted afterwards."""
    prefix = f"archtest-{os.urandom(6).hex()}"
    yield prefix
    out = redis_keys(prefix)
    for i in range(0, len(out), 500):
        subprocess.run(["redis-cli", "-p", "6379", "DEL", *out[i:i + 500]], capture_output=True)


class RedisServer:
    """A redis-server of a test's own on an ephemeral port, to stop, pause and restart
    (never the shared one on 6379)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()
