"""Blocking-style handlers on c10k's engine: ``serve_blocking(handler, address, ...)``.

``handler(conn)`` is called once per connection with a socket-like
``c10k.Connection`` (``recv``, ``recv_into``, ``send``, ``sendall``, ``makefile``,
``settimeout``, ``getpeername``, ``shutdown``, ``close``...) and serves it from start
to end in straight-line code, as a ``socketserver`` handler does. Every wait happens
in Rust with the interpreter's lock released, so other connections' handlers run
meanwhile. Strategies:

- ``"thread"``: one OS thread per connection (an idle thread is reused for the next
  connection for a while); the accept loop runs in Rust without the lock.
  ``processes=N`` runs N such servers behind ``SO_REUSEPORT`` (one interpreter each).
- ``"fork"``: one child process per connection, forked with ``os.fork`` (so that
  CPython's fork handlers run); the child runs the handler and exits.
- ``"prefork"``: ``workers`` processes forked at start, each accepting on the shared
  listener and serving one connection at a time; a worker that dies is replaced.

SIGTERM (or SIGINT) drains: accepting stops, a ``recv`` that would wait returns
``b""`` (as the Rust handlers' reads return end of stream), handlers in flight finish,
and every wait is bounded by ``drain_timeout``.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Optional, Tuple, Union

from ._engine import Acceptor, Connection, Gate
from ._run import DEFAULT_DRAIN_TIMEOUT, _listeners, _shown, _Supervisor

logger = logging.getLogger("c10k")

BLOCKING_STRATEGIES = ("thread", "fork", "prefork")
#: Close a connection whose ``recv`` waited this long (``c10k serve``'s default).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Connections served at once beyond which new ones are closed (``c10k serve``'s).
DEFAULT_MAX_CONNS = 100_000
#: Stack of a connection thread. Python code runs on it (CPython 3.12+ checks its
#: own C recursion against the real stack), so it is larger than the Rust `thread`
#: strategy's 64 KiB; it is address space, touched only as deep as a handler goes.
THREAD_STACK = 1024 * 1024
#: Extra time a forked child or worker gets past the drain timeout before SIGALRM
#: ends it (a handler busy on the CPU does not look at the drain).
DRAIN_MARGIN = 2


def default_workers() -> int:
    """``prefork``'s pool size: 2 per CPU, at least 2.

    A prefork worker serves one connection at a time, so the pool size *is* the
    concurrency. Blocking handlers spend part of each request waiting (on the client,
    on a database), so one worker per CPU would leave CPUs idle; two per CPU keeps
    one computing while the other waits (the sync-worker rule of thumb of gunicorn,
    ``2 x cores + 1``) while bounding memory: each worker is a whole interpreter.
    """
    return max(2, 2 * (os.cpu_count() or 1))


class _Warn:
    """A warning logger that says at most one thing per second (a flood of refused
    connections must not become a flood of log lines); says how many it held back."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last = -math.inf
        self.held = 0
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.interval:
                self.held += 1
                return
            held, self.held, self.last = self.held, 0, now
        if held:
            message += f" ({held} similar message(s) held back)"
        logger.warning("c10k: %s", message)


def _handle(handler, conn) -> None:
    """Call ``handler(conn)``; log what it raises (only this connection ends); close."""
    try:
        handler(conn)
    except Exception:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = "?"
        logger.exception("c10k: handler %r failed on a connection from %s", handler, peer)
    finally:
        conn._finish()


