"""Blocking-style handlers: ``python -m c10k serve MODULE:HANDLER --strategy
thread|fork|prefork`` and ``c10k.serve_blocking``.

The contract under test is the command line's (exactly ``listening on IP:PORT`` on
stdout, SIGTERM drains and exits 0, the port is refused afterwards, bad arguments
exit 2 with one line) and the handler's (``conn`` is socket-like; ``recv`` returns
``b""`` when the server drains or the idle timeout passes; ``settimeout`` raises
``TimeoutError``; an exception is logged with its traceback and closes only its
connection). Every test runs once per strategy unless it is about one.

Servers are subprocesses serving handlers from apps_blocking/handlers.py (this
directory is put on PYTHONPATH); a handler that must report something it cannot send
over its own connection prints a line to stderr. Timeouts are hang guards only
(generous, for a noisy machine): nothing asserts on timing. The short timeouts the
handlers set (``settimeout(0.2)``, ``--idle-timeout 0.3``) are what is under test,
and the tests only assert that they end the wait.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from harness import free_port, import_c10k

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = ("thread", "fork", "prefork")
GUARD = 30.0  # hang guard (seconds) for any one wait


def _env():
    path = [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


class Server:
    """A server subprocess; its stdout and stderr lines are collected by threads."""

    def __init__(self, cmd, expect_listening=True):
        import_c10k()  # fail loudly (with the install command) before spawning
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=HERE
        )
        self.out, self.err = [], []
        self._cond = threading.Condition()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()
        self.port = None
        if expect_listening:
            line = self.wait_for(self.out, lambda got: got and got[0], "the listening line")
            m = re.fullmatch(r"(?:api )?listening on 127\.0\.0\.1:(\d+)\n", line)
            assert m, f"first stdout line {line!r}"
            self.port = int(m.group(1))

    @classmethod
    def cli(cls, handler, strategy, *flags, port=None):
        listen = f"127.0.0.1:{port if port is not None else 0}"
        cmd = [sys.executable, "-m", "c10k", "serve", f"apps_blocking.handlers:{handler}",
               "--strategy", strategy, "--listen", listen, *flags]
        return cls(cmd)

    def _pump(self, stream, lines):
        for line in stream:
            with self._cond:
                lines.append(line)
                self._cond.notify_all()
        with self._cond:
            lines.append(None)  # EOF marker
            self._cond.notify_all()

    def wait_for(self, lines, pred, what):
        """Wait until ``pred(lines so far)`` is truthy; return it."""
        deadline = time.monotonic() + GUARD
        with self._cond:
            while True:
                value = pred([x for x in lines if x is not None])
                if value:
                    return value
                left = deadline - time.monotonic()
                if None in lines or left <= 0:
                    pytest.fail(f"{what}: not seen (process {'ended' if None in lines else 'hung'});"
                                f" stdout={self.out!r} stderr={self.err!r}")
                self._cond.wait(left)

    def wait_err(self, text):
        """Wait for a stderr line containing ``text``."""
        return self.wait_for(self.err, lambda got: any(text in x for x in got), f"stderr {text!r}")

    def stderr(self):
        with self._cond:
            return "".join(x for x in self.err if x is not None)

    def term(self):
        """SIGTERM; the exit status (after both pipes ended)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def wait_exit(self):
        try:
            code = self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {GUARD} s after SIGTERM; stderr={self.stderr()!r}")
        self.wait_for(self.err, lambda got: None in self.err, "stderr EOF")
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def connect(self, handler=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=GUARD)
        if handler is not None:
            s.sendall(handler.encode() + b"\n")
        return s

    def refused(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=GUARD).close()
        except ConnectionRefusedError:
            return True
        return False


