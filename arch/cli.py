"""`archgw up` and `archgw validate` (also `python -m arch ...`)."""
import argparse
import asyncio
import errno
import logging
import os
import sys
import tempfile

from arch.errors import ConfigError
from arch.runtime import build


def main(argv=None):
    parser = argparse.ArgumentParser(prog="archgw", description="One endpoint for every LLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the gateway in the foreground")
    validate = sub.add_parser("validate", help="check the config and rules; exit 1 listing every problem")
    for p in (up, validate):
        p.add_argument("config", nargs="?", default="arch_config.yaml", help="default: ./arch_config.yaml")
        p.add_argument("--rules", action="append", default=[], metavar="DIR",
                       help="a rules directory laid over the built-in rules (repeatable)")
    up.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    up.add_argument("--host", help="address to listen on (default: the config's listener address)")
    up.add_argument("--port", type=int, help="port to listen on (default: the config's listener port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return _validate(args) if args.command == "validate" else _up(args)


def _validate(args):
    try:
        runtime = build(args.config, args.rules)
    except ConfigError as e:
        print(f"{args.config}: {len(e.problems)} problem(s):", *(f"  {p}" for p in e.problems), sep="\n")
        return 1
    for w in runtime.warnings:
        print(f"warning: {w}")
    print(f"{args.config}: OK ({len(runtime.routes.targets)} model(s), {len(runtime.routes.aliases)} alias(es), "
          f"{len(runtime.routes.patterns)} pattern(s), "
          f"{len(runtime.rules.files)} rules file(s))")
    return 0


def _use_uvloop():
    """uvloop when installed (~10% more requests/s, see README); ARCHGW_LOOP=asyncio opts out."""
    if os.environ.get("ARCHGW_LOOP") == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _up(args):
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # must be set before prometheus_client is imported, so every worker writes shared files
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="archgw-metrics-")
    from arch.http.server import Gateway, listen, serve  # tornado's server and metrics only when serving
    _use_uvloop()

    try:
        gateway = Gateway(args.config, args.rules, args.workers)
    except ConfigError as e:
        print(f"{args.config}: cannot start, {len(e.problems)} problem(s):", *(f"  {p}" for p in e.problems),
              sep="\n", file=sys.stderr)
        return 1
    runtime = gateway.runtime
    config = runtime.config
    log = logging.getLogger("arch")
    for w in runtime.warnings:
        log.warning("%s", w)
    address = args.host or config.address
    port = config.port if args.port is None else args.port
    try:
        sockets = listen(address, port, args.workers)
    except OSError as e:
        print(f"archgw: cannot listen on {address}:{port}: {e.strerror or e}"
              + (" (another process has it; choose another with --port)" if e.errno == errno.EADDRINUSE else ""),
              file=sys.stderr)
        return 1
    lines = [f"archgw listening on http://{address}:{port}"]
    lines += [f"  model  {t.name:<40} -> {t.provider} {t.model} ({t.url})" for t in runtime.routes.targets]
    lines += [f"  alias  {a:<40} -> {t}" for a, t in runtime.routes.aliases.items()]
    lines += [f"  match  {p:<40} -> {t.provider} {t.model}" for p, t in runtime.routes.patterns.items()]
    print("\n".join(lines), flush=True)
    return serve(gateway, address, sockets, workers=args.workers)
