"""``--processes N`` and ``c10k.run(main, processes=N)``: the multi-process supervisor.

The contract: ``python -m c10k serve MODULE:FACTORY --listen IP:PORT --processes N``
runs N single-threaded interpreters behind SO_REUSEPORT, prints exactly
``listening on IP:PORT`` once it accepts, restarts a child that dies (saying so on
stderr), gives up with exit status 1 when children keep dying within 1 s of
starting (5 in a row), and on SIGTERM drains every child (listeners close, open
connections get ``--drain-timeout`` seconds) and exits 0. Bad arguments exit 2 with
one line on stderr. ``c10k.run(main, processes=N)`` is the same for a coroutine
function whose servers default to ``reuse_port=True``.

Servers are subprocesses running protocols from apps/ (crates/py/tests is put on
PYTHONPATH): ``apps.pid_echo:PidEcho`` writes the serving process's pid, then
echoes, which is how a test tells which child served a connection. Timeouts are
hang guards only (generous, for a noisy machine); nothing asserts on timing.
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
STRATEGIES = ("epoll-et", "uring")
GUARD = 25.0  # hang guard (seconds) for any one wait


def _env(**extra):
    path = [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **extra)


class Proc:
    """A subprocess whose stdout and stderr lines are collected by threads."""

    def __init__(self, cmd, env=None):
        # Its own process group, so kill() reaches the children of a supervisor too.
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or _env(), cwd=HERE, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.out, self.err = [], []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, lines):
        for line in stream:
            with self._cond:
                lines.append(line)
                self._cond.notify_all()
        with self._cond:
            lines.append(None)  # EOF marker
            self._cond.notify_all()

    def wait_for(self, lines, pred, what, timeout=GUARD):
        """Wait until ``pred(lines without the EOF marker)`` is truthy; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [x for x in lines if x is not None]
                value = pred(got)
                if value:
                    return value
                left = deadline - time.monotonic()
                if None in lines or left <= 0:
                    pytest.fail(
                        f"{what}: not seen (process {'ended' if None in lines else 'hung'});"
                        f" stdout={self.out!r} stderr={self.err!r}"
                    )
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout=GUARD):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {self.pid} did not exit; stdout={self.out!r} stderr={self.err!r}")
        for t in self._threads:
            t.join(GUARD)
        return code

    def text(self, lines):
        return [x for x in lines if x is not None]

    def kill(self):
        """SIGKILL the process and whatever is left of its group (its children)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def serve(app, strategy, processes=2, *more, port=0):
    """``python -m c10k serve app --listen 127.0.0.1:port ...`` (port 0: the kernel's
    choice, which the listening line then names). Returns (Proc, port asked for)."""
    import_c10k()  # fail loudly (with the install command) before spawning
    cmd = [sys.executable, "-m", "c10k", "serve", app, "--listen", f"127.0.0.1:{port}",
           "--strategy", strategy, "--processes", str(processes), *more]
    return Proc(cmd), port


def wait_listening(p, port):
    """Wait for the listening line; it must be exactly ``listening on 127.0.0.1:PORT``
    with the port asked for (any port when 0 was asked). Returns the port."""
    line = p.wait_for(p.out, lambda ls: ls[:1], "the listening line")[0]
    m = re.fullmatch(r"listening on 127\.0\.0\.1:([1-9][0-9]*)\n", line)
    assert m, line
    assert port in (0, int(m.group(1))), line
    return int(m.group(1))


def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(x) for x in f.read().split())


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


def dial(port):
    """Connect to PidEcho; returns (socket, pid of the serving process)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(64)
        assert b, f"EOF before the pid line (got {buf!r})"
        buf += b
    return s, int(buf)


def echo(s, payload):
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        b = s.recv(65536)
        assert b, f"EOF after {got!r}, expected {payload!r}"
        got += b
    return got