@pytest.fixture
def servers():
    started = []

    def start(*args, **kwargs):
        server = Server.cli(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def recv_to_eof(s):
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def assert_clean_exit(server):
    assert server.term() == 0, server.stderr()
    assert server.refused(), "the port still accepts after the exit"
    assert "Traceback" not in server.stderr(), server.stderr()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_echo(servers, strategy):
    """recv/sendall, recv_into/send, addresses and the context manager; exactly
    ``listening on IP:PORT`` with the port asked for."""
    port = free_port()
    server = servers("dispatch", strategy, port=port)
    assert server.out[0] == f"listening on 127.0.0.1:{port}\n"
    for handler in ("echo", "echo_into"):
        for i in range(3):
            with server.connect(handler) as s:
                payload = b"%s %d " % (handler.encode(), i) * (1 + 3000 * i)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert recv_to_eof(s) == payload
    with server.connect("info") as s:
        local = s.getsockname()
        line = recv_line(s).decode()
        assert line == f"127.0.0.1:{local[1]} 127.0.0.1:{port} 1\n"
        assert s.recv(1) == b""  # closed by the context manager
    server.wait_err("info closed fileno=-1")
    assert_clean_exit(server)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_line_protocol_over_makefile(servers, strategy):
    """makefile('rb')/makefile('wb'): readline, write, flush; and a
    socketserver.StreamRequestHandler adapted as in the README."""
    server = servers("dispatch", strategy)
    with server.connect("lines") as s:
        s.sendall(b"hello\n")
        assert recv_line(s) == b"0 HELLO\n"
        s.sendall(b"wor")
        s.sendall(b"ld\nsecond line\n")
        assert recv_line(s) == b"1 WORLD\n"
        assert recv_line(s) == b"2 SECOND LINE\n"
        s.sendall(b"QUIT\n")
        assert recv_to_eof(s) == b"BYE\n"
    with server.connect("stream_handler") as s:
        s.sendall(b"abc\ndef\n")
        assert recv_line(s) == b"ABC\n"
        s.sendall(b"ghi\n")
        s.shutdown(socket.SHUT_WR)
        assert recv_to_eof(s) == b"DEF\nGHI\n"
    assert_clean_exit(server)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigterm_drains(servers, strategy):
    """SIGTERM: a handler waiting in recv on an idle connection gets b"" (and can
    still answer), the process exits 0, and the port is refused afterwards."""
    server = servers("dispatch", strategy)
    idle = server.connect("drain_probe")
    assert recv_line(idle) == b"ready\n"
    with server.connect("echo") as s:  # served and closed before the drain
        s.sendall(b"before")
        assert recv_exact(s, 6) == b"before"
    server.proc.send_signal(signal.SIGTERM)
    assert recv_line(idle) == b"recv returned eof\n"
    assert idle.recv(1) == b""
    idle.close()
    assert server.wait_exit() == 0, server.stderr()
    assert "drain_probe recv returned b''" in server.stderr()
    assert server.refused()
    assert "Traceback" not in server.stderr(), server.stderr()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_settimeout_raises_timeout_error(servers, strategy):
    """settimeout(t): a recv with nothing coming and a sendall the peer does not
    read raise TimeoutError (socket.timeout); gettimeout reports the setting."""
    server = servers("dispatch", strategy)
    with server.connect("timeout_probe") as s:
        assert recv_line(s) == b"timeout %s None\n" % socket.timeout.__name__.encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(GUARD)
    s.connect(("127.0.0.1", server.port))
    with s:
        s.sendall(b"send_timeout_probe\nx")
        server.wait_err(f"sendall raised {socket.timeout.__name__}")
    assert_clean_exit(server)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_idle_timeout(servers, strategy):
    """--idle-timeout: a recv waiting longer returns b"" and the connection is closed
    (the client sees end of stream); the server goes on."""
    server = servers("dispatch", strategy, "--idle-timeout", "0.3")
    with server.connect("idle_probe") as s:
        assert s.recv(1) == b""
    server.wait_err("idle_probe recv returned b''")
    with server.connect("echo") as s:
        s.sendall(b"still here")
        assert recv_exact(s, 10) == b"still here"
    assert_clean_exit(server)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_handler_that_raises(servers, strategy):
    """The exception is logged with its traceback (logger "c10k", on stderr), only
    its connection is closed, and the next client is served."""
    server = servers("raiser", strategy)
    with server.connect() as other:  # open while the first one fails
        with server.connect() as s:
            s.sendall(b"boom")
            assert recv_to_eof(s) == b""
        server.wait_err("ValueError: boom requested by the client")
        other.sendall(b"fine")
        assert recv_exact(other, 4) == b"fine"
    with server.connect() as s:
        s.sendall(b"after")
        assert recv_exact(s, 5) == b"after"
    err = server.stderr()
    assert "c10k: handler" in err and "Traceback (most recent call last)" in err, err
    assert 'in raiser\n    raise ValueError("boom requested by the client")' in err, err
    assert server.term() == 0, server.stderr()
    assert server.refused()
    assert server.stderr().count("Traceback") == 1, server.stderr()


@pytest.mark.parametrize("strategy", ("thread", "fork"))
def test_max_conns(servers, strategy):
    """Beyond --max-conns connections being served, a new one is closed at once and
    logged; once one ends, new ones are served again."""
    server = servers("dispatch", strategy, "--max-conns", "1")
    busy = server.connect("drain_probe")
    assert recv_line(busy) == b"ready\n"
    with server.connect() as s:
        assert recv_to_eof(s) == b""
    server.wait_err("max_conns")
    busy.sendall(b"done")
    assert recv_to_eof(busy) == b""
    busy.close()
    server.wait_err("drain_probe recv returned b'done'")
    # The slot is free once the handler returned (the fork parent notices the exit).
    deadline = time.monotonic() + GUARD
    while True:
        try:
            with server.connect("echo") as s:
                s.sendall(b"again")
                got = recv_exact(s, 5)
        except ConnectionError:  # still refused: closed with our bytes unread
            got = "reset"
        if got == b"again" or time.monotonic() > deadline:
            break
    assert got == b"again"
    assert server.term() == 0


def test_thread_200_concurrent_connections(servers):
    """200 connections open at once, each served by its own thread, all echo right."""
    server = servers("echo", "thread")
    conns = [server.connect() for _ in range(200)]
    try:
        messages = [b"message %03d;" % i * 50 for i in range(len(conns))]
        for s, message in zip(conns, messages):
            s.sendall(message)
        for i, (s, message) in enumerate(zip(conns, messages)):
            assert recv_exact(s, len(message)) == message, i
        for i, s in enumerate(conns):
            s.sendall(b"again %03d" % i)
        for i, s in enumerate(conns):
            assert recv_exact(s, 9) == b"again %03d" % i, i
    finally:
        for s in conns:
            s.close()
    assert_clean_exit(server)


def test_thread_processes_2(servers):
    """--processes 2: two interpreters behind SO_REUSEPORT, both serving."""
    server = servers("pid_echo", "thread", "--processes", "2")
    pids = set()
    for _ in range(400):
        with server.connect() as s:
            pid = int(recv_line(s))
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
        pids.add(pid)
        if len(pids) == 2:
            break
    assert len(pids) == 2, pids
    assert server.proc.pid not in pids
    assert_clean_exit(server)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_serve_blocking_api(strategy):
    """c10k.serve_blocking from a program: on_listening gets the address, SIGTERM
    makes it return 0."""
    server = Server([sys.executable, os.path.join(HERE, "apps_blocking", "run_api.py"), strategy])
    try:
        with server.connect() as s:
            s.sendall(b"api")
            assert recv_exact(s, 3) == b"api"
        assert server.term() == 0, server.stderr()
        assert server.out[1:] == ["serve_blocking returned 0\n", None], server.out
        assert server.refused()
    finally:
        server.kill()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "thread", "--workers", "2"], "workers is prefork's pool size"),
        (["--strategy", "fork", "--processes", "2"], "processes is for strategy='thread'"),
        (["--strategy", "epoll-et", "--idle-timeout", "5"], "--idle-timeout is for --strategy thread"),
        (["--strategy", "prefork", "--workers", "0"], "workers must be an integer from 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(flags, message):
    import_c10k()
    cmd = [sys.executable, "-m", "c10k", "serve", "apps_blocking.handlers:echo",
           "--listen", "127.0.0.1:0", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=HERE, timeout=GUARD)
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_missing_handler_exits_2():
    import_c10k()
    cmd = [sys.executable, "-m", "c10k", "serve", "apps_blocking.handlers:nope",
           "--strategy", "thread", "--listen", "127.0.0.1:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=HERE, timeout=GUARD)
    assert done.returncode == 2, done
    assert done.stderr == "c10k: 'apps_blocking.handlers' has no 'nope'\n"
