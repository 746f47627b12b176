"""Observability - Prometheus metrics, the JSON access log, usage and
cost, OTLP traces, and metrics under `--workers N`.

Everything is checked after real SDK traffic (openai and anthropic clients,
max_retries=0) against a gateway started with its own config: an access log
file, tracing to an in-test OTLP/HTTP collector, and a few models with retries
and fallbacks. Numbers are never taken from the gateway's own view: tokens
come from what the fake providers reported (as the client saw them, and as
the fakes' tokenizer predicts from the bytes they received), cost from
rules/prices.yaml.
"""
from __future__ import annotations

import collections
import copy
import datetime
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import GATEWAY_ENV, ROOT, anthropic_client, gateway_config, openai_client, start_gateway
from fakes import token_count
from translate_util import anth_text_stream, oai_text_stream

PRICES = yaml.safe_load((ROOT / "rules" / "prices.yaml").read_text())
CLAUDE = "claude-3-5-sonnet-20241022"
CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
SECRETS = tuple(GATEWAY_ENV.values())
MARKER = "PURPLE-ELEPHANT-7731"  # message content that must not reach the access log
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- an OTLP/HTTP collector ------------------------------------------------------------

class Collector:
    """Accepts POST /v1/traces (OTLP JSON) and records every body."""

    def __init__(self):
        self.posts = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with collector.lock:
                    collector.posts.append({"path": self.path, "content_type": self.headers.get("content-type"),
                                            "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "body": json.loads(raw)})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def spans(self):
        """(resource attributes, span) for every span received."""
        with self.lock:
            posts = list(self.posts)
        out = []
        for post in posts:
            for rs in post["body"]["resourceSpans"]:
                resource = attrs(rs.get("resource", {}))
                for ss in rs["scopeSpans"]:
                    out.extend((resource, span) for span in ss["spans"])
        return out

    def spans_for(self, request_id):
        return [s for _, s in self.spans() if attrs(s).get("arch.request_id") == request_id]

    def wait_span(self, request_id, timeout=6.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.spans_for(request_id)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no span for {request_id} exported within {timeout}s; got "
                             f"{[attrs(s).get('arch.request_id') for _, s in self.spans()]}")


def attrs(obj):
    """OTLP JSON attributes as a plain dict (intValue decoded)."""
    out = {}
    for a in obj.get("attributes", []):
        (kind, value), = a["value"].items()
        out[a["key"]] = int(value) if kind == "intValue" else value
    return out


# -- metrics and access-log helpers -----------------------------------------------------

def scrape(gw):
    """{(sample name, frozenset(labels)): value} from GET /metrics."""
    with _direct.open(gw.url + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def series(m, name, labels):
    """{tuple of the `labels` values: value} for sample `name`."""
    out = collections.Counter()
    for (n, ls), v in m.items():
        if n == name:
            d = dict(ls)
            out[tuple(d.get(label, "") for label in labels)] += v
    return out


def delta(before, after, name, labels):
    """The non-zero changes of sample `name` between two scrapes."""
    a, b = series(after, name, labels), series(before, name, labels)
    return {k: round(a[k] - b.get(k, 0), 9) for k in a if round(a[k] - b.get(k, 0), 9)}


def value(m, name, **labels):
    return sum(v for (n, ls), v in m.items() if n == name and labels.items() <= dict(ls).items())


REQ_LABELS = ("endpoint", "dialect", "alias", "model", "provider", "status")


def cost(model, inp, out, cached=0):
    p = PRICES.get(model)
    if p is None:
        return None
    return ((inp - cached) * p["input"] + cached * p.get("cached_input", p["input"]) + out * p["output"]) / 1e6


class AccessLog:
    def __init__(self, path):
        self.path = Path(path)

    def lines(self):
        if not self.path.exists():
            return []
        text = self.path.read_text()
        complete = text[:text.rfind("\n") + 1]  # a line still being written waits for the next look
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def mark(self):
        return len(self.lines())

    def since(self, mark):
        return self.lines()[mark:]

    def wait(self, *request_ids, timeout=5.0):
        """{request_id: [lines]} once every id has a line."""
        deadline = time.monotonic() + timeout
        while True:
            by_id = collections.defaultdict(list)
            for line in self.lines():
                by_id[line.get("request_id")].append(line)
            if all(r in by_id for r in request_ids):
                return {r: by_id[r] for r in request_ids}
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {[r for r in request_ids if r not in by_id]}")
            time.sleep(0.02)

    def one(self, request_id):
        lines = self.wait(request_id)[request_id]
        assert len(lines) == 1, lines
        return lines[0]


def rid(tag):
    return f"obs-{tag}-{uuid.uuid4().hex[:12]}"


def hdr(request_id, **more):
    return {"x-request-id": request_id, **more}


def msgs(text="Hi"):
    return [{"role": "user", "content": f"{text} {MARKER}"}]


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.httpd.shutdown()
    c.httpd.server_close()


def observe_config(openai_fake, anthropic_fake, ollama_fake, log_path, collector, sampling=100, content=False):
    config = copy.deepcopy(gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url))
    config["llm_providers"].append({"model": "openai/gpt-4.1", "access_key": "$OPENAI_API_KEY",
                                    "base_url": openai_fake.url, "max_retries": 1, "retry_backoff": "10ms"})
    config["model_aliases"]["fallback-model"] = {"target": CLAUDE, "fallbacks": ["gpt-4o-mini"]}
    config["access_log"] = {"file": str(log_path), **({"content": True} if content else {})}
    config["tracing"] = {"random_sampling": sampling, "endpoint": collector.url + "/v1/traces"}
    return config


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("observe")


@pytest.fixture(scope="module")
def gw(openai_fake, anthropic_fake, ollama_fake, collector, log_dir):
    g = start_gateway(observe_config(openai_fake, anthropic_fake, ollama_fake, log_dir / "access.log", collector),
                      env=GATEWAY_ENV)
    g.access = AccessLog(log_dir / "access.log")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def gw_content(openai_fake, anthropic_fake, ollama_fake, collector, log_dir):
    """access_log.content on, random_sampling 0."""
    g = start_gateway(observe_config(openai_fake, anthropic_fake, ollama_fake, log_dir / "content.log", collector,
                                     sampling=0, content=True), env=GATEWAY_ENV)
    g.access = AccessLog(log_dir / "content.log")
    yield g
    g.stop()


@pytest.fixture
def gateway(gw):
    """This module's gateway for conftest's `oai` and `anth` clients."""
    return gw


# -- 1. metrics -------------------------------------------------------------------------

def test_metrics_count_real_traffic(gw, oai, anth, openai_fake, anthropic_fake):
    before = scrape(gw)
    ids = []
    tokens = collections.Counter()  # (model, alias, provider, kind) -> tokens, as the clients saw them

    def used(model, alias, provider, inp, out):
        tokens[(model, alias, provider, "input")] += inp
        tokens[(model, alias, provider, "output")] += out

    # OpenAI client, alias, non-stream
    ids.append(rid("a"))
    r = oai.chat.completions.create(model="fast-model", messages=msgs(), extra_headers=hdr(ids[-1]))
    assert r.usage.prompt_tokens == token_count(openai_fake.last["raw"])
    used("gpt-4o-mini", "fast-model", "openai", r.usage.prompt_tokens, r.usage.completion_tokens)

    # OpenAI client, stream, asked for usage
    ids.append(rid("b"))
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=msgs(), stream=True,
                                              stream_options={"include_usage": True}, extra_headers=hdr(ids[-1])))
    u = chunks[-1].usage
    assert u.prompt_tokens == token_count(openai_fake.last["raw"])
    used("gpt-4o-mini", "", "openai", u.prompt_tokens, u.completion_tokens)

    # Anthropic client, Anthropic model, non-stream and stream
    ids.append(rid("c"))
    m = anth.messages.create(model=CLAUDE, max_tokens=50, messages=msgs(), extra_headers=hdr(ids[-1]))
    assert m.usage.input_tokens == token_count(anthropic_fake.last["raw"])
    used(CLAUDE, "", "anthropic", m.usage.input_tokens, m.usage.output_tokens)
    ids.append(rid("d"))
    with anth.messages.stream(model=CLAUDE, max_tokens=50, messages=msgs(), extra_headers=hdr(ids[-1])) as s:
        assert "".join(s.text_stream) == f"Hello from {CLAUDE}!"
        final = s.get_final_message()
    assert final.usage.input_tokens == token_count(anthropic_fake.last["raw"])
    used(CLAUDE, "", "anthropic", final.usage.input_tokens, final.usage.output_tokens)

    # cross-dialect: OpenAI client -> Claude (alias), Anthropic client -> GPT (alias, stream)
    ids.append(rid("e"))
    r = oai.chat.completions.create(model="reasoning-model", messages=msgs(), extra_headers=hdr(ids[-1]))
    assert r.usage.prompt_tokens == token_count(anthropic_fake.last["raw"])
    used(CLAUDE, "reasoning-model", "anthropic", r.usage.prompt_tokens, r.usage.completion_tokens)
    ids.append(rid("f"))
    with anth.messages.stream(model="smart-model", max_tokens=50, messages=msgs(), extra_headers=hdr(ids[-1])) as s:
        assert "".join(s.text_stream) == "Hello from gpt-4o!"
        final = s.get_final_message()
    assert final.usage.output_tokens == 3
    used("gpt-4o", "smart-model", "openai", token_count(openai_fake.last["raw"]), final.usage.output_tokens)

    # an upstream error (max_retries 0) and unknown models in both dialects
    openai_fake.enqueue(500, json={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    ids.append(rid("g"))
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=msgs(), extra_headers=hdr(ids[-1]))
    ids.append(rid("h"))
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=msgs(), extra_headers=hdr(ids[-1]))
    ids.append(rid("i"))
    with pytest.raises(anthropic.NotFoundError):
        anth.messages.create(model="no-such-model", max_tokens=5, messages=msgs(), extra_headers=hdr(ids[-1]))

    gw.access.wait(*ids)  # each request is fully accounted for (its log line comes after its metrics)
    after = scrape(gw)

    assert delta(before, after, "arch_requests_total", REQ_LABELS) == {
        (CHAT, "openai", "fast-model", "gpt-4o-mini", "openai", "200"): 1,
        (CHAT, "openai", "", "gpt-4o-mini", "openai", "200"): 1,
        (MESSAGES, "anthropic", "", CLAUDE, "anthropic", "200"): 2,
        (CHAT, "openai", "reasoning-model", CLAUDE, "anthropic", "200"): 1,
        (MESSAGES, "anthropic", "smart-model", "gpt-4o", "openai", "200"): 1,
        (CHAT, "openai", "", "gpt-4o-mini", "openai", "500"): 1,
        (CHAT, "openai", "", "", "", "404"): 1,
        (MESSAGES, "anthropic", "", "", "", "404"): 1,
    }
    assert delta(before, after, "arch_tokens_total", ("model", "alias", "provider", "kind")) == dict(tokens)
    costs = collections.Counter()
    for (model, alias, provider, kind), n in tokens.items():
        costs[(model, alias, provider)] += n * PRICES[model][kind] / 1e6
    got = delta(before, after, "arch_cost_usd_total", ("model", "alias", "provider"))
    assert got.keys() == costs.keys()
    for k, usd in costs.items():
        assert got[k] == pytest.approx(usd, rel=1e-6), k

    assert delta(before, after, "arch_request_duration_seconds_count",
                 ("endpoint", "dialect", "model", "provider", "stream")) == {
        (CHAT, "openai", "gpt-4o-mini", "openai", "false"): 2,
        (CHAT, "openai", "gpt-4o-mini", "openai", "true"): 1,
        (MESSAGES, "anthropic", CLAUDE, "anthropic", "false"): 1,
        (MESSAGES, "anthropic", CLAUDE, "anthropic", "true"): 1,
        (CHAT, "openai", CLAUDE, "anthropic", "false"): 1,
        (MESSAGES, "anthropic", "gpt-4o", "openai", "true"): 1,
        (CHAT, "openai", "", "", "false"): 1,
        (MESSAGES, "anthropic", "", "", "false"): 1,
    }
    # the +Inf bucket holds every observation; the sum moved
    assert value(after, "arch_request_duration_seconds_bucket", le="+Inf") == \
        value(after, "arch_request_duration_seconds_count")
    assert value(after, "arch_request_duration_seconds_sum") > value(before, "arch_request_duration_seconds_sum")
    assert delta(before, after, "arch_time_to_first_token_seconds_count", ("dialect", "model", "provider", "stream")) == {
        ("openai", "gpt-4o-mini", "openai", "true"): 1,
        ("anthropic", CLAUDE, "anthropic", "true"): 1,
        ("anthropic", "gpt-4o", "openai", "true"): 1,
    }
    assert delta(before, after, "arch_upstream_duration_seconds_count", ("provider", "model")) == {
        ("openai", "gpt-4o-mini"): 3, ("anthropic", CLAUDE): 3, ("openai", "gpt-4o"): 1}
    assert delta(before, after, "arch_upstream_errors_total", ("provider", "model", "type")) == {
        ("openai", "gpt-4o-mini", "http_500"): 1}
    assert delta(before, after, "arch_retries_total", ("provider", "model")) == {}
    assert delta(before, after, "arch_fallbacks_total", ("from_model", "to_model")) == {}
    assert value(after, "arch_inflight_requests") == 0
    assert value(after, "arch_inflight_streams") == 0


