#!/usr/bin/env python
"""Microseconds the routing decision adds per request: an alias with 20 routing
rules (none holds, so all 20 run, on headers, the body and computed facts)
balanced over 4 deployments, against a plain name lookup.

    python benchmarks/routing_micro.py [--n 20000]

`benchmarks/run.py` also serves the same configuration (model `routed`) to
wrk, so the end-to-end cost shows beside the other rows.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-client"}
    body = {"model": "routed", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "What is the weather like today?"}],
            "max_tokens": 256}
    plain = {**body, "model": "gpt-4o-mini"}
    router = runtime.router
    start = time.perf_counter()
    for _ in range(1_000_000):
        pass
    print(f"machine: an empty Python loop of 1M iterations takes {(time.perf_counter() - start) * 1000:.0f} ms"
          " (about 15 ms on an idle core of this machine: scale the numbers below by that)")
    for name, b in (("plain name (a dict lookup)", plain), ("20 rules + 4 balanced deployments", body)):
        for _ in range(2000):
            router.decide(b, headers, "openai")
        start = time.perf_counter()
        for _ in range(args.n):
            router.decide(b, headers, "openai")
        us = (time.perf_counter() - start) / args.n * 1e6
        print(f"{name}: {us:.2f} µs per request ({router.decide(b, headers, 'openai').why})")


if __name__ == "__main__":
    main()
