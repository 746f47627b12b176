"""OpenTelemetry traces over OTLP/HTTP (JSON encoding), with no SDK.

One server span per chat request, named and attributed after the OpenTelemetry
GenAI semantic conventions (`chat <model>`, gen_ai.*). An incoming W3C
`traceparent` is honoured (its trace, its parent, its sampling decision);
otherwise `tracing.random_sampling` percent of requests are traced. The
provider gets a `traceparent` naming our span, so its spans nest under ours.
Spans are batched and posted to the collector in the background; a collector
that is down costs a log line, never a request. The standard exporter variables
are honoured: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces) when the config names no endpoint,
OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
"""
import json
import logging
import os
import random
import re
import time
from urllib.parse import unquote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.ioloop import IOLoop, PeriodicCallback

log = logging.getLogger("arch.tracing")

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"


class Tracer:
    def __init__(self):
        self.enabled = False
        self.sampling = 0.0
        self.endpoint = None
        self.headers = {}
        self.resource = []
        self.spans = []
        self._flusher = None
        self._warned = False

    def configure(self, tracing):
        """Settings from the config's `tracing:` section (None: tracing off)."""
        tracing = tracing or {}
        self.enabled = bool(tracing)  # off: no spans, and an incoming traceparent goes upstream as it came
        self.sampling = float(tracing.get("random_sampling", 0)) if tracing else 0.0
        env = os.environ
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        self.endpoint = (tracing.get("endpoint") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                         or (base.rstrip("/") + "/v1/traces" if base else DEFAULT_ENDPOINT))
        self.headers = {**_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS")),
                        **_pairs(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")),
                        "Content-Type": "application/json"}
        resource = {"service.name": "archgw", **_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES"))}
        if env.get("OTEL_SERVICE_NAME"):
            resource["service.name"] = env["OTEL_SERVICE_NAME"]
        self.resource = [_attribute(k, v) for k, v in resource.items()]
        # The flusher starts with the first span (end), in the serving process: starting it here
        # would make an IOLoop before `--workers N` forks, and the workers would share it.

    def start(self, traceparent):
        """(trace_id, span_id, parent_span_id) when this request is traced, else None."""
        if not self.enabled:
            return None
        m = TRACEPARENT.match(traceparent or "")
        if m:
            if not int(m.group(3), 16) & 1:
                return None
            return m.group(1), _hex(8), m.group(2)
        if self.sampling and random.uniform(0, 100) < self.sampling:
            return _hex(16), _hex(8), None
        return None

    def end(self, trace, record, elapsed):
        trace_id, span_id, parent = trace
        usage = record["usage"] or {}
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": record["provider"],
            "gen_ai.request.model": record["requested_model"],
            "gen_ai.response.model": record["model"],
            "gen_ai.usage.input_tokens": usage.get("input"),
            "gen_ai.usage.output_tokens": usage.get("output"),
            "gen_ai.request.stream": record["stream"],
            "gen_ai.response.time_to_first_chunk": record["ttft"],
            "http.route": record["endpoint"],
            "http.response.status_code": record["status"],
            "arch.request_id": record.get("request_id"),
            "arch.client_dialect": record["dialect"],
            "arch.alias": record["alias"],
            "arch.route": record["route"],
            "arch.retries": record["retries"],
            "arch.fallback_from": record["fallback"],
        }
        end_ns = time.time_ns()
        span = {
            "traceId": trace_id, "spanId": span_id, "name": f"chat {record['requested_model'] or ''}".strip(),
            "kind": 2,  # SERVER
            "startTimeUnixNano": str(end_ns - int(elapsed * 1e9)), "endTimeUnixNano": str(end_ns),
            "attributes": [_attribute(k, v) for k, v in attributes.items() if v is not None],
            "status": {"code": 2 if (record["status"] or 500) >= 500 or record["error"] else 1,
                       **({"message": record["error"]} if record["error"] else {})},
        }
        if parent:
            span["parentSpanId"] = parent
        self.spans.append(span)
        if self._flusher is None:
            self._flusher = PeriodicCallback(self.flush, 1000)
            self._flusher.start()
        if len(self.spans) >= 256:
            IOLoop.current().add_callback(self.flush)

    async def flush(self):
        if not self.spans or not self.endpoint:
            return
        spans, self.spans = self.spans, []
        body = {"resourceSpans": [{
            "resource": {"attributes": self.resource},
            "scopeSpans": [{"scope": {"name": "arch"}, "spans": spans}]}]}
        try:
            await AsyncHTTPClient().fetch(self.endpoint, method="POST", body=json.dumps(body),
                                          headers=self.headers, request_timeout=5)
            self._warned = False
        except (HTTPClientError, OSError) as e:
            if not self._warned:
                log.warning("cannot export %d span(s) to %s: %s", len(spans), self.endpoint, e)
                self._warned = True


def _pairs(text):
    """`k1=v1,k2=v2` (values URL-encoded), the OTEL_* list format, as a dict."""
    pairs = (item.partition("=") for item in (text or "").split(","))
    return {unquote(k.strip()): unquote(v.strip()) for k, eq, v in pairs if eq and k.strip()}


def _hex(n):
    return random.getrandbits(n * 8).to_bytes(n, "big").hex()


def _attribute(key, value):
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


tracer = Tracer()