def test_metrics_and_log_count_retries_and_fallbacks(gw, oai, openai_fake, anthropic_fake):
    before = scrape(gw)
    # gpt-4.1 has max_retries 1: a 500, then the answer
    openai_fake.enqueue(500, json={"error": {"message": "flaky", "type": "server_error", "param": None, "code": None}})
    retried = rid("retry")
    r = oai.chat.completions.create(model="gpt-4.1", messages=msgs(), extra_headers=hdr(retried))
    assert r.choices[0].message.content == "Hello from gpt-4.1!"
    assert len(openai_fake.requests) == 2
    # fallback-model: Claude (max_retries 0) is overloaded, gpt-4o-mini answers
    anthropic_fake.enqueue(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    fell = rid("fallback")
    raw = oai.chat.completions.with_raw_response.create(model="fallback-model", messages=msgs(),
                                                        extra_headers=hdr(fell))
    r2 = raw.parse()
    assert raw.headers["x-arch-upstream-model"] == "gpt-4o-mini"
    assert r2.choices[0].message.content == "Hello from gpt-4o-mini!"

    lines = gw.access.wait(retried, fell)
    after = scrape(gw)
    assert delta(before, after, "arch_retries_total", ("provider", "model")) == {("openai", "gpt-4.1"): 1}
    assert delta(before, after, "arch_fallbacks_total", ("from_model", "to_model")) == {(CLAUDE, "gpt-4o-mini"): 1}
    assert delta(before, after, "arch_upstream_errors_total", ("provider", "model", "type")) == {
        ("openai", "gpt-4.1", "http_500"): 1, ("anthropic", CLAUDE, "http_529"): 1}
    assert delta(before, after, "arch_upstream_duration_seconds_count", ("provider", "model")) == {
        ("openai", "gpt-4.1"): 2, ("anthropic", CLAUDE): 1, ("openai", "gpt-4o-mini"): 1}
    assert delta(before, after, "arch_requests_total", REQ_LABELS) == {
        (CHAT, "openai", "", "gpt-4.1", "openai", "200"): 1,
        (CHAT, "openai", "fallback-model", "gpt-4o-mini", "openai", "200"): 1}
    assert delta(before, after, "arch_tokens_total", ("model", "alias", "kind")) == {
        ("gpt-4.1", "", "input"): r.usage.prompt_tokens, ("gpt-4.1", "", "output"): 3,
        ("gpt-4o-mini", "fallback-model", "input"): r2.usage.prompt_tokens, ("gpt-4o-mini", "fallback-model", "output"): 3}

    (line,) = lines[retried]
    assert (line["retries"], line["fallback_from"], line["model"], line["status"]) == (1, None, "gpt-4.1", 200)
    (line,) = lines[fell]
    assert (line["retries"], line["fallback_from"], line["model"], line["provider"], line["alias"], line["status"]) \
        == (0, CLAUDE, "gpt-4o-mini", "openai", "fallback-model", 200)
    assert line["input_tokens"] == r2.usage.prompt_tokens


def _slow_openai_stream(model="gpt-4o-mini"):
    head = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1, "model": model}
    frames = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {"content": "slow"}, "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}]
    return "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"


