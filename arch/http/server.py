"""The gateway process: routes, listening sockets, reload and shutdown."""
import asyncio
import json
import logging
import os
import signal
import socket
import time
from http.client import responses as REASONS
from pathlib import Path

from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application

from arch.errors import ConfigError
from arch.http import handlers, responses
from arch.http.listen import Server, default_max_connections, raise_fd_limit
from arch.observe import report
from arch.observe.tracing import tracer
from arch.rules.load import BUILTIN
from arch.runtime import build
from arch.state.responses import make_store
from arch.upstream.client import Pool

log = logging.getLogger("arch")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# --workers supervisor: a worker that lived less than STABLE_WORKER seconds crashed "quickly";
# the pause before replacing it doubles from RESTART_BACKOFF; CRASH_LIMIT quick crashes in a row stop the gateway.
STABLE_WORKER = 30.0
RESTART_BACKOFF = 0.25
MAX_RESTART_BACKOFF = 8.0
CRASH_LIMIT = 5
WATCH_INTERVAL = 1.0  # seconds between looks at the config and rules files


class Gateway:
    """Holds the current Runtime snapshot and what outlives reloads (the
    connection pool, the in-flight count)."""

    def __init__(self, config_path, rules_dirs=(), workers=1):
        self.config_path, self.rules_dirs, self.workers = config_path, list(rules_dirs), workers
        self.runtime = build(config_path, self.rules_dirs, workers)
        self.listening = (self.runtime.config.address, self.runtime.config.port)  # fixed until a restart
        tracer.configure(self.runtime.config.tracing)
        report.open_access_log(self.runtime.config.access_log_file)
        self.pool = Pool(keepalive=self.runtime.config.keepalive_seconds)
        self.responses = make_store(self.runtime.config.state)  # stored Responses (see reload)
        self.inflight = 0
        self.active = set()  # chat handlers in flight, to end them if shutdown runs out of drain time
        self._seen = self._fingerprint()

    def _fingerprint(self):
        """(path, mtime, size) of the config, its .env and every rules file: a
        change in any of them, a new file or a deleted one means reload."""
        config = Path(self.config_path)
        files = [config, config.parent / ".env"]
        for d in [BUILTIN, *self.runtime.config.rules_dirs, *self.rules_dirs]:
            files.extend(sorted(Path(d).rglob("*.yaml")))
        seen = []
        for f in files:
            try:
                st = f.stat()
                seen.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                seen.append((str(f), None, None))
        return seen

    def watch(self, interval=WATCH_INTERVAL):
        """Reload when a watched file changes (the polling is a few stat calls)."""
        PeriodicCallback(self.follow, interval * 1000).start()

    def follow(self, quiet=False):
        """Reload if a watched file changed since the last look."""
        seen = self._fingerprint()
        if seen != self._seen:
            self._seen = seen
            self.reload(quiet)

    def reload(self, quiet=False):
        """Swap in a freshly built Runtime; on any problem keep the old one.
        `quiet`: the --workers supervisor following along (its workers log and count)."""
        seen = self._fingerprint()  # before reading: an edit made while building is seen by the next check
        try:
            runtime = build(self.config_path, self.rules_dirs, self.workers)
        except Exception as e:  # a rules file that breaks the loader itself must not take the gateway down
            if not quiet:
                if isinstance(e, ConfigError):
                    log.error("reload rejected, still serving the previous configuration:\n  %s",
                              "\n  ".join(e.problems))
                else:
                    log.exception("reload rejected, still serving the previous configuration")
                report.RELOADS.labels("failure").inc()
            return False
        if runtime.config.state != self.runtime.config.state:  # a new store (the old memory one is let go)
            self.responses = make_store(runtime.config.state)
        self.runtime = runtime
        self.pool.keepalive = runtime.config.keepalive_seconds
        tracer.configure(runtime.config.tracing)
        report.open_access_log(runtime.config.access_log_file)
        self._seen = seen
        if quiet:
            return True
        report.RELOADS.labels("success").inc()
        for w in runtime.warnings:
            log.warning("%s", w)
        if (runtime.config.address, runtime.config.port) != self.listening:
            log.warning("%s: listeners: address/port %s:%s takes a restart; still listening on %s:%s",
                        self.config_path, runtime.config.address, runtime.config.port, *self.listening)
        log.info("configuration reloaded from %s", self.config_path)
        return True

    def application(self):
        args = {"gateway": self}
        # each dialect's endpoint comes from its rules file (a new path takes a restart)
        chat = [(d.path, CREATE.get(d.name, handlers.Chat), {**args, "dialect": d.name})
                for d in self.runtime.rules.dialects.values()]
        return Application([  # matched in order: the endpoints every request of a stream of them takes first
            *chat,
            (r"/v1/responses/compact", responses.Compact, args),
            (r"/v1/responses/([^/]+)", responses.Stored, args),
            (r"/v1/responses/([^/]+)/input_items", responses.InputItems, args),
            (r"/v1/messages/count_tokens", handlers.CountTokens, args),
            (r"/v1/models", handlers.Models, args),
            (r"/healthz", handlers.Health, args),
            (r"/metrics", handlers.Metrics, args),
            (r"/v1/usage", handlers.Usage, args),
        ], default_handler_class=handlers.NotFound, default_handler_args=args, log_function=_access_log)


