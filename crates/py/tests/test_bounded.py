"""Memory stays bounded when nobody reads, "as in asyncio".

The server runs through ``python -m c10k serve`` in a subprocess (one process) so its
resident set (``VmRSS`` in /proc/PID/status) can be read while 8 clients flood it
with non-blocking sockets until sending stays blocked (EAGAIN for 0.5 s; a cap of
256 MiB per client; and the flood stops early if the bound is already broken).
Kernel socket buffers are not in the RSS, so growth past a few MiB means the engine
buffered what flow control should have left in the kernel.

* ``apps.never_read:NeverRead`` pauses reading in connection_made and never
  resumes: the RSS stays within the bound, ``data_received`` is never called, and
  the server still serves new connections afterwards.
* ``apps.never_read:ReadOnce`` is paused the same way until the kernel's buffers
  are full, then reads one chunk per connection and pauses again: that one read
  must not pull the kernel's queue into the process (1 MiB per connection).
* ``apps.flow_echo:FlowEcho`` echoes, pausing reading in ``pause_writing`` and
  resuming in ``resume_writing``, to clients that send without reading: the RSS
  stays within the bound, and each connection's peak ``get_write_buffer_size()``
  is at most the high-water mark plus the largest chunk it received. Then the
  clients read everything back (checked byte for byte) and the echo completes.

(A protocol that ignores ``pause_writing`` is not bounded in asyncio either: not
tested.) Timeouts are hang guards only; nothing asserts on timing.
"""

import os
import select
import signal
import socket
import struct
import time

import pytest

from test_processes import GUARD, serve, wait_listening