def test_inflight_gauges_follow_a_stream(gw, oai, openai_fake):
    openai_fake.enqueue(sse=_slow_openai_stream(), delay=0.4)
    got = {}

    def run():
        got["text"] = "".join(c.choices[0].delta.content or "" for c in
                              oai.chat.completions.create(model="gpt-4o-mini", messages=msgs(), stream=True)
                              if c.choices)

    t = threading.Thread(target=run)
    t.start()
    try:
        during = wait_until(lambda: (m := scrape(gw)) and value(m, "arch_inflight_streams") == 1 and m,
                            what="a stream in flight")
        assert value(during, "arch_inflight_requests") == 1
    finally:
        t.join(10)
    assert got["text"] == "slow"
    after = wait_until(lambda: (m := scrape(gw)) and value(m, "arch_inflight_requests") == 0 and m,
                       what="nothing in flight")
    assert value(after, "arch_inflight_streams") == 0


def test_config_reloads_are_counted(gw, oai):
    path = gw.config_path
    original = path.read_text()
    start = scrape(gw)
    ok0 = value(start, "arch_config_reloads_total", result="success")
    bad0 = value(start, "arch_config_reloads_total", result="failure")
    edited = yaml.safe_load(original)
    edited["model_aliases"]["observed-alias"] = {"target": "gpt-4o-mini"}
    try:
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        wait_until(lambda: value(scrape(gw), "arch_config_reloads_total", result="success") == ok0 + 1,
                   what="a counted successful reload")
        r = oai.chat.completions.create(model="observed-alias", messages=msgs())
        assert r.model == "gpt-4o-mini"
        path.write_text(original + "\nllm_providers: [\n")  # broken YAML
        wait_until(lambda: value(scrape(gw), "arch_config_reloads_total", result="failure") == bad0 + 1,
                   what="a counted failed reload")
    finally:
        path.write_text(original)
    wait_until(lambda: value(scrape(gw), "arch_config_reloads_total", result="success") == ok0 + 2,
               what="the restored config reloaded")
    assert value(scrape(gw), "arch_config_reloads_total", result="failure") == bad0 + 1