CREATE = {"responses": responses.Create}  # dialects whose create endpoint keeps state


def _access_log(handler):
    """Chat requests write their own JSON access line (report.done); the rest a short one."""
    if not isinstance(handler, handlers.Chat):
        log.debug("%d %s %s %.1fms", handler.get_status(), handler.request.method, handler.request.uri,
                  1000 * handler.request.request_time())


def _refusal(gateway, status, message, head):
    """A whole HTTP response refusing a connection before Tornado parsed its
    request, in the dialect `head` (the start of the request) suggests."""
    lowered = head[:8192].lower()
    anthropic = lowered.split(b"\r\n", 1)[0].find(b" /v1/messages") >= 0 or b"\nanthropic-version:" in lowered
    dialect = gateway.runtime.rules.dialects["anthropic" if anthropic else "openai"]
    status, body = dialect.render_error(status, message)
    data = json.dumps(body).encode()
    retry = "retry-after: 1\r\n" if status in (503, 529) else ""
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n{retry}connection: close\r\n\r\n").encode() + data


def listen(address, port, workers=1):
    """Bind now, so that a busy port fails here, once, before anything starts (the
    caller reports it): the listening sockets of one process, or under --workers
    the port held for the workers (see _hold_port)."""
    if workers > 1:
        return _hold_port(address, port)
    # a deep accept queue: a burst of new streams waits, not reset
    return bind_sockets(port, address, backlog=4096)


def serve(gateway, address, bound, workers=1):
    """Serve on what listen() bound, in this process or in `workers` forked ones;
    the exit status: 1 if requests had to be cut at shutdown, else 0."""
    config = gateway.runtime.config
    sockets = bound
    if workers > 1:
        port = bound[0].getsockname()[1]
        code = _supervise(gateway, workers)
        if code is not None:
            return code  # the supervisor's workers have all exited
        for sock in bound:
            sock.close()
        # Each worker listens on a socket of its own in the port's SO_REUSEPORT group, so the
        # kernel spreads connections evenly; one inherited socket lets the least busy worker
        # take nearly all of them.
        sockets = bind_sockets(port, address, reuse_port=True, backlog=4096)
    fd_limit = raise_fd_limit()
    # A body over the limit gets its 413 from the handler (which stops keeping it at the limit);
    # Tornado's own cap is only a backstop for a chunked body still arriving after the answer.
    server = Server(gateway.application(), max_body_size=4 * config.max_body_bytes,
                    max_header_size=config.max_header_bytes)
    server.time_reads(config.header_timeout, config.body_timeout)
    server.max_connections = config.max_connections or default_max_connections(fd_limit)
    server.refusal = lambda status, message, head: _refusal(gateway, status, message, head)
    server.add_sockets(sockets)
    gateway.watch()
    loop = IOLoop.current()
    failed = []

    def shutdown(*_):
        log.info("shutting down: no new connections; waiting for %d in-flight request(s)", gateway.inflight)
        for sock in sockets:  # connections the kernel already queued are served, not reset by the close
            try:
                while True:
                    server._handle_connection(*sock.accept())
            except OSError:  # the queue is empty (or the socket already closed)
                pass
        server.stop()
        drain = gateway.runtime.config.drain_seconds
        deadline = loop.time() + drain

        async def check():
            if gateway.inflight and loop.time() < deadline:
                loop.call_later(0.05, check)
                return
            if gateway.inflight:
                cut = _cut(gateway, f"the gateway shut down: drain_timeout ({drain:g}s) ran out")
                log.error("drain_timeout (%gs) ran out: %d request(s) cut (%s)", drain, len(cut), ", ".join(cut))
                failed.append(len(cut))
                while gateway.active and loop.time() < deadline + 2:  # their errors and access-log lines
                    await asyncio.sleep(0.02)
            if gateway.runtime.admission is not None:  # unused leases, usage not sent yet
                await gateway.runtime.admission.state.flush()
            await tracer.flush()  # spans still waiting for their batch
            loop.stop()

        loop.add_callback(check)

    signal.signal(signal.SIGTERM, lambda *a: loop.add_callback_from_signal(shutdown))
    signal.signal(signal.SIGINT, lambda *a: loop.add_callback_from_signal(shutdown))
    signal.signal(signal.SIGHUP, lambda *a: loop.add_callback_from_signal(gateway.reload))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    loop.start()
    return 1 if failed else 0


