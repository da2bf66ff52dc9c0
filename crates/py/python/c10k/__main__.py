"""``python -m c10k serve MODULE:OBJECT --listen IP:PORT [--strategy S] [--processes N]``.

With ``--strategy epoll-et|epoll-lt|uring`` (the asyncio loop), OBJECT is an asyncio
Protocol factory (a Protocol class, or any callable returning a protocol). With
``--strategy thread|fork|prefork``, OBJECT is a blocking handler, ``handler(conn)``
(see ``c10k.serve_blocking``), with ``--workers N`` (prefork's pool),
``--idle-timeout`` and ``--max-conns``. Either way the contract of ``c10k serve``:
prints exactly ``listening on IP:PORT`` on stdout once connections are accepted,
drains (stops accepting, gives open connections ``--drain-timeout`` seconds) and
exits 0 on SIGTERM. Bad arguments exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._blocking import BLOCKING_STRATEGIES, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNS, _serve
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


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    """A duration: seconds, or a number with a unit (500ms, 5s, 2m, 1h)."""
    t = text.strip()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):] or "s"
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 500ms, 5s, 2m)") from None
    if value != value or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 500ms, 5s, 2m)")
    return value


def _load(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(
            f"c10k: {spec!r} is not MODULE:FACTORY (a Protocol factory, or MODULE:HANDLER "
            "for thread, fork and prefork)"
        )
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
        raise SystemExit(f"c10k: {spec} is not callable (want a Protocol factory or a handler)")
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m c10k", description="asyncio servers on c10k's engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve", help="serve an asyncio Protocol factory, or a blocking handler(conn)"
    )
    s.add_argument(
        "factory",
        metavar="MODULE:OBJECT",
        help="a Protocol factory (epoll-et, epoll-lt, uring) or a handler (thread, fork, prefork)",
    )
    s.add_argument("--listen", required=True, type=_address, metavar="IP:PORT")
    s.add_argument("--strategy", default="epoll-et", choices=STRATEGIES + BLOCKING_STRATEGIES)
    s.add_argument("--processes", type=int, default=1, metavar="N")
    s.add_argument("--drain-timeout", type=_seconds, default=DEFAULT_DRAIN_TIMEOUT, metavar="SECONDS")
    s.add_argument("--backlog", type=int, default=1024)
    s.add_argument("--workers", type=int, metavar="N", help="prefork: the pool size (default 2 per CPU)")
    s.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"thread/fork/prefork: a recv waiting this long ends the connection (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    s.add_argument(
        "--max-conns",
        type=int,
        metavar="N",
        help=f"thread/fork: close new connections beyond N (default {DEFAULT_MAX_CONNS})",
    )
    args = parser.parse_args(argv)
    if args.strategy in BLOCKING_STRATEGIES:
        return _main_blocking(args)
    for flag, value in (("--workers", args.workers), ("--idle-timeout", args.idle_timeout),
                        ("--max-conns", args.max_conns)):
        if value is not None:
            print(f"c10k: {flag} is for --strategy thread, fork or prefork", file=sys.stderr)
            return 2

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


def _main_blocking(args) -> int:
    """``serve`` with a blocking strategy: ``c10k.serve_blocking`` behind the same
    contract."""
    try:
        handler = _load(args.factory)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2

    def listening(shown: str) -> None:
        print(f"listening on {shown}", flush=True)

    host, port = args.listen
    try:
        code, abandoned = _serve(
            handler,
            (host, port),
            strategy=args.strategy,
            workers=args.workers,
            processes=args.processes,
            drain_timeout=args.drain_timeout,
            idle_timeout=DEFAULT_IDLE_TIMEOUT if args.idle_timeout is None else args.idle_timeout,
            max_conns=DEFAULT_MAX_CONNS if args.max_conns is None else args.max_conns,
            backlog=args.backlog,
            on_listening=listening,
        )
    except (ValueError, TypeError) as e:
        print(f"c10k: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"c10k: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 2
    except ChildrenCrashing as e:
        print(f"c10k: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    if abandoned:
        # Handler threads still running past the drain deadline: do not let the
        # interpreter's shutdown wait for (or pull the lock from under) them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