# -- 2. access log ----------------------------------------------------------------------

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = {"time", "request_id", "endpoint", "dialect", "requested_model", "alias", "provider", "model", "status",
          "stream", "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "retries",
          "fallback_from", "bytes_in", "bytes_out", "client"}


def test_access_log_one_line_per_chat_request(gw, oai, anth, openai_fake, anthropic_fake):
    mark = gw.access.mark()
    t0 = time.time()

    # a client-sent request id is kept, returned and sent upstream
    mine = rid("client")
    raw = oai.chat.completions.with_raw_response.create(model="fast-model", messages=msgs(),
                                                        extra_headers=hdr(mine))
    r = raw.parse()
    assert raw.headers["x-request-id"] == mine
    assert openai_fake.last["headers"]["x-request-id"] == mine
    line = gw.access.one(mine)
    assert FIELDS <= line.keys()
    assert TIME.match(line["time"]), line["time"]
    logged = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert t0 - 1 <= logged.timestamp() <= time.time()
    assert {k: line[k] for k in ("endpoint", "dialect", "requested_model", "alias", "provider", "model", "status",
                                 "stream", "ttft_ms", "retries", "fallback_from", "client")} == {
        "endpoint": CHAT, "dialect": "openai", "requested_model": "fast-model", "alias": "fast-model",
        "provider": "openai", "model": "gpt-4o-mini", "status": 200, "stream": False, "ttft_ms": None,
        "retries": 0, "fallback_from": None, "client": "127.0.0.1"}
    assert (line["input_tokens"], line["output_tokens"], line["cached_tokens"]) == (
        r.usage.prompt_tokens, r.usage.completion_tokens, 0)
    assert line["cost_usd"] == pytest.approx(cost("gpt-4o-mini", r.usage.prompt_tokens, r.usage.completion_tokens),
                                             abs=1e-8)
    assert line["bytes_in"] == len(raw.http_request.content)
    assert line["bytes_out"] == len(raw.http_response.content)
    assert 0 < line["latency_ms"] < (time.time() - t0) * 1000 + 1

    # no id sent: the gateway makes one, returns it in both headers, sends it upstream and logs it
    raw = anth.messages.with_raw_response.create(model=CLAUDE, max_tokens=20, messages=msgs())
    m = raw.parse()
    made = raw.headers["x-request-id"]
    assert made and raw.headers["request-id"] == made
    assert anthropic_fake.last["headers"]["x-request-id"] == made
    line = gw.access.one(made)
    assert (line["endpoint"], line["dialect"], line["model"], line["provider"], line["alias"]) == (
        MESSAGES, "anthropic", CLAUDE, "anthropic", None)
    assert (line["input_tokens"], line["output_tokens"]) == (m.usage.input_tokens, m.usage.output_tokens)
    assert line["cost_usd"] == pytest.approx(cost(CLAUDE, m.usage.input_tokens, m.usage.output_tokens), abs=1e-8)

    # a cross-dialect stream: TTFT, stream flag, tokens the provider reported
    streamed = rid("stream")
    with oai.chat.completions.with_streaming_response.create(model=CLAUDE, messages=msgs(), stream=True,
                                                             extra_headers=hdr(streamed)) as resp:
        body = b"".join(resp.iter_bytes())
    assert b"data: [DONE]" in body
    line = gw.access.one(streamed)
    assert line["stream"] is True and line["status"] == 200
    assert line["ttft_ms"] is not None and 0 < line["ttft_ms"] <= line["latency_ms"]
    assert (line["input_tokens"], line["output_tokens"]) == (token_count(anthropic_fake.last["raw"]), 3)
    assert line["bytes_out"] == len(body)

    # errors get their line too
    missing = rid("404")
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=msgs(), extra_headers=hdr(missing))
    line = gw.access.one(missing)
    assert (line["status"], line["requested_model"], line["model"], line["provider"], line["input_tokens"],
            line["cost_usd"]) == (404, "no-such-model", None, None, None, None)

    # other endpoints write no access line
    for path in ("/metrics", "/v1/models", "/healthz", "/v1/usage"):
        with _direct.open(gw.url + path, timeout=5) as resp:
            assert resp.status == 200

    # exactly one line per chat request, and nothing secret in the file
    time.sleep(0.2)
    new = gw.access.since(mark)
    assert sorted(line["request_id"] for line in new) == sorted([mine, made, streamed, missing])
    text = gw.access.path.read_text()
    for secret in SECRETS:
        assert secret not in text
    assert MARKER not in text
    assert "content" not in json.loads(text.splitlines()[-1])


