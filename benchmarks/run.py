#!/usr/bin/env python
"""Measure the latency and throughput the gateway adds, against a bare Tornado pass-through.

    python benchmarks/run.py [--quick] [--litellm] [--duration 10] [--out FILE]

Starts nginx (canned chat completion / Anthropic message), a Python SSE server
for streams, the bare pass-through (benchmarks/passthrough.py) and the gateway
(`python -m arch up <config>`), optionally LiteLLM's proxy; drives them with wrk
(non-stream and stream) and an in-process stream client (TTFT, 1,000 concurrent
streams); prints markdown tables with ratios against the pass-through measured
in the same run, and writes the numbers as JSON. Everything binds 127.0.0.1 and
every child is killed on the way out. See benchmarks/README.md.
"""

import argparse
import asyncio
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
import urllib.parse
import urllib.request
from pathlib import Path

from routing_micro import routing_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LITELLM_VERSION = "1.93.0"  # pinned; never 1.82.7 / 1.82.8
LITELLM_VENV = HERE / ".venv-litellm"

SYSTEM_TEXT = "You are a helpful assistant that answers briefly."
CANNED_OPENAI = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1727346142, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content":
                 "It is sunny and 18 degrees Celsius in San Francisco today, with a light breeze.",
                 "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 31, "completion_tokens": 19, "total_tokens": 50},
    "system_fingerprint": "fp_bench"}
CANNED_ANTHROPIC = {
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20241022",
    "content": [{"type": "text", "text":
                 "It is sunny and 18 degrees Celsius in San Francisco today, with a light breeze."}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 31, "output_tokens": 19}}

CANNED_RESPONSE = {
    "id": "resp_bench", "object": "response", "created_at": 1741476542, "status": "completed", "error": None,
    "incomplete_details": None, "instructions": SYSTEM_TEXT, "max_output_tokens": 256, "model": "gpt-4o-mini-2024-07-18",
    "output": [{"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant", "content": [
        {"type": "output_text", "text": "It is sunny and 18 degrees Celsius in San Francisco today, with a light breeze.",
         "annotations": [], "logprobs": []}]}],
    "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
    "store": False, "temperature": 0.7, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
    "top_p": 1.0, "truncation": "disabled", "usage": {"input_tokens": 31, "input_tokens_details": {"cached_tokens": 0},
                                                      "output_tokens": 19, "output_tokens_details": {"reasoning_tokens": 0},
                                                      "total_tokens": 50}, "user": None, "metadata": {}}

QUESTION = "What is the weather like in San Francisco today? Answer in one sentence."
SYSTEM = SYSTEM_TEXT


def openai_body(model, stream=False):
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "temperature": 0.7, "max_tokens": 256}
    return {**body, "stream": True} if stream else body