def try_echo(s, payload):
    """``echo``, or how the connection ended instead ("EOF", an exception name)."""
    got = b""
    try:
        s.sendall(payload)
        while len(got) < len(payload):
            b = s.recv(65536)
            if not b:
                return f"EOF after {got!r}"
            got += b
    except OSError as exc:
        return f"{type(exc).__name__} after {got!r}"
    return got


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=GUARD).close()
    except ConnectionRefusedError:
        return True
    return False


def dial_until_both(port, limit=64):
    """Open connections until two distinct pids answered; returns {pid: [sockets]}."""
    by_pid = {}
    for _ in range(limit):
        s, pid = dial(port)
        by_pid.setdefault(pid, []).append(s)
        if len(by_pid) == 2 and all(len(v) >= 2 for v in by_pid.values()):
            break
    assert len(by_pid) == 2, f"{limit} connections all served by {list(by_pid)}"
    return by_pid


def close_all(socks):
    for s in socks:
        s.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_children_serve(strategy):
    """--processes 2: the listening line; 40 connections are all served, by exactly two
    processes, both single-threaded children of the supervisor (which serves none)."""
    p, port = serve("apps.pid_echo:PidEcho", strategy, 2, port=free_port())
    conns = []
    try:
        port = wait_listening(p, port)
        for i in range(40):
            conns.append(dial(port))
        for i, (s, _) in enumerate(conns):
            assert echo(s, b"hello %d" % i) == b"hello %d" % i
        pids = {pid for _, pid in conns}
        assert len(pids) == 2, pids
        assert p.pid not in pids
        assert {pid: ppid(pid) for pid in pids} == {pid: p.pid for pid in pids}
        assert children(p.pid) == sorted(pids)
        assert {pid: threads(pid) for pid in pids} == {pid: 1 for pid in pids}
        close_all(s for s, _ in conns)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0
        assert p.text(p.err) == []
        assert p.text(p.out) == [f"listening on 127.0.0.1:{port}\n"]
    finally:
        close_all(s for s, _ in conns)
        p.kill()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_killed_child_is_restarted(strategy):
    """SIGKILL one child: the supervisor says so on stderr and starts a new child (a
    third pid serves); connections held open to the other child keep echoing; the
    killed child's connections end (EOF or reset), not hang."""
    p, port = serve("apps.pid_echo:PidEcho", strategy, 2)
    by_pid = {}
    try:
        port = wait_listening(p, port)
        by_pid = dial_until_both(port)
        victim, other = sorted(by_pid)
        os.kill(victim, signal.SIGKILL)
        line = p.wait_for(
            p.err, lambda ls: [x for x in ls if f"pid {victim}" in x], "a restart message"
        )[0]
        assert line.startswith("c10k: ") and "SIGKILL" in line and "restart" in line, line
        for s in by_pid[victim]:
            try:
                assert s.recv(64) == b""
            except ConnectionResetError:
                pass
        fresh = None
        for _ in range(200):
            s, pid = dial(port)
            s.close()
            if pid not in (victim, other):
                fresh = pid
                break
        assert fresh is not None, "no connection was served by a new child in 200 tries"
        assert ppid(fresh) == p.pid
        assert children(p.pid) == sorted([other, fresh])
        for i, s in enumerate(by_pid[other]):
            assert try_echo(s, b"still here %d" % i) == b"still here %d" % i
        close_all(s for v in by_pid.values() for s in v)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0
        assert len(p.text(p.err)) == 1, p.err  # one restart, nothing else
    finally:
        close_all(s for v in by_pid.values() for s in v)
        p.kill()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigterm_with_idle_client(strategy):
    """SIGTERM while a client sits idle on each child: the drain gives up after
    --drain-timeout (1 s), the supervisor exits 0, the clients see their connection
    end, the children are gone and the port refuses connections."""
    p, port = serve("apps.pid_echo:PidEcho", strategy, 2, "--drain-timeout", "1")
    by_pid = {}
    try:
        port = wait_listening(p, port)
        by_pid = dial_until_both(port)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0
        for s in (s for v in by_pid.values() for s in v):
            try:
                assert s.recv(64) == b""
            except ConnectionResetError:
                pass
        assert [pid for pid in by_pid if os.path.exists(f"/proc/{pid}")] == []
        assert refused(port)
        assert p.text(p.err) == []
    finally:
        close_all(s for v in by_pid.values() for s in v)
        p.kill()