def test_access_log_names_the_requested_model_of_a_refused_request(gw, openai_fake):
    mine = rid("bad")
    long_name = "m" * 5000
    for model, logged in (("gpt-4o-mini", "gpt-4o-mini"), (long_name, long_name[:200])):
        request_id = f"{mine}-{len(model)}"
        req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST", headers={
            "content-type": "application/json", "x-request-id": request_id},
            data=json.dumps({"model": model, "messages": "not a list"}).encode())
        with pytest.raises(urllib.error.HTTPError) as info:
            _direct.open(req, timeout=5)
        assert info.value.code == 400
        line = gw.access.one(request_id)
        assert (line["status"], line["requested_model"]) == (400, logged)
    assert openai_fake.requests == []


def test_access_log_content_option_logs_the_body(gw_content, openai_fake):
    with openai_client(gw_content) as client:
        mine = rid("content")
        raw = client.chat.completions.with_raw_response.create(model="fast-model", messages=msgs(),
                                                               extra_headers=hdr(mine))
        raw.parse()
    line = gw_content.access.one(mine)
    assert json.loads(line["content"]) == json.loads(raw.http_request.content)
    assert MARKER in line["content"]
    text = gw_content.access.path.read_text()
    for secret in SECRETS:
        assert secret not in text


# -- 3. usage in streams ----------------------------------------------------------------

def _stream(oai, request_id, model="gpt-4o-mini", **kw):
    return list(oai.chat.completions.create(model=model, messages=msgs(), stream=True,
                                            extra_headers=hdr(request_id), **kw))


