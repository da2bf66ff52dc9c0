#!/usr/bin/env python3
"""Serves the echo Protocol of echo_protocol.py on a chosen event loop, or an echo of
the same behaviour on gevent or Twisted, for bench/python.sh and `c10k compare --peer
asyncio|uvloop|rloop|c10k-py|c10k-py-uring`.

  python serve.py --loop LOOP --listen 127.0.0.1:PORT
  python serve.py --loop LOOP --version

Prints exactly `listening on IP:PORT` on stdout once it accepts (port 0: the kernel's
choice, printed), the loop's package and version on stderr; SIGTERM closes the server
and its connections and exits 0. --version prints `LOOP: PACKAGE VERSION (python
VERSION PATH)` and exits 0, or exits 3 with `missing: MODULE (why): pip install SPEC`
on stderr when the package is not importable.

LOOP: asyncio, uvloop, rloop, c10k-epoll-et, c10k-epoll-lt, c10k-uring (c10k's loop,
`pip install ./crates/py`), gevent (StreamServer), twisted (a Protocol, the default
reactor: epoll on Linux).
"""
import argparse
import importlib
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# loop name: (module imported, distribution whose version is reported, pip install spec)
LOOPS = {
    "asyncio": ("asyncio", None, None),
    "uvloop": ("uvloop", "uvloop", "uvloop"),
    "rloop": ("rloop", "rloop", "rloop"),
    "c10k-epoll-et": ("c10k", "c10k", "./crates/py"),
    "c10k-epoll-lt": ("c10k", "c10k", "./crates/py"),
    "c10k-uring": ("c10k", "c10k", "./crates/py"),
    "gevent": ("gevent", "gevent", "gevent"),
    "twisted": ("twisted", "twisted", "twisted"),
}
BACKLOG = 4096
MISSING = 3


def version(name):
    """`LOOP: PACKAGE VERSION (python VERSION PATH)`, or exits MISSING saying what to
    install."""
    module, dist, spec = LOOPS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        sys.stderr.write(f"missing: {module} ({e}): pip install {spec}\n")
        sys.exit(MISSING)
    python = f"python {sys.version.split()[0]} {sys.executable}"
    if dist is None:
        return f"{name}: stdlib ({python})"
    try:
        from importlib import metadata
        v = metadata.version(dist)
    except Exception:
        v = getattr(mod, "__version__", "unknown")
    return f"{name}: {dist} {v} ({python})"


def parse_listen(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{s}' is not IP:PORT, e.g. 127.0.0.1:7000")
    return host, int(port)


def announce(host, port):
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()


def new_loop(name):
    if name == "asyncio":
        import asyncio
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop
        return rloop.new_event_loop()
    import c10k
    return c10k.new_event_loop(strategy=name[len("c10k-"):])


def serve_asyncio(name, host, port):
    from echo_protocol import Echo

    loop = new_loop(name)
    open_transports = set()

    class Tracked(Echo):
        # Remembered so that SIGTERM can close them: the echo itself is Echo's.
        def connection_made(self, transport):
            super().connection_made(transport)
            open_transports.add(transport)

        def connection_lost(self, exc):
            open_transports.discard(self.transport)

    server = loop.run_until_complete(
        loop.create_server(Tracked, host, port, backlog=BACKLOG, reuse_address=True))
    stop = loop.create_future()

    def on_term():
        if not stop.done():
            stop.set_result(None)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, on_term)
    except (NotImplementedError, AttributeError, RuntimeError):
        # A loop without signal handlers: the Python handler wakes it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_term))
    announce(host, server.sockets[0].getsockname()[1])
    loop.run_until_complete(stop)
    server.close()
    for t in list(open_transports):
        t.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


def serve_gevent(host, port):
    import gevent
    from gevent.server import StreamServer

    def echo(sock, _addr):
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                sock.sendall(data)
            except OSError:
                return

    server = StreamServer((host, port), echo, backlog=BACKLOG)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    announce(host, server.socket.getsockname()[1])
    server.serve_forever()


def serve_twisted(host, port):
    from twisted.internet import protocol, reactor

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    factory = protocol.Factory.forProtocol(Echo)
    listening = reactor.listenTCP(port, factory, backlog=BACKLOG, interface=host)
    reactor.callWhenRunning(announce, host, listening.getHost().port)
    kind = type(reactor)
    sys.stderr.write(f"serve.py: reactor {kind.__module__}.{kind.__name__}\n")
    # The reactor's own SIGTERM handler stops it; run() then returns.
    reactor.run()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", required=True, choices=sorted(LOOPS))
    ap.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0))
    ap.add_argument("--version", action="store_true",
                    help="print the loop's package version")
    a = ap.parse_args()
    v = version(a.loop)
    if a.version:
        print(v)
        return
    sys.stderr.write(f"serve.py: {v}\n")
    host, port = a.listen
    if a.loop == "gevent":
        serve_gevent(host, port)
    elif a.loop == "twisted":
        serve_twisted(host, port)
    else:
        serve_asyncio(a.loop, host, port)


if __name__ == "__main__":
    main()