def _cut(gateway, message):
    """End every request still in flight (each client gets an error in its dialect,
    in-stream for a stream, and each its access-log line); their request ids."""
    cut = list(gateway.active)
    for handler in cut:
        handler.cut(message)
    return [h.request_id for h in cut]


def _hold_port(address, port):
    """Bind, without listening, what the workers will listen on: a busy port fails once,
    in the parent, and the port stays ours across worker restarts. A socket that does not
    listen is not in the SO_REUSEPORT group, so it takes no connections."""
    held = []
    for family, kind, proto, _, addr in socket.getaddrinfo(address or None, port, socket.AF_UNSPEC,
                                                           socket.SOCK_STREAM, 0, socket.AI_PASSIVE):
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr[0], port) + tuple(addr[2:]))
        held.append(sock)
        port = sock.getsockname()[1]  # port 0: every address on the port the first one got
    return held


def _supervise(gateway, workers):
    """Fork `workers` processes that serve the shared sockets; the parent stays
    to pass SIGTERM/SIGINT/SIGHUP on to them, restart one that crashes, and
    return once all have exited after a shutdown: 0, or 1 if one of them had
    to cut requests on its way out. In a worker: None.

    A worker that crashes soon after it started is restarted after a pause that
    doubles each time (a broken setup must not fork in a tight loop); after
    CRASH_LIMIT such crashes in a row the gateway stops, exiting 1.

    The parent follows the files (and SIGHUP) as its workers do, quietly, so
    that a replacement is forked with the configuration the live workers
    serve: after a reload, and after a broken edit that they all rejected."""
    children = {}
    stopping = False
    reload_asked = False
    quick_crashes = 0
    unclean = False
    failed = False

    def spawn():
        gateway.follow(quiet=True)
        pid = os.fork()
        if pid == 0:
            # held, not lost, until serve() has the worker's own handlers in place
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            return True
        children[pid] = time.monotonic()
        return False

    def forward(signum, _frame):
        nonlocal stopping, reload_asked
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        reload_asked = reload_asked or signum == signal.SIGHUP
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for sig in SIGNALS:
        signal.signal(sig, forward)
    for _ in range(workers):
        if spawn():
            return None
    next_look = time.monotonic() + WATCH_INTERVAL
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:  # nobody exited: follow the files, then look again shortly
            if reload_asked:
                reload_asked = False
                gateway.reload(quiet=True)
            elif time.monotonic() >= next_look:
                next_look = time.monotonic() + WATCH_INTERVAL
                gateway.follow(quiet=True)
            time.sleep(0.05)
            continue
        started = children.pop(pid, None)
        report.process_exited(pid)
        if stopping or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            unclean = unclean or status != 0  # a worker that cut requests at shutdown
            continue
        lived = time.monotonic() - (started or 0)
        quick_crashes = quick_crashes + 1 if lived < STABLE_WORKER else 1
        if quick_crashes > CRASH_LIMIT:
            log.error("worker %d exited (status %d): %d workers crashed in a row within %gs of starting; stopping",
                      pid, status, quick_crashes, STABLE_WORKER)
            forward(signal.SIGTERM, None)
            failed = True
            continue
        pause = min(RESTART_BACKOFF * 2 ** (quick_crashes - 1), MAX_RESTART_BACKOFF)
        log.warning("worker %d exited (status %d); starting another in %.2fs", pid, status, pause)
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if not stopping and spawn():
            return None
    if failed:
        raise SystemExit("archgw: stopped: workers kept crashing (see the log above)")
    return 1 if unclean else 0