def anthropic_body(model, stream=False):
    body = {"model": model, "max_tokens": 256, "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}]}
    return {**body, "stream": True} if stream else body


def responses_body(model, stream=False):
    """A Responses request; store false: measured is the translation, not the state store."""
    body = {"model": model, "instructions": SYSTEM, "input": QUESTION, "temperature": 0.7, "max_output_tokens": 256,
            "store": False}
    return {**body, "stream": True} if stream else body


OPENAI_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-client"}
ANTHROPIC_HEADERS = {"Content-Type": "application/json", "x-api-key": "sk-client", "anthropic-version": "2023-06-01"}
OAI, ANT, RESP = "/v1/chat/completions", "/v1/messages", "/v1/responses"


# --------------------------------------------------------------------------- processes

class Procs:
    """Children in their own process groups, logs in the temp dir, all killed by stop()."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, argv, **kw):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        p.name, p.log = name, self.tmp / f"{name}.log"
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            except ProcessLookupError:
                pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def log_tail(p, n=15):
    try:
        return "\n".join(p.log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(p, url, timeout):
    """None when url answers 200 within timeout, else the reason."""
    end = time.time() + timeout
    while time.time() < end:
        if p.poll() is not None:
            return f"exited with code {p.returncode}:\n{log_tail(p)}"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.1)
    return f"no 200 from {url} within {timeout:g} s:\n{log_tail(p)}"


def descendants(pid):
    out = []
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            for c in open(f).read().split():
                out += [int(c)] + descendants(int(c))
        except OSError:
            pass
    return out


def rss_mb(pid):
    """VmRSS of pid and all its descendants, in MB."""
    kb = 0
    for p in [pid] + descendants(pid):
        try:
            kb += next(int(line.split()[1]) for line in open(f"/proc/{p}/status") if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return kb / 1024


def cpu_seconds(pid):
    """utime + stime of one process, in seconds."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(p):
    """CPU seconds of a process and its workers."""
    return sum(cpu_seconds(pid) for pid in [p.pid, *descendants(p.pid)])


def worker_shares(pid, run):
    """Run `run()` and return (its result, each worker's share of the CPU the workers used)."""
    workers = descendants(pid) or [pid]
    before = {w: cpu_seconds(w) for w in workers}
    result = run()
    used = {w: cpu_seconds(w) - before[w] for w in workers}
    total = sum(used.values()) or 1
    return result, sorted((round(u / total, 3) for u in used.values()), reverse=True)


def raise_fd_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ensure_tool(binary, packages):
    if shutil.which(binary):
        return shutil.which(binary)
    print(f"# {binary} missing: apt-get install -y {' or '.join(packages)}", file=sys.stderr)
    for update in (False, True):
        if update:
            subprocess.run(["apt-get", "update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        for pkg in packages:
            r = subprocess.run(["apt-get", "install", "-y", pkg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if r.returncode == 0 and shutil.which(binary):
                return shutil.which(binary)
    sys.exit(f"could not install {binary} ({', '.join(packages)})")


def nginx_escape(obj):
    return json.dumps(obj, separators=(",", ":")).replace("\\", "\\\\").replace("'", "\\'").replace("$", "\\$")


def start_nginx(procs, tmp, port):
    nginx = ensure_tool("nginx", ["nginx-light", "nginx"])
    d = tmp / "nginx"
    d.mkdir()
    temps = "\n".join(f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
{temps}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location = {OAI} {{ return 200 '{nginx_escape(CANNED_OPENAI)}'; }}
    location = {ANT} {{ return 200 '{nginx_escape(CANNED_ANTHROPIC)}'; }}
    location = {RESP} {{ return 200 '{nginx_escape(CANNED_RESPONSE)}'; }}
    location = /healthz {{ return 200 'ok'; }}
  }}
}}
""")
    return procs.start("nginx", [nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")])


# --------------------------------------------------------------------------- wrk

WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d," ..
    "\\"socket_errors\\":%d,\\"status_errors\\":%d}}\\n",
    s.requests, s.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def wrk(tmp, url, body, headers, conns, threads, duration):
    """Run wrk; returns requests, rps, p50/p99 in ms, errors."""
    script = tmp / "wrk.lua"
    hdrs = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(WRK_LUA.format(body=json.dumps(body), headers=hdrs))
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk gave no result:\n{out}")
    r = json.loads(m.group(1))
    return {"requests": r["requests"], "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000,
            "errors": r["socket_errors"] + r["status_errors"]}


def probe(url, body, headers, expect):
    """None if one request gets a 200 in the expected shape, else why not."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:300]!r}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if expect not in data:
        return f"response lacks {expect!r}: {data[:300]!r}"
    return None


# --------------------------------------------------------------------------- streams

async def stream_one(client, url, body, headers, timeout):
    t0 = time.perf_counter()
    state = {"first": None, "last": None, "gap": 0.0, "tail": b""}
    chunks = []

    def on_chunk(chunk):
        now = time.perf_counter()
        if state["first"] is None and b'"tok' in state["tail"] + chunk:
            state["first"] = now
        if state["last"] is not None:
            state["gap"] = max(state["gap"], now - state["last"])
        state["last"], state["tail"] = now, chunk[-8:]
        chunks.append(chunk)

    try:
        resp = await client.fetch(url, method="POST", body=json.dumps(body), headers=headers, raise_error=False,
                                  streaming_callback=on_chunk, request_timeout=timeout, connect_timeout=timeout)
        code, error = resp.code, resp.error
    except Exception as e:  # noqa: BLE001 - any failure is an incomplete stream
        code, error = 599, e
    end = time.perf_counter()
    return {"code": code, "error": f"{type(error).__name__}: {error}"[:100] if error else None, "tokens": in_order(chunks),
            "ttft": (state["first"] - t0) if state["first"] else None, "gap": state["gap"], "total": end - t0}


def in_order(chunks):
    """How many tokens arrived, each first seen in order (tok0, tok1, ...); -1 if out of order.
    Counted once each: a Responses stream repeats the text in its closing events."""
    seen = list(dict.fromkeys(re.findall(rb"tok(\d+)", b"".join(chunks))))
    return len(seen) if seen == [b"%d" % i for i in range(len(seen))] else -1


def listen_overflows():
    """TcpExt ListenOverflows: connections dropped because an accept queue (listen backlog) was full."""
    lines = [line.split() for line in open("/proc/net/netstat") if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1]))["ListenOverflows"])


def pct(values, p):
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else None


async def stream_bench(url, body, headers, n, concurrency, tokens, stall_s, timeout):
    from tornado.httpclient import AsyncHTTPClient
    client = AsyncHTTPClient(force_instance=True, max_clients=concurrency + 10)
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            return await stream_one(client, url, body, headers, timeout)

    t0, overflows = time.perf_counter(), listen_overflows()
    results = await asyncio.gather(*(one() for _ in range(n)))
    wall, overflows = time.perf_counter() - t0, listen_overflows() - overflows
    client.close()
    complete = [r for r in results if r["code"] == 200 and r["tokens"] == tokens]
    stalled = [r for r in results if r not in complete or r["gap"] > stall_s]
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    errors = Counter(r["error"] for r in results if r["error"])
    return {"streams": n, "concurrency": concurrency, "completed": len(complete), "stalled": len(stalled),
            "codes": sorted({r["code"] for r in results}), "errors": errors.most_common(3), "listen_overflows": overflows,
            "ttft_p50_ms": ms(pct([r["ttft"] for r in results], 50)), "ttft_p99_ms": ms(pct([r["ttft"] for r in results], 99)),
            "max_gap_ms": ms(max(r["gap"] for r in results)), "total_p50_ms": ms(pct([r["total"] for r in results], 50)),
            "total_p99_ms": ms(pct([r["total"] for r in results], 99)), "wall_s": wall}


def run_streams(*args):
    try:
        import uvloop
    except ImportError:
        uvloop = None
    return (uvloop.run if uvloop else asyncio.run)(stream_bench(*args))


def sse_control(port, tokens, delay_ms):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_control?tokens={tokens}&delay_ms={delay_ms}",
                                 data=b"", method="POST")
    urllib.request.urlopen(req, timeout=5).read()


# --------------------------------------------------------------------------- servers under test

def gateway_config(port, nginx, sse):
    routed, _, deployments = routing_config(f"http://127.0.0.1:{nginx}").partition("extra_providers:\n")
    return f"""version: v0.1.0
listeners:
  egress_traffic: {{address: 127.0.0.1, port: {port}, message_format: openai, timeout: 30s}}
llm_providers:
  - model: openai/gpt-4o-mini
    access_key: sk-bench
    base_url: http://127.0.0.1:{nginx}
  - model: anthropic/claude-3-5-sonnet-20241022
    access_key: sk-bench
    base_url: http://127.0.0.1:{nginx}
  - model: chatcompat/gpt-4o-mini     # the same nginx, reached as an OpenAI-compatible chat server
    name: chat-mini
    provider_interface: openai
    access_key: sk-bench
    base_url: http://127.0.0.1:{nginx}
  - model: openai/stream-model
    access_key: sk-bench
    base_url: http://127.0.0.1:{sse}
  - model: anthropic/claude-stream
    access_key: sk-bench
    base_url: http://127.0.0.1:{sse}
  - model: chatcompat/stream-model    # the SSE server reached as an OpenAI-compatible chat server
    name: chat-stream
    provider_interface: openai
    access_key: sk-bench
    base_url: http://127.0.0.1:{sse}
{deployments}{routed}"""