def _start_run_main(strategy, port, drain):
    import_c10k()
    p = Proc(
        [sys.executable, os.path.join(HERE, "apps", "run_main.py")],
        env=_env(C10K_TEST_PORT=str(port), C10K_TEST_STRATEGY=strategy,
                 C10K_TEST_DRAIN=str(drain)),
    )
    try:
        ready = p.wait_for(p.out, lambda ls: ls if len(ls) >= 2 else None, "two `ready` lines")
        pids = set()
        for line in ready[:2]:
            assert line.startswith("ready ") and line[6:-1].isdigit(), (ready, p.err)
            pids.add(int(line[6:]))
    except BaseException:
        p.kill()
        raise
    return p, pids


@pytest.mark.parametrize("entry", ["serve", "run"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigterm_drains_open_connections(strategy, entry):
    """SIGTERM with a connection open on each child and a long --drain-timeout (60 s):
    the listeners close (new connections are refused), the open connections are still
    served (echo) after that, and once the clients close them the supervisor exits 0
    (without waiting for the timeout: the hang guard is 25 s)."""
    p, by_pid = None, {}
    try:
        if entry == "serve":
            p, _ = serve("apps.pid_echo:PidEcho", strategy, 2, "--drain-timeout", "60")
            port = wait_listening(p, 0)
        else:
            port = free_port()
            p, _ = _start_run_main(strategy, port, 60)
        by_pid = dial_until_both(port)
        p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GUARD
        while not refused(port):
            assert time.monotonic() < deadline, "the port still accepts after SIGTERM"
            time.sleep(0.01)
        for pid, socks in sorted(by_pid.items()):
            for i, s in enumerate(socks):
                msg = b"draining %d %d" % (pid, i)
                assert try_echo(s, msg) == msg, f"connection to child {pid} not served while draining"
        close_all(s for v in by_pid.values() for s in v)
        assert p.wait() == 0
        assert p.text(p.err) == []
        if entry == "run":
            assert p.text(p.out)[-1] == "run returned None\n"
    finally:
        close_all(s for v in by_pid.values() for s in v)
        if p is not None:
            p.kill()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_crash_loop_exits_1(strategy):
    """Children that die on their first connection (os._exit(3)): each death is logged
    with a restart, and after 5 quick deaths in a row the supervisor exits 1 with a
    last line naming the crash loop; the port then refuses connections."""
    p, port = serve("apps.crash:CrashOnConnect", strategy, 2)
    try:
        port = wait_listening(p, port)
        deadline = time.monotonic() + GUARD
        while p.proc.poll() is None:
            assert time.monotonic() < deadline, f"supervisor still running; stderr={p.err!r}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=GUARD).close()
            except ConnectionRefusedError:
                pass
            time.sleep(0.01)
        assert p.wait() == 1
        err = p.text(p.err)
        assert len(err) >= 6, err  # 5 deaths at least, then the verdict
        assert all(x.startswith("c10k: process ") and "status 3" in x for x in err[:-1]), err
        assert err[-1] == "c10k: 5 children died within 1.0 s of starting\n", err
        assert refused(port)
    finally:
        p.kill()


def _cli(*args):
    import_c10k()
    r = subprocess.run([sys.executable, "-m", "c10k", *args], capture_output=True, text=True,
                       env=_env(), cwd=HERE, timeout=GUARD)
    return r.returncode, r.stdout, r.stderr.splitlines()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--processes", "0"], "--processes"),
        (["--processes", "-1"], "--processes"),
        (["--processes", str(64 * (os.cpu_count() or 1) + 1)], "--processes"),
    ],
    ids=["zero", "negative", "over-64-per-cpu"],
)
def test_bad_processes_exit_2(args, needle):
    """--processes outside 1..64*CPUs: exit 2, one line on stderr, nothing served."""
    port = free_port()
    code, out, err = _cli("serve", "apps.pid_echo:PidEcho", "--listen", f"127.0.0.1:{port}", *args)
    assert (code, out, len(err)) == (2, "", 1), (code, out, err)
    assert err[0].startswith("c10k: ") and needle in err[0], err


