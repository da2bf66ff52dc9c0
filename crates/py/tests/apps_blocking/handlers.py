"""Blocking handlers, ``handler(conn)``, that report what they saw.

A handler that must tell the test something it cannot say over its own connection
prints one line to stderr (flushed): the test reads the server's stderr.
"""

import os
import socket
import socketserver
import sys


def say(text):
    print(text, file=sys.stderr, flush=True)


def echo(conn):
    """Echo until end of stream."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def echo_into(conn):
    """Echo through recv_into and send (a partial-send loop)."""
    buf = bytearray(4096)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            return
        sent = 0
        while sent < n:
            sent += conn.send(view[sent:n])


def lines(conn):
    """A line protocol over makefile: each line comes back upper-cased and numbered;
    QUIT ends the session with BYE."""
    rfile = conn.makefile("rb")
    wfile = conn.makefile("wb")
    try:
        for i, line in enumerate(iter(rfile.readline, b"")):
            if line.strip() == b"QUIT":
                wfile.write(b"BYE\n")
                break
            wfile.write(b"%d %s" % (i, line.upper()))
            wfile.flush()
        wfile.flush()
    finally:
        rfile.close()
        wfile.close()


class UpperHandler(socketserver.StreamRequestHandler):
    """Written for socketserver; served by c10k through ``stream_handler``."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


def stream_handler(conn):
    """The README's adapter: a StreamRequestHandler on a c10k connection."""
    UpperHandler(conn, conn.getpeername(), None)


def drain_probe(conn):
    """Say ready, then wait in recv: on a drain it returns b"" (told to the client
    while the connection is still open, and on stderr)."""
    conn.sendall(b"ready\n")
    data = conn.recv(100)
    say(f"drain_probe recv returned {data!r}")
    if data == b"":
        conn.sendall(b"recv returned eof\n")


def timeout_probe(conn):
    """settimeout, then recv with nothing coming: TimeoutError (also as
    socket.timeout), told to the client."""
    conn.settimeout(0.2)
    try:
        conn.recv(10)
        conn.sendall(b"no timeout\n")
    except socket.timeout as e:
        conn.settimeout(None)
        conn.sendall(b"timeout %s %r\n" % (type(e).__name__.encode(), conn.gettimeout()))


def send_timeout_probe(conn):
    """settimeout, then sendall more than the peer reads: TimeoutError (on stderr)."""
    conn.settimeout(0.3)
    conn.recv(1)  # the client is connected and will not read
    try:
        conn.sendall(b"x" * (64 << 20))
        say("sendall returned")
    except socket.timeout as e:  # TimeoutError itself from 3.10 on
        say(f"sendall raised {type(e).__name__}")


def idle_probe(conn):
    """recv with nothing coming: after the idle timeout it returns b""."""
    data = conn.recv(10)
    say(f"idle_probe recv returned {data!r}")


def raiser(conn):
    """Raise on 'boom', else echo one message."""
    data = conn.recv(100)
    if data.startswith(b"boom"):
        raise ValueError("boom requested by the client")
    conn.sendall(data)


def pid_echo(conn):
    """Say which process serves, then echo."""
    conn.sendall(b"%d\n" % os.getpid())
    echo(conn)


def info(conn):
    """Addresses, fileno and the context manager."""
    with conn as c:
        peer = c.getpeername()
        local = c.getsockname()
        c.sendall(b"%s:%d %s:%d %d\n" % (peer[0].encode(), peer[1], local[0].encode(), local[1],
                                         c.fileno() > 2))
    say(f"info closed fileno={conn.fileno()}")


def dispatch(conn):
    """The first line names the handler of this module that serves the rest."""
    name = b""
    while not name.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            return
        name += byte
    globals()[name.strip().decode()](conn)
