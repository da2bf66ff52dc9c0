#!/usr/bin/env python3
"""Issue 14's memory figure: subscribers that never read must not grow the server.

Starts a server (a c10k strategy with --app resp, or redis-server) pinned to CPU 0,
subscribes SLOW raw sockets that never read (4 KiB receive buffers), then runs
`c10k load --app pubsub` on CPU 1 (READERS subscribers that read everything, one
publisher of 64 B messages at RATE msg/s for SECONDS) on the same channel. It samples the
server's RSS (its whole process tree) every 100 ms and reports the peak, how many slow
subscribers the server disconnected, and what the readers lost (the load's own count).
Bounded in count and time; 127.0.0.1 only.

Usage: bench/pubsub_memory.py [--slow 100] [--rate 10000] [--seconds 10]
                              [--server 'c10k-epoll-et=target/release/c10k serve --strategy epoll-et --app resp --listen 127.0.0.1:{port}']...
"""
import argparse, json, os, shlex, socket, subprocess, sys, threading, time


import re  # noqa: E402  (kept for resp encoding helpers)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_rss_kib(pid):
    """RSS of `pid` and its descendants, KiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def connect(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def wait_port(port, proc, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def run(name, cmd, args):
    port = free_port()
    argv = ["taskset", "-c", "0"] + shlex.split(cmd.replace("{port}", str(port)))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        # The load generator's subscribers use channel c10k:0; the slow ones join it.
        slow = [connect(port, rcvbuf=4096) for _ in range(args.slow)]
        for s in slow:
            s.sendall(resp("SUBSCRIBE", "c10k:0"))
        time.sleep(0.5)  # every SUBSCRIBE lands (their confirmations wait unread)
        base = tree_rss_kib(proc.pid)
        peak, done = [base], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_kib(proc.pid))
                time.sleep(0.1)

        t = threading.Thread(target=sample)
        t.start()
        out = f"/tmp/pubsub-memory-{port}.json"
        load = [
            "taskset", "-c", "1", args.c10k, "load", "--connect", f"127.0.0.1:{port}",
            "--app", "pubsub", "--subscribers", str(args.readers), "--publishers", "1",
            "--rate", str(args.rate), "--size", "64", "--duration", f"{args.seconds}s",
            "--json", out,
        ]
        subprocess.run(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=args.seconds + 60, check=False)
        done.set()
        t.join()
        with open(out) as f:
            report = json.load(f)
        os.unlink(out)
        ps = report.get("pubsub", {})
        closed = 0
        for s in slow:
            s.setblocking(False)
            try:
                while True:
                    if not s.recv(1 << 16):
                        closed += 1
                        break
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        print(
            f"{name:16} readers: delivered {ps.get('delivered')} of {ps.get('expected')}, "
            f"lost {ps.get('lost')}, out of order {ps.get('out_of_order')}  "
            f"slow disconnected {closed}/{args.slow}  RSS before {base} KiB, peak {peak[0]} KiB "
            f"(+{peak[0] - base} KiB)"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=100)
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--c10k", default="target/release/c10k")
    ap.add_argument("--server", action="append", default=[])
    args = ap.parse_args()
    servers = args.server or [
        "redis=redis-server --port {port} --save '' --appendonly no",
        "c10k-epoll-et=target/release/c10k serve --strategy epoll-et --app resp --listen 127.0.0.1:{port}",
        "c10k-uring=target/release/c10k serve --strategy uring --app resp --listen 127.0.0.1:{port}",
    ]
    for spec in servers:
        name, cmd = spec.split("=", 1)
        run(name, cmd, args)


if __name__ == "__main__":
    sys.exit(main())
