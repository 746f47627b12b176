"""A small asyncio Redis client: what the gateway's shared state needs, no more.

One connection per process, pipelined: the commands of one event-loop
iteration leave in one write and replies are matched to them in order, so
many requests share one socket and none waits for another's reply. Every command has a bounded wait (`timeout`);
a Redis that does not answer in time, refuses the connection or drops it makes
the command raise `StateError` at once, and for `retry_interval` seconds after
that every command fails fast without touching the network (a dead Redis must
not cost each request a timeout). The next command after that reconnects.

The interface other stages use:

    redis = Redis("redis://127.0.0.1:6379/0")
    await redis.set(key, value, ttl=60)        # ttl in seconds, optional
    await redis.get(key)                       # bytes or None
    await redis.delete(key, ...)               # how many existed
    await redis.eval(SCRIPT, keys, args)       # SCRIPT = Script(lua_source)
    await redis.execute("HGETALL", key)        # any other command
    await redis.execute_many(cmd1, cmd2)       # in one write, in order: [reply or ReplyError, ...]
    redis.close()

`eval` sends EVALSHA (the script's SHA1, not its text) and falls back to EVAL
once when Redis does not know the script yet (a restart, a fresh server).
Replies are RESP2 values: bytes, int, list, None; an error reply raises
`ReplyError`. Why not redis-py: see the README's Dependencies.
"""
import asyncio
import hashlib
from collections import deque
from urllib.parse import unquote, urlparse


class StateError(Exception):
    """Redis did not answer: unreachable, too slow, or the connection dropped."""


class ReplyError(StateError):
    """Redis answered with an error (a bad command or a failing script)."""


class Script:
    """A Lua script, identified by its SHA1 so EVALSHA sends 40 bytes, not the text."""

    def __init__(self, source):
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        kind = a.__class__
        if kind is str:
            a = a.encode()
        elif kind is int:
            a = b"%d" % a
        elif kind is not bytes:
            a = (repr(a) if kind is float else str(a)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf, pos):
    """One RESP2 value from `buf` at `pos`: (value, next position); _Incomplete if it has not all arrived."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + n]), pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            value, pos = _parse(buf, pos)
            items.append(value)
        return items, pos
    if kind == b"+":
        return bytes(line), pos
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), pos
    raise StateError(f"unexpected reply from Redis: {bytes(buf[pos - 2 - len(line) - 1:pos])[:80]!r}")


class _Connection(asyncio.Protocol):
    """One socket: writes commands, resolves the oldest waiting future per reply."""

    def __init__(self, on_lost):
        self.transport = None
        self.waiting = deque()   # (future, deadline), oldest first
        self.watchdog = None     # one timer for the oldest deadline, not one per command
        self.pending = []        # commands written together at the end of this loop iteration
        self.buf = bytearray()
        self.on_lost = on_lost

    def connection_made(self, transport):
        self.transport = transport

    def write(self, data):
        """Commands sent in one event-loop iteration leave in one write: under load, one
        system call and one Redis read for many requests' admissions."""
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(data)

    def flush(self):
        if self.transport is not None and self.pending and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending))
        self.pending.clear()

    def data_received(self, data):
        buf = self.buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                fut = self.waiting.popleft()[0]
                if not fut.done():  # not cancelled by its caller
                    if isinstance(value, ReplyError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except (StateError, ValueError, IndexError) as e:  # a stream we cannot follow: start again
            self.close(StateError(f"Redis connection out of step: {e}"))
            return
        del buf[:pos]

    def connection_lost(self, exc):
        self.close(StateError(f"Redis connection lost ({exc or 'closed by the server'})"))

    def close(self, error):
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
            self.on_lost(self)
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(error)


class Redis:
    """A pipelined client for one Redis URL (redis://[user:password@]host:port/db)."""

    def __init__(self, url, timeout=0.25, connect_timeout=0.5, retry_interval=1.0):
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"{url!r}: only redis:// URLs are supported")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        self.db = int(u.path.strip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout, self.connect_timeout, self.retry_interval = timeout, connect_timeout, retry_interval
        self._conn = None
        self._connecting = None
        self._down_until = 0.0
        self._last_error = None

    async def _connection(self):
        if self._conn is not None:
            return self._conn
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            raise StateError(f"Redis at {self.host}:{self.port} is unavailable ({self._last_error})")
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self):
        loop = asyncio.get_running_loop()
        conn = None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self._lost), self.host, self.port), self.connect_timeout)
            conn.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
            setup = []
            if self.password is not None:
                setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            for args in setup:
                await self._send(conn, args)
        except (OSError, asyncio.TimeoutError, StateError) as e:
            if conn is not None:
                conn.close(StateError("setup failed"))
            self._failed(e if isinstance(e, StateError) else StateError(f"cannot connect to Redis at "
                                                                       f"{self.host}:{self.port}: {e or 'timed out'}"))
            raise self._last_error from None
        self._conn = conn
        return conn

    def _lost(self, conn):
        if self._conn is conn:
            self._conn = None

    def _failed(self, error):
        self._last_error = error
        self._down_until = asyncio.get_running_loop().time() + self.retry_interval

    def _send(self, conn, args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        conn.waiting.append((fut, loop.time() + self.timeout))
        conn.write(_encode(args))
        if conn.watchdog is None:
            conn.watchdog = loop.call_later(self.timeout, self._watch, conn)
        return fut

    def _watch(self, conn):
        """The oldest command must have its reply by its deadline, else the connection is not
        to be trusted: every waiting command fails, and for a while commands fail fast."""
        conn.watchdog = None
        if not conn.waiting or conn.transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = conn.waiting[0][1]
        if loop.time() < deadline:
            conn.watchdog = loop.call_at(deadline, self._watch, conn)
            return
        error = StateError(f"Redis at {self.host}:{self.port} did not answer within {self.timeout}s")
        self._failed(error)
        conn.close(error)

    async def execute(self, *args):
        conn = await self._connection()
        try:
            return await self._send(conn, args)
        except ReplyError:
            raise
        except StateError as e:
            self._failed(e)
            raise

    async def execute_many(self, *commands):
        """The commands in one write, in order, and their replies: an error reply is a ReplyError
        in its place, not raised, so that the others' replies still count."""
        conn = await self._connection()
        replies = await asyncio.gather(*(self._send(conn, args) for args in commands), return_exceptions=True)
        for r in replies:
            if isinstance(r, BaseException) and not isinstance(r, ReplyError):
                if isinstance(r, StateError):
                    self._failed(r)
                raise r
        return replies

    async def get(self, key):
        return await self.execute("GET", key)

    async def set(self, key, value, ttl=None):
        if ttl is None:
            return await self.execute("SET", key, value)
        return await self.execute("SET", key, value, "PX", max(1, int(ttl * 1000)))

    async def delete(self, *keys):
        return await self.execute("DEL", *keys)

    async def eval(self, script, keys=(), args=()):
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    def close(self):
        if self._conn is not None:
            self._conn.close(StateError("Redis client closed"))