def test_openai_stream_usage_is_asked_upstream_and_not_passed_on(gw, oai, openai_fake, ollama_fake):
    before = scrape(gw)
    expected = collections.Counter()
    for fake, model, provider, options in ((openai_fake, "gpt-4o-mini", "openai", None),
                                           (openai_fake, "gpt-4o-mini", "openai", {"include_usage": False}),
                                           (ollama_fake, "llama3.1", "ollama", None)):
        request_id = rid("strip")
        kw = {"stream_options": options} if options is not None else {}
        chunks = _stream(oai, request_id, model, **kw)
        sent = fake.last
        assert sent["body"]["stream_options"]["include_usage"] is True
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Hello from {model}!"
        assert all(c.choices for c in chunks), "the usage chunk the client did not ask for was passed on"
        assert all(c.usage is None for c in chunks)
        line = gw.access.one(request_id)
        inp = token_count(sent["raw"])
        assert (line["input_tokens"], line["output_tokens"], line["cached_tokens"]) == (inp, 3, 0)
        expected[(model, provider, "input")] += inp
        expected[(model, provider, "output")] += 3
        if PRICES.get(model):
            assert line["cost_usd"] == pytest.approx(cost(model, inp, 3), abs=1e-8)
        else:
            assert line["cost_usd"] is None
    # asked: the client gets its usage chunk, the same numbers are counted
    request_id = rid("asked")
    chunks = _stream(oai, request_id, stream_options={"include_usage": True})
    assert openai_fake.last["body"]["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == token_count(openai_fake.last["raw"])
    assert [c for c in chunks if not c.choices] == [chunks[-1]]
    line = gw.access.one(request_id)
    assert (line["input_tokens"], line["output_tokens"]) == (chunks[-1].usage.prompt_tokens, 3)
    expected[("gpt-4o-mini", "openai", "input")] += chunks[-1].usage.prompt_tokens
    expected[("gpt-4o-mini", "openai", "output")] += 3
    after = scrape(gw)
    assert delta(before, after, "arch_tokens_total", ("model", "provider", "kind")) == dict(expected)


def test_anthropic_and_cross_dialect_streams_count_tokens(gw, oai, anth, openai_fake, anthropic_fake):
    before = scrape(gw)
    # Anthropic passthrough
    passthrough = rid("anth-stream")
    with anth.messages.stream(model=CLAUDE, max_tokens=50, messages=msgs(), extra_headers=hdr(passthrough)) as s:
        final = s.get_final_message()
    claude_in = token_count(anthropic_fake.last["raw"])
    assert (final.usage.input_tokens, final.usage.output_tokens) == (claude_in, 3)
    # Anthropic client -> GPT: the gateway asks for usage, the client sees it in message_delta
    to_gpt = rid("anth-gpt")
    with anth.messages.stream(model="gpt-4o-mini", max_tokens=50, messages=msgs(), extra_headers=hdr(to_gpt)) as s:
        final = s.get_final_message()
    assert openai_fake.last["body"]["stream_options"]["include_usage"] is True
    gpt_in = token_count(openai_fake.last["raw"])
    assert final.usage.output_tokens == 3
    # OpenAI client -> Claude, not asking for usage: no usage chunk, tokens still counted
    to_claude = rid("oai-claude")
    chunks = _stream(oai, to_claude, CLAUDE)
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    claude_in2 = token_count(anthropic_fake.last["raw"])

    lines = gw.access.wait(passthrough, to_gpt, to_claude)
    assert [(lines[r][0]["input_tokens"], lines[r][0]["output_tokens"]) for r in (passthrough, to_gpt, to_claude)] \
        == [(claude_in, 3), (gpt_in, 3), (claude_in2, 3)]
    assert lines[to_gpt][0]["cost_usd"] == pytest.approx(cost("gpt-4o-mini", gpt_in, 3), abs=1e-8)
    after = scrape(gw)
    assert delta(before, after, "arch_tokens_total", ("model", "kind")) == {
        (CLAUDE, "input"): claude_in + claude_in2, (CLAUDE, "output"): 6,
        ("gpt-4o-mini", "input"): gpt_in, ("gpt-4o-mini", "output"): 3}


def test_stream_usage_split_across_network_reads_is_counted(gw, oai, anth, openai_fake, anthropic_fake):
    """A provider's usage event may arrive in two TCP reads; it still counts."""
    events = [
        {"type": "message_start", "message": {"id": "msg_split", "type": "message", "role": "assistant", "model": CLAUDE,
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 321, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "split"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 17}},
        {"type": "message_stop"},
    ]
    frames = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    cut = frames[4].index(b'"output_tokens"') + 5
    anthropic_fake.enqueue(chunks=[*frames[:4], frames[4][:cut], frames[4][cut:], frames[5]], delay=0.05)
    passthrough = rid("split-anth")
    with anth.messages.stream(model=CLAUDE, max_tokens=50, messages=msgs(), extra_headers=hdr(passthrough)) as s:
        assert s.get_final_message().usage.output_tokens == 17

    sse = _slow_openai_stream().encode()
    cut = sse.index(b'"prompt_tokens"') + 4
    openai_fake.enqueue(chunks=[sse[:cut], sse[cut:]], delay=0.05)
    asked = rid("split-oai")
    chunks = _stream(oai, asked, stream_options={"include_usage": True})
    assert chunks[-1].usage.prompt_tokens == 11

    lines = gw.access.wait(passthrough, asked)
    assert (lines[passthrough][0]["input_tokens"], lines[passthrough][0]["output_tokens"]) == (321, 17)
    assert (lines[asked][0]["input_tokens"], lines[asked][0]["output_tokens"]) == (11, 1)


# -- 4. GET /v1/usage -------------------------------------------------------------------

def usage(gw):
    with _direct.open(gw.url + "/v1/usage", timeout=5) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_usage_endpoint_matches_metrics(gw, oai, anth):
    before = usage(gw)
    r = oai.chat.completions.create(model="fast-model", messages=msgs())
    m = anth.messages.create(model="reasoning-model", max_tokens=20, messages=msgs())
    time.sleep(0.05)
    after = usage(gw)
    metrics = scrape(gw)

    def row(summary, model, alias):
        found = [x for x in summary["data"] if (x["model"], x["alias"]) == (model, alias)]
        assert len(found) <= 1
        return found[0] if found else {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost_usd": 0.0}

    for model, alias, inp, out in (("gpt-4o-mini", "fast-model", r.usage.prompt_tokens, r.usage.completion_tokens),
                                   (CLAUDE, "reasoning-model", m.usage.input_tokens, m.usage.output_tokens)):
        a, b = row(after, model, alias), row(before, model, alias)
        assert (a["input_tokens"] - b["input_tokens"], a["output_tokens"] - b["output_tokens"]) == (inp, out)
        assert a["cost_usd"] - b["cost_usd"] == pytest.approx(cost(model, inp, out), abs=2e-8)

    # every row is what the counters say, and the total is the sum of the rows
    assert after["object"] == "usage" and after["data"]
    tokens = series(metrics, "arch_tokens_total", ("model", "alias", "provider", "kind"))
    costs = series(metrics, "arch_cost_usd_total", ("model", "alias", "provider"))
    for x in after["data"]:
        key = (x["model"], x["alias"] or "", x["provider"])
        for kind in ("input", "output", "cached"):
            assert x[f"{kind}_tokens"] == tokens.get((*key, kind), 0), (x, kind)
        assert x["cost_usd"] == pytest.approx(costs.get(key, 0), abs=1e-8)
    assert {(m_, a or "", p) for m_, a, p, _ in tokens} == {(x["model"], x["alias"] or "", x["provider"])
                                                            for x in after["data"]}
    for k in ("input_tokens", "output_tokens", "cached_tokens"):
        assert after["total"][k] == sum(x[k] for x in after["data"])
    assert after["total"]["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in after["data"]), abs=1e-7)


# -- 5. tracing -------------------------------------------------------------------------

def test_span_per_request_with_incoming_traceparent(gw, oai, openai_fake, collector):
    trace, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    mine = rid("traced")
    r = oai.chat.completions.create(model="fast-model", messages=msgs(),
                                    extra_headers=hdr(mine, traceparent=f"00-{trace}-{parent}-01"))
    sent = openai_fake.last["headers"]
    (span,) = collector.wait_span(mine)
    assert span["traceId"] == trace and span["parentSpanId"] == parent
    assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"]) and span["spanId"] != parent
    assert sent["traceparent"] == f"00-{trace}-{span['spanId']}-01"
    assert span["name"] == "chat fast-model" and span["kind"] == 2
    a = attrs(span)
    assert {k: a.get(k) for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                                  "gen_ai.response.model", "gen_ai.usage.input_tokens",
                                  "gen_ai.usage.output_tokens", "arch.request_id", "arch.alias", "arch.route")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "fast-model",
        "gen_ai.response.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": r.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": r.usage.completion_tokens, "arch.request_id": mine,
        "arch.alias": "fast-model", "arch.route": "-> openai/gpt-4o-mini"}  # the routing decision, as in x-arch-route
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
    post = next(p for p in collector.posts if any(
        s["spanId"] == span["spanId"] for rs in p["body"]["resourceSpans"] for ss in rs["scopeSpans"]
        for s in ss["spans"]))
    assert post["path"] == "/v1/traces" and post["content_type"].startswith("application/json")


def test_sampled_stream_span_and_upstream_traceparent(gw, anth, anthropic_fake, collector):
    mine = rid("sampled")
    with anth.messages.stream(model=CLAUDE, max_tokens=50, messages=msgs(), extra_headers=hdr(mine)) as s:
        final = s.get_final_message()
    sent = anthropic_fake.last["headers"]
    (span,) = collector.wait_span(mine)
    assert "parentSpanId" not in span or not span["parentSpanId"]
    assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"])
    assert sent["traceparent"] == f"00-{span['traceId']}-{span['spanId']}-01"
    a = attrs(span)
    assert span["name"] == f"chat {CLAUDE}" and span["kind"] == 2
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"],
            a["gen_ai.response.model"]) == ("chat", "anthropic", CLAUDE, CLAUDE)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        final.usage.input_tokens, final.usage.output_tokens)
    assert a["gen_ai.request.stream"] is True


