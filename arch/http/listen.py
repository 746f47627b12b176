"""Accepting client connections so that no peer can exhaust the process.

Tornado's HTTPServer with five changes:
- at most `max_connections` are open at once; the next one is answered 503
  (with `retry-after`) and closed, never left hanging;
- out of file descriptors (EMFILE), accepting pauses for a moment instead
  of spinning on a listening socket that stays readable (and logging a
  traceback each turn); it resumes once descriptors are free again;
- request headers over `max_header_size` get a 431 instead of a closed
  connection;
- refused connections are closed gracefully: the answer is sent, then what
  the client still sends is read and dropped for a moment (a close with
  unread data would reset the connection before the client read the answer).
- a request's head (and an idle keep-alive connection) and its body must
  arrive within `header_timeout` and `body_timeout`, checked by one sweep over
  the connections a few times per timeout rather than by Tornado's timer per
  read (two timers and their futures on every request, 5% of a stream's CPU).
"""
import asyncio
import errno
import logging
import resource
import socket
import time

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, UnsatisfiableReadError

log = logging.getLogger("arch")

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
PAUSE = 0.1          # seconds between accept attempts while out of descriptors
LOG_EVERY = 10.0     # at most one "out of descriptors" line per this many seconds
LINGER = 1.0         # how long a refused client may keep sending before the close
LINGER_BYTES = 1 << 20


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard one (each stream takes two descriptors); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    except (ValueError, OSError):
        return soft


def default_max_connections(fd_limit):
    """Half the descriptors (a proxied request holds a client and a provider
    connection), less a margin for files, listeners and the log."""
    return max(16, (fd_limit - 64) // 2)


class Server(HTTPServer):
    """`refusal(status, message, head)` makes the bytes of a whole HTTP
    response in the client's dialect, guessed from `head` (what the client
    sent of its request so far)."""

    max_connections = None
    refusal = None
    _out_of_fds_since = None
    _logged_at = 0.0
    header_timeout = body_timeout = None

    def time_reads(self, header_timeout, body_timeout):
        """Drop connections whose request head or body does not arrive within these (seconds)."""
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.conn_params.header_timeout = self.conn_params.body_timeout = None  # Tornado's timers: not needed
        every = max(0.05, min(1.0, header_timeout / 4, body_timeout / 4))
        PeriodicCallback(self._sweep, every * 1000).start()

    def _sweep(self):
        now = IOLoop.current().time()
        for conn in list(self._connections):
            stream = conn.stream
            if stream is not None and stream.reading() and stream.deadline < now and not stream.closed():
                log.info("%s from %s: dropped", "no request head in time" if stream.body_deadline is None
                         else "request body not received in time", conn.context)
                stream.close()

    def add_sockets(self, sockets):
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock):
        loop = IOLoop.current()
        state = {"stopped": False}

        def on_readable(fd, events):
            for _ in range(128):
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as e:
                    if e.errno not in _OUT_OF_FDS:
                        raise
                    loop.remove_handler(sock)
                    self._out_of_fds(e)
                    loop.call_later(PAUSE, resume)
                    return
                if self._out_of_fds_since is not None:
                    log.warning("accepting connections again (%d open)", len(self._connections))
                    self._out_of_fds_since = None
                self._handle_connection(connection, address)

        def resume():
            if not state["stopped"]:
                loop.add_handler(sock, on_readable, IOLoop.READ)

        def stop():
            state["stopped"] = True
            loop.remove_handler(sock)

        loop.add_handler(sock, on_readable, IOLoop.READ)
        return stop

    def _out_of_fds(self, error):
        now = time.monotonic()
        if self._out_of_fds_since is None:
            self._out_of_fds_since = now
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("out of file descriptors (%s) with %d connections open: new connections wait in the "
                        "listen queue", error.strerror, len(self._connections))

    def _handle_connection(self, connection, address):
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            message = f"the gateway is at its limit of {self.max_connections} connections; retry shortly"
            asyncio.ensure_future(linger(connection, lambda head: self.refusal(503, message, head)))
            return
        stream = _ClientStream(connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
        stream.server = self
        self.handle_stream(stream, address)


class _ClientStream(IOStream):
    """An IOStream that answers request headers over the size limit with a 431
    rather than only closing (Tornado closes the stream when a read cannot be
    satisfied within its limit), and that knows by when the read in progress
    must be done: Tornado reads a request's head with read_until_regex and
    only then, its body (fixed-length or chunked) with read_bytes and read_until."""

    server = None
    _answer = None
    deadline = 0.0        # loop time by which the read in progress must be done
    body_deadline = None  # the same for the whole body of the current request, from its first read

    def read_until_regex(self, regex, max_bytes=None):
        self.body_deadline = None
        self.deadline = self.io_loop.time() + self.server.header_timeout
        return super().read_until_regex(regex, max_bytes)

    def read_bytes(self, num_bytes, partial=False):
        self._body_read()
        return super().read_bytes(num_bytes, partial)

    def read_until(self, delimiter, max_bytes=None):
        self._body_read()
        return super().read_until(delimiter, max_bytes)

    def _body_read(self):
        if self.body_deadline is None:
            self.body_deadline = self.io_loop.time() + self.server.body_timeout
        self.deadline = self.body_deadline

    def close(self, exc_info=False):
        if isinstance(exc_info, UnsatisfiableReadError) and not self.closed() and self.server is not None:
            head = bytes(self._read_buffer[:4096])
            limit = self.server.conn_params.max_header_size
            self._answer = lambda more: self.server.refusal(
                431, f"the request headers are over the limit of {limit} bytes", head + more)
        super().close(exc_info)

    def close_fd(self):
        if self._answer is None:
            return super().close_fd()
        sock, self.socket = self.socket, None
        asyncio.ensure_future(linger(sock, self._answer))


async def linger(sock, answer):
    """Read what has arrived (briefly), send `answer(what was read)`, then read and drop
    what the client still sends for up to LINGER seconds, and close."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        head = b""
        try:
            head = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.2)
        except asyncio.TimeoutError:
            pass
        await asyncio.wait_for(loop.sock_sendall(sock, answer(head)), LINGER)
        sock.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(_drain(loop, sock), LINGER)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


async def _drain(loop, sock):
    left = LINGER_BYTES
    while left > 0:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return
        left -= len(data)
