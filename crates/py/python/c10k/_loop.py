"""The asyncio event loop on c10k's engine.

asyncio's own scheduling is kept whole: ``Loop`` is a ``BaseEventLoop`` (ready queue,
timers, futures, tasks, executors, exception handling), and the engine stands where a
selector loop has its selector. ``BaseEventLoop._run_once`` calls
``self._selector.select(timeout)``; here that is ``Engine.select``, which waits in
the kernel with the GIL released and then, under one acquisition, accepts, reads and
writes for every ready connection and calls their protocols. The transports are
Rust objects (``c10k._engine.Transport``).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import signal
import socket
import sys
import weakref
from asyncio import base_events, events, futures

from . import _engine

logger = logging.getLogger("c10k")

#: The strategies an event loop can run on.
STRATEGIES = tuple(_engine.STRATEGIES)

#: asyncio's delay before accepting again after running out of descriptors.
ACCEPT_RETRY_DELAY = 1.0

_ATTACH_TAKES_TRANSPORT = len(inspect.signature(base_events.Server._attach).parameters) > 1


def _stock(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what} is not supported by c10k's event loop: run this code on the stock "
        "asyncio loop (asyncio.new_event_loop() / asyncio.DefaultEventLoopPolicy), "
        "or uvloop"
    )


def _fd_of(fileobj) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _sighandler_noop(signum, frame):
    """Dummy signal handler: the wakeup fd carries the signal to the loop."""


class _Helpers:
    """What the engine calls back into Python for (rare paths only)."""

    def __init__(self, loop: "Loop"):
        self._loop = weakref.ref(loop)

    @staticmethod
    def make_socket(fd: int):
        return socket.socket(fileno=os.dup(fd))

    @staticmethod
    def transport_socket(sock):
        try:
            from asyncio import trsock

            return trsock.TransportSocket(sock)
        except ImportError:  # pragma: no cover (3.7)
            return sock

    @staticmethod
    def log_warning(message: str) -> None:
        logger.warning(message)

    def accept_exhausted(self, slot: int, fd: int, exc: BaseException) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": self.transport_socket(socket.socket(fileno=os.dup(fd))),
            }
        )
        loop.call_later(ACCEPT_RETRY_DELAY, loop._engine.resume_listener, slot)


class _ClosedEngine:
    """Stands in for the engine once the loop is closed, so that the native object
    is freed on the loop's own thread (it may not be dropped from another)."""

    strategy = "closed"

    @staticmethod
    def connections():
        return 0

    @staticmethod
    def unserve(fd):
        return False

    @staticmethod
    def watcher(fd, reading):
        return None

    @staticmethod
    def remove_reader(fd):
        return False

    @staticmethod
    def remove_writer(fd):
        return False

    def __getattr__(self, name):
        def closed(*args, **kwargs):
            raise RuntimeError("Event loop is closed")

        return closed


