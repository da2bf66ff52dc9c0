#!/usr/bin/env python3
"""The CPython field of `c10k compare --python`: one small echo server per way of
serving many connections in CPython, each doing the work per request of `c10k serve
--work`.

  python field.py --server NAME [--procs N] [--conns N] [--work SPEC] --listen IP:PORT
  python field.py --server NAME --version

Prints exactly `listening on IP:PORT` on stdout once it accepts (port 0: the kernel's
choice), SIGTERM stops it (and its child processes) and it exits 0. --version prints
`NAME: PACKAGE VERSION (python VERSION PATH)` and exits 0, exits 3 with `missing:
MODULE (why): pip install SPEC` on stderr when a package is not importable, or 4 with
one line on stderr when the installed package cannot serve this way.

NAME: socketserver-thread (ThreadingMixIn), socketserver-fork (ForkingMixIn), selectors
(a select() loop, as asyncore's), asyncio, uvloop, gevent (StreamServer), twisted (a
Protocol on the default reactor), c10k-py and c10k-py-uring (c10k's asyncio loop),
c10k-py-thread and c10k-py-prefork (c10k.serve_blocking).

--procs N (N > 1): N forked copies, each with its own SO_REUSEPORT listener on the same
port ("one process per core"). --conns N: the concurrency the server is sized for
(ForkingMixIn's max_children, prefork's processes), as a user sizing it would.

The work (SPEC as `c10k serve --work`: none, cpu=200us, wait=2ms,blocking,
wait=2ms,async, combinable): a request is what one read returned (one client write on
loopback). `cpu` burns this thread's CPU clock (time.thread_time); a blocking wait is
time.sleep in the handler (on an event loop it stalls every connection of the process:
that is its cost); an async wait is asyncio.sleep, gevent.sleep or Twisted's
deferLater, and an ordinary time.sleep where the handler owns its thread or process.
Requests of one connection are served one after another.
"""
import argparse
import importlib
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name: (module imported, distribution whose version is reported, pip install spec)
SERVERS = {
    "socketserver-thread": ("socketserver", None, None),
    "socketserver-fork": ("socketserver", None, None),
    "selectors": ("selectors", None, None),
    "asyncio": ("asyncio", None, None),
    "uvloop": ("uvloop", "uvloop", "uvloop"),
    "gevent": ("gevent", "gevent", "gevent"),
    "twisted": ("twisted", "twisted", "twisted"),
    "c10k-py": ("c10k", "c10k", "./crates/py"),
    "c10k-py-uring": ("c10k", "c10k", "./crates/py"),
    "c10k-py-thread": ("c10k", "c10k", "./crates/py"),
    "c10k-py-prefork": ("c10k", "c10k", "./crates/py"),
}
# The ones that can run as --procs N: forked copies behind SO_REUSEPORT (c10k-py-thread
# as serve_blocking(processes=N), the same shape; c10k-py-prefork is processes already).
PROCS = ("socketserver-thread", "socketserver-fork", "selectors", "asyncio", "uvloop",
         "gevent", "twisted", "c10k-py", "c10k-py-uring", "c10k-py-thread")
BACKLOG = 4096
MISSING = 3
UNSUPPORTED = 4
CHUNK = 65536
# select() takes descriptors below this only.
FD_SETSIZE = 1024


class Work:
    """The work per request: `cpu` seconds of thread CPU, then a wait of `wait` seconds
    that blocks (`blocking`) or not."""

    def __init__(self, spec):
        self.cpu = 0.0
        self.wait = 0.0
        self.blocking = False
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if items == ["none"]:
            return
        i = 0
        while i < len(items):
            key, _, value = items[i].partition("=")
            if key == "cpu":
                self.cpu = seconds(value)
            elif key == "wait":
                self.wait = seconds(value)
                kind = items[i + 1] if i + 1 < len(items) else ""
                if kind not in ("blocking", "async"):
                    raise ValueError(f"wait={value} needs ',blocking' or ',async'")
                self.blocking = kind == "blocking"
                i += 1
            else:
                raise ValueError(f"unknown work item '{items[i]}'")
            i += 1

    def none(self):
        return self.cpu == 0 and self.wait == 0

    def async_wait(self):
        return 0.0 if self.blocking else self.wait

    def burn(self):
        """The CPU part, on this thread's clock (a preemption does not shorten it)."""
        if self.cpu:
            until = time.thread_time() + self.cpu
            while time.thread_time() < until:
                pass

    def blocking_part(self):
        """The CPU, then the wait when it blocks."""
        self.burn()
        if self.blocking and self.wait:
            time.sleep(self.wait)

    def all_in_thread(self):
        """The whole work in the calling thread: a handler that owns its thread sleeps
        through an async wait too."""
        self.burn()
        if self.wait:
            time.sleep(self.wait)


