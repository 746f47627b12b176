"""HTTP/1.1 to providers: keep-alive connections, streaming, cancel, timeouts.

Built on Tornado's own `TCPClient` and `HTTP1Connection` (the parts its
AsyncHTTPClient is made of) so that the gateway owns each socket: a client
that hangs up closes its upstream socket at once (no tokens keep burning),
connections are reused across requests, and the time to first byte and the
silence between stream chunks have their own limits. This module knows
sockets and HTTP, nothing about dialects.
"""
import ssl
from urllib.parse import urlsplit

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.ioloop import IOLoop
from tornado.tcpclient import TCPClient

_TLS = ssl.create_default_context()
_PARAMS = HTTP1ConnectionParameters(chunk_size=65536, max_header_size=65536, max_body_size=1 << 30)


class UpstreamError(Exception):
    """The provider could not be reached or stopped answering.
    `kind` is 'connect', 'timeout' or 'closed'."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Timeouts:
    def __init__(self, connect=10.0, first_byte=300.0, idle=300.0, total=1800.0):
        self.connect, self.first_byte, self.idle, self.total = connect, first_byte, idle, total


class Call(httputil.HTTPMessageDelegate):
    """One request to a provider. `on_head(status, headers)` and
    `on_data(chunk)` are called as the response arrives; `cancel()` closes
    the socket from anywhere (client gone, shutdown)."""

    def __init__(self, on_head, on_data):
        self.on_head, self.on_data = on_head, on_data
        self.stream = None
        self.status = None
        self.failure = None   # UpstreamError set by cancel() or a timer
        self._last = 0.0

    # HTTPMessageDelegate, called by HTTP1Connection
    def headers_received(self, start_line, headers):
        self.status = start_line.code
        self._last = IOLoop.current().time()
        self.on_head(start_line.code, headers)

    def data_received(self, chunk):
        self._last = IOLoop.current().time()
        self.on_data(chunk)

    def cancel(self, failure=None):
        self.failure = self.failure or failure or UpstreamError("closed", "cancelled")
        if self.stream is not None:
            self.stream.close()


class Pool:
    """Idle keep-alive connections per (scheme, host, port)."""

    def __init__(self, per_host=64):
        self.idle = {}
        self.per_host = per_host
        self.tcp = TCPClient()

    async def _connect(self, scheme, host, port, timeout):
        key = (scheme, host, port)
        idle = self.idle.get(key)
        while idle:
            stream = idle.pop()
            if not stream.closed():
                return stream, True
        try:
            stream = await self.tcp.connect(host, port, ssl_options=_TLS if scheme == "https" else None,
                                            timeout=timeout)
        except TimeoutError:
            raise UpstreamError("connect", f"connecting to {host}:{port} timed out after {timeout:g}s") from None
        except (OSError, iostream.StreamClosedError) as e:
            raise UpstreamError("connect", f"cannot connect to {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
        stream.set_nodelay(True)
        return stream, False

    def _release(self, key, stream):
        idle = self.idle.setdefault(key, [])
        if len(idle) < self.per_host and not stream.closed():
            idle.append(stream)
        else:
            stream.close()

    async def send(self, call, method, url, headers, body, timeouts):
        """Send the request and read the whole response into `call`; raise UpstreamError."""
        parts = urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path + ("?" + parts.query if parts.query else "")
        headers = httputil.HTTPHeaders(headers)
        headers["Host"] = parts.netloc
        headers["Content-Length"] = str(len(body))
        loop = IOLoop.current()
        deadline = loop.call_later(timeouts.total, call.cancel,
                                   UpstreamError("timeout", f"the provider did not finish within {timeouts.total:g}s"))
        watchdog = None
        try:
            for attempt in (1, 2):
                stream, reused = await self._connect(scheme, parts.hostname, port, timeouts.connect)
                call.stream = stream
                if call.failure:
                    stream.close()
                    raise call.failure
                call._last = loop.time()
                if watchdog is None:
                    watchdog = _Watchdog(call, timeouts)
                conn = HTTP1Connection(stream, True, _PARAMS)
                try:
                    conn.write_headers(httputil.RequestStartLine(method, path, "HTTP/1.1"), headers)
                    conn.write(body)
                    conn.finish()
                    complete = await conn.read_response(call)
                except iostream.StreamClosedError:
                    complete = False
                if call.failure:
                    raise call.failure
                if complete:
                    stream = conn.detach()
                    if stream is not None:
                        self._release((scheme, parts.hostname, port), stream)
                    return
                conn.close()
                # A reused connection the provider had already closed: try once more on a new one.
                if not (reused and call.status is None and attempt == 1):
                    raise UpstreamError("closed", "the provider closed the connection before the response was complete")
        finally:
            loop.remove_timeout(deadline)
            if watchdog:
                watchdog.stop()


class _Watchdog:
    """Cancels a call whose provider is silent too long: before the first
    byte (`first_byte`) or between two chunks of the body (`idle`)."""

    def __init__(self, call, timeouts):
        self.call, self.timeouts = call, timeouts
        self.handle = None
        self._arm()

    def _arm(self):
        loop = IOLoop.current()
        limit = self.timeouts.idle if self.call.status is not None else self.timeouts.first_byte
        wait = self.call._last + limit - loop.time()
        if wait <= 0:
            what = "sent nothing" if self.call.status is None else "went silent"
            self.call.cancel(UpstreamError("timeout", f"the provider {what} for {limit:g}s"))
            return
        self.handle = loop.call_later(wait, self._arm)

    def stop(self):
        if self.handle:
            IOLoop.current().remove_timeout(self.handle)
