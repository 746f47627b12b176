"""HTTP/1.1 to providers: keep-alive connections, streaming, cancel, timeouts.

A small client on an asyncio Protocol, so that the gateway owns each socket:
a client that hangs up closes its upstream socket at once (no tokens keep
burning), connections are kept alive and reused, and the wait for the first
byte and the silence between stream chunks have their own limits. Parsing a
response is a few byte searches per read, which is most of why the gateway
adds little latency. This module knows sockets and HTTP, not dialects.
"""
import asyncio
import base64
import logging
import ssl
from functools import lru_cache
from time import monotonic
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from arch.upstream import mock

log = logging.getLogger("arch")
_TLS = ssl.create_default_context()
MAX_HEAD = 65536  # a proxy's answer to CONNECT


class UpstreamError(Exception):
    """The provider could not be reached, stopped answering or broke HTTP.
    `kind` is 'connect', 'timeout', 'closed', 'malformed' or 'shutdown'."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Timeouts:
    def __init__(self, connect=10.0, first_byte=300.0, idle=300.0, total=1800.0):
        self.connect, self.first_byte, self.idle, self.total = connect, first_byte, idle, total


class Limits:
    """What a provider's response may weigh: its head (status line and
    headers; also any one chunk-size or trailer line) and a body the gateway
    holds whole (not a stream, which is bounded per event by `event`)."""

    def __init__(self, head, body, event):
        self.head, self.body, self.event = head, body, event


class Call:
    """One request to a provider. `on_head(status, headers)` (headers: a dict
    with lower-case names) and `on_data(chunk)` are called as the response
    arrives; `cancel()` closes the socket from anywhere (client gone, timer).
    A body over `max_body` bytes fails the call (None: no limit, a stream)."""

    def __init__(self, on_head, on_data, max_body=None):
        self.on_head, self.on_data, self.max_body = on_head, on_data, max_body
        self.conn = None
        self.status = None
        self.close_delimited = False  # no length, no chunks: only a parse can tell a whole body from a cut one
        self.failure = None   # UpstreamError set by cancel() or a timer
        self._last = 0.0

    def cancel(self, failure=None):
        self.failure = self.failure or failure or UpstreamError("closed", "cancelled")
        if self.conn is not None:
            self.conn.abort()

    def pause(self):
        """Stop reading the response for now (the client is behind); the idle timeout still runs."""
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.pause_reading()

    def resume(self):
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.resume_reading()


class _Malformed(Exception):
    """The provider's bytes break HTTP/1.1 or a configured size limit."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; reads one response at a time into a Call.

    Every length on the wire is checked before it is used, and bytes are only
    held while a head or a line waits for its end (bounded by `limits.head`);
    the search for that end resumes where the last read stopped, so a provider
    that dribbles a huge line costs linear time, not quadratic."""

    def __init__(self):
        self.transport = None
        self.call = None
        self.limits = None
        self.done = None          # future: True when a response ended cleanly, False when it cannot
        self.held = bytearray()   # an unfinished head or line
        self.scanned = 0          # how much of `held` is known not to contain its end
        self.state = "idle"       # idle | head | length | chunk-size | chunk-data | chunk-end | trailer | close
        self.remaining = 0
        self.received = 0         # body bytes of the current response
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0

    def start(self, call, request, limits):
        self.call, self.limits, self.state = call, limits, "head"
        self.held.clear()
        self.scanned = self.received = 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        if self.state == "close" and exc is None:  # a body that ends when the connection does (not a reset)
            self._end(True)
        elif self.state != "idle":
            self._end(False)

    def data_received(self, data):
        if self.state == "idle":  # bytes nobody asked for: this connection cannot be trusted again
            self.keep_alive = False
            self.transport.close()
            return
        try:
            self._parse(data)
        except _Malformed as e:
            self.call.failure = self.call.failure or UpstreamError("malformed", str(e))
            self._broken()
        except Exception:  # a callback that failed
            log.exception("upstream response could not be read")
            self._broken()

    def _broken(self):
        self.keep_alive = False
        self._end(False)
        self.transport.abort()

    def _parse(self, data):
        if self.held:  # the end of a head or line may be in this read: look at the new bytes only
            held = self.held
            held += data
            delim = b"\r\n\r\n" if self.state == "head" else b"\r\n"
            if held.find(delim, self.scanned) < 0:
                self._hold(b"")
                return
            data = bytes(held)
            held.clear()
        pos, size = 0, len(data)
        while pos < size and self.state != "idle":
            state = self.state
            if state == "length" or state == "chunk-data":
                take = min(self.remaining, size - pos)
                self._data(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    if state == "length":
                        self._end(True)
                    else:
                        self.state = "chunk-end"
            elif state == "close":
                self._data(data[pos:])
                pos = size
            else:  # head, chunk-size, chunk-end, trailer: bytes up to a delimiter
                delim = b"\r\n\r\n" if state == "head" else b"\r\n"
                end = data.find(delim, pos)
                if end < 0:
                    self._hold(data[pos:])
                    return
                if end - pos > self.limits.head:
                    raise _Malformed(f"the provider sent a {'response head' if state == 'head' else 'line'} "
                                     f"over {self.limits.head} bytes")
                line, pos = data[pos:end], end + len(delim)
                if state == "head":
                    self._head(line.decode("latin-1"))
                elif state == "chunk-size":
                    self._chunk_size(line)
                elif state == "chunk-end":
                    if line:
                        raise _Malformed("the provider sent a chunk longer than its chunk-size line said")
                    self.state = "chunk-size"
                elif not line:  # trailer: the blank line after (optional) trailers
                    self._end(True)

    def _hold(self, rest):
        """Keep an unfinished head or line for the next read, within the limit."""
        held = self.held
        held += rest
        if len(held) > self.limits.head:
            raise _Malformed(f"the provider sent a {'response head' if self.state == 'head' else 'line'} "
                             f"over {self.limits.head} bytes")
        self.scanned = max(len(held) - 3, 0)

    def _chunk_size(self, line):
        digits = line.split(b";", 1)[0].strip()
        if not digits or len(digits) > 15 or digits.strip(b"0123456789abcdefABCDEF"):
            raise _Malformed(f"the provider sent a malformed chunk-size line: {line[:40]!r}")
        size = int(digits, 16)
        self.remaining, self.state = size, ("chunk-data" if size else "trailer")

    def _head(self, head):
        lines = head.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (status.isdigit() and status.isascii()) or rest[3:4] not in ("", " "):
            raise _Malformed(f"the provider sent a malformed status line: {lines[0][:80]!r}")
        status = int(status)
        headers = {}
        lengths = set()
        breaks = len(lines) - 1
        bare = head.count("\r") != breaks or head.count("\n") != breaks  # a CR or LF that ends no line
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if bare and ("\r" in line or "\n" in line):
                # a bare CR or LF in a value (RFC 9110 5.5): the field cannot be trusted
                if name in ("content-length", "transfer-encoding"):
                    raise _Malformed(f"the provider sent a malformed {name} header")
                continue
            if name == "content-length":
                lengths.add(value)
            headers[name] = value
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None
        if lengths and not chunked:  # checked before anything reaches the client
            length = lengths.pop()
            if lengths or not length.isdigit() or not length.isascii() or len(length) > 18:
                raise _Malformed(f"the provider sent a malformed content-length: {headers['content-length'][:40]!r}")
            length = int(length)
        self.keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        call = self.call
        call.status, call._last = status, monotonic()
        call.on_head(status, headers)
        if chunked:
            self.state = "chunk-size"
        elif length is not None:
            self.remaining = length
            if call.max_body is not None and self.remaining > call.max_body:
                raise _Malformed(f"the provider's response is {self.remaining} bytes, over the limit of "
                                 f"{call.max_body} (max_response_body)")
            self.state = "length"
            if not self.remaining:
                self._end(True)
        elif status in (204, 304):
            self._end(True)
        else:
            self.keep_alive, self.state = False, "close"
            call.close_delimited = True

    def _data(self, chunk):
        if chunk:
            call = self.call
            call._last = monotonic()
            self.received += len(chunk)
            if call.max_body is not None and self.received > call.max_body:
                raise _Malformed(f"the provider's response is over the limit of {call.max_body} bytes "
                                 "(max_response_body)")
            call.on_data(chunk)

    def _end(self, complete):
        self.state = "idle"
        if self.done is not None and not self.done.done():
            self.done.set_result(complete)


class Pool:
    """Idle keep-alive connections per (scheme, host, port).

    A connection idle longer than `keepalive` seconds is closed, not reused: a
    NAT or load balancer between us and the provider may have forgotten it
    without a word, and a request written into it would wait for nothing."""

    def __init__(self, per_host=64, keepalive=50.0):
        self.idle = {}
        self.per_host = per_host
        self.keepalive = keepalive
        self.proxies = getproxies_environment()  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY, read once
        self._proxy_for = {}

    def proxy_for(self, scheme, host):
        """The proxy URL for a provider host (None: direct), from the environment; worked out once per host."""
        key = (scheme, host)
        if key not in self._proxy_for:
            bypass = scheme not in self.proxies or proxy_bypass_environment(host, self.proxies)
            self._proxy_for[key] = None if bypass else self.proxies[scheme]
        return self._proxy_for[key]

    async def _connect(self, scheme, host, port, timeout, fresh=False):
        idle = self.idle.get((scheme, host, port))
        if idle and not fresh:
            expired = monotonic() - self.keepalive
            while idle and idle[0].idle_since < expired:  # the oldest first
                idle.pop(0).transport.close()
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn, True
        proxy = self.proxy_for(scheme, host)
        where = f"{host}:{port}" + (f" through the proxy {urlsplit(proxy).netloc.rpartition('@')[2]}" if proxy else "")
        try:
            conn = await asyncio.wait_for(_open(scheme, host, port, proxy), timeout)
        except asyncio.TimeoutError:
            raise UpstreamError("connect", f"connecting to {where} timed out after {timeout:g}s") from None
        except OSError as e:
            raise UpstreamError("connect", f"cannot connect to {where}: {e.strerror or e}") from None
        return conn, False

    def _release(self, key, conn):
        idle = self.idle.setdefault(key, [])
        if conn.keep_alive and not conn.closed and len(idle) < self.per_host:
            conn.call, conn.idle_since = None, monotonic()
            idle.append(conn)
        else:
            conn.transport.close()

    async def send(self, call, method, url, headers, body, timeouts, limits):
        """Send the request and read the whole response into `call`; raise UpstreamError."""
        scheme, host, port, netloc, path = _split(url)
        if scheme == "http" and self.proxy_for(scheme, host):
            path = f"http://{netloc}{path}"  # absolute-form: the proxy reads where to go from the request line
        head = [f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        request = "".join(head).encode() + b"\r\n" + body
        call._last = monotonic()
        watchdog = _Watchdog(call, timeouts)
        try:
            if scheme == "mock":  # the built-in mock provider answers in-process
                return await mock.respond(call, path, body)
            for attempt in (1, 2):
                conn, reused = await self._connect(scheme, host, port, timeouts.connect, fresh=attempt == 2)
                call.conn = conn
                if call.failure:
                    conn.abort()
                    raise call.failure
                conn.start(call, request, limits)
                complete = await conn.done
                if call.failure:
                    raise call.failure
                if complete:
                    self._release((scheme, host, port), conn)
                    return
                conn.abort()
                # A reused connection that failed before any response byte (the provider or a
                # middlebox had dropped it): try once more, on a new connection.
                if not (reused and call.status is None and attempt == 1):
                    raise UpstreamError("closed", "the provider closed the connection before the response was complete")
        finally:
            watchdog.stop()


async def _open(scheme, host, port, proxy):
    """A new connection to host:port, directly or through an HTTP proxy: an http
    provider is reached by sending absolute-form requests to the proxy, an https
    one through a CONNECT tunnel with TLS to the provider inside it."""
    loop = asyncio.get_running_loop()
    tls = _TLS if scheme == "https" else None
    if proxy is None:
        return (await loop.create_connection(_Connection, host, port, ssl=tls))[1]
    p = urlsplit(proxy)
    if tls is None:
        return (await loop.create_connection(_Connection, p.hostname, p.port or 80))[1]
    transport, tunnel = await loop.create_connection(_Tunnel, p.hostname, p.port or 80)
    auth = ""
    if p.username:
        token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    try:
        transport.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
        status = await tunnel.answer
        if status.split(" ")[1:2] != ["200"]:
            raise OSError(f"the proxy refused CONNECT: {status[:200]}")
        conn = _Connection()
        conn.connection_made(await loop.start_tls(transport, conn, tls, server_hostname=host))
        return conn
    except BaseException:  # refused, failed, or timed out (cancelled): the socket goes too
        transport.abort()
        raise


def proxy_problems(environ):
    """Proxy settings this client cannot honour, as start-up problems (it speaks
    plain-HTTP proxies only: CONNECT for https providers, absolute-form for http)."""
    problems = []
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        value = environ.get(name)
        if value and urlsplit(value).scheme != "http":
            shown = urlsplit(value)._replace(netloc=urlsplit(value).netloc.rpartition("@")[2]).geturl()
            problems.append(f"environment: {name}={shown}: only http:// proxies are supported")
    return problems


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: `answer` is its status line."""

    def __init__(self):
        self.answer = asyncio.get_running_loop().create_future()
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" in self.buf and not self.answer.done():
            self.answer.set_result(self.buf.split(b"\r\n", 1)[0].decode("latin-1"))
        elif len(self.buf) > MAX_HEAD and not self.answer.done():
            self.answer.set_exception(OSError("the proxy's answer to CONNECT is too large"))

    def connection_lost(self, exc):
        if not self.answer.done():
            self.answer.set_exception(OSError("the proxy closed the connection during CONNECT"))


