"""Tornado handlers: HTTP in, HTTP out.

A handler parses and validates the body in the client's dialect, resolves the
model, lets the rules translate, and moves bytes between the client and the
provider. Dialect details live in the rules; sockets live in `upstream`.
Every failure leaves as an error in the client's own dialect.
"""
import asyncio
import logging
import re
import time
import uuid

from functools import partial

from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler, stream_request_body

from arch.observe import report

from arch import jsonio, schemas
from arch.admit import browser
from arch.admit.forward import anthropic_betas
from arch.errors import GatewayError
from arch.http import body as request_body
from arch.http.chunks import ChunkWriter
from arch.rules.functions import estimate_tokens
from arch.rules.resume import Resumable, merged
from arch.rules.stream import Passthrough, StreamBroken, Translate, find_usage
from arch.observe.tracing import tracer
from arch.state.redis import StateError
from arch.route import balance
from arch.route.resolve import first_target, retry_after
from arch.upstream.client import Call, UpstreamError

log = logging.getLogger("arch")

_RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
RETRY_STATUSES = {408, 429, 500, 502, 503, 504, 529}
# After the rules ended a stream, how long the rest of the provider's response (its last
# chunk) may take before its connection is closed rather than kept for reuse.
UPSTREAM_TAIL = 2.0
MAX_LOGGED_MODEL = 200  # characters of a requested model name kept in the log and metrics
# host:port in a provider failure (the provider's, a proxy's): for the gateway's log, not for clients.
_ADDRESS = re.compile(r" \[?[\w.:-]+\]?:\d+\b")


def _without_addresses(message):
    """'cannot connect to 10.0.0.5:8000 through the proxy 10.0.0.9:3128: refused' ->
    'cannot connect to the provider through the proxy: refused'."""
    first = []
    return _ADDRESS.sub(lambda m: "" if first else first.append(1) or " the provider", message)


class Base(RequestHandler):
    """Request ids, JSON errors, and the dialect an endpoint speaks."""

    dialect = "openai"

    def initialize(self, gateway, dialect=None):
        self.gateway = gateway
        self.runtime = gateway.runtime  # the snapshot this request lives on, whatever reloads happen
        if dialect:
            self.dialect = dialect

    def set_default_headers(self):
        self.clear_header("Server")  # the server's name and version help no client

    def prepare(self):
        rid = self.request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex[:24]}"
        self.request_id = rid[:200]
        self.set_header("x-request-id", self.request_id)
        self.set_header("request-id", self.request_id)
        for name, value in browser.admit(self.runtime.config, self.request.headers).items():
            self.set_header(name, value)

    def authenticate(self):
        """The caller's gateway key (a 401 without a valid one); None when the gateway has no keys."""
        admission = self.runtime.admission
        return admission.authenticate(self.request.headers) if admission is not None else None

    def options(self, *args):
        """A CORS preflight from an origin `cors.origins` lists (others got their 403 in prepare)."""
        headers = browser.preflight(self.runtime.config, self.request.headers)
        if headers is None:
            raise HTTPError(405)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()

    def send_json(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body if isinstance(body, bytes) else jsonio.dumps(body))

    def send_error_json(self, error):
        for k, v in error.headers.items():
            self.set_header(k, v)
        if error.body is not None:  # a provider's error, already in this client's dialect
            return self.send_json(error.status, error.body)
        client = self.runtime.rules.dialects[self.dialect]
        status, body = client.render_error(error.status, error.message, error.param, self.request_id, error.kind)
        self.send_json(status, body)

    def _handle_request_exception(self, e):
        """A GatewayError raised in prepare() is an answer, not a crash."""
        if isinstance(e, GatewayError):
            return self.send_error_json(e)
        return super()._handle_request_exception(e)

    def write_error(self, status_code, **kwargs):
        """Errors Tornado raises itself (405, unexpected exceptions): same envelopes, no stack traces."""
        if not hasattr(self, "request_id"):  # a body Tornado rejected (bad form encoding) before prepare()
            Base.prepare(self)
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else self._reason
        if status_code >= 500:
            message = "internal gateway error; see the gateway log for request " + getattr(self, "request_id", "?")
        self.clear_header("Content-Type")
        self.send_error_json(GatewayError(status_code, message))