def _makefile(conn, mode="r", buffering=None, encoding=None, errors=None, newline=None):
    """``Connection.makefile``: io objects over ``socket.SocketIO`` (which only needs
    ``recv_into``, ``send``, ``fileno`` and ``_decref_socketios``), as ``socket``."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
    writing = "w" in mode
    reading = "r" in mode or not writing
    binary = "b" in mode
    raw = socket.SocketIO(conn, ("r" if reading else "") + ("w" if writing else ""))
    conn._incref_socketios()
    if buffering is None or buffering < 0:
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0:
        if not binary:
            raise ValueError("unbuffered streams must be binary")
        return raw
    if reading and writing:
        buffer = io.BufferedRWPair(raw, raw, buffering)
    elif reading:
        buffer = io.BufferedReader(raw, buffering)
    else:
        buffer = io.BufferedWriter(raw, buffering)
    if binary:
        return buffer
    text = io.TextIOWrapper(buffer, encoding, errors, newline)
    text.mode = mode
    return text


class _Signals:
    """SIGTERM and SIGINT drain ``gate``; a pipe registered with
    ``signal.set_wakeup_fd`` wakes the accept loop (a signal can be delivered to any
    thread, its Python handler runs on the main one). Restored on exit.

    ``chld``: SIGCHLD wakes it too (the ``fork`` parent reaps). ``alarm``: a drain
    also arms SIGALRM (default action: the process ends) ``drain_timeout`` plus a
    margin later, for a forked process whose handler does not come back.
    """

    def __init__(self, gate: Gate, drain_timeout: float, chld: bool = False, alarm: bool = False):
        self.gate = gate
        self.drain_timeout = drain_timeout
        self.chld = chld
        self.alarm = alarm
        self.fd: Optional[int] = None
        self._w: Optional[int] = None
        self._old: dict = {}
        self._old_wakeup = -1
        self.installed = False

    def _on_term(self, signum, frame) -> None:
        self.gate.drain()
        if self.alarm and math.isfinite(self.drain_timeout):
            signal.alarm(max(1, math.ceil(self.drain_timeout)) + DRAIN_MARGIN)

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is not threading.main_thread():
            return self  # no signals here: the caller drains through the gate
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        self.fd, self._w = r, w
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        sigs = {signal.SIGTERM: self._on_term, signal.SIGINT: self._on_term}
        if self.chld:
            sigs[signal.SIGCHLD] = lambda signum, frame: None
        if self.alarm:
            sigs[signal.SIGALRM] = signal.SIG_DFL
        for sig, handler in sigs.items():
            self._old[sig] = signal.signal(sig, handler)
        self.installed = True
        return self

    def wait(self, timeout: float) -> None:
        """Wait (lock released) up to ``timeout`` for a signal; runs the handlers."""
        import select

        if self.fd is None:
            time.sleep(min(timeout, 0.05))
            return
        try:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self.fd, 64):
                    pass
            except BlockingIOError:
                pass

    def in_child(self) -> None:
        """A ``fork`` child: the parent's drain reaches it through the gate's eventfd;
        SIGTERM ends it, SIGINT (a terminal's ^C, sent to the whole group) is left to
        the parent, which drains."""
        if not self.installed:
            return
        signal.set_wakeup_fd(-1)
        for fd in (self.fd, self._w):
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.installed = False

    def __exit__(self, *exc) -> None:
        if not self.installed:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self.fd, self._w):
            os.close(fd)
        self.installed = False


class _Config:
    def __init__(self, drain_timeout: float, idle_timeout: float, max_conns: int):
        self.drain_timeout = drain_timeout
        self.idle_timeout = idle_timeout
        self.max_conns = max_conns

    def gate(self) -> Gate:
        return Gate(self.drain_timeout, self.idle_timeout)


def _thread_server(handler, sock: socket.socket, cfg: _Config, listening, alarm=False) -> int:
    """The ``thread`` strategy in this process; returns how many connection threads
    were still running at the drain deadline."""
    gate = cfg.gate()
    with _Signals(gate, cfg.drain_timeout, alarm=alarm) as sig:
        acceptor = Acceptor(sock.fileno(), gate, sig.fd, _Warn())
        sock.close()
        try:
            if listening is not None:
                listening()
            runner = functools.partial(_handle, handler)
            left = acceptor.serve_threads(runner, cfg.max_conns, THREAD_STACK)
        finally:
            acceptor.close()
    if left:
        logger.warning(
            "c10k: %d handler thread(s) still running at the drain deadline; abandoned", left
        )
    return left


def _reap(children: set) -> None:
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def _fork_child(handler, conn, acceptor, sig: _Signals) -> None:
    code = 0
    try:
        acceptor.close()
        sig.in_child()
        _handle(handler, conn)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _fork_server(handler, sock: socket.socket, cfg: _Config, listening) -> int:
    """The ``fork`` strategy: one child per connection."""
    gate = cfg.gate()
    children: set = set()
    warn = _Warn()
    with _Signals(gate, cfg.drain_timeout, chld=True) as sig:
        acceptor = Acceptor(sock.fileno(), gate, sig.fd, warn)
        sock.close()
        try:
            if listening is not None:
                listening()
            while True:
                conn = acceptor.accept()  # waits with the lock released
                _reap(children)
                if conn is None:
                    if gate.draining():
                        break
                    continue
                if len(children) >= cfg.max_conns:
                    conn._finish()
                    warn(f"{cfg.max_conns} connections open (max_conns): closed a new one")
                    continue
                pid = os.fork()
                if pid == 0:
                    _fork_child(handler, conn, acceptor, sig)
                conn._finish()  # the child has its own copy
                children.add(pid)
        finally:
            acceptor.close()
            gate.drain()
        # The children saw the drain on the gate's eventfd; wait for them.
        deadline = time.monotonic() + cfg.drain_timeout + DRAIN_MARGIN
        while True:
            _reap(children)
            left = deadline - time.monotonic()
            if not children or left <= 0:
                break
            sig.wait(left)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if children:
        logger.warning("c10k: %d connection process(es) killed at the drain deadline", len(children))
    return 0


def _prefork_worker(handler, sock: socket.socket, cfg: _Config) -> int:
    """One ``prefork`` worker: accept, serve, repeat, until the drain."""
    gate = cfg.gate()
    with _Signals(gate, cfg.drain_timeout, alarm=True) as sig:
        acceptor = Acceptor(sock.fileno(), gate, sig.fd, _Warn())
        sock.close()
        try:
            while True:
                conn = acceptor.accept()
                if conn is None:
                    if gate.draining():
                        break
                    continue
                _handle(handler, conn)
        finally:
            acceptor.close()
    return 0


def _address(address) -> Tuple[str, int]:
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{address!r} is not IP:PORT")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return host, int(port)
    host, port = address[:2]
    return host, int(port)


def _serve(
    handler,
    address,
    *,
    strategy: str = "thread",
    workers: Optional[int] = None,
    processes: int = 1,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_conns: int = DEFAULT_MAX_CONNS,
    backlog: int = 1024,
    on_listening: Optional[Callable[[str], None]] = None,
) -> Tuple[int, int]:
    """``serve_blocking``; also returns how many handler threads were abandoned."""
    if strategy not in BLOCKING_STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}: choose one of {', '.join(BLOCKING_STRATEGIES)}"
        )
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    limit = 64 * (os.cpu_count() or 1)
    if not isinstance(processes, int) or not 1 <= processes <= limit:
        raise ValueError(f"processes must be an integer from 1 to {limit}, not {processes!r}")
    if processes > 1 and strategy != "thread":
        raise ValueError("processes is for strategy='thread' (prefork's pool size is workers)")
    if workers is not None:
        if strategy != "prefork":
            raise ValueError("workers is prefork's pool size (for thread, use processes)")
        if not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise ValueError(f"workers must be an integer from 1 to 1024, not {workers!r}")
    for name, value in (("drain_timeout", drain_timeout), ("idle_timeout", idle_timeout)):
        if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")
    if not isinstance(max_conns, int) or max_conns < 1:
        raise ValueError(f"max_conns must be a positive integer, not {max_conns!r}")
    cfg = _Config(float(drain_timeout), float(idle_timeout), max_conns)
    host, port = _address(address)
    count = processes if strategy == "thread" else 1
    socks = _listeners(host, port, count, backlog)
    shown = _shown(socks[0])

    def listening() -> None:
        if on_listening is not None:
            on_listening(shown)

    try:
        if strategy == "thread" and processes == 1:
            return 0, _thread_server(handler, socks[0], cfg, listening)
        if strategy == "fork":
            return _fork_server(handler, socks[0], cfg, listening), 0

        if strategy == "thread":

            def child(i: int) -> int:
                for j, s in enumerate(socks):
                    if j != i:
                        s.close()
                _thread_server(handler, socks[i], cfg, None, alarm=True)
                return 0

            n = processes
        else:

            def child(i: int) -> int:
                return _prefork_worker(handler, socks[0], cfg)

            n = workers if workers is not None else default_workers()

        def stop() -> None:
            # New connections are refused once each child has closed its copy too.
            for s in socks:
                s.close()

        return _Supervisor(n, child, on_start=listening, on_stop=stop).run(), 0
    finally:
        for s in socks:
            s.close()


def serve_blocking(
    handler: Callable[[Connection], object],
    address: Union[Tuple[str, int], str],
    *,
    strategy: str = "thread",
    workers: Optional[int] = None,
    processes: int = 1,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_conns: int = DEFAULT_MAX_CONNS,
    backlog: int = 1024,
    on_listening: Optional[Callable[[str], None]] = None,
) -> int:
    """Serve ``handler(conn)`` on ``address`` (``(host, port)`` or ``"IP:PORT"``)
    until SIGTERM or SIGINT; returns the exit status (0 after a drain).

    ``strategy``: ``"thread"`` (a thread per connection; ``processes=N`` runs N
    interpreters behind ``SO_REUSEPORT``), ``"fork"`` (a process per connection) or
    ``"prefork"`` (``workers`` processes, default 2 per CPU, each serving one
    connection at a time). A ``recv`` waiting longer than ``idle_timeout`` seconds
    (0: no limit) returns ``b""`` and the connection is shut down. Beyond
    ``max_conns`` connections being served (``thread``, ``fork``), new ones are closed
    at once and logged. An exception from ``handler`` is logged (logger ``"c10k"``,
    with its traceback) and closes only its connection.

    ``on_listening("IP:PORT")`` is called once connections are accepted. Call from
    the main thread: SIGTERM and SIGINT handlers are installed for the duration.
    """
    status, _ = _serve(
        handler,
        address,
        strategy=strategy,
        workers=workers,
        processes=processes,
        drain_timeout=drain_timeout,
        idle_timeout=idle_timeout,
        max_conns=max_conns,
        backlog=backlog,
        on_listening=on_listening,
    )
    return status
