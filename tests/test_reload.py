"""Hot reload of arch_config.yaml and rules files.

A running gateway picks up an edited config or rules file (file watcher, or
SIGHUP) for new requests; a broken edit is refused with a log line while the
old configuration keeps serving; a stream started before a reload finishes on
the configuration it started with.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml

from conftest import openai_client, start_gateway

KEYS = {"OPENAI_API_KEY": "sk-openai-reload", "ANTHROPIC_API_KEY": "sk-ant-reload", "ACME_KEY": "sk-acme-reload"}
RELOADED = "configuration reloaded from"
REJECTED = "reload rejected, still serving the previous configuration"
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def base_config(openai_url, anthropic_url):
    return {
        "version": "v0.1.0",
        "listeners": {"egress_traffic": {"address": "127.0.0.1", "port": 0, "message_format": "openai"}},
        "llm_providers": [
            {"model": "openai/gpt-4o-mini", "name": "model-a", "access_key": "$OPENAI_API_KEY", "base_url": openai_url},
            {"model": "openai/gpt-4o", "name": "model-b", "access_key": "$OPENAI_API_KEY", "base_url": openai_url},
            {"model": "anthropic/claude-3-5-sonnet-20241022", "name": "model-c", "access_key": "$ANTHROPIC_API_KEY",
             "base_url": anthropic_url},
            # served only once rules/providers/acme.yaml exists in the user rules directory
            {"model": "acme/acme-1", "access_key": "$ACME_KEY", "base_url": openai_url},
        ],
        "model_aliases": {"pick": {"target": "model-a"}},
    }


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("reload-rules")
    (d / "providers").mkdir()
    return d


@pytest.fixture(scope="module")
def base(openai_fake, anthropic_fake):
    return base_config(openai_fake.url, anthropic_fake.url)


@pytest.fixture(scope="module")
def gw(base, rules_dir):
    g = start_gateway(base, env=KEYS, extra_args=["--rules", str(rules_dir)])
    yield g
    g.stop()


@pytest.fixture
def oai(gw):
    with openai_client(gw, "client-key") as client:
        yield client


def atomic_write(path: Path, text: str):
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_text(gw, config):
    config = copy.deepcopy(config)
    config["listeners"]["egress_traffic"].update(address="127.0.0.1", port=gw.port)
    return yaml.safe_dump(config, sort_keys=False)


def count(gw, text):
    return gw.output().count(text)


def wait_for(predicate, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def edit(gw, write, expect=RELOADED, timeout=3.0):
    """Run `write()` (a file edit) and wait until the gateway logs `expect` once more."""
    before = count(gw, expect)
    write()
    wait_for(lambda: count(gw, expect) > before, timeout, f"{expect!r} in the gateway log")


def apply(gw, config):
    """Install a valid config at once (SIGHUP rather than waiting for the watcher)."""
    def write():
        atomic_write(gw.config_path, config_text(gw, config))
        gw.proc.send_signal(signal.SIGHUP)
    edit(gw, write)


def models(gw):
    with _direct.open(gw.url + "/v1/models", timeout=5) as resp:
        return {m["id"]: m for m in json.loads(resp.read())["data"]}


def ask(oai, model):
    return oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(autouse=True)
def _base_config(gw, base):
    """Each test starts from the base config (reloaded only if a test changed it)."""
    if gw.config_path.read_text() != config_text(gw, base):
        apply(gw, base)
    yield


def test_added_alias_is_served_after_file_edit(gw, base, oai, openai_fake):
    with pytest.raises(openai.NotFoundError):
        ask(oai, "brand-new")
    config = copy.deepcopy(base)
    config["model_aliases"]["brand-new"] = {"target": "model-b"}
    start = time.monotonic()
    atomic_write(gw.config_path, config_text(gw, config))
    wait_for(lambda: "brand-new" in models(gw), 2.5, "the new alias in /v1/models")
    assert time.monotonic() - start < 2.5
    assert ask(oai, "brand-new").choices[0].message.content == "Hello from gpt-4o!"
    assert openai_fake.last["body"]["model"] == "gpt-4o"
    assert RELOADED in gw.output()


def test_changed_alias_target_is_used_for_new_requests(gw, base, oai, openai_fake):
    ask(oai, "pick")
    assert openai_fake.last["body"]["model"] == "gpt-4o-mini"
    config = copy.deepcopy(base)
    config["model_aliases"]["pick"] = {"target": "model-b"}
    atomic_write(gw.config_path, config_text(gw, config))
    wait_for(lambda: models(gw)["pick"].get("target") == "model-b", 2.5, "pick -> model-b")
    ask(oai, "pick")
    assert openai_fake.last["body"]["model"] == "gpt-4o"


def test_sighup_reloads(gw, base, oai, openai_fake):
    # Same size and same mtime as before: only SIGHUP can reveal this edit.
    path = gw.config_path
    old_text, st = path.read_text(), path.stat()
    config = copy.deepcopy(base)
    config["model_aliases"]["pick"] = {"target": "model-b"}
    new_text = config_text(gw, config)
    assert len(new_text) == len(old_text)
    atomic_write(path, new_text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(1.2)  # one watcher period: it must not have noticed
    assert models(gw)["pick"]["target"] == "model-a"
    edit(gw, lambda: gw.proc.send_signal(signal.SIGHUP), timeout=2)
    assert models(gw)["pick"]["target"] == "model-b"
    ask(oai, "pick")
    assert openai_fake.last["body"]["model"] == "gpt-4o"


def test_key_added_to_dotenv_is_picked_up(gw, base, oai, openai_fake):
    """A provider whose $VAR is unset fails by name; writing the key to the .env beside the
    config fixes it without a restart."""
    var = "ARCH_TEST_DOTENV_KEY_ISSUE4"
    assert var not in os.environ
    dotenv = gw.config_path.parent / ".env"
    config = copy.deepcopy(base)
    config["llm_providers"].append({"model": "openai/gpt-4.1", "name": "model-d", "access_key": f"${var}",
                                    "base_url": base["llm_providers"][0]["base_url"]})
    apply(gw, config)
    assert f"environment variable {var} is not set" in gw.output()
    with pytest.raises(openai.APIStatusError) as e:
        ask(oai, "model-d")
    assert var in e.value.message and openai_fake.requests == []
    try:
        edit(gw, lambda: atomic_write(dotenv, f"# keys\n{var}=sk-from-dotenv\n"))
        assert ask(oai, "model-d").choices[0].message.content == "Hello from gpt-4.1!"
        assert openai_fake.last["headers"]["authorization"] == "Bearer sk-from-dotenv"
    finally:
        if dotenv.exists():
            edit(gw, dotenv.unlink)


ACME = {"name": "acme", "dialect": "openai", "base_url": "https://acme.example/api", "path": "/v9/chat/completions",
        "auth": {"header": "X-Acme-Key", "value": "{key}"}}


def test_added_and_edited_rules_file_is_picked_up(gw, rules_dir, oai, openai_fake):
    rule = rules_dir / "providers" / "acme.yaml"
    assert "provider 'acme' is not supported" in gw.output()
    with pytest.raises(openai.NotFoundError):
        ask(oai, "acme/acme-1")
    try:
        edit(gw, lambda: atomic_write(rule, yaml.safe_dump(ACME)))
        assert ask(oai, "acme/acme-1").choices[0].message.content == "Hello from acme-1!"
        req = openai_fake.last
        assert (req["path"], req["headers"]["x-acme-key"]) == ("/api/v9/chat/completions", "sk-acme-reload")
        edit(gw, lambda: atomic_write(rule, yaml.safe_dump({**ACME, "path": "/v10/chat/completions"})))
        ask(oai, "acme/acme-1")
        assert openai_fake.last["path"] == "/api/v10/chat/completions"
    finally:
        if rule.exists():
            edit(gw, rule.unlink)
    with pytest.raises(openai.NotFoundError):
        ask(oai, "acme/acme-1")


def _broken_yaml(gw, base):
    return config_text(gw, base) + "model_aliases: {pick: [unclosed\n"


def _schema_violation(gw, base):
    config = copy.deepcopy(base)
    config["llm_providers"][0]["base_url"] = "ftp://not-http"
    config["model_aliases"]["brand-new"] = {"target": "model-b"}
    return config_text(gw, config)


def _unknown_alias_target(gw, base):
    config = copy.deepcopy(base)
    config["model_aliases"]["pick"] = {"target": "ghost-model"}
    config["model_aliases"]["brand-new"] = {"target": "model-b"}
    return config_text(gw, config)


@pytest.mark.parametrize("make, message", [
    (_broken_yaml, "not valid YAML"),
    (_schema_violation, "llm_providers[0].base_url"),
    (_unknown_alias_target, "model_aliases.pick"),
], ids=["invalid-yaml", "schema", "unknown-alias-target"])
def test_broken_config_edit_is_rejected_and_old_config_keeps_serving(gw, base, oai, openai_fake, make, message):
    before = gw.output()
    edit(gw, lambda: atomic_write(gw.config_path, make(gw, base)), expect=REJECTED)
    log = gw.output()[len(before):]
    assert REJECTED in log and message in log and str(gw.config_path) in log
    if "model_aliases" in message:
        assert "'ghost-model' is not a configured model" in log
    assert RELOADED not in log
    served = models(gw)
    assert served["pick"]["target"] == "model-a" and "brand-new" not in served
    ask(oai, "pick")
    assert openai_fake.last["body"]["model"] == "gpt-4o-mini"
    assert gw.proc.poll() is None


def test_broken_rules_file_is_rejected_and_old_rules_keep_serving(gw, rules_dir, oai, openai_fake):
    bad = rules_dir / "providers" / "broken.yaml"
    before = gw.output()
    try:
        edit(gw, lambda: atomic_write(bad, yaml.safe_dump({"name": "broken", "dialect": "openai", "path": "nope"})),
             expect=REJECTED)
        log = gw.output()[len(before):]
        assert f"{bad}: path: " in log
        ask(oai, "pick")
        assert openai_fake.last["body"]["model"] == "gpt-4o-mini"
    finally:
        edit(gw, bad.unlink)


def _openai_sse(model, words):
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    frames = [chunk({"role": "assistant", "content": ""}), *(chunk({"content": w}) for w in words), chunk({}, "stop")]
    return "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"


def _anthropic_sse(model, words):
    events = [
        {"type": "message_start", "message": {
            "id": "msg_slow", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}} for w in words),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": len(words)}},
        {"type": "message_stop"},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


@pytest.mark.parametrize("name, fake_name, make_sse, model_id", [
    ("model-a", "openai_fake", _openai_sse, "gpt-4o-mini"),
    ("model-c", "anthropic_fake", _anthropic_sse, "claude-3-5-sonnet-20241022"),
], ids=["passthrough", "translated"])
def test_inflight_stream_finishes_on_old_config(gw, base, oai, request, openai_fake, name, fake_name, make_sse,
                                                model_id):
    words = ["one ", "two ", "three ", "four ", "five"]
    request.getfixturevalue(fake_name).enqueue(sse=make_sse(model_id, words), delay=0.2)
    started, done = threading.Event(), threading.Event()
    result = {}

    def consume():
        try:
            stream = oai.chat.completions.create(model="stream-me", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
            pieces, finish = [], None
            for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                started.set()
            result.update(text="".join(pieces), finish=finish)
        except Exception as e:  # reported by the main thread
            result["error"] = e
        finally:
            started.set()
            done.set()

    config = copy.deepcopy(base)
    config["model_aliases"]["stream-me"] = {"target": name}
    apply(gw, config)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert started.wait(5), "the stream did not start"
    # Mid-stream: the streaming model disappears and the alias now points elsewhere.
    changed = copy.deepcopy(base)
    changed["llm_providers"] = [p for p in changed["llm_providers"] if p.get("name") != name]
    changed["model_aliases"] = {"stream-me": {"target": "model-b"}}
    apply(gw, changed)
    assert not done.is_set(), "the stream ended before the reload: the test proves nothing"
    assert done.wait(10)
    thread.join()
    assert "error" not in result, result.get("error")
    assert result == {"text": "".join(words), "finish": "stop"}
    # New requests see the new configuration.
    assert name not in models(gw)
    ask(oai, "stream-me")
    assert openai_fake.last["body"]["model"] == "gpt-4o"


def test_listener_change_is_reported_not_silently_ignored(gw, base, oai, openai_fake):
    """The socket cannot move while serving: the rest applies, and the log says a restart is needed."""
    config = copy.deepcopy(base)
    config["model_aliases"]["brand-new"] = {"target": "model-b"}
    text = config_text(gw, config).replace(f"port: {gw.port}", "port: 1")
    before = gw.output()
    edit(gw, lambda: atomic_write(gw.config_path, text))
    log = gw.output()[len(before):]
    assert "restart" in log and "port" in log, log
    assert "brand-new" in models(gw)  # still serving on the old port, with the new aliases


@pytest.fixture
def workers_gw(base):
    g = start_gateway(base, env=KEYS, extra_args=["--workers", "2"])
    children = [int(p) for p in (Path(f"/proc/{g.proc.pid}/task/{g.proc.pid}/children").read_text().split())]
    assert len(children) == 2
    yield g
    g.stop()
    for pid in children:  # workers orphaned by a supervisor that died
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_sighup_with_workers_reloads_every_worker(workers_gw):
    gw = workers_gw
    path = gw.config_path
    old_text, st = path.read_text(), path.stat()
    new_text = old_text.replace("target: model-a", "target: model-b")
    atomic_write(path, new_text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # invisible to the file watcher
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.proc.poll() is not None or gw.output().count(RELOADED) >= 2, 3, "both workers to reload")
    assert gw.proc.poll() is None, "the supervisor died of SIGHUP"
    assert all(models(gw)["pick"]["target"] == "model-b" for _ in range(10))


def _listening_sockets(port):
    """Inodes of the sockets listening on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {r[9] for r in rows if r[1] == f"0100007F:{port:04X}" and r[3] == "0A"}