class NotFound(Base):
    def prepare(self):
        super().prepare()
        if "anthropic-version" in self.request.headers or self.request.path.startswith("/v1/messages"):
            self.dialect = "anthropic"
        raise GatewayError(404, f"no such endpoint: {self.request.method} {self.request.path}")


class Health(Base):
    """GET /healthz: liveness, and the numbers a leak would move."""

    def get(self):
        pool, now = self.gateway.pool, time.monotonic()
        deployments = [state.snapshot(now) for state in self.runtime.routes.states]
        self.send_json(200, {"status": "ok", "inflight": self.gateway.inflight,
                             "idle_upstream_connections": sum(len(v) for v in pool.idle.values()),
                             **({"deployments": deployments} if deployments else {})})


class Models(Base):
    """GET /v1/models: configured models, aliases and patterns (`openai/*`), in
    the OpenAI list shape, or in Anthropic's when the request carries
    `anthropic-version` (both SDKs' `models.list()`). An alias says what it points to."""

    def get(self):
        routes = self.runtime.routes
        entries = list({**{t.name: t for t in routes.targets},
                        **{a: first_target(routes.table[a][0]) for a in routes.aliases}, **routes.patterns}.items())
        key = self.authenticate()
        if key is not None and key.allowed is not None:  # only what this key may use
            entries = [(name, t) for name, t in entries if name in key.allowed]
        if "anthropic-version" in self.request.headers:
            data = [{"type": "model", "id": name, "display_name": name if name == t.name else f"{name} -> {t.name}",
                     "created_at": "1970-01-01T00:00:00Z"} for name, t in entries]
            return self.send_json(200, {"data": data, "has_more": False,
                                        "first_id": data[0]["id"] if data else None,
                                        "last_id": data[-1]["id"] if data else None})
        data = [{"id": name, "object": "model", "created": 0, "owned_by": t.provider,
                 **({"target": t.name} if name != t.name else {})} for name, t in entries]
        self.send_json(200, {"object": "list", "data": data})


class Metrics(Base):
    """GET /metrics: Prometheus text format (all workers' numbers under --workers N)."""

    def get(self):
        if self.runtime.admission is not None:
            self.runtime.admission.require_admin(self.request.headers)
        balance.refresh_gauges(self.runtime.routes.states)
        body, content_type = report.metrics_text()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class Usage(Base):
    """GET /v1/usage: requests, tokens and cost so far by key, model and alias: this
    process's (all workers') counters, or with Redis every replica's since the totals began."""

    async def get(self):
        admission = self.runtime.admission
        amounts = None
        if admission is not None:
            admission.require_admin(self.request.headers)
            try:
                amounts = await admission.state.usage()
            except StateError as e:
                raise GatewayError(503, f"usage is kept in the shared state, which is unreachable ({e})") from None
        self.send_json(200, report.usage_summary(report.counted_usage() if amounts is None else amounts))


