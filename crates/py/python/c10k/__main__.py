"""``python -m c10k serve MODULE:FACTORY --listen IP:PORT [--strategy S] [--processes N]``.

Serves an asyncio Protocol factory (a Protocol class, or any callable returning a
protocol) with the contract of ``c10k serve``: prints exactly ``listening on IP:PORT``
on stdout once connections are accepted, drains (stops accepting, gives open
connections ``--drain-timeout`` seconds) and exits 0 on SIGTERM. Bad arguments exit 2
with one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._loop import STRATEGIES, probe
from ._run import DEFAULT_DRAIN_TIMEOUT, ChildrenCrashing, serve


def _address(text: str):
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{port!r} is not a port number") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port {p} is out of range")
    return host, p


def _load(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"c10k: {spec!r} is not MODULE:FACTORY")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, SyntaxError, whatever the module raises
        raise SystemExit(
            f"c10k: cannot import {module_name!r}: {type(e).__name__}: {e}"
        ) from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"c10k: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise SystemExit(f"c10k: {spec} is not callable (want a Protocol factory)")
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m c10k", description="asyncio servers on c10k's engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve an asyncio Protocol factory")
    s.add_argument("factory", metavar="MODULE:FACTORY", help="e.g. myapp:Echo")
    s.add_argument("--listen", required=True, type=_address, metavar="IP:PORT")
    s.add_argument("--strategy", default="epoll-et", choices=STRATEGIES)
    s.add_argument("--processes", type=int, default=1, metavar="N")
    s.add_argument(
        "--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT, metavar="SECONDS"
    )
    s.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args(argv)

    cpus = os.cpu_count() or 1
    if args.processes < 1 or args.processes > 64 * cpus:
        print(
            f"c10k: --processes must be between 1 and {64 * cpus}, not {args.processes}",
            file=sys.stderr,
        )
        return 2
    why = probe(args.strategy)
    if why is not None:
        print(f"c10k: strategy {args.strategy} cannot run here: {why}; use epoll-et", file=sys.stderr)
        return 2
    try:
        factory = _load(args.factory)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2

    def listening(shown: str) -> None:
        print(f"listening on {shown}", flush=True)

    host, port = args.listen
    try:
        return serve(
            factory,
            host,
            port,
            strategy=args.strategy,
            processes=args.processes,
            drain_timeout=args.drain_timeout,
            backlog=args.backlog,
            on_listening=listening,
        )
    except OSError as e:
        print(f"c10k: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 2
    except ChildrenCrashing as e:
        print(f"c10k: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
