"""What operators see: Prometheus metrics, one JSON access-log line per
request, token usage and its cost.

Handlers fill a plain `record` dict as a request goes; `done` turns it into
metrics, a log line and a span. Under `--workers N` the metrics live
in prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by
the CLI before this module is imported), so any worker answers a scrape with
the sum of all of them, and `/v1/usage` is read from the same counters (or,
with Redis configured, from the totals every replica adds there).
"""
import os
import sys
import time

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

from arch import jsonio
from arch.observe.tracing import tracer

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("arch_requests_total", "Requests answered",
                   ["endpoint", "dialect", "alias", "model", "provider", "status"])
LATENCY = Histogram("arch_request_duration_seconds", "Whole request, as the client saw it",
                    ["endpoint", "dialect", "model", "provider", "stream"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("arch_time_to_first_token_seconds", "From request to the first byte of the answer",
                 ["dialect", "model", "provider", "stream"], buckets=TTFT_BUCKETS)
UPSTREAM = Histogram("arch_upstream_duration_seconds", "Provider calls, each attempt",
                     ["provider", "model"], buckets=LATENCY_BUCKETS)
TOKENS = Counter("arch_tokens_total", "Tokens by kind (input includes cached)",
                 ["model", "alias", "provider", "kind", "key"])
COST = Counter("arch_cost_usd_total", "Cost in USD from rules/prices.yaml", ["model", "alias", "provider", "key"])
RETRIES = Counter("arch_retries_total", "Attempts repeated on the same model", ["provider", "model"])
FALLBACKS = Counter("arch_fallbacks_total", "Requests answered by a fallback", ["from_model", "to_model"])
UPSTREAM_ERRORS = Counter("arch_upstream_errors_total", "Provider failures", ["provider", "model", "type"])
INFLIGHT = Gauge("arch_inflight_requests", "Requests in flight", multiprocess_mode="livesum")
STREAMS = Gauge("arch_inflight_streams", "Streams in flight", multiprocess_mode="livesum")
ROUTES = Counter("arch_routing_decisions_total", "Requests by what decided their target (rule, preference)",
                 ["decided_by", "target"])
EJECTIONS = Counter("arch_deployment_ejections_total", "Times a balanced deployment was ejected", ["deployment"])
EJECTED = Gauge("arch_deployment_ejected", "1 while a balanced deployment is ejected", ["deployment"],
                multiprocess_mode="livemax")
RELOADS = Counter("arch_config_reloads_total", "Configuration reloads", ["result"])

_access = {"path": None, "stream": None}  # where access lines go; set by open_access_log


def open_access_log(path):
    """Send access lines to `path` (appended, a line at a time) or, with None, to stderr."""
    if path == _access["path"] and _access["stream"] is not None:
        return
    old = _access["stream"]
    # backslashreplace: a lone surrogate a client sent is written as its JSON escape, never loses the line
    _access["path"], _access["stream"] = path, (open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
                                                if path else sys.stderr)
    if old is not None and old is not sys.stderr:
        old.close()


def registry():
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    return REGISTRY


def process_exited(pid):
    """A worker is gone: its live gauges no longer count (its counters still do)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)


def metrics_text():
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def new_record(endpoint, dialect):
    return {"time": time.time(), "start": time.perf_counter(), "endpoint": endpoint, "dialect": dialect,
            "requested_model": None, "alias": None, "route": None, "decided_by": None, "provider": None, "model": None, "status": None,
            "stream": False, "ttft": None, "usage": None, "retries": 0, "fallback": None,
            "bytes_in": 0, "bytes_out": 0, "error": None, "trace": None, "key": None}


def cost(prices, model, usage):
    """USD for `usage` ({input, output, cached}) at the model's price per million tokens."""
    price = prices.get(model)
    if not price or not usage:
        return None
    cached = usage.get("cached") or 0
    fresh = max((usage.get("input") or 0) - cached, 0)
    return (fresh * price.get("input", 0) + cached * price.get("cached_input", price.get("input", 0))
            + (usage.get("output") or 0) * price.get("output", 0)) / 1e6


def done(record, prices, client_address, log_content=None):
    """Account for one finished request: metrics and the access-log line; returns its cost in USD."""
    elapsed = time.perf_counter() - record["start"]
    model, provider, alias = record["model"] or "", record["provider"] or "", record["alias"] or ""
    status = str(record["status"])
    stream = "true" if record["stream"] else "false"
    REQUESTS.labels(record["endpoint"], record["dialect"], alias, model, provider, status).inc()
    LATENCY.labels(record["endpoint"], record["dialect"], model, provider, stream).observe(elapsed)
    if record["ttft"] is not None:
        TTFT.labels(record["dialect"], model, provider, stream).observe(record["ttft"])
    usage = record["usage"]
    usd = cost(prices, model, usage)
    key = record["key"]
    key_name = key.name if key else ""
    if usage:
        for kind in ("input", "output", "cached"):
            if usage.get(kind):
                TOKENS.labels(model, alias, provider, kind, key_name).inc(usage[kind])
    if usd:
        COST.labels(model, alias, provider, key_name).inc(usd)
    if record["decided_by"]:
        ROUTES.labels(record["decided_by"], model).inc()
    if record["fallback"]:
        FALLBACKS.labels(record["fallback"], model).inc()
    if record["trace"]:
        tracer.end(record["trace"], record, elapsed)
    stream = _access["stream"]
    if stream is not None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["time"])) + f".{int(record['time'] * 1000) % 1000:03d}Z",
            "request_id": record.get("request_id"), "endpoint": record["endpoint"], "dialect": record["dialect"],
            "requested_model": record["requested_model"], "alias": record["alias"], "route": record["route"],
            "provider": record["provider"],
            "model": record["model"], "status": record["status"], "stream": record["stream"],
            "latency_ms": round(elapsed * 1000, 2),
            "ttft_ms": None if record["ttft"] is None else round(record["ttft"] * 1000, 2),
            "input_tokens": (usage or {}).get("input"), "output_tokens": (usage or {}).get("output"),
            "cached_tokens": (usage or {}).get("cached"), "cost_usd": None if usd is None else round(usd, 8),
            "retries": record["retries"], "fallback_from": record["fallback"], "bytes_in": record["bytes_in"],
            "bytes_out": record["bytes_out"], "client": client_address, "error": record["error"],
        }
        if key is not None:  # its name and tags, never the key itself
            line["key"] = key.name
            if key.tags:
                line["tags"] = key.tags
        if log_content is not None:
            line["content"] = log_content
        stream.write(jsonio.dumps(line).decode() + "\n")
    return usd