@stream_request_body
class Chat(Base):
    """POST /v1/chat/completions (dialect openai) and POST /v1/messages (anthropic).

    The body is received here (stream_request_body) so that one declared larger
    than `max_body_size` is read and dropped, not kept, and answered with a 413
    in the client's dialect (answering before it is read would reset the
    connection under a client still sending). A chunked body has no declared
    size: it is kept up to the limit, and the 413 goes out as soon as it passes it."""

    call = None
    exchange = None
    ticket = None
    client_gone = False
    _tail = None  # timer closing an upstream response that lingers after the stream ended
    keeps_answers = False  # a handler that stores answers (Responses) defines `keep`
    _kept = None           # the task storing a stream's answer before the client's response ends
    _parts = None
    _size = 0

    def prepare(self):
        super().prepare()
        if self.request.method == "OPTIONS":  # a preflight: nothing to receive or report
            return
        self.record = record = report.new_record(self.request.path, self.dialect)
        record["request_id"] = self.request_id
        record["trace"] = tracer.start(self.request.headers.get("traceparent"))
        self._parts = []
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.runtime.config.max_body_bytes:
            self._parts = None  # too big: read, dropped, then a 413 (see _body)
            self.request.connection.set_max_body_size(int(length))

    def data_received(self, chunk):
        self._size += len(chunk)
        if self._parts is None:
            return
        if self._size <= self.runtime.config.max_body_bytes:
            self._parts.append(chunk)
        else:  # chunked, and past the limit: keep nothing more, answer now (Tornado then closes)
            self._parts = None
            error = GatewayError(413, f"the request body is over the limit of {self.runtime.config.max_body_bytes}"
                                      " bytes")
            self.record["error"] = error.message
            self.send_error_json(error)
            self._report()

    def write(self, chunk):
        if hasattr(self, "record"):  # not when Tornado rejected the request before prepare()
            self.record["bytes_out"] += len(chunk)
        super().write(chunk)

    async def post(self):
        if self._finished:  # already answered (413) while the body was still arriving
            return
        self.request.body = b"".join(self._parts or ())
        self.record["bytes_in"] = len(self.request.body)
        self.gateway.inflight += 1
        self.gateway.active.add(self)
        report.INFLIGHT.inc()
        try:
            await self._serve()
        except GatewayError as e:
            self.record["error"] = e.message
            if not self._finished and not self.client_gone:
                self.send_error_json(e)
        finally:
            self.gateway.active.discard(self)
            self.gateway.inflight -= 1
            report.INFLIGHT.dec()
            exchange = self.exchange
            if exchange is not None and exchange.committed:  # a stream, however it ended
                report.STREAMS.dec()
                self.record["usage"] = exchange.provider.usage(exchange.relay.usage)
            self._report()

    def _report(self):
        self.record["status"] = self.get_status() if self._finished else 499  # 499: the client left first
        body = self.request.body or b""
        usd = report.done(self.record, self.runtime.rules.prices, self.request.remote_ip,
                          body.decode("utf-8", "replace") if self.runtime.config.log_content else None)
        if self.ticket is not None:
            self.runtime.admission.settle(self.ticket, self.record, usd)

    async def _serve(self):
        self.record["key"] = self.authenticate()
        client = self.runtime.rules.dialects[self.dialect]
        body = await self._body(client.validate)
        self.record["stream"] = body.get("stream") is True
        route = await self._route(body)
        await self._admit(client, body)
        await self._forward(client, body, route)

    async def _admit(self, client, body):
        """The key's models, limits and budget (403/429), and the rate-limit headers of the answer."""
        admission = self.runtime.admission
        if admission is not None:
            self.ticket = await admission.admit(self.record["key"], body.get("model"), body, self.request.headers,
                                                client, self.request_id)
            for name, value in self.ticket.headers.items():
                self.set_header(name, value)

    async def _route(self, body):
        """The targets for this request (rules, name, balancing, preferences), the decision
        recorded and returned in `x-arch-route`."""
        router = self.runtime.router
        decision = router.decide(body, self.request.headers, self.dialect, self.request.body)
        if decision.pending:  # the router model chooses
            decision = await router.prefer(decision, body, self.request.headers, self.gateway.pool, self.request_id)
        self.record["alias"], self.record["route"] = decision.alias, decision.why
        self.record["decided_by"] = decision.decided_by
        self.set_header("x-arch-route", decision.why)
        return decision.route

    def _note_model(self, body):
        """The model the body names, logged even when the request is then refused (capped: untrusted)."""
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            self.record["requested_model"] = body["model"][:MAX_LOGGED_MODEL]

    async def _body(self, check=None):
        """The body, parsed, its model noted, and `check`ed; a large one in a worker
        thread, so that other requests are served meanwhile (see README, Security)."""
        limit = self.runtime.config.max_body_bytes
        if self._parts is None:
            raise GatewayError(413, f"the request body is {self.request.headers['Content-Length']} bytes; "
                                    f"the limit is {limit}")
        raw, ctype = self.request.body, self.request.headers.get("Content-Type", "none")
        large = len(raw) >= request_body.LARGE_BODY
        body = await _off_loop_if(large, request_body.loads, raw, ctype)
        self._note_model(body)
        if check is not None:
            await _off_loop_if(large, check, body)
        return body

    def _endpoint(self, target):
        """(URL, dialect) of the provider endpoint this handler's requests go to: the
        target's own, or its Responses API for a model served only there (rules/models.yaml)."""
        native = target.native.get("responses")
        if native is not None:
            rules = self.runtime.rules
            facts = rules.models.get(target.model)
            if facts is not None and "responses_only" in facts.capabilities \
                    and (self.dialect, "responses") in rules.translations:
                return native[0], "responses"
        return target.url, target.dialect

    def _upstream_request(self, client, body, target, pristine=True):
        """(bytes to send, Translation or None, whether usage was asked for the client).
        `pristine`: `body` is still what the client sent."""
        if target.missing_key:
            error = GatewayError(500, f"the gateway has no API key for '{target.name}': environment variable "
                                      f"{target.missing_key} is not set")
            error.fallback = True  # a fallback with a key can still answer
            raise error
        rules = self.runtime.rules
        facts = rules.models.get(target.model)
        if facts is not None:
            facts.admit(client.needs(body), target.model, self._endpoint(target)[1])
        translation = rules.translation(client.name, self._endpoint(target)[1])
        ask_usage = translation is None and client.needs_usage_request(body)
        over = facts is not None and facts.max_output_tokens and client.output_over(body, facts.max_output_tokens)
        if translation is None and not ask_usage and not over and pristine and body.get("model") == target.model:
            return self.request.body, None, False  # fast path: the client's bytes go out untouched
        out = translation.request(body, facts) if translation else dict(body)
        out["model"] = target.model
        if ask_usage:  # for accounting; the extra event is not passed on (Passthrough strip)
            out.update(client.usage_request(body))
        if translation:  # a client of this dialect chose its own field names; a translation did not
            for old, new in target.rename.items():
                if old in out:
                    out[new] = out.pop(old)
        if facts is not None and facts.max_output_tokens:
            self._clamp_output(rules.dialects[target.dialect], out, facts, target.model)
        return jsonio.dumps(out), translation, ask_usage

    def _clamp_output(self, provider, out, facts, model):
        """Lower an output-token request above the model's maximum to it: a client
        written for one model (Claude Code asks 32000) still gets an answer from another."""
        limit = facts.max_output_tokens
        for field in provider.output_over(out, limit):
            log.info("%s: %s %s is above %s's maximum output; sent %d (rules/models.yaml)",
                     self.request_id, field, out[field], model, limit)
            out[field] = limit

    async def _forward(self, client, body, route):
        """Try the route's targets in order, each with its retries, until one
        answers. Retries and fallbacks happen only before the first byte
        reached the client: a stream is committed only on a 2xx."""
        record = self.record
        for target in route:
            if target is not route[0]:
                record["fallback"] = route[0].model
            for attempt in range(target.policy.max_retries + 1):
                track = balance.Attempt(self.runtime.router.tracked.get(target), target.name)
                try:
                    await self._attempt(client, body, target)
                    return track.ok(self.exchange.head_at)
                except GatewayError as e:
                    track.failed(e, retry_after(e.headers))
                    if self.client_gone or not (e.retryable or e.fallback):
                        raise
                    failure = e
                finally:
                    track.close()
                if not failure.retryable or attempt == target.policy.max_retries:
                    break
                delay = target.policy.backoff(attempt, failure.headers)
                if delay is None:  # the provider asked for a longer wait than is worth it
                    break
                log.info("%s: %s; retry %d in %.2fs", self.request_id, failure.message, attempt + 1, delay)
                record["retries"] += 1
                report.RETRIES.labels(target.provider, target.model).inc()
                await asyncio.sleep(delay)
                if self.client_gone:
                    return
            if target is not route[-1]:
                log.info("%s: %s failed (%s); falling back", self.request_id, target.name, failure.message)
        raise failure

    async def _attempt(self, client, body, target):
        self.record["provider"], self.record["model"] = target.provider, target.model
        data, translation, ask_usage = self._upstream_request(client, body, target)
        url, dialect = self._endpoint(target)
        provider = self.runtime.rules.dialects[dialect]
        relay = resume = None
        facts = translation and self.runtime.rules.models.get(target.model)
        if body.get("stream") is True:
            ctx = {"model": target.model, "request": body, "facts": facts.view if facts else {}}
            limits = target.policy.limits
            resume = Resumable(provider.pause, limits.body) if translation and provider.pause else None
            relay = (Translate(translation.stream, ctx, client, provider, limits.event, resume)
                     if translation else Passthrough(client, ask_usage, limits.event))
        self.exchange = exchange = _Exchange(self, client, provider, relay)
        self._keeping = (body, target)
        self.set_header("x-arch-upstream-model", target.model)
        if not await self._send(target, url, data, exchange):
            return
        if exchange.committed:
            while resume is not None and resume.paused:
                more = jsonio.dumps(resume.next_request(jsonio.loads(data)))
                if not await self._continue_stream(client, provider, target, url, more, exchange):
                    return
            if exchange.end() and self.keeps_answers and self._kept is None and relay.result is not None:
                self.stream_answered(relay.result)
            if self._kept is not None:
                await self._kept
            exchange.close()
        elif 200 <= self.call.status < 300:
            raw = self.runtime.redact(b"".join(exchange.buffer))
            if translation:
                answer = _json_object(raw, exchange.content_type, target)
                if provider.pause is not None and provider.pause.paused(answer):
                    answer = await self._resumed(client, provider, target, url, data, answer, len(raw))
                    if answer is None:
                        return
                out = translation.response(answer, body, facts)
                self.record["usage"] = client.usage(out.get("usage"))
            else:
                _check_whole_json(raw, exchange.content_type, self.call, target)
                out = raw
                self.record["usage"] = client.usage(find_usage(raw))
            if self.keeps_answers:
                await self.keep(out, body, target)
            self.send_json(200, out)
        else:
            raise self._upstream_error(client, provider, exchange)

    async def _continue_stream(self, client, provider, target, url, data, exchange):
        """A paused turn's continuation, its events on the client's stream (arch/rules/resume.py).
        False when there is nothing left to answer; a provider that refuses it fails the stream."""
        exchange.buffer = []
        exchange.relaying = False
        if not await self._send(target, url, data, exchange):
            return False
        if not exchange.relaying:
            exchange.fail(self._upstream_error(client, provider, exchange).message)
            return False
        return True

    async def _resumed(self, client, provider, target, url, data, answer, size):
        """A paused answer and its continuations as one answer (arch/rules/resume.py), or None
        when the client went away. No more continuations past the count the rules allow, or
        once the answers add up to `max_response_body`: the answer so far, cut."""
        pause, request = provider.pause, jsonio.loads(data)
        for _ in range(pause.max):
            if not pause.paused(answer) or size > target.policy.limits.body:
                break
            exchange = _Exchange(self, client, provider, None)
            more = jsonio.dumps(pause.request(request, answer.get("content") or []))
            if not await self._send(target, url, more, exchange):
                return None
            if not 200 <= self.call.status < 300:
                raise self._upstream_error(client, provider, exchange)
            raw = self.runtime.redact(b"".join(exchange.buffer))
            size += len(raw)
            answer = merged(answer, _json_object(raw, exchange.content_type, target))
        return {**answer, "stop_reason": pause.cut} if pause.paused(answer) else answer

    async def _send(self, target, url, data, exchange):
        """One call to the provider. False when there is nothing left to answer
        (the client went away, or a started stream was closed with an error)."""
        headers = {"Content-Type": "application/json", "x-request-id": self.request_id, **target.headers}
        for name in target.forward_headers:
            if name in self.request.headers:
                headers[name] = self.request.headers[name]
        allowed = self.runtime.config.anthropic_betas
        if allowed is not None and "anthropic-beta" in headers:
            value = anthropic_betas(headers.pop("anthropic-beta"), allowed)
            if value:
                headers["anthropic-beta"] = value
        trace = self.record["trace"]
        if trace:  # the provider's spans nest under ours
            headers["traceparent"] = f"00-{trace[0]}-{trace[1]}-01"
        elif "traceparent" in self.request.headers:
            headers["traceparent"] = self.request.headers["traceparent"]
        limits = target.policy.limits
        self.call = Call(exchange.on_head, exchange.on_data, limits.body)
        started = time.perf_counter()
        try:
            await self.gateway.pool.send(self.call, "POST", url, headers, data, target.policy.timeouts, limits)
        except UpstreamError as e:
            if e.kind == "ended":  # the client's stream was already complete
                return not self.client_gone
            report.UPSTREAM_ERRORS.labels(target.provider, target.model, e.kind).inc()
            if exchange.committed and not self.client_gone:
                exchange.fail(str(e))
            if exchange.committed or self.client_gone:
                return False
            log.warning("%s: provider for %r failed: %s", self.request_id, target.name, e)
            status = {"timeout": 504, "shutdown": 503}.get(e.kind, 502)
            error = GatewayError(status, f"provider for '{target.name}' failed: {_without_addresses(str(e))}")
            # a timeout already cost its full wait, a malformed answer would come again: next target
            error.retryable = e.kind in ("connect", "closed")
            error.fallback = e.kind != "shutdown"
            raise error from None
        finally:
            if self._tail is not None:
                IOLoop.current().remove_timeout(self._tail)
                self._tail = None
            report.UPSTREAM.labels(target.provider, target.model).observe(time.perf_counter() - started)
        return not self.client_gone

    def stream_answered(self, answer):
        """A stream's final answer (Responses): stored first, then the client's response
        is finished, so a next request that names it finds it."""
        async def keep_then_finish():
            try:
                await self.keep(answer, *self._keeping)
            except Exception:  # a store that fails must not leave the stream open
                log.exception("%s: the answer could not be stored", self.request_id)
            finally:
                self.exchange.close()
        self._kept = asyncio.ensure_future(keep_then_finish())

    def stream_ended(self):
        """The rules ended the stream: the client's response is finished now (a 200, even
        if the client hangs up next), and the provider's connection is kept if the rest
        of its response follows soon, else closed."""
        if self._tail is None and self.call is not None:
            self._tail = IOLoop.current().call_later(
                UPSTREAM_TAIL, self.call.cancel, UpstreamError("ended", "the stream had ended"))

    def _upstream_error(self, client, provider, exchange):
        """A provider's error as a GatewayError: its status and retry hints kept,
        its body kept as-is for a client of the same dialect, else its message."""
        raw = self.runtime.redact(b"".join(exchange.buffer), masked=True)
        status = self.call.status
        report.UPSTREAM_ERRORS.labels(self.record["provider"], self.record["model"], f"http_{status}").inc()
        message = provider.error_message(raw)
        error = GatewayError(status, message or f"the provider answered HTTP {status}: "
                                                f"{raw[:300].decode('utf-8', 'replace')}", headers=exchange.headers)
        if client is provider and message is not None:
            error.body = raw
        error.retryable = error.fallback = status in RETRY_STATUSES
        return error

    def on_connection_close(self):
        super().on_connection_close()  # a body still being received is abandoned, not awaited forever
        self.client_gone = True
        if self.call is not None:
            self.call.cancel()

    def cut(self, message):
        """Shutdown ran out of drain time: end the provider call now, so that the
        client hears an error in its dialect (in-stream once a stream started)."""
        if self.call is not None:
            self.call.cancel(UpstreamError("shutdown", message))