def test_each_worker_listens_on_its_own_socket(workers_gw):
    """One socket per worker in the port's SO_REUSEPORT group: the kernel spreads new
    connections over the workers evenly. A single inherited socket lets the least
    busy worker take nearly all of them."""
    assert len(_listening_sockets(workers_gw.port)) == 2
    assert all(models(workers_gw) for _ in range(4))  # and both serve


def _workers(gw):
    return {int(p) for p in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()}


@pytest.mark.parametrize("then_break", [False, True], ids=["reload", "reload-then-broken-edit"])
def test_replacement_worker_serves_what_the_live_workers_serve(workers_gw, then_break):
    """A worker that dies is replaced by one with the configuration the others
    serve: the one reloaded since start, even when a broken edit followed."""
    gw = workers_gw
    st = gw.config_path.stat()
    text = gw.config_path.read_text().replace("pick:", "kcip:")  # a new alias, and the file keeps its size
    atomic_write(gw.config_path, text)
    os.utime(gw.config_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # invisible to the file watchers: SIGHUP tells
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.output().count(RELOADED) >= 2, 10, "both workers to reload")
    if then_break:
        atomic_write(gw.config_path, text + "\nmodel_aliases: [broken\n")
        wait_for(lambda: gw.output().count(REJECTED) >= 2, 10, "both workers to reject the edit")
    victim = min(_workers(gw))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_workers(gw) - {victim}) == 2, 10, "a replacement worker")
    for _ in range(40):  # each on a new connection: both workers answer some
        with openai_client(gw) as client:
            assert ask(client, "kcip").model
