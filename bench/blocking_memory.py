#!/usr/bin/env python3
"""Memory per idle connection of the blocking strategies (thread, fork, prefork) and
green threads, with epoll-et for reference. Not a test: run it on a quiet machine.

For each strategy: start `c10k serve --app echo`, measure the server process alone
(the base), open N connections and do one echo round trip on each (so every
connection's thread or process exists and has touched its buffers), let them sit idle,
and measure the whole server tree from /proc: RSS summed over its processes (counts
pages shared between forked processes once per process), PSS summed (shares them out:
the real total), and the thread count. Per connection = (tree total - base) / N.
Kernel socket buffers are not in either figure.

Usage: bench/blocking_memory.py [--conns 1000] [--bin target/release/c10k]
       [--only epoll-et,thread,green]
(prefork runs with --workers N: its concurrency is its pool size)."""

import argparse
import os
import resource
import socket
import subprocess
import time


def tree(pid):
    """pid and all its descendants, from /proc/*/stat."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kib(pid, path, field):
    try:
        for line in open(f"/proc/{pid}/{path}"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(pids):
    rss = sum(kib(p, "status", "VmRSS") for p in pids)
    pss = sum(kib(p, "smaps_rollup", "Pss") for p in pids)
    threads = sum(kib(p, "status", "Threads") for p in pids)
    return rss, pss, threads


def run(binary, strategy, extra, conns):
    srv = subprocess.Popen(
        [binary, "serve", "--strategy", strategy, "--app", "echo",
         "--listen", "127.0.0.1:0", "--log-level", "warn"] + extra,
        stdout=subprocess.PIPE)
    try:
        line = srv.stdout.readline().decode()
        port = int(line.strip().rsplit(":", 1)[1])
        time.sleep(0.3)
        base_rss, base_pss, _ = measure([srv.pid])
        if strategy == "prefork":  # wait for the pool (bounded)
            for _ in range(200):
                if len(tree(srv.pid)) > conns:
                    break
                time.sleep(0.05)
        socks = []
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(b"x" * 64)
            got = b""
            while len(got) < 64:
                chunk = s.recv(64 - len(got))
                if not chunk:
                    raise RuntimeError("connection closed")
                got += chunk
            socks.append(s)
        time.sleep(1.0)
        rss, pss, threads = measure(tree(srv.pid))
        procs = len(tree(srv.pid))
        for s in socks:
            s.close()
        return base_rss, base_pss, rss, pss, procs, threads
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--bin", default="target/release/c10k")
    ap.add_argument("--only", help="comma-separated strategies to measure (default: all)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    n = a.conns
    cases = [
        ("epoll-et", "epoll-et", []),
        ("thread (64KiB stacks)", "thread", ["--stack-size", "64KiB"]),
        ("thread (16KiB stacks)", "thread", ["--stack-size", "16KiB"]),
        ("fork", "fork", []),
        (f"prefork --workers {n}", "prefork", ["--workers", str(n)]),
        ("green (64KiB stacks)", "green", ["--stack-size", "64KiB"]),
    ]
    if a.only:
        wanted = a.only.split(",")
        cases = [c for c in cases if c[1] in wanted]
    print(f"{n} idle echo connections; KiB; per conn = (tree - base) / {n}")
    print(f"| strategy | base RSS | tree RSS | tree PSS | processes | threads "
          f"| RSS/conn | PSS/conn |")
    print("|---|---|---|---|---|---|---|---|")
    for label, strategy, extra in cases:
        b_rss, b_pss, rss, pss, procs, threads = run(a.bin, strategy, extra, n)
        print(f"| {label} | {b_rss} | {rss} | {pss} | {procs} | {threads} "
              f"| {(rss - b_rss) / n:.1f} | {(pss - b_pss) / n:.1f} |", flush=True)


if __name__ == "__main__":
    main()
