#!/usr/bin/env python
"""CPU cost of the rules engine per stream event, in-process (no sockets).

    python benchmarks/engine.py [--tokens 20] [--rounds 500] [--repeat 7]

Feeds the SSE server's streams (benchmarks/sse_server.py), one event per read as
a provider sends them, through each client/provider pair: `Passthrough` for the
same dialect, the declared state machine (`Translate`) across dialects. Prints
microseconds per provider event, the best of --repeat runs. CPU time, so a busy machine moves it less than
the socket benchmark (run.py); compare runs of the same machine only.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's arch, not an installed one
from sse_server import anthropic_events, openai_events, responses_events  # noqa: E402

from arch.config import DEFAULT_POLICY  # noqa: E402
from arch.rules.load import load_rules  # noqa: E402
from arch.rules.resume import Resumable  # noqa: E402
from arch.rules.stream import Passthrough, Translate  # noqa: E402

EVENTS = {"openai": openai_events, "anthropic": anthropic_events, "responses": responses_events}


def relay(rules, client, provider):
    translation = rules.translation(client, provider)
    max_event = DEFAULT_POLICY["max_stream_event"]
    if translation is None:
        return lambda: Passthrough(rules.dialects[client], False, max_event)
    ctx = {"model": "m", "request": {"model": "m", "stream": True, "messages": []}}
    pause = rules.dialects[provider].pause  # as the gateway does: a turn that may be paused is followed
    return lambda: Translate(translation.stream, ctx, rules.dialects[client], rules.dialects[provider], max_event,
                             pause and Resumable(pause, DEFAULT_POLICY["max_response_body"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rules = load_rules()
    print("| client ← provider | µs per event | out bytes per stream |\n|---|---|---|")
    for client in EVENTS:
        for provider, events in EVENTS.items():
            if client != provider and (client, provider) not in rules.translations:
                continue  # no rules for this pair
            chunks = [e.encode() for e in events("m", args.tokens)]
            make = relay(rules, client, provider)
            out, best = 0, float("inf")
            for _ in range(args.repeat):  # the best of several: other work on the machine only adds
                started = time.process_time()
                for _ in range(args.rounds):
                    r = make()
                    out = len(r.start()) + sum(len(r.feed(c)) for c in chunks) + len(r.finish())
                    assert r.ended
                best = min(best, time.process_time() - started)
            print(f"| {client} ← {provider} | {best / args.rounds / len(chunks) * 1e6:.2f} | {out} |")


if __name__ == "__main__":
    main()