def test_unsampled_traceparent_exports_nothing(gw, oai, openai_fake, collector):
    trace = uuid.uuid4().hex
    skipped = rid("unsampled")
    oai.chat.completions.create(model="fast-model", messages=msgs(),
                                extra_headers=hdr(skipped, traceparent=f"00-{trace}-{'ab' * 8}-00"))
    assert openai_fake.last["headers"]["traceparent"].split("-")[1] == trace  # the decision travels on
    assert openai_fake.last["headers"]["traceparent"].endswith("-00")
    later = rid("later")
    oai.chat.completions.create(model="fast-model", messages=msgs(), extra_headers=hdr(later))
    collector.wait_span(later)  # exported after (or with) anything the first request would have produced
    assert collector.spans_for(skipped) == []
    assert not [s for _, s in collector.spans() if s["traceId"] == trace]


def test_random_sampling_zero_exports_only_sampled_traceparents(gw_content, openai_fake, collector):
    with openai_client(gw_content) as client:
        skipped = [rid("zero") for _ in range(3)]
        for r in skipped:
            client.chat.completions.create(model="fast-model", messages=msgs(), extra_headers=hdr(r))
            assert "traceparent" not in openai_fake.last["headers"]
        trace = uuid.uuid4().hex
        sampled = rid("zero-sampled")
        client.chat.completions.create(model="fast-model", messages=msgs(),
                                       extra_headers=hdr(sampled, traceparent=f"00-{trace}-{'cd' * 8}-01"))
    (span,) = collector.wait_span(sampled)
    assert span["traceId"] == trace
    for r in skipped:
        assert collector.spans_for(r) == []


# -- 6. --workers 2 ----------------------------------------------------------------------

