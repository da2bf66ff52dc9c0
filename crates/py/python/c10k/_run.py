"""Running asyncio code on c10k's loop, in one process or one per core.

``run(main, processes=N)`` forks N single-threaded interpreters (each runs ``main``
on its own c10k loop, whose servers default to ``SO_REUSEPORT``), restarts a child
that dies, and on SIGTERM drains them all and returns. ``serve`` is the same
for a Protocol factory on a listening address the parent binds (the command line
``python -m c10k serve``).

The supervisor forks with ``os.fork`` (not a raw fork(2) from Rust) so that
CPython's own fork handlers run in the children.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Callable, List, Optional

from ._loop import STRATEGIES, Loop

#: How long a draining process waits for its connections (``c10k serve``'s default).
DEFAULT_DRAIN_TIMEOUT = 5.0
#: A child that dies sooner than this after starting counts towards a crash loop.
CRASH_WINDOW = 1.0
#: Quick deaths in a row after which the supervisor gives up (exit status 1).
CRASH_LIMIT = 5
#: The longest pause before restarting a child (doubling from 0.1 s).
MAX_BACKOFF = 5.0


class ChildrenCrashing(RuntimeError):
    """Children kept dying right after they started."""


def _check(strategy: str, processes: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer, not {processes!r}")
    limit = 64 * (os.cpu_count() or 1)
    if processes > limit:
        raise ValueError(f"processes={processes} is more than 64 per CPU ({limit})")


def _run_one(main, strategy: str, reuse_port: bool, drain_timeout: float):
    """Run ``main`` on a new c10k loop; SIGTERM drains the loop's servers and ends it.

    The drain closes the servers (which also ends a ``serve_forever()``), waits up to
    ``drain_timeout`` for their connections, and only then cancels ``main`` if it is
    still running.
    """
    loop = Loop(strategy, reuse_port=reuse_port)
    try:
        asyncio.set_event_loop(loop)
        coro = main() if callable(main) else main
        task = loop.create_task(coro)
        drain_task = []

        async def drain():
            await loop.drain(drain_timeout)
            task.cancel()

        def on_term():
            if not drain_task:
                drain_task.append(loop.create_task(drain()))

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            if not drain_task:
                raise
            result = None
        if drain_task:
            # main may end as soon as its servers close (serve_forever does): the
            # connections still get their drain time.
            loop.run_until_complete(drain_task[0])
        return result
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class _Supervisor:
    """N children, each running ``child(i)``; restarts, drain, crash loops."""

    def __init__(self, processes: int, child: Callable[[int], int], on_start=None, on_stop=None):
        self.n = processes
        self.child = child
        self.pids: dict = {}
        self.started: dict = {}
        self.quick_deaths = 0
        self.backoff = 0.1
        self.stopping = False
        self.restarts = 0
        self.on_start = on_start
        self.on_stop = on_stop

    def spawn(self, i: int) -> None:
        # SIGTERM/SIGINT stay blocked across the fork, so that the supervisor's handler
        # never runs in a child that has not reset it yet.
        signals = {signal.SIGTERM, signal.SIGINT}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            raise
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = self.child(i)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 0)
        self.pids[pid] = i
        self.started[i] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def reap(self) -> list:
        """Children that exited since the last call: (pid, index, status, lifetime)."""
        dead = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pids.clear()
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            i = self.pids.pop(pid, None)
            if i is None:
                continue
            dead.append((pid, i, status, time.monotonic() - self.started.get(i, 0.0)))
        return dead

    def run(self) -> int:
        def term(signum, frame):
            if not self.stopping and self.on_stop is not None:
                self.on_stop()
            self.stopping = True
            for pid in list(self.pids):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        old_term = signal.signal(signal.SIGTERM, term)
        old_int = signal.signal(signal.SIGINT, term)
        restarts = []  # (when, index): children to start again
        try:
            for i in range(self.n):
                self.spawn(i)
            if self.on_start is not None:
                self.on_start()
            while self.pids or (restarts and not self.stopping):
                for pid, i, status, lived in self.reap():
                    if self.stopping:
                        continue
                    code = os.waitstatus_to_exitcode(status)
                    quick = lived < CRASH_WINDOW
                    self.quick_deaths = self.quick_deaths + 1 if quick else 0
                    giving_up = self.quick_deaths >= CRASH_LIMIT
                    print(
                        f"c10k: process {i} (pid {pid}) exited with {_describe(code)}"
                        f" after {lived:.1f} s"
                        + ("" if giving_up else "; restarting"),
                        file=sys.stderr,
                        flush=True,
                    )
                    if giving_up:
                        term(signal.SIGTERM, None)
                        while self.pids:
                            self.reap()
                            time.sleep(0.02)
                        raise ChildrenCrashing(
                            f"{CRASH_LIMIT} children died within {CRASH_WINDOW} s of starting"
                        )
                    delay = self.backoff if quick else 0.0
                    self.backoff = min(self.backoff * 2, MAX_BACKOFF) if quick else 0.1
                    restarts.append((time.monotonic() + delay, i))
                now = time.monotonic()
                due = [r for r in restarts if r[0] <= now]
                restarts = [r for r in restarts if r[0] > now]
                for _, i in due:
                    if not self.stopping:
                        self.restarts += 1
                        self.spawn(i)
                # Children are few and this is their parent only: a 20 ms poll costs
                # nothing and keeps the lifetimes and back-off exact.
                time.sleep(0.02)
            return 0
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def run(
    main,
    *,
    strategy: str = "epoll-et",
    processes: int = 1,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
):
    """Run ``main`` (a coroutine function, or a coroutine when ``processes`` is 1) on
    c10k's loop and return its result.

    With ``processes=N`` > 1, N forked interpreters each run ``main()`` on their own
    loop; servers they create default to ``reuse_port=True``, so the kernel spreads
    connections over them. A child that dies is restarted; SIGTERM (or SIGINT)
    drains every child (servers stop accepting, connections get ``drain_timeout``
    seconds to finish) and ``run`` returns None. Children that keep dying at start
    raise ``ChildrenCrashing``.

    In every process SIGTERM drains: the loop's servers stop accepting, open
    connections get ``drain_timeout`` seconds, then ``main`` is cancelled.
    """
    _check(strategy, processes)
    if processes == 1:
        return _run_one(main, strategy, False, drain_timeout)
    if not callable(main):
        raise TypeError("with processes > 1, main must be a coroutine function (called once per process)")

    def child(i: int) -> int:
        _run_one(main, strategy, True, drain_timeout)
        return 0

    _Supervisor(processes, child).run()
    return None


def _listeners(host: str, port: int, count: int, backlog: int) -> List[socket.socket]:
    """``count`` listening sockets on one address (SO_REUSEPORT when more than one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    socks: List[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(addr)
            if addr[1] == 0:
                # The others take the port the kernel gave the first.
                addr = (addr[0], s.getsockname()[1]) + tuple(addr[2:])
            s.listen(backlog)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _shown(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    strategy: str = "epoll-et",
    processes: int = 1,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    backlog: int = 1024,
    on_listening: Optional[Callable[[str], None]] = None,
) -> int:
    """Serve ``protocol_factory`` on ``host:port`` until SIGTERM; returns the exit status.

    The address is bound before anything runs (one socket per process, with
    ``SO_REUSEPORT``, when ``processes`` > 1); ``on_listening("IP:PORT")`` is called
    once connections are accepted.
    """
    _check(strategy, processes)
    socks = _listeners(host, port, processes, backlog)
    shown = _shown(socks[0])

    async def main_for(sock):
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory, sock=sock, backlog=backlog)
        if processes == 1 and on_listening is not None:
            on_listening(shown)
        await server.serve_forever()

    if processes == 1:
        _run_one(lambda: main_for(socks[0]), strategy, False, drain_timeout)
        return 0

    def child(i: int) -> int:
        for j, s in enumerate(socks):
            if j != i:
                s.close()
        _run_one(lambda: main_for(socks[i]), strategy, True, drain_timeout)
        return 0

    def started():
        if on_listening is not None:
            on_listening(shown)

    try:
        def stop():
            # New connections are refused once each child has closed its copy too.
            for s in socks:
                s.close()

        return _Supervisor(processes, child, on_start=started, on_stop=stop).run()
    finally:
        for s in socks:
            s.close()