@lru_cache(maxsize=1024)
def _split(url):
    """(scheme, host, port, netloc, path?query) of a provider URL; URLs come from the config, so few."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.netloc, parts.path + ("?" + parts.query if parts.query else "")


class _Watchdog:
    """One timer per call, for all its limits: the whole call (`total`), the
    wait for the first byte (`first_byte`) and the silence between two chunks
    of the body (`idle`). It cancels the call when one runs out."""

    def __init__(self, call, timeouts):
        self.call, self.timeouts = call, timeouts
        self.loop = asyncio.get_running_loop()
        self.deadline = monotonic() + timeouts.total
        self.handle = None
        self._arm()

    def _arm(self):
        now = monotonic()
        if now >= self.deadline:
            self.call.cancel(UpstreamError("timeout", f"the provider did not finish within {self.timeouts.total:g}s"))
            return
        limit = self.timeouts.idle if self.call.status is not None else self.timeouts.first_byte
        wait = self.call._last + limit - now
        if wait <= 0:
            what = "sent nothing" if self.call.status is None else "went silent"
            self.call.cancel(UpstreamError("timeout", f"the provider {what} for {limit:g}s"))
            return
        self.handle = self.loop.call_later(min(wait, self.deadline - now), self._arm)

    def stop(self):
        if self.handle:
            self.handle.cancel()