def test_tracing_off_passes_traceparent_through(openai_fake, anthropic_fake, ollama_fake, collector):
    """No `tracing:` section: no span is made (none exported, even to $OTEL_EXPORTER_OTLP_ENDPOINT), and the
    provider gets the client's traceparent as it came, not a parent id that no collector will ever see."""
    gw3 = start_gateway(gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url),
                        env={**GATEWAY_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
    try:
        incoming = f"00-{uuid.uuid4().hex}-{'ef' * 8}-01"
        with openai_client(gw3, "k") as client:
            client.chat.completions.create(model="fast-model", messages=msgs(),
                                           extra_headers={"traceparent": incoming})
        assert openai_fake.last["headers"]["traceparent"] == incoming
    finally:
        gw3.stop()


def test_standard_otel_exporter_variables(openai_fake, anthropic_fake, ollama_fake, collector):
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["tracing"] = {"random_sampling": 100}  # no endpoint: the environment says where
    gw3 = start_gateway(config, env={
        **GATEWAY_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # the traces-specific one wins
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/custom/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20collector-token,x-tenant=acme",
        "OTEL_SERVICE_NAME": "edge-gateway",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=overridden"})
    try:
        mine = rid("otel-env")
        with openai_client(gw3, "k") as client:
            client.chat.completions.create(model="fast-model", messages=msgs(), extra_headers=hdr(mine))
        collector.wait_span(mine)
        post = next(p for p in collector.posts if any(
            attrs(span).get("arch.request_id") == mine
            for rs in p["body"]["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]))
        assert post["path"] == "/custom/traces"
        assert post["headers"]["authorization"] == "Bearer collector-token"
        assert post["headers"]["x-tenant"] == "acme"
        resource = attrs(post["body"]["resourceSpans"][0]["resource"])
        assert resource == {"service.name": "edge-gateway", "deployment.environment": "test"}
        assert "collector-token" not in gw3.output()
    finally:
        gw3.stop()


def test_metrics_are_summed_over_workers(openai_fake, anthropic_fake, ollama_fake, collector, tmp_path):
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    config = gateway_config(openai_fake.url, anthropic_fake.url, ollama_fake.url)
    config["tracing"] = {"random_sampling": 100, "endpoint": collector.url + "/v1/traces"}
    gw2 = start_gateway(config, env={**GATEWAY_ENV, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
                        extra_args=["--workers", "2"])
    try:
        fresh = httpx2.Limits(max_keepalive_connections=0)  # a new connection, so any worker, per request
        inp = out = 0
        ids = []
        with openai_client(gw2, "k", http_client=httpx2.Client(limits=fresh)) as oai2, \
                anthropic_client(gw2, "k", http_client=httpx2.Client(limits=fresh)) as anth2:
            for _ in range(20):
                ids += [rid("w-oai"), rid("w-anth")]
                r = oai2.chat.completions.create(model="fast-model", messages=msgs(), extra_headers=hdr(ids[-2]))
                m = anth2.messages.create(model=CLAUDE, max_tokens=20, messages=msgs(), extra_headers=hdr(ids[-1]))
                inp += r.usage.prompt_tokens + m.usage.input_tokens
                out += r.usage.completion_tokens + m.usage.output_tokens
        pids = {p.name.split("_")[-1] for p in multiproc.glob("counter_*.db")}
        assert len(pids) >= 2, f"one worker served everything: {sorted(multiproc.iterdir())}"

        wait_until(lambda: value(scrape(gw2), "arch_requests_total") == 40, what="40 requests counted")
        for _ in range(6):  # each scrape on a fresh connection, to whichever worker
            m = scrape(gw2)
            assert series(m, "arch_requests_total", REQ_LABELS) == {
                (CHAT, "openai", "fast-model", "gpt-4o-mini", "openai", "200"): 20,
                (MESSAGES, "anthropic", "", CLAUDE, "anthropic", "200"): 20}
            assert value(m, "arch_request_duration_seconds_count") == 40
            assert value(m, "arch_tokens_total", kind="input") == inp
            assert value(m, "arch_inflight_requests") == 0
            total = usage(gw2)["total"]
            assert (total["input_tokens"], total["output_tokens"]) == (inp, out)
        # every worker exports its spans, and none of them died along the way
        wait_until(lambda: all(collector.spans_for(r) for r in ids), what="a span for each of the 40 requests")
        assert not re.search(r"exited|Traceback", gw2.output()), gw2.output()[-3000:]
    finally:
        gw2.stop()


# -- streams the rules end ----------------------------------------------------------------

@pytest.mark.parametrize("model", [CLAUDE, "gpt-4o-mini"])
def test_a_stream_the_rules_end_is_a_200_even_if_the_provider_lingers(gw, oai, anthropic_fake, openai_fake, model):
    """The provider keeps its connection open after its last event; the openai SDK hangs
    up right after [DONE]. The client's response was complete: logged and counted as 200,
    and the provider's connection is closed, not left open."""
    fake = anthropic_fake if model == CLAUDE else openai_fake
    fake.enqueue(sse=anth_text_stream(["Hello", " there"]) if model == CLAUDE else oai_text_stream(["Hello", " there"]),
                 linger=True)
    before = scrape(gw)
    mine = rid("linger")
    stream = oai.chat.completions.create(model=model, messages=msgs(), stream=True, extra_headers=hdr(mine))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello there"
    line = gw.access.one(mine)
    assert line["status"] == 200 and line["error"] is None
    assert delta(before, scrape(gw), "arch_requests_total", ("model", "status")) == {(model, "200"): 1}
    wait_until(lambda: fake.disconnects, what="the lingering provider connection closed")