def seconds(text):
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"'{text}' is not a duration like 200us or 2ms")


def version(name):
    """`NAME: PACKAGE VERSION (python ...)`, or exits MISSING / UNSUPPORTED saying
    why."""
    module, dist, spec = SERVERS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        sys.stderr.write(f"missing: {module} ({e}): pip install {spec}\n")
        sys.exit(MISSING)
    if name in ("c10k-py-thread", "c10k-py-prefork") and not hasattr(mod, "serve_blocking"):
        sys.stderr.write("c10k.serve_blocking is not available in this c10k build\n")
        sys.exit(UNSUPPORTED)
    python = f"python {sys.version.split()[0]} {sys.executable}"
    if dist is None:
        return f"{name}: stdlib ({python})"
    try:
        from importlib import metadata
        v = metadata.version(dist)
    except Exception:
        v = getattr(mod, "__version__", "unknown")
    return f"{name}: {dist} {v} ({python})"


def announce(host, port):
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()


def listener(host, port, reuseport):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(BACKLOG)
    return s


def exit_on_term():
    """SIGTERM and SIGINT end the process with status 0 (SystemExit in the main
    thread)."""
    def stop(*_):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# --- socketserver ------------------------------------------------------------------
def serve_socketserver(sock, work, forking, conns):
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            conn = self.request
            while True:
                try:
                    data = conn.recv(CHUNK)
                except OSError:
                    return
                if not data:
                    return
                work.all_in_thread()
                try:
                    conn.sendall(data)
                except OSError:
                    return

    mixin = socketserver.ForkingMixIn if forking else socketserver.ThreadingMixIn

    class Server(mixin, socketserver.TCPServer):
        daemon_threads = True
        block_on_close = False
        # ForkingMixIn's default of 40 children would leave connections beyond the
        # 40th unanswered: sized to the concurrency, as a user would.
        max_children = max(conns, 40)

    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
    parent = os.getpid()

    def stop(*_):
        if os.getpid() != parent:
            os._exit(0)
        for pid in list(getattr(server, "active_children", None) or ()):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.5)


# --- a select() loop ---------------------------------------------------------------
def serve_selectors(sock, work):
    import heapq
    import selectors

    sel = selectors.SelectSelector()
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ, None)

    class Conn:
        __slots__ = ("sock", "out", "queue", "held")

        def __init__(self, s):
            self.sock, self.out, self.queue, self.held = s, bytearray(), [], False

    timers = []  # (deadline, seq, conn, data)
    seq = 0
    refused = 0

    def close(c):
        sel.unregister(c.sock)
        c.sock.close()
        c.sock = None

    def write(c, data):
        if c.sock is None:
            return
        if not c.out:
            try:
                n = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                close(c)
                return
            data = data[n:]
            if not data:
                return
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        c.out += data

    def start(c, data):
        # The next request of `c`: its CPU, then its wait (a timer when it does not
        # block), then its reply.
        nonlocal seq
        work.blocking_part()
        if work.async_wait():
            c.held = True
            seq += 1
            heapq.heappush(timers, (time.monotonic() + work.async_wait(), seq, c, data))
        else:
            write(c, data)

    exit_on_term()
    while True:
        timeout = None
        if timers:
            timeout = max(0.0, timers[0][0] - time.monotonic())
        for key, mask in sel.select(timeout):
            c = key.data
            if c is None:
                try:
                    s, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                if s.fileno() >= FD_SETSIZE:
                    # select() cannot watch it: refused, never corrupted.
                    refused += 1
                    if refused == 1:
                        sys.stderr.write(f"field.py: descriptor {s.fileno()} is beyond "
                                         f"select()'s FD_SETSIZE ({FD_SETSIZE}): refusing\n")
                    s.close()
                    continue
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, Conn(s))
                continue
            if mask & selectors.EVENT_WRITE and c.out:
                try:
                    n = c.sock.send(c.out)
                    del c.out[:n]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(c)
                    continue
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if mask & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    if c.held:
                        # The held replies still go out; then it closes.
                        sel.modify(c.sock, selectors.EVENT_WRITE, c)
                        c.queue.append(None)
                    else:
                        close(c)
                    continue
                if c.held:
                    c.queue.append(data)
                else:
                    start(c, data)
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, c, data = heapq.heappop(timers)
            c.held = False
            write(c, data)
            while c.sock is not None and c.queue and not c.held:
                nxt = c.queue.pop(0)
                if nxt is None:
                    close(c)
                    break
                start(c, nxt)