def keys_config(port, nginx, sse, redis_url, prefix):
    """The gateway config plus a gateway key (the benchmark's client key) with request and
    token limits no run reaches, kept in Redis: the whole admission path, never refusing."""
    return gateway_config(port, nginx, sse) + f"""gateway_keys:
  - name: bench
    key: sk-client
    limits: {{requests_per_minute: 1000000000, tokens_per_minute: 1000000000000}}
admin_key: bench-admin-key
state: {{redis: "{redis_url}", prefix: {prefix}}}
"""


def redis_answers(url):
    u = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def litellm_config(nginx, sse):
    entries = [("gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{nginx}/v1"),
               ("claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet-20241022", f"http://127.0.0.1:{nginx}"),
               ("stream-model", "openai/stream-model", f"http://127.0.0.1:{sse}/v1"),
               ("claude-stream", "anthropic/claude-stream", f"http://127.0.0.1:{sse}")]
    lines = ["model_list:"]
    for name, model, base in entries:
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: {model}",
                  f"      api_base: {base}", "      api_key: sk-bench"]
    return "\n".join(lines + ["litellm_settings:", "  telemetry: false", "  set_verbose: false", ""])


def ensure_litellm():
    exe = LITELLM_VENV / "bin" / "litellm"
    py = LITELLM_VENV / "bin" / "python"
    if exe.exists():
        r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True)
        if r.stdout.strip() == LITELLM_VERSION:
            return exe
    print(f"# installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        sys.exit(f"pip install litellm[proxy]=={LITELLM_VERSION} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return exe


# --------------------------------------------------------------------------- report

def f(v, fmt="{:.2f}"):
    return "—" if v is None else fmt.format(v)


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def report(res, args):
    lines = [f"## Gateway overhead — {res['machine']}", "",
             f"wrk, nginx, SSE server, proxy and stream client share {os.cpu_count()} cores; "
             f"{res['duration']} s per wrk run, median of {args.rounds} round(s); reference = {res['reference']}.", "",
             "### Non-streaming", ""]
    ref = res["rows"].get(res["reference"], {})
    rows = []
    for name, r in res["rows"].items():
        if "skipped" in r:
            rows.append([name] + ["—"] * 7 + [f"skipped: {r['skipped']}"])
            continue
        lat, thr = r["lat"], r["thr"]
        ratio_lat = (r["added_p50_ms"] / ref["added_p50_ms"]) if r.get("added_p50_ms") is not None and ref.get("added_p50_ms") else None
        ratio_rps = thr["rps"] / ref["thr"]["rps"] if ref.get("thr") and name.startswith(("pass", "gateway", "litellm")) else None
        errs = lat["errors"] + thr["errors"]
        rows.append([name, f(lat["p50_ms"], "{:.3f}"), f(r.get("added_p50_ms"), "{:.3f}"), f(lat["p99_ms"], "{:.3f}"),
                     f(thr["rps"], "{:,.0f}"), f(ratio_lat, "{:.2f}x"), f(ratio_rps, "{:.2f}x"), f(r.get("rss_mb"), "{:.0f}"),
                     f"{errs} errors" if errs else ""])
    lines.append(table(["target", "p50 @1c ms", "added p50 ms", "p99 @1c ms", "req/s @64c", "added p50 vs ref",
                        "req/s vs ref", "RSS MB", "notes"], rows))

    if res.get("streams"):
        s = res["streams"]
        lines += ["", "### Streaming", "",
                  f"TTFT: {s['ttft_n']} sequential streams ({s['ttft_tokens']} tokens, {s['ttft_delay_ms']:g} ms apart); "
                  f"streams/s: wrk 64c, {s['wrk_tokens']} tokens, no delay; concurrency: {s['concurrent']} streams at once, "
                  f"{s['tokens']} tokens {s['delay_ms']:g} ms apart (ideal {s['tokens'] * s['delay_ms'] / 1000:g} s), "
                  f"stalled = incomplete or a gap > {s['stall_s']:g} s.", ""]
        sref = s["rows"].get(res["reference"], {})
        rows = []
        for name, r in s["rows"].items():
            if "skipped" in r:
                rows.append([name] + ["—"] * 11 + [f"skipped: {r['skipped']}"])
                continue
            t, c, w = r["ttft"], r["conc"], r["wrk"]
            rows.append([name, f(t["ttft_p50_ms"], "{:.3f}"), f(r.get("added_ttft_ms"), "{:.3f}"), f(t["ttft_p99_ms"], "{:.3f}"),
                         f(w["rps"], "{:,.0f}"), f(w["rps"] / sref["wrk"]["rps"] if sref.get("wrk") and not name.startswith("direct") else None, "{:.2f}x"),
                         f(r.get("cpu_ms_per_stream"), "{:.3f}"),
                         f"{c['completed']}/{c['streams']}", c["stalled"],
                         f"{f(c['ttft_p50_ms'], '{:.0f}')} / {f(c['ttft_p99_ms'], '{:.0f}')}",
                         f"{f(c['total_p50_ms'], '{:.0f}')} / {f(c['total_p99_ms'], '{:.0f}')}", f(r.get("rss_mb"), "{:.0f}"),
                         "; ".join(x for x in (f"{w['errors']} wrk errors" if w["errors"] else "",
                                               f"{c['listen_overflows']} listen overflows" if c["listen_overflows"] else "",
                                               *(f"{k}× {e}" for e, k in c["errors"])) if x)])
        lines.append(table(["target", "TTFT p50 ms", "added TTFT ms", "TTFT p99 ms", "streams/s @64c", "vs ref",
                            "CPU ms per stream", f"{s['concurrent']} streams done", "stalled", "loaded TTFT p50/p99 ms",
                            "stream time p50/p99 ms", "RSS MB", "notes"], rows))

    if res.get("rss_after"):
        lines += ["", "### RSS after requests", ""]
        lines.append(table(["target", "requests", "RSS before MB", "RSS after MB"],
                           [[k, f"{v['requests']:,}", f(v["before"], "{:.1f}"), f(v["after"], "{:.1f}")]
                            for k, v in res["rss_after"].items()]))
    if res.get("workers"):
        lines += workers_report(res)
    lines += ["", "### Targets (gateway vs reference, same run)", ""] + [f"- {t}" for t in targets(res)]
    return "\n".join(lines)


def targets(res):
    rows, ref = res["rows"], res["rows"].get(res["reference"], {})
    same, cross = rows.get("gateway OpenAI→OpenAI", {}), rows.get("gateway OpenAI→Anthropic (cross)", {})
    if "lat" not in same or "lat" not in ref:
        return ["gateway not measured"]
    out = []
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    r = same["added_p50_ms"] / ref["added_p50_ms"] if ref["added_p50_ms"] > 0 else float("inf")
    out.append(f"added p50 @1c within 1.3x of reference: {r:.2f}x — {ok(r <= 1.3)}")
    r = same["thr"]["rps"] / ref["thr"]["rps"]
    out.append(f"req/s @64c at least 80% of reference: {r:.0%} — {ok(r >= 0.8)}")
    if "thr" in cross:
        r = cross["thr"]["rps"] / same["thr"]["rps"]
        out.append(f"cross-dialect at least 50% of same-dialect req/s: {r:.0%} — {ok(r >= 0.5)}")
    st = res.get("streams", {}).get("rows", {}).get("gateway OpenAI→OpenAI", {})
    if "conc" in st:
        c = st["conc"]
        out.append(f"{c['streams']} concurrent streams, none stalled: {c['completed']} done, {c['stalled']} stalled — "
                   f"{ok(c['stalled'] == 0 and c['completed'] == c['streams'])}")
        out.append(f"added TTFT under 1 ms at low load: {st['added_ttft_ms']:.3f} ms — {ok(st['added_ttft_ms'] < 1)}")
    srows = res.get("streams", {}).get("rows", {})
    sref = srows.get(res["reference"], {}).get("wrk", {}).get("rps")
    for names, least in ((["gateway OpenAI→OpenAI", "gateway Anthropic→Anthropic"], 0.9),
                         (["gateway OpenAI→Anthropic (cross)", "gateway Anthropic→OpenAI (cross)"], 0.7),
                         (["gateway Responses→chat (cross)", "gateway Responses→Anthropic (cross)"], 0.7)):
        got = [(n, srows[n]["wrk"]["rps"] / sref) for n in names if sref and "wrk" in srows.get(n, {})]
        if got:
            out.append(f"streams/s @64c at least {least:.0%} of reference: "
                       f"{', '.join(f'{n[8:]} {r:.0%}' for n, r in got)} — {ok(all(r >= least for _, r in got))}")
    w = res.get("workers", {})
    one = w.get("one_streams", srows.get("gateway OpenAI→OpenAI", {}).get("wrk", {})).get("rps")
    if "thr" in w and one:
        req, streams = w["thr"]["rps"] / w.get("one_thr", same["thr"])["rps"], w["wrk_streams"]["rps"] / one
        out.append(f"--workers {w['n']}: requests/s and streams/s at least 1.8x one process: {req:.2f}x and "
                   f"{streams:.2f}x — {ok(req >= 1.8 and streams >= 1.8)}")
    big = w.get("big", {}).get("rows", {})
    gw_big, ref_big = big.get(f"gateway --workers {w.get('n')}"), big.get("reference")
    if gw_big and ref_big and ref_big.get("total_p99_ms"):
        r = gw_big["total_p99_ms"] / ref_big["total_p99_ms"]
        out.append(f"{gw_big['streams']:,} concurrent streams through --workers {w['n']}: {gw_big['completed']:,} done, "
                   f"{gw_big['stalled']} stalled, stream time p99 {r:.2f}x the reference's (at most 1.5x) — "
                   f"{ok(gw_big['completed'] == gw_big['streams'] and not gw_big['stalled'] and r <= 1.5)}")
    keyed = rows.get("gateway+keys+limits (Redis) OpenAI→OpenAI", {})
    if "lat" in keyed:
        extra = keyed["lat"]["p50_ms"] - same["lat"]["p50_ms"]
        out.append(f"keys + limits in Redis add at most 0.15 ms p50: {extra:.3f} ms — {ok(extra <= 0.15)}")
        r = keyed["thr"]["rps"] / same["thr"]["rps"]
        out.append(f"keys + limits in Redis keep at least 75% of req/s: {r:.0%} — {ok(r >= 0.75)}")
    if "rss_mb" in same:
        gw = res.get("rss_after", {}).get("gateway", {})
        rss, n = (gw["after"], gw["requests"]) if gw else (same["rss_mb"], None)
        note = f"after {n:,} requests" if n else "after this run (use --requests-rss 100000 for the target)"
        out.append(f"RSS under 64 MB {note}: {rss:.1f} MB — {ok(rss < 64)}")
    return out


def start_gateway(procs, args, tmp, name, nginx_port, sse_port, extra=(), config=gateway_config):
    """(base url, process) of a gateway with the benchmark config (or `config(port, nginx, sse)`), or (None, reason)."""
    port = free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(config(port, nginx_port, sse_port))
    p = procs.start(name, shlex.split(args.gateway_cmd.format(config=cfg)) + list(extra), cwd=ROOT)
    why = wait_healthy(p, f"http://127.0.0.1:{port}/healthz", args.gateway_wait)
    if why:
        procs.stop(p)
        return None, why
    return f"http://127.0.0.1:{port}", p


def big_streams(url, p, n, tokens, delay_ms, stall_s):
    """n concurrent streams through url; RSS of p (and its workers) before and while they are all open."""
    import threading
    body = openai_body("stream-model", stream=True)
    before, during = rss_mb(p.pid), []
    # sampled half-way through, when every stream is open and waiting for its next token
    timer = threading.Timer(tokens * delay_ms / 2000, lambda: during.append(rss_mb(p.pid)))
    timer.start()
    r = run_streams(url + OAI, body, OPENAI_HEADERS, n, n, tokens, stall_s, 60 + 3 * tokens * delay_ms / 1000)
    timer.cancel()
    r["rss_before_mb"], r["rss_open_mb"] = before, (during or [None])[0]
    if during:
        r["kb_per_open_stream"] = (during[0] - before) * 1024 / n
    return r


def scaling(tmp, one, many, pid, rounds, dur):
    """req/s @64c of one process (url `one`) and of the workers (`many`, process `pid`), measured in
    turn `rounds` times so that other load on the machine falls on both alike (medians):
    ({"rps": one}, {"rps": workers}, each worker's CPU share)."""
    body = openai_body("gpt-4o-mini")
    wrk(tmp, many + OAI, body, OPENAI_HEADERS, 64, 2, 1)  # warm-up
    ones, manys, shares = [], [], []
    for _ in range(rounds):
        ones.append(wrk(tmp, one + OAI, body, OPENAI_HEADERS, 64, 2, dur)["rps"])
        r, s = worker_shares(pid, lambda: wrk(tmp, many + OAI, body, OPENAI_HEADERS, 64, 2, dur))
        manys.append(r["rps"])
        shares.append(s)
    return ({"rps": statistics.median(ones)}, {"rps": statistics.median(manys)},
            shares[manys.index(statistics.median_high(manys))])


def workers_run(res, args, procs, tmp, nginx_port, sse_port, dur, single, keyed_single=None, keys_prefix=None):
    """The gateway with --workers N against the one-process gateway at `single`, measured in turn
    (`scaling`; streams/s just before), each worker's share of the work, and the big stream run;
    with `keyed_single` (the keys rows ran) the same with keys and limits in Redis."""
    n = args.workers
    url, p = start_gateway(procs, args, tmp, "gateway-workers", nginx_port, sse_port, ["--workers", str(n)])
    w = res["workers"] = {"n": n}
    if url is None:
        w["skipped"] = p
        return
    print(f"# gateway --workers {n}: wrk 64c requests (in turn with one process, {args.rounds} rounds) and streams",
          file=sys.stderr)
    w["one_thr"], w["thr"], w["req_shares"] = scaling(tmp, single, url, p.pid, args.rounds, dur)
    if keyed_single:
        kurl, kp = start_gateway(procs, args, tmp, "gateway-workers-keys", nginx_port, sse_port, ["--workers", str(n)],
                                 config=lambda port, ng, s: keys_config(port, ng, s, args.redis, keys_prefix))
        if kurl is not None:
            print(f"# gateway --workers {n} + keys + limits (Redis): wrk 64c requests", file=sys.stderr)
            w["one_keys_thr"], w["keys_thr"], w["req_shares_keys"] = scaling(tmp, keyed_single, kurl, kp.pid,
                                                                             args.rounds, dur)
            procs.stop(kp)
    sse_control(sse_port, 20, 0)
    sbody = openai_body("stream-model", stream=True)
    w["one_streams"] = wrk(tmp, single + OAI, sbody, OPENAI_HEADERS, 64, 2, dur)
    w["wrk_streams"], w["stream_shares"] = worker_shares(
        p.pid, lambda: wrk(tmp, url + OAI, sbody, OPENAI_HEADERS, 64, 2, dur))
    if not args.big_streams:
        return
    # the reference gets a client pool as large as the load, so both queue nothing
    port = free_port()
    ref = procs.start("passthrough-big", [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
                                          "--upstream", f"http://127.0.0.1:{nginx_port}",
                                          "--stream-upstream", f"http://127.0.0.1:{sse_port}",
                                          "--max-clients", str(args.big_streams + 100)])
    if why := wait_healthy(ref, f"http://127.0.0.1:{port}/healthz", 30):
        w["big"] = {"skipped": why}
        return
    sse_control(sse_port, args.big_tokens, args.big_delay_ms)
    w["big"] = {"streams": args.big_streams, "tokens": args.big_tokens, "delay_ms": args.big_delay_ms, "rows": {}}
    for name, u, proc in (("reference", f"http://127.0.0.1:{port}", ref), (f"gateway --workers {n}", url, p)):
        print(f"# {name}: {args.big_streams:,} concurrent streams", file=sys.stderr)
        w["big"]["rows"][name] = big_streams(u, proc, args.big_streams, args.big_tokens, args.big_delay_ms,
                                             args.stall_s)
    procs.stop(ref)


def workers_report(res):
    w = res["workers"]
    if "skipped" in w:
        return ["", f"### --workers {w['n']}: skipped ({w['skipped'].splitlines()[0]})"]
    srows = res.get("streams", {}).get("rows", {}).get("gateway OpenAI→OpenAI", {})
    one_sps = w.get("one_streams", srows.get("wrk", {})).get("rps")
    share = lambda xs: " / ".join(f"{x:.0%}" for x in xs)  # noqa: E731
    lines = ["", f"### --workers {w['n']} (OpenAI→OpenAI)", "",
             table(["", "one process", f"--workers {w['n']}", "scaling", "CPU share per worker"],
                   [["req/s @64c", f(w["one_thr"]["rps"], "{:,.0f}"), f(w["thr"]["rps"], "{:,.0f}"),
                     f(w["thr"]["rps"] / w["one_thr"]["rps"], "{:.2f}x"), share(w["req_shares"])],
                    *([["req/s @64c, keys + limits in Redis", f(w["one_keys_thr"]["rps"], "{:,.0f}"),
                        f(w["keys_thr"]["rps"], "{:,.0f}"), f(w["keys_thr"]["rps"] / w["one_keys_thr"]["rps"], "{:.2f}x"),
                        share(w["req_shares_keys"])]] if "keys_thr" in w else []),
                    ["streams/s @64c", f(one_sps, "{:,.0f}"), f(w["wrk_streams"]["rps"], "{:,.0f}"),
                     f(w["wrk_streams"]["rps"] / one_sps if one_sps else None, "{:.2f}x"), share(w["stream_shares"])]])]
    big = w.get("big")
    if big and "rows" in big:
        lines += ["", f"{big['streams']:,} concurrent streams, {big['tokens']} tokens {big['delay_ms']:g} ms apart "
                      f"(ideal {big['tokens'] * big['delay_ms'] / 1000:g} s):", ""]
        lines.append(table(["target", "done", "stalled", "TTFT p50/p99 ms", "stream time p50/p99 ms",
                            "RSS before / all open MB", "KB per open stream", "notes"],
                           [[name, f"{r['completed']:,}/{r['streams']:,}", r["stalled"],
                             f"{f(r['ttft_p50_ms'], '{:.0f}')} / {f(r['ttft_p99_ms'], '{:.0f}')}",
                             f"{f(r['total_p50_ms'], '{:.0f}')} / {f(r['total_p99_ms'], '{:.0f}')}",
                             f"{f(r['rss_before_mb'], '{:.0f}')} / {f(r['rss_open_mb'], '{:.0f}')}",
                             f(r.get("kb_per_open_stream"), "{:.1f}"),
                             "; ".join(x for x in (f"{r['listen_overflows']} listen overflows" if r["listen_overflows"] else "",
                                                   *(f"{k}× {e}" for e, k in r["errors"])) if x)]
                            for name, r in big["rows"].items()]))
    elif big:
        lines += ["", f"big stream run skipped: {big['skipped'].splitlines()[0]}"]
    return lines


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s runs, fewer streams: a smoke run")
    ap.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--litellm", action="store_true", help=f"also run LiteLLM proxy {LITELLM_VERSION} (own venv)")
    ap.add_argument("--out", help="JSON results file (default benchmarks/results/<time>.json)")
    ap.add_argument("--refs", default="auto",
                    help="pass-through variants CLIENT+LOOP, comma-separated, first is the reference; "
                         "'auto' = curl+uvloop when importable; 'all' = curl+uvloop,simple+asyncio")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every non-streaming target N times, interleaved, and keep the median (noisy machine)")
    ap.add_argument("--no-gateway", action="store_true")
    ap.add_argument("--no-streams", action="store_true")
    ap.add_argument("--no-keys", action="store_true", help="skip the gateway with keys and limits in Redis")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the keys+limits rows")
    ap.add_argument("--gateway-cmd", default=f"{sys.executable} -m arch up {{config}}",
                    help="command that starts the gateway ({config} = config path; default: python -m arch up)")
    ap.add_argument("--gateway-wait", type=float, default=10, help="seconds for /healthz to answer (default 10)")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    ap.add_argument("--stream-tokens", type=int, default=20)
    ap.add_argument("--stream-delay-ms", type=float, default=50)
    ap.add_argument("--stall-s", type=float, default=5, help="inter-chunk gap that counts as a stall")
    ap.add_argument("--workers", type=int, default=2, metavar="N",
                    help="also run the gateway with --workers N: req/s, streams/s and each worker's share (0: skip)")
    ap.add_argument("--big-streams", type=int, default=10000, metavar="N",
                    help="N concurrent streams through the --workers gateway and the reference (default 10000; 0: skip)")
    ap.add_argument("--big-tokens", type=int, default=10)
    ap.add_argument("--big-delay-ms", type=float, default=1000)
    ap.add_argument("--requests-rss", type=int, default=0, metavar="N",
                    help="finally send N requests to the reference and gateway and report RSS before/after")
    args = ap.parse_args()
    if args.quick:
        args.duration = 3
        args.big_streams = min(args.big_streams, 2000)
    raise_fd_limit()  # the stream client holds one socket per concurrent stream
    dur = max(1, round(args.duration))
    ttft_n = 30 if args.quick else 200
    refs = {"all": "curl+uvloop,simple+asyncio", "auto": "auto+auto"}.get(args.refs, args.refs).split(",")

    ensure_tool("wrk", ["wrk"])
    tmp = Path(tempfile.mkdtemp(prefix="archbench-"))
    procs = Procs(tmp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = {"machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
           "duration": dur, "rows": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        nginx_port, sse_port = free_port(), free_port()
        nginx = start_nginx(procs, tmp, nginx_port)
        sse = procs.start("sse", [sys.executable, str(HERE / "sse_server.py"), "--port", str(sse_port)])
        for p, port in ((nginx, nginx_port), (sse, sse_port)):
            if why := wait_healthy(p, f"http://127.0.0.1:{port}/healthz", 10):
                sys.exit(f"{p.name} did not start: {why}")

        # name -> (base url, pid or None); every target gets the non-stream and stream rows below.
        servers = {}
        for i, variant in enumerate(refs):
            client, loop = variant.split("+")
            port = free_port()
            p = procs.start(f"passthrough-{i}", [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
                                                 "--upstream", f"http://127.0.0.1:{nginx_port}",
                                                 "--stream-upstream", f"http://127.0.0.1:{sse_port}",
                                                 "--client", client, "--loop", loop])
            if why := wait_healthy(p, f"http://127.0.0.1:{port}/healthz", 10):
                sys.exit(f"pass-through did not start: {why}")
            actual = re.search(r"client=(\w+) loop=(\w+)", p.log.read_text()).groups()
            servers[f"pass-through {actual[0]}+{actual[1]}"] = (f"http://127.0.0.1:{port}", p)
        res["reference"] = next(iter(servers))

        gateway = None
        if not args.no_gateway:
            url, p = start_gateway(procs, args, tmp, "gateway", nginx_port, sse_port)
            if url is None:
                print(f"# gateway skipped: `{args.gateway_cmd}` {p}", file=sys.stderr)
                res["gateway_skipped"] = p
            else:
                gateway = (url, p)
        keyed = None  # the same gateway with a key and limits checked in Redis on every request
        redis_prefix = f"archbench-{os.getpid()}"
        if not args.no_gateway and not args.no_keys:
            if not redis_answers(args.redis):
                res["gateway+keys+limits (Redis)_skipped"] = f"no Redis answers at {args.redis}"
            else:
                url, p = start_gateway(procs, args, tmp, "gateway-keys", nginx_port, sse_port, config=lambda port, n, s:
                                       keys_config(port, n, s, args.redis, redis_prefix))
                if url is None:
                    res["gateway+keys+limits (Redis)_skipped"] = p
                else:
                    keyed = (url, p)
        litellm = None
        if args.litellm:
            exe = ensure_litellm()
            port = free_port()
            cfg = tmp / "litellm.yaml"
            cfg.write_text(litellm_config(nginx_port, sse_port))
            env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                   "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"}
            p = procs.start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                                        "--num_workers", "1"], env=env, cwd=tmp)
            why = wait_healthy(p, f"http://127.0.0.1:{port}/health/liveliness", 120)
            if why:
                print(f"# litellm skipped: {why}", file=sys.stderr)
                res["litellm_skipped"] = why
            else:
                litellm = (f"http://127.0.0.1:{port}", p)

        nginx_url = f"http://127.0.0.1:{nginx_port}"
        sse_url = f"http://127.0.0.1:{sse_port}"
        # (row name, base url, process, client path, body fn, headers, model, stream model, direct row, expect)
        rows = [("direct nginx (OpenAI)", nginx_url, None, OAI, openai_body, OPENAI_HEADERS, "gpt-4o-mini", "stream-model", None),
                ("direct nginx (Anthropic)", nginx_url, None, ANT, anthropic_body, ANTHROPIC_HEADERS,
                 "claude-3-5-sonnet-20241022", "claude-stream", None)]
        rows += [(name, url, p, OAI, openai_body, OPENAI_HEADERS, "gpt-4o-mini", "stream-model", "direct nginx (OpenAI)")
                 for name, (url, p) in servers.items()]
        for label, srv in (("gateway", gateway), ("litellm", litellm)):
            if srv:
                url, p = srv
                rows += [(f"{label} OpenAI→OpenAI", url, p, OAI, openai_body, OPENAI_HEADERS, "gpt-4o-mini",
                          "stream-model", "direct nginx (OpenAI)"),
                         (f"{label} Anthropic→Anthropic", url, p, ANT, anthropic_body, ANTHROPIC_HEADERS,
                          "claude-3-5-sonnet-20241022", "claude-stream", "direct nginx (Anthropic)"),
                         (f"{label} OpenAI→Anthropic (cross)", url, p, OAI, openai_body, OPENAI_HEADERS,
                          "claude-3-5-sonnet-20241022", "claude-stream", "direct nginx (Anthropic)"),
                         (f"{label} Anthropic→OpenAI (cross)", url, p, ANT, anthropic_body, ANTHROPIC_HEADERS,
                          "gpt-4o-mini", "stream-model", "direct nginx (OpenAI)")]
                if label == "gateway":  # Responses: passed through to OpenAI, translated to chat and to Anthropic
                    rows += [("gateway Responses→OpenAI", url, p, RESP, responses_body, OPENAI_HEADERS, "gpt-4o-mini",
                              "stream-model", "direct nginx (OpenAI)"),
                             ("gateway Responses→chat (cross)", url, p, RESP, responses_body, OPENAI_HEADERS, "chat-mini",
                              "chat-stream", "direct nginx (OpenAI)"),
                             ("gateway Responses→Anthropic (cross)", url, p, RESP, responses_body, OPENAI_HEADERS,
                              "claude-3-5-sonnet-20241022", "claude-stream", "direct nginx (Anthropic)")]
                    # 20 routing rules evaluated, then 1 of 4 deployments chosen
                    rows.append(("gateway OpenAI→OpenAI, 20 rules + 4 balanced deployments", url, p, OAI,
                                 openai_body, OPENAI_HEADERS, "routed", "stream-model", "direct nginx (OpenAI)"))
            elif res.get(f"{label}_skipped"):
                rows.append((label, None) + (None,) * 7)  # a "skipped" row in its place
        label = "gateway+keys+limits (Redis)"
        if keyed:  # non-streaming only (no stream model)
            url, p = keyed
            rows += [(f"{label} OpenAI→OpenAI", url, p, OAI, openai_body, OPENAI_HEADERS, "gpt-4o-mini",
                      None, "direct nginx (OpenAI)"),
                     (f"{label} Anthropic→Anthropic", url, p, ANT, anthropic_body, ANTHROPIC_HEADERS,
                      "claude-3-5-sonnet-20241022", None, "direct nginx (Anthropic)")]
        elif res.get(f"{label}_skipped"):
            rows.append((label, None) + (None,) * 7)

        # ---- non-streaming: wrk at 1 connection (latency) and 64 connections (throughput);
        # with --rounds N every target is measured N times, interleaved, and the median kept.
        live = []
        for row in rows:
            name, url, p, path, body_fn, headers, model = row[:7]
            if url is None:
                res["rows"][name] = {"skipped": "did not become healthy: " + res[f"{name}_skipped"].splitlines()[0]}
            elif why := probe(url + path, body_fn(model), headers,
                              {OAI: b"chat.completion", ANT: b'"message"', RESP: b'"response"'}[path]):
                print(f"# {name} skipped: {why}", file=sys.stderr)
                res["rows"][name] = {"skipped": why.splitlines()[0][:120]}
            else:
                live.append(row)
                res["rows"][name] = {"runs": []}
        for i in range(args.rounds):
            for name, url, p, path, body_fn, headers, model, _, direct in live:
                print(f"# {name}: wrk 1c + 64c, {dur} s each (round {i + 1}/{args.rounds})", file=sys.stderr)
                body = body_fn(model)
                wrk(tmp, url + path, body, headers, 8, 1, 1)  # warm-up
                res["rows"][name]["runs"].append({"lat": wrk(tmp, url + path, body, headers, 1, 1, dur),
                                                  "thr": wrk(tmp, url + path, body, headers, 64, 2, dur)})
        for name, url, p, path, body_fn, headers, model, _, direct in live:
            r = res["rows"][name]
            r["lat"], r["thr"] = ({k: statistics.median(run[kind][k] for run in r["runs"]) for k in r["runs"][0][kind]}
                                  for kind in ("lat", "thr"))
            if direct and "lat" in res["rows"].get(direct, {}):
                r["added_p50_ms"] = r["lat"]["p50_ms"] - res["rows"][direct]["lat"]["p50_ms"]
                r["added_p99_ms"] = r["lat"]["p99_ms"] - res["rows"][direct]["lat"]["p99_ms"]
            if p:
                r["rss_mb"] = rss_mb(p.pid)

        # ---- RSS after N requests (the gateway target is 100,000)
        if args.requests_rss:
            res["rss_after"] = {}
            rss_targets = [(res["reference"],) + servers[res["reference"]]]
            if gateway:
                rss_targets.append(("gateway",) + gateway)
            if litellm:
                rss_targets.append(("litellm",) + litellm)
            for name, url, p in rss_targets:
                print(f"# {name}: {args.requests_rss:,} requests for RSS", file=sys.stderr)
                before, sent, errors, chunk = rss_mb(p.pid), 0, 0, 2
                while sent < args.requests_rss:  # wrk has no request count: short runs sized by the last rate
                    w = wrk(tmp, url + OAI, openai_body("gpt-4o-mini"), OPENAI_HEADERS, 64, 2, chunk)
                    sent, errors = sent + w["requests"], errors + w["errors"]
                    chunk = min(10, max(1, round((args.requests_rss - sent) / max(w["rps"], 1))))
                res["rss_after"][name] = {"requests": sent, "before": before, "after": rss_mb(p.pid), "errors": errors}

        # ---- streaming: sequential TTFT, wrk streams/s, N concurrent streams
        if not args.no_streams:
            s = res["streams"] = {"ttft_n": ttft_n, "ttft_tokens": 5, "ttft_delay_ms": 5, "wrk_tokens": 20,
                                  "concurrent": args.streams, "tokens": args.stream_tokens,
                                  "delay_ms": args.stream_delay_ms, "stall_s": args.stall_s, "rows": {}}
            srows = [("direct SSE (OpenAI)", sse_url, None, OAI, openai_body, OPENAI_HEADERS, "gpt-4o-mini", None),
                     ("direct SSE (Anthropic)", sse_url, None, ANT, anthropic_body, ANTHROPIC_HEADERS, "claude", None)]
            srows += [(name, url, p, path, fn, h, smodel, "direct SSE (OpenAI)" if direct.endswith("(OpenAI)") else "direct SSE (Anthropic)")
                      for name, url, p, path, fn, h, _, smodel, direct in rows if direct and smodel]
            timeout = 30 + 3 * args.stream_tokens * args.stream_delay_ms / 1000
            for name, url, p, path, fn, h, model, direct in srows:
                if "skipped" in res["rows"].get(name, {}):
                    s["rows"][name] = res["rows"][name]
                    continue
                print(f"# {name}: streams", file=sys.stderr)
                body = fn(model, stream=True)
                sse_control(sse_port, s["ttft_tokens"], s["ttft_delay_ms"])
                r = {"ttft": run_streams(url + path, body, h, ttft_n, 1, s["ttft_tokens"], args.stall_s, 30)}
                sse_control(sse_port, s["wrk_tokens"], 0)
                cpu = tree_cpu(p) if p else None
                r["wrk"] = wrk(tmp, url + path, body, h, 64, 2, dur)
                if p and r["wrk"]["requests"]:  # the proxy's own CPU per stream: what the machine's load moves least
                    r["cpu_ms_per_stream"] = (tree_cpu(p) - cpu) * 1000 / r["wrk"]["requests"]
                sse_control(sse_port, args.stream_tokens, args.stream_delay_ms)
                r["conc"] = run_streams(url + path, body, h, args.streams, args.streams, args.stream_tokens,
                                        args.stall_s, timeout)
                if direct and s["rows"].get(direct, {}).get("ttft", {}).get("ttft_p50_ms") is not None \
                        and r["ttft"]["ttft_p50_ms"] is not None:
                    r["added_ttft_ms"] = r["ttft"]["ttft_p50_ms"] - s["rows"][direct]["ttft"]["ttft_p50_ms"]
                if p:
                    r["rss_mb"] = rss_mb(p.pid)
                s["rows"][name] = r

        if gateway and args.workers > 1:
            workers_run(res, args, procs, tmp, nginx_port, sse_port, dur, gateway[0], keyed and keyed[0], redis_prefix)

    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if shutil.which("redis-cli") and not args.no_keys:  # the window counters expire; the usage totals do not
            subprocess.run(["redis-cli", "-u", args.redis, "DEL", f"{{{redis_prefix}}}:usage"], capture_output=True)

    text = report(res, args)
    print(text)
    out = Path(args.out) if args.out else HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**res, "markdown": text}, indent=2))
    print(f"\n(JSON: {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