def counted_usage():
    """((key, model, alias, provider, kind), amount) from this process's (or all workers') counters."""
    for family in registry().collect():
        if family.name not in ("arch_tokens", "arch_cost_usd"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                kind = "cost_usd" if family.name == "arch_cost_usd" else labels["kind"]
                yield (labels["key"], labels["model"], labels["alias"], labels["provider"], kind), sample.value


def usage_summary(amounts):
    """Tokens and cost by key, model and alias, from `amounts` (counted_usage() or the shared state's)."""
    rows = {}
    for (key, model, alias, provider, kind), amount in amounts:
        row = rows.setdefault((key, model, alias, provider), {
            "key": key or None, "model": model, "alias": alias or None, "provider": provider,
            "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost_usd": 0.0})
        if kind == "cost_usd":
            row["cost_usd"] = round(row["cost_usd"] + amount, 8)
        elif kind == "requests":
            row["requests"] = row.get("requests", 0) + int(amount)
        else:
            row[f"{kind}_tokens"] += int(amount)
    data = sorted(rows.values(), key=lambda r: (r["key"] or "", r["model"], r["alias"] or ""))
    total = {k: sum(r[k] for r in data) for k in ("input_tokens", "output_tokens", "cached_tokens", "cost_usd")}
    total["cost_usd"] = round(total["cost_usd"], 8)
    return {"object": "usage", "data": data, "total": total}