STRATEGIES = ("epoll-et", "epoll-lt", "uring")
CLIENTS = 8
RSS_BOUND = 32 << 20  # bytes of RSS growth allowed while flooded
CAP = 256 << 20  # bytes one client sends at most
QUIET = 0.5  # sending blocked this long (seconds) = the pipe is full
PATTERN = bytes(range(256)) * 1024  # byte i of every stream is i % 256; 256 KiB
CHUNK = 128 << 10  # bytes per send()
RECV = 1 << 20  # bytes per recv()
WINDOWS = PATTERN * (RECV // len(PATTERN) + 2)  # any RECV bytes of the stream, at offset < 256
WARM = 4096  # warm-up round trip per client (a multiple of 256)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Meter:
    """The server's RSS growth over a baseline; ``peak`` is the largest seen."""

    def __init__(self, pid):
        self.pid = pid
        self.base = rss(pid)
        self.peak = 0
        self.last = 0.0

    def sample(self, force=False):
        now = time.monotonic()
        if force or now - self.last >= 0.02:
            self.last = now
            self.peak = max(self.peak, rss(self.pid) - self.base)
        return self.peak

    def over(self):
        return self.sample() > RSS_BOUND

    def report(self):
        return (f"server RSS grew by {self.peak / 2**20:.1f} MiB (bound {RSS_BOUND >> 20} MiB;"
                " a flood stops as soon as the bound is passed)")


def client(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    return s


def flood(socks, meter, ready=lambda s: True, start=0):
    """Send the pattern on every socket (``start`` bytes of it already sent) until
    all stay blocked for QUIET seconds (only once ``ready(s)`` holds for every
    socket), each sent CAP, or the RSS bound is broken. Returns bytes sent per socket
    (``start`` included)."""
    for s in socks:
        s.setblocking(False)
    sent = {s: start for s in socks}
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 4 * GUARD
    while True:
        assert time.monotonic() < deadline, "flood did not settle (hang guard)"
        active = [s for s in socks if sent[s] < CAP]
        if not active or meter.over():
            break
        _, writable, _ = select.select([], active, [], 0.05)
        progressed = False
        for s in writable:
            off = sent[s] % 256
            try:
                n = s.send(memoryview(PATTERN)[off:off + CHUNK])
            except BlockingIOError:
                continue
            sent[s] += n
            progressed = progressed or n > 0
        now = time.monotonic()
        if progressed or not all(ready(s) for s in socks):
            quiet_since = now
        elif now - quiet_since >= QUIET:
            break
    meter.sample(force=True)
    return sent


def stop(p):
    p.proc.send_signal(signal.SIGTERM)
    return p.wait()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_never_reading_protocol_is_bounded(strategy):
    """``apps.never_read:NeverRead`` (paused from connection_made): 8 flooding clients
    block with the server's RSS growth within 32 MiB (and well short of the cap);
    ``data_received``/``eof_received`` are never called; after the clients reset their
    connections a new one is accepted and greeted; SIGTERM exits 0."""
    p, port = serve("apps.never_read:NeverRead", strategy, 1, "--drain-timeout", "1")
    socks = []
    try:
        port = wait_listening(p, port)
        for _ in range(CLIENTS):
            s = client(port)
            socks.append(s)
            assert s.recv(6) == b"hello\n"
        meter = Meter(p.pid)
        sent = flood(socks, meter)
        assert meter.peak <= RSS_BOUND, meter.report() + f"; sent {sorted(sent.values())}"
        assert all(n < CAP for n in sent.values()), f"never blocked: sent {sorted(sent.values())}"
        assert all(n > 0 for n in sent.values()), sorted(sent.values())
        for s in socks:
            s.close()
        socks = []
        # still serving: a new connection is accepted and greeted
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
            assert s.recv(6) == b"hello\n"
        assert meter.sample(force=True) <= RSS_BOUND, meter.report()
        assert stop(p) == 0
        assert p.text(p.err) == []  # no data_received / eof_received while paused
    finally:
        for s in socks:
            s.close()
        p.kill()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_read_after_resume_is_bounded(strategy):
    """``apps.never_read:ReadOnce``: paused from the start, flooded until the kernel's
    buffers are full, then (SIGUSR1) each connection resumes reading, takes one chunk
    and pauses again. The engine may read one chunk per connection (asyncio: one
    ``recv`` of at most 256 KiB), not drain the kernel's queue into memory: RSS growth
    within 1 MiB per connection; no ``data_received`` while paused."""
    p, port = serve("apps.never_read:ReadOnce", strategy, 1, "--drain-timeout", "1")
    socks = []
    bound = CLIENTS << 20
    try:
        port = wait_listening(p, port)
        for _ in range(CLIENTS):
            s = client(port)
            socks.append(s)
            assert s.recv(6) == b"hello\n"
        meter = Meter(p.pid)
        sent = flood(socks, meter)
        assert meter.peak <= RSS_BOUND, meter.report()
        assert all(0 < n < CAP for n in sent.values()), sorted(sent.values())
        os.kill(p.pid, signal.SIGUSR1)
        for s in socks:
            s.settimeout(GUARD)
            assert s.recv(6) == b"again\n"
        flood(socks, meter)  # whatever the engine still takes in, until blocked again
        assert meter.peak <= bound, (
            f"server RSS grew by {meter.peak / 2**20:.1f} MiB after one read per connection"
            f" (bound {bound >> 20} MiB)"
        )
        for s in socks:
            s.close()
        socks = []
        assert stop(p) == 0
        assert p.text(p.err) == []
    finally:
        for s in socks:
            s.close()
        p.kill()


def _lines(p, word):
    return [x.split() for x in p.text(p.err) if x.startswith(f"flow_echo {word} ")]


def read_back(socks, sent, meter, start=0):
    """Half-close every client, then read the echo to EOF (``start`` bytes of it
    already read) checking it is the pattern; returns bytes received per socket."""
    got = {s: start for s in socks}
    for s in socks:
        s.shutdown(socket.SHUT_WR)
    open_ = list(socks)
    deadline = time.monotonic() + 4 * GUARD
    while open_:
        assert time.monotonic() < deadline, "echo did not complete (hang guard)"
        readable, _, _ = select.select(open_, [], [], 0.05)
        for s in readable:
            try:
                data = s.recv(RECV)
            except BlockingIOError:
                continue
            if not data:
                open_.remove(s)
                continue
            off = got[s] % 256
            assert data == WINDOWS[off:off + len(data)], f"echo corrupted after byte {got[s]}"
            got[s] += len(data)
            assert got[s] <= sent[s], "more echoed than sent"
        meter.sample()
    return got


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_flow_controlled_echo_is_bounded(strategy):
    """``apps.flow_echo:FlowEcho`` to 8 clients that send without reading (until every
    connection has paused writing and sending stays blocked): RSS growth within 32 MiB.
    Then the clients half-close and read the echo back: every byte, in order, RSS still
    within the bound. The protocol's report per connection: peak write buffer <= high
    water + largest chunk received, paused at least once, no data_received while
    paused, received == sent, connection_lost(None)."""
    p, port = serve("apps.flow_echo:FlowEcho", strategy, 1, "--drain-timeout", "1")
    socks = []
    try:
        port = wait_listening(p, port)
        for _ in range(CLIENTS):
            socks.append(client(port))
        ports = {s: s.getsockname()[1] for s in socks}
        # warm up (allocator, buffers): one round trip per client
        for s in socks:
            s.sendall(PATTERN[:WARM])
        for s in socks:
            buf = b""
            while len(buf) < WARM:
                b = s.recv(WARM - len(buf))
                assert b, "EOF during warm-up"
                buf += b
            assert buf == PATTERN[:WARM]
        meter = Meter(p.pid)

        def paused(s):  # the server paused writing on this connection
            return str(ports[s]) in {x[2] for x in _lines(p, "pause")}

        sent = flood(socks, meter, ready=paused, start=WARM)
        assert meter.peak <= RSS_BOUND, meter.report() + f"; sent {sorted(sent.values())}"
        assert all(n < CAP for n in sent.values()), f"never blocked: sent {sorted(sent.values())}"
        assert sorted(x[2] for x in _lines(p, "pause")) == sorted(str(v) for v in ports.values())
        got = read_back(socks, sent, meter, start=WARM)
        assert meter.peak <= RSS_BOUND, meter.report()
        assert {ports[s]: got[s] for s in socks} == {ports[s]: sent[s] for s in socks}
        for s in socks:
            s.close()
        socks = []
        assert stop(p) == 0
        lost = {}
        for x in _lines(p, "lost"):
            lost[int(x[2])] = dict(kv.split("=") for kv in x[3:])
        assert sorted(lost) == sorted(ports.values()), p.err
        for s_port, st in lost.items():
            peak, chunk, high = int(st["peak"]), int(st["chunk"]), int(st["high"])
            assert peak <= high + chunk, (s_port, st)
            assert int(st["pauses"]) >= 1, (s_port, st)
            assert st["while_paused"] == "0", (s_port, st)
            assert st["exc"] == "None", (s_port, st)
        assert {int(k): int(v["received"]) for k, v in lost.items()} == \
            {ports[s]: n for s, n in sent.items()}
        other = [x for x in p.text(p.err) if not x.startswith("flow_echo ")]
        assert other == []
    finally:
        for s in socks:
            s.close()
        p.kill()
