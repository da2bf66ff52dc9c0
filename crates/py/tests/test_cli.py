"""`python -m c10k serve MODULE:FACTORY --listen IP:PORT [--strategy S]`.

The stock parameter runs stock_serve.py, a reference with the same contract on
asyncio's own loop, and the c10k recording must equal it.
"""

import os
import signal
import socket
import subprocess
import sys
import threading

from harness import connect, differential_fn, free_port, import_c10k, recv_all

HERE = os.path.dirname(os.path.abspath(__file__))


def first_line(proc, timeout=10):
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def sc_cli(kind):
    port = free_port()
    listen = f"127.0.0.1:{port}"
    if kind.is_stock:
        cmd = [sys.executable, os.path.join(HERE, "stock_serve.py")]
    else:
        import_c10k()  # fail loudly (with the install command) before spawning
        cmd = [sys.executable, "-m", "c10k"]
    cmd += ["serve", "protocols:CliEcho", "--listen", listen]
    if not kind.is_stock:
        cmd += ["--strategy", kind.strategy, "--processes", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = first_line(proc)
        echoes = []
        for i in range(5):
            s = connect(("127.0.0.1", port))
            with s:
                s.sendall(b"ping %d" % i)
                s.shutdown(socket.SHUT_WR)
                # the app does not close on EOF: stop at the 6 bytes of the echo
                echoes.append(recv_all(s, limit=6)[0])
        held = connect(("127.0.0.1", port))  # open while SIGTERM arrives
        held.sendall(b"held")
        held_echo = held.recv(4)
        proc.send_signal(signal.SIGTERM)
        held.close()
        code = proc.wait(10)
        err = proc.stderr.read()
        try:
            connect(("127.0.0.1", port)).close()
            after = None
        except OSError as exc:
            after = type(exc).__name__
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"line": line == f"listening on {listen}\n" or line, "echoes": echoes, "held_echo": held_echo, "exit": code,
            "after_exit": after, "stderr_empty": err == "" or err}


def test_cli_serve(loop_kind):
    """Prints exactly `listening on IP:PORT`, serves the factory, exits 0 on SIGTERM."""
    rec = differential_fn(loop_kind, sc_cli)
    assert rec == {
        "line": True,  # exactly `listening on 127.0.0.1:PORT`, the port asked for
        "echoes": [b"ping %d" % i for i in range(5)],
        "held_echo": b"held",
        "exit": 0,
        "after_exit": "ConnectionRefusedError",
        "stderr_empty": True,
    }