# --- asyncio and the loops that replace its own -----------------------------------
def new_loop(name):
    import asyncio
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import c10k
    return c10k.new_event_loop(strategy="uring" if name == "c10k-py-uring" else "epoll-et")


def protocol_for(work):
    import asyncio
    from echo_protocol import Echo

    if work.none():
        return Echo

    if not work.async_wait():
        class Worked(Echo):
            def data_received(self, data):
                work.blocking_part()
                self.transport.write(data)
        return Worked

    class Awaiting(asyncio.Protocol):
        # One task per connection awaits each request's wait in turn.
        def connection_made(self, transport):
            self.transport = transport
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self.serve())

        async def serve(self):
            while True:
                data = await self.queue.get()
                if data is None:
                    self.transport.close()
                    return
                work.blocking_part()
                await asyncio.sleep(work.async_wait())
                self.transport.write(data)

        def data_received(self, data):
            self.queue.put_nowait(data)

        def eof_received(self):
            self.queue.put_nowait(None)
            return True

        def connection_lost(self, exc):
            if not self.task.done() and exc is not None:
                self.task.cancel()
    return Awaiting


def serve_asyncio(name, sock, work):
    loop = new_loop(name)
    proto = protocol_for(work)
    server = loop.run_until_complete(loop.create_server(proto, sock=sock, backlog=BACKLOG))
    stop = loop.create_future()

    def on_term():
        if not stop.done():
            stop.set_result(None)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, on_term)
    except (NotImplementedError, AttributeError, RuntimeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_term))
    loop.run_until_complete(stop)
    server.close()
    # Connections are left to the process's exit.
    os._exit(0)


# --- gevent --------------------------------------------------------------------------
def serve_gevent(sock, work):
    import gevent
    from gevent.server import StreamServer

    def handle(conn, _addr):
        while True:
            try:
                data = conn.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            # Not monkey-patched: a blocking wait blocks the hub, as a blocking library
            # would; an async wait yields to the other greenlets.
            work.blocking_part()
            if work.async_wait():
                gevent.sleep(work.async_wait())
            try:
                conn.sendall(data)
            except OSError:
                return

    from gevent import socket as gsocket

    # The hub's own socket over the listener (a stdlib one would block the hub).
    server = StreamServer(gsocket.socket(sock.family, sock.type, fileno=sock.detach()),
                          handle)
    server.start()
    gevent.signal_handler(signal.SIGTERM, lambda: os._exit(0))
    gevent.signal_handler(signal.SIGINT, lambda: os._exit(0))
    server.serve_forever()


# --- Twisted -------------------------------------------------------------------------
def serve_twisted(sock, work):
    from twisted.internet import protocol, reactor, task

    class Echo(protocol.Protocol):
        def connectionMade(self):
            self.queue = []
            self.held = False

        def dataReceived(self, data):
            if work.none():
                self.transport.write(data)
                return
            if not work.async_wait():
                work.blocking_part()
                self.transport.write(data)
                return
            self.queue.append(data)
            if not self.held:
                self.next()

        def next(self):
            if not self.queue:
                return
            data = self.queue.pop(0)
            work.blocking_part()
            self.held = True
            d = task.deferLater(reactor, work.async_wait(), lambda: data)
            d.addCallback(self.reply)

        def reply(self, data):
            self.held = False
            if self.transport is not None and self.connected:
                self.transport.write(data)
                self.next()

    factory = protocol.Factory.forProtocol(Echo)
    sock.setblocking(False)
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)
    sock.close()
    kind = type(reactor)
    sys.stderr.write(f"field.py: reactor {kind.__module__}.{kind.__name__}\n")
    # The reactor's own SIGTERM handler stops it; run() then returns.
    reactor.run()
    os._exit(0)


