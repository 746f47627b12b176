#!/usr/bin/env python
"""Microseconds the routing decision adds per request: an alias with 20 routing
rules (none holds, so all 20 run, on headers, the body and computed facts)
balanced over 4 deployments, against a plain name lookup; with the request a
handler has (parsed body, raw bytes, Tornado's headers), for a chat and for a
coding agent's tool loop.

    python benchmarks/routing_micro.py [--n 20000]

`benchmarks/run.py` also serves the same configuration (model `routed`) to
wrk, so the end-to-end cost shows beside the other rows.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tornado.httputil import HTTPHeaders  # noqa: E402

from arch.runtime import build  # noqa: E402


def routing_config(nginx_url):
    """YAML for the routed model: 20 rules, an alias over 4 deployments (keys, hosts)."""
    rules = "\n".join(
        f"      - {{name: r{i}, when: \"{expr}\", target: gpt-4o-mini}}"
        for i, expr in enumerate([
            "headers.\\\"x-tier\\\" == 'free'", "input_tokens > `100000`", "has_images", "has_thinking",
            "model == 'legacy'", "body.temperature == `2`", "headers.\\\"x-team\\\" == 'research'",
            "dialect == 'gemini'", "stream && model == 'x'", "body.max_tokens > `100000`",
        ] * 2))
    deployments = "\n".join(
        f"  - {{model: openai/gpt-4o-mini, name: routed-pool, access_key: sk-bench-{i}, base_url: {nginx_url}}}"
        for i in range(4))
    return f"""model_aliases:
  routed:
    target: routed-pool
    strategy: least_inflight
    routing_rules:
{rules}
extra_providers:
{deployments}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    routed = routing_config("http://127.0.0.1:9")
    head, _, extra = routed.partition("extra_providers:\n")
    text = f"""version: v0.1.0
listeners: {{egress_traffic: {{port: 12000}}}}
llm_providers:
  - {{model: openai/gpt-4o-mini, access_key: sk-bench, base_url: http://127.0.0.1:9}}
{extra}
{head}"""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "arch.yaml"
        path.write_text(text)
        runtime = build(path)
    headers = HTTPHeaders({"Host": "127.0.0.1:12000", "User-Agent": "OpenAI/Python 1.99.9", "Accept": "application/json",
                           "Content-Type": "application/json", "Authorization": "Bearer sk-client",
                           "Content-Length": "1000"})
    router = runtime.router
    start = time.perf_counter()
    for _ in range(1_000_000):
        pass
    print(f"machine: an empty Python loop of 1M iterations takes {(time.perf_counter() - start) * 1000:.0f} ms"
          " (about 15 ms on an idle core of this machine: scale the numbers below by that)")
    for label, body, dialect in (("a chat", chat_body(), "openai"), ("an agent's tool loop", agent_body(), "anthropic")):
        raw = json.dumps(body).encode()
        print(f"{label} ({len(raw):,} bytes, {len(body['messages'])} messages):")
        for name, b in (("plain name (a dict lookup)", {**body, "model": "gpt-4o-mini"}),
                        ("20 rules + 4 balanced deployments", body)):
            for _ in range(2000):
                router.decide(b, headers, dialect, raw)
            start = time.perf_counter()
            for _ in range(args.n):
                router.decide(b, headers, dialect, raw)
            us = (time.perf_counter() - start) / args.n * 1e6
            print(f"  {name}: {us:.2f} µs per request ({router.decide(b, headers, dialect, raw).why})")


def chat_body():
    """A chat client's request: a system prompt and a few turns of plain text."""
    turns = [{"role": "system", "content": "You are a helpful assistant. Answer briefly and cite sources. " * 4}]
    for i in range(3):
        turns += [{"role": "user", "content": f"Question {i}: what changed in the tax rules for small businesses? " * 2},
                  {"role": "assistant", "content": "Several things changed this year, most notably the thresholds. " * 4}]
    return {"model": "routed", "messages": turns + [{"role": "user", "content": "And for freelancers?"}],
            "max_tokens": 256, "temperature": 0.7}


def agent_body():
    """A coding agent's request in the middle of a tool loop (Claude Code's shape): tools, a long
    system prompt, and 40 messages of text, tool calls and tool results as content blocks."""
    tools = [{"name": f"Tool{i}", "description": "Reads or edits files in the workspace. " * 10,
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
             for i in range(12)]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Refactor the parser to stream its input."}]}]
    for i in range(20):
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look at the file."},
                                              {"type": "tool_use", "id": f"toolu_{i}", "name": "Tool0",
                                               "input": {"path": f"src/parser_{i}.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                          "content": [{"type": "text", "text": "def parse(data):\n    ...\n" * 40}]}]},
        ]
    return {"model": "routed", "max_tokens": 8192, "stream": True, "tools": tools, "messages": messages[:40],
            "system": [{"type": "text", "text": "You are a coding agent. Follow the repository's conventions. " * 60}]}

if __name__ == "__main__":
    main()