@pytest.mark.parametrize(
    "app, needle",
    [
        ("no_such_module_c10k:Echo", "no_such_module_c10k"),
        ("apps.no_such_module:Echo", "apps.no_such_module"),
        ("apps.pid_echo:NoSuchFactory", "NoSuchFactory"),
        ("apps.pid_echo", "MODULE:FACTORY"),
    ],
    ids=["missing-module", "missing-submodule", "missing-factory", "no-colon"],
)
def test_bad_factory_exit_2(app, needle):
    """A MODULE:FACTORY that cannot be loaded: exit 2, one line naming it."""
    port = free_port()
    code, out, err = _cli("serve", app, "--listen", f"127.0.0.1:{port}", "--processes", "2")
    assert (code, out, len(err)) == (2, "", 1), (code, out, err)
    assert err[0].startswith("c10k: ") and needle in err[0], err
    assert refused(port)


def test_factory_module_raising_on_import_exit_2():
    """A module whose import raises (not ImportError) also "cannot be imported": exit 2,
    one line (not a traceback)."""
    code, out, err = _cli("serve", "apps.broken_import:Echo", "--listen",
                          f"127.0.0.1:{free_port()}", "--processes", "2")
    assert (code, out, len(err)) == (2, "", 1), (code, out, err)
    assert err[0].startswith("c10k: ") and "apps.broken_import" in err[0], err


def test_bad_strategy_exit_2():
    """--strategy bogus: exit 2 (argparse's usage error, naming the value)."""
    code, out, err = _cli("serve", "apps.pid_echo:PidEcho", "--listen",
                          f"127.0.0.1:{free_port()}", "--strategy", "bogus", "--processes", "2")
    assert (code, out) == (2, ""), (code, out, err)
    assert err and "bogus" in err[-1], err


def test_run_rejects_bad_arguments():
    """c10k.run: processes 0 / strategy bogus raise ValueError before forking."""
    c10k = import_c10k()

    async def main():
        raise AssertionError("main must not run")

    with pytest.raises(ValueError, match="processes"):
        c10k.run(main, processes=0)
    with pytest.raises(ValueError, match="bogus"):
        c10k.run(main, processes=2, strategy="bogus")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_run_two_processes(strategy):
    """c10k.run(main, processes=2): both children print `ready` (each created a server
    on the same port, reuse_port by default), connections are served by both, they are
    children of the script's process, and SIGTERM makes run() return None, exit 0."""
    port = free_port()
    p, pids = _start_run_main(strategy, port, 5)
    conns = []
    try:
        assert len(pids) == 2 and p.pid not in pids, pids
        assert {pid: ppid(pid) for pid in pids} == {pid: p.pid for pid in pids}
        for i in range(40):
            conns.append(dial(port))
        for i, (s, _) in enumerate(conns):
            assert echo(s, b"run %d" % i) == b"run %d" % i
        assert {pid for _, pid in conns} == pids
        close_all(s for s, _ in conns)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0
        assert p.text(p.out)[-1] == "run returned None\n"
        assert p.text(p.err) == []
        assert refused(port)
    finally:
        close_all(s for s, _ in conns)
        p.kill()