class CountTokens(Chat):
    """POST /v1/messages/count_tokens: asked of providers that can count
    (Anthropic), estimated here for the others (see `estimate_tokens`)."""

    dialect = "anthropic"

    async def _serve(self):
        self.record["key"] = key = self.authenticate()
        body = await self._body(partial(schemas.check, "anthropic_count_tokens.schema.yaml"))
        target = first_target(self.runtime.routes.resolve(body["model"])[0])
        if key is not None:  # counting is free: the key's models apply, its limits do not
            self.runtime.admission.keys.permit(key, body["model"])
        self.record["provider"], self.record["model"] = target.provider, target.model
        if target.count_tokens_url is None:
            return self.send_json(200, {"input_tokens": estimate_tokens(body)})
        client = self.runtime.rules.dialects[self.dialect]
        data, _, _ = self._upstream_request(client, body, target)
        exchange = _Exchange(self, client, client, None)
        if await self._send(target, target.count_tokens_url, data, exchange):
            if not 200 <= self.call.status < 300:
                raise self._upstream_error(client, client, exchange)
            raw = self.runtime.redact(b"".join(exchange.buffer))
            _check_whole_json(raw, exchange.content_type, self.call, target)
            self.send_json(200, raw)


def _check_whole_json(raw, content_type, call, target):
    """A provider's 2xx body goes to the client as it is only if it is JSON, all
    of it. A body framed by length or chunks and labelled JSON is complete (the
    client saw every byte): no parse. One without framing (cut by the provider
    hanging up?) or not labelled JSON is parsed to tell."""
    if "json" not in content_type or call.close_delimited:
        _json_object(raw, content_type, target)