# --- c10k's blocking handlers ---------------------------------------------------------
def serve_c10k_blocking(name, host, work, conns, procs):
    import c10k

    def handler(conn):
        while True:
            data = conn.recv(CHUNK)
            if not data:
                return
            work.all_in_thread()
            conn.sendall(data)

    def on_listening(addr):
        addr = str(addr).strip()
        if addr.startswith("listening on "):
            addr = addr[len("listening on "):]
        sys.stdout.write(f"listening on {addr}\n")
        sys.stdout.flush()

    kwargs = {"strategy": name[len("c10k-py-"):], "on_listening": on_listening}
    if name == "c10k-py-prefork":
        # As `c10k serve --strategy prefork` in compare: a process per connection of
        # the level (its concurrency).
        kwargs["workers"] = max(conns, 1)
    if procs > 1:
        kwargs["processes"] = procs
    c10k.serve_blocking(handler, (host, 0), **kwargs)


def serve_one(name, sock, work, conns):
    if name in ("socketserver-thread", "socketserver-fork"):
        serve_socketserver(sock, work, name == "socketserver-fork", conns)
    elif name == "selectors":
        serve_selectors(sock, work)
    elif name == "gevent":
        serve_gevent(sock, work)
    elif name == "twisted":
        serve_twisted(sock, work)
    else:
        serve_asyncio(name, sock, work)


def serve_procs(name, host, work, conns, procs):
    """`procs` forked copies, each with its own SO_REUSEPORT listener on one port,
    made before the fork; this process waits and passes SIGTERM on."""
    socks = [listener(host, 0, True)]
    port = socks[0].getsockname()[1]
    socks += [listener(host, port, True) for _ in range(procs - 1)]
    children = []
    for i in range(procs):
        pid = os.fork()
        if pid == 0:
            for j, s in enumerate(socks):
                if j != i:
                    s.close()
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                serve_one(name, socks[i], work, conns)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
            except BaseException as e:  # noqa: BLE001 - the child's last words
                sys.stderr.write(f"field.py: process {i}: {e!r}\n")
                code = 1
            os._exit(code)
        children.append(pid)
    for s in socks:
        s.close()

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announce(host, port)
    status = 0
    for pid in children:
        while True:
            try:
                _, st = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                st = 0
                break
        if os.waitstatus_to_exitcode(st) not in (0, -signal.SIGTERM):
            status = 1
    sys.exit(status)


def parse_listen(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{s}' is not IP:PORT, e.g. 127.0.0.1:7000")
    return host, int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, choices=sorted(SERVERS))
    ap.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0))
    ap.add_argument("--work", default="none")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--version", action="store_true", help="print the package version")
    a = ap.parse_args()
    v = version(a.server)
    if a.version:
        print(v)
        return
    try:
        work = Work(a.work)
    except ValueError as e:
        ap.error(f"--work {a.work}: {e}")
    if a.procs > 1 and a.server not in PROCS:
        ap.error(f"--procs: {a.server} serves its processes itself")
    sys.stderr.write(f"field.py: {v}, work {a.work}, {a.procs} process(es)\n")
    host, port = a.listen
    if a.server in ("c10k-py-thread", "c10k-py-prefork"):
        serve_c10k_blocking(a.server, host, work, a.conns, a.procs)
        return
    if a.procs > 1:
        serve_procs(a.server, host, work, a.conns, a.procs)
        return
    sock = listener(host, port, False)
    announce(host, sock.getsockname()[1])
    serve_one(a.server, sock, work, a.conns)


if __name__ == "__main__":
    main()