class Loop(base_events.BaseEventLoop):
    """An asyncio event loop whose I/O runs on c10k's engine.

    ``strategy`` is ``"epoll-et"`` (edge-triggered epoll, the default), ``"epoll-lt"``
    (level-triggered) or ``"uring"`` (io_uring: completions, multishot receives,
    sends batched into one ``io_uring_enter`` per loop turn).
    """

    def __init__(self, strategy: str = "epoll-et", *, reuse_port: bool = False):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}"
            )
        self._helpers = _Helpers(self)
        self._engine = _engine.Engine(
            self, strategy, self._helpers, asyncio.BufferedProtocol, _ATTACH_TAKES_TRANSPORT
        )
        # BaseEventLoop._run_once calls self._selector.select(timeout).
        self._selector = self._engine
        self._strategy = strategy
        self._reuse_port = reuse_port
        self._signal_handlers: dict = {}
        self._servers: "weakref.WeakSet" = weakref.WeakSet()
        self._ssock = self._csock = None
        self._make_self_pipe()

    def __repr__(self):
        return (
            f"<c10k.Loop strategy={self._strategy} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    @property
    def strategy(self) -> str:
        """The engine's strategy."""
        return self._strategy

    # --- the engine where a selector loop has its selector -------------------------

    def _process_events(self, handles):
        for handle in handles:
            self._add_callback(handle)

    def _make_self_pipe(self):
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self.add_reader(self._ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self):
        if self._ssock is None:
            return
        self.remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None
        self._internal_fds -= 1

    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                for signum in data:
                    if signum:
                        self._handle_signal(signum)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    def _write_to_self(self):
        csock = self._csock
        if csock is None:
            return
        try:
            csock.send(b"\0")
        except OSError:
            if self._debug:
                logger.debug("Fail to write a null byte into the self-pipe socket", exc_info=True)

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        super().close()
        self._close_self_pipe()
        self._engine.close()
        self._engine = self._selector = _ClosedEngine()

    # --- file descriptor watching ----------------------------------------------------

    def add_reader(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is readable."""
        self._check_closed()
        fd = _fd_of(fd)
        old = self._engine.watcher(fd, True)
        self._engine.add_reader(fd, events.Handle(callback, args, self, None))
        if old is not None:
            old.cancel()

    def remove_reader(self, fd):
        """Stop watching ``fd`` for reading; returns whether it was watched."""
        if self.is_closed():
            return False
        fd = _fd_of(fd)
        old = self._engine.watcher(fd, True)
        if old is not None:
            old.cancel()
        return self._engine.remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is writable."""
        self._check_closed()
        fd = _fd_of(fd)
        old = self._engine.watcher(fd, False)
        self._engine.add_writer(fd, events.Handle(callback, args, self, None))
        if old is not None:
            old.cancel()

    def remove_writer(self, fd):
        """Stop watching ``fd`` for writing; returns whether it was watched."""
        if self.is_closed():
            return False
        fd = _fd_of(fd)
        old = self._engine.watcher(fd, False)
        if old is not None:
            old.cancel()
        return self._engine.remove_writer(fd)

    async def _wait_fd(self, sock, reading: bool):
        fut = self.create_future()
        fd = sock.fileno()

        def wake():
            if not fut.done():
                fut.set_result(None)

        (self.add_reader if reading else self.add_writer)(fd, wake)
        try:
            await fut
        finally:
            (self.remove_reader if reading else self.remove_writer)(fd)

    # --- socket operations (used by create_connection and user code) ------------------

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from the non-blocking ``sock``."""
        while True:
            try:
                return sock.recv(n)
            except (BlockingIOError, InterruptedError):
                await self._wait_fd(sock, True)

    async def sock_recv_into(self, sock, buf):
        """Receive into ``buf`` from the non-blocking ``sock``."""
        while True:
            try:
                return sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                await self._wait_fd(sock, True)

    async def sock_sendall(self, sock, data):
        """Send all of ``data`` on the non-blocking ``sock``."""
        view = memoryview(data).cast("B")
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._wait_fd(sock, False)
                continue
            view = view[n:]

    async def sock_connect(self, sock, address):
        """Connect the non-blocking ``sock`` to ``address``."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            _, _, _, _, address = resolved[0]
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        await self._wait_fd(sock, False)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"Connect call failed {address}")

    async def sock_accept(self, sock):
        """Accept a connection on the non-blocking listening ``sock``."""
        while True:
            try:
                conn, address = sock.accept()
                conn.setblocking(False)
                return conn, address
            except (BlockingIOError, InterruptedError):
                await self._wait_fd(sock, True)

    async def sock_recvfrom(self, sock, bufsize):
        raise _stock("sock_recvfrom (UDP)")

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        raise _stock("sock_recvfrom_into (UDP)")

    async def sock_sendto(self, sock, data, address):
        raise _stock("sock_sendto (UDP)")

    # --- servers and transports ------------------------------------------------------

    async def create_server(self, protocol_factory, host=None, port=None, *args, **kwargs):
        """``asyncio``'s ``create_server`` (TCP and Unix-less; no ``ssl``).

        On a loop made for several processes, ``reuse_port`` defaults to True.
        """
        if kwargs.get("ssl") is not None:
            raise _stock("TLS (create_server(ssl=...))")
        if kwargs.get("reuse_port") is None and self._reuse_port and kwargs.get("sock") is None:
            kwargs["reuse_port"] = True
        server = await super().create_server(protocol_factory, host, port, *args, **kwargs)
        self._servers.add(server)
        return server

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        if sslcontext is not None:
            raise _stock("TLS")
        if server is not None:
            self._servers.add(server)
        self._engine.serve(sock.fileno(), protocol_factory, server)

    def _stop_serving(self, sock):
        self._engine.unserve(sock.fileno())
        sock.close()

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        transport = self._engine.adopt(sock.fileno(), sock, protocol, server, extra)
        self.call_soon(transport._start)
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    def _make_ssl_transport(self, *args, **kwargs):
        raise _stock("TLS")

    def _make_datagram_transport(self, *args, **kwargs):
        raise _stock("UDP (datagram transports)")

    def _make_read_pipe_transport(self, *args, **kwargs):
        raise _stock("pipe transports")

    def _make_write_pipe_transport(self, *args, **kwargs):
        raise _stock("pipe transports")

    async def _make_subprocess_transport(self, *args, **kwargs):
        raise _stock("subprocess transports")

    async def create_datagram_endpoint(self, *args, **kwargs):
        raise _stock("UDP (create_datagram_endpoint)")

    async def connect_read_pipe(self, *args, **kwargs):
        raise _stock("connect_read_pipe")

    async def connect_write_pipe(self, *args, **kwargs):
        raise _stock("connect_write_pipe")

    async def subprocess_exec(self, *args, **kwargs):
        raise _stock("subprocess_exec")

    async def subprocess_shell(self, *args, **kwargs):
        raise _stock("subprocess_shell")

    async def start_tls(self, *args, **kwargs):
        raise _stock("start_tls")

    async def create_unix_server(self, *args, **kwargs):
        raise _stock("Unix sockets (create_unix_server)")

    async def create_unix_connection(self, *args, **kwargs):
        raise _stock("Unix sockets (create_unix_connection)")

    # --- signals (as asyncio's Unix loop: the wakeup fd carries signal numbers) ------

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives."""
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def _handle_signal(self, sig):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    def remove_signal_handler(self, sig):
        """Remove the handler of ``sig``; returns whether there was one."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    # --- draining (c10k.run and ``python -m c10k serve``) ------------------------------

    def connections(self) -> int:
        """Open connections on this loop."""
        return self._engine.connections()

    async def drain(self, timeout: float) -> int:
        """Stop every server of this loop from accepting, then wait (at most
        ``timeout`` seconds) for their connections to close. Returns how many were
        still open at the deadline."""
        for server in list(self._servers):
            server.close()
        deadline = self.time() + timeout
        while self._engine.connections() and self.time() < deadline:
            await asyncio.sleep(0.02)
        return self._engine.connections()


def new_event_loop(strategy: str = "epoll-et") -> Loop:
    """A new event loop on c10k's engine (``asyncio.run(..., loop_factory=c10k.new_event_loop)``)."""
    return Loop(strategy)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops run on c10k's engine (for Python < 3.12:
    ``asyncio.set_event_loop_policy(c10k.EventLoopPolicy())``)."""

    def __init__(self, strategy: str = "epoll-et"):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}"
            )
        self._strategy = strategy

    def new_event_loop(self):
        return Loop(self._strategy)


def probe(strategy: str):
    """None when ``strategy`` can run here, else why not."""
    return _engine.probe(strategy)


__all__ = ["Loop", "EventLoopPolicy", "new_event_loop", "probe", "STRATEGIES"]

if sys.version_info < (3, 9):  # pragma: no cover
    raise ImportError("c10k needs Python 3.9 or later")