def _json_object(raw, content_type, target):
    """A provider's 2xx body as a JSON object, or a 502 saying what it was instead."""
    try:
        answer = jsonio.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer
    what = "a JSON answer that is cut short or" if "json" in content_type else f"a {content_type or 'unlabelled'} answer,"
    raise GatewayError(502, f"provider for '{target.name}' sent {what} not a JSON object")


async def _off_loop_if(large, fn, *args):
    """fn(*args), in a worker thread when `large`."""
    return await IOLoop.current().run_in_executor(None, fn, *args) if large else fn(*args)


class _Exchange:
    """The response side of one upstream call: buffers a JSON answer or an
    error, or relays a stream to the client as it arrives. A stream is only
    committed (200 + event-stream) once the provider answered 2xx, so an
    up-front failure still reaches the client as a plain HTTP error."""

    def __init__(self, handler, client, provider, relay):
        self.handler, self.client, self.provider, self.relay = handler, client, provider, relay
        self.buffer = []
        self.headers = {}
        self.content_type = ""
        self.committed = False
        self.relaying = False  # the provider's stream events go to the client (a 2xx stream)
        self.writer = None   # the ChunkWriter, once the stream's head is out
        self.head_at = None  # when the provider's answer began (time.monotonic)

    def on_head(self, status, headers):
        if self.committed:  # a paused turn's continuation, on the same client stream
            self.relaying = 200 <= status < 300
            if self.relaying:
                self.handler.call.max_body = None
            return
        self.head_at = time.monotonic()
        redact = self.handler.runtime.redact
        # passed on to the client: printable values only (a control character would break its response)
        self.headers = {k: redact.text(v) for k, v in headers.items() if k in _RETRY_HEADERS and v.isprintable()}
        self.content_type = headers.get("content-type", "").lower()
        if self.relay is not None and 200 <= status < 300:
            h = self.handler
            h.call.max_body = None  # a stream: bounded per event, not as a whole
            h.set_status(200)
            h.set_header("Content-Type", "text/event-stream; charset=utf-8")
            h.set_header("Cache-Control", "no-cache")
            self.committed = self.relaying = True
            report.STREAMS.inc()
            self._write(self.relay.start())

    def on_data(self, chunk):
        if not self.relaying:
            self.buffer.append(chunk)
            return
        try:
            self._write(self.relay.feed(chunk))
        except StreamBroken as e:
            self.fail(str(e))
            self.handler.call.cancel(UpstreamError("closed", str(e)))
            return
        if self.relay.ended:
            h = self.handler
            if h.keeps_answers and self.relay.result is not None:
                h.stream_answered(self.relay.result)
            else:
                self.close()
            h.stream_ended()

    def _write(self, data):
        h = self.handler
        if data and not h.client_gone and not h._finished:
            data = h.runtime.redact(data)
            if self.writer is not None:
                h.record["bytes_out"] += len(data)
                self.writer.write(data)
                return
            h.record["ttft"] = time.perf_counter() - h.record["start"]
            h.write(data)
            h.flush()  # the response head and the first chunk; then chunks go straight to the socket
            # backpressure goes to the call of the moment (a paused turn's continuation is another)
            self.writer = ChunkWriter(h.request.connection, lambda: h.call.pause(), lambda: h.call.resume())

    def end(self):
        """The provider finished: write what is left (True), or report that it stopped early."""
        try:
            self._write(self.relay.finish())
        except StreamBroken as e:
            self.fail(str(e))
            return False
        if not self.relay.ended:
            self.fail("the provider closed the stream before it was complete")
            return False
        return True

    def close(self):
        h = self.handler
        if not h._finished and not h.client_gone:
            h.finish()

    def fail(self, message):
        """An in-stream error in the client's dialect, then a clean close (never a silent end)."""
        h = self.handler
        if h._finished:
            return
        log.warning("stream %s: %s", h.request_id, message)
        h.record["error"] = message
        self._write(self.relay.failure(message, h.request_id))
        self.close()
