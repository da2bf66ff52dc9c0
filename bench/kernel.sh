#!/usr/bin/env bash
# Issue 19's figures: CPU per echo message for `kernel` (the echo runs in softirq, in
# the kernel) against `epoll-et` and `uring`, 64 B and 16 KiB messages at 100 and 1,000
# connections, with the reference load generator, alternating the strategies in one run,
# median of N rounds.
#
# Three figures per cell, because the server process's own CPU proves nothing for
# `kernel` (the redirect runs in softirq, on loopback mostly on the sending CPU, and is
# charged to whichever process or CPU was interrupted):
#   server   utime+stime of the server process (pinned to CPU 0);
#   load     utime+stime of echo_load (pinned to CPU 1);
#   softirq  all CPUs' softirq time (/proc/stat), where the redirect runs (shown, not
#            added: with tick accounting and no IRQ_TIME_ACCOUNTING a softirq tick is
#            also charged to the process it interrupted, so it is already in the
#            server's, the load's and the kworkers' figures);
#   kworkers utime+stime of kworker and ksoftirqd threads (the sockmap sends
#            redirected segments from a work item);
#   echo     server + load + kworkers: the CPU this echo costs, which other
#            processes on a shared machine do not disturb much (softirq that lands on
#            an idle CPU is in no process: only the whole-machine figure has it);
#   machine  all CPUs' busy time from /proc/stat (user+nice+system+irq+softirq+steal)
#            over the load's run, load generator included. On a machine shared with
#            other work this includes that work: the busy rate measured for 2 s just
#            before each cell is printed beside it ("other work").
# Each is divided by the messages echo_load counted (total_msgs).
# Usage: bench/kernel.sh [rounds] [seconds] [sizes, e.g. 64,16384]
# (needs ../shared/anchors/build.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
secs=${2:-10}
sizes=${3:-64,16384}
A=/tmp/c10k-anchors
[[ -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
C=$PWD/target/release/c10k
$C strategies | grep '^kernel ' | grep -q ' available: ' || {
  echo "kernel is not available here: $($C strategies | grep '^kernel ')" >&2
  exit 1
}
python3 - "$C" "$A/echo_load" "$rounds" "$secs" "$sizes" <<'EOF'
import os, re, socket, statistics, subprocess, sys, time

c10k, load, rounds, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
SIZES = [int(x) for x in sys.argv[5].split(",")]
TICK = os.sysconf("SC_CLK_TCK")
STRATEGIES = ["epoll-et", "uring", "kernel"]
CONNS = [100, 1000]


def busy():
    """Busy seconds of all CPUs (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def softirq():
    """Softirq seconds of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[7]) / TICK


def kthreads():
    """utime+stime of the kernel's worker threads (kworker, ksoftirqd): the
    sockmap's redirected segments are sent from a work item."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        if comm.startswith(("kworker", "ksoftirqd")):
            rest = st[st.rindex(")") + 2:].split()
            total += (int(rest[11]) + int(rest[12])) / TICK
    return total


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


def cell(strategy, conns, size):
    port = free_port()
    srv = subprocess.Popen(["taskset", "-c", "0", c10k, "serve", "--strategy", strategy,
                            "--app", "echo", "--listen", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        b0, t0 = busy(), time.time()
        time.sleep(2)
        base_rate = (busy() - b0) / (time.time() - t0)
        s0, m0, q0, k0, t0 = proc_cpu(srv.pid), busy(), softirq(), kthreads(), time.time()
        lp = subprocess.Popen(["taskset", "-c", "1", load, "-p", str(port), "-c", str(conns),
                               "-d", str(secs), "-w", "1", "-s", str(size)],
                              stdout=subprocess.PIPE, text=True)
        out = lp.stdout.read()
        # echo_load's own CPU: the rusage of the reaped child.
        _, _, ru = os.wait4(lp.pid, 0)
        lp.returncode = 0
        s1, m1, q1, k1, t1 = proc_cpu(srv.pid), busy(), softirq(), kthreads(), time.time()
    finally:
        srv.terminate()
        srv.wait(timeout=20)
    m = re.search(r"msgs_per_s=(\d+).*total_msgs=(\d+).*errors=(\d+)", out)
    if not m:
        raise RuntimeError("echo_load: " + out)
    rps, msgs, errors = float(m[1]), int(m[2]), int(m[3])
    load_s = ru.ru_utime + ru.ru_stime
    echo = (s1 - s0) + load_s + (k1 - k0)
    return dict(rps=rps, msgs=msgs, errors=errors, server_us=(s1 - s0) / msgs * 1e6,
                load_us=(ru.ru_utime + ru.ru_stime) / msgs * 1e6,
                echo_us=echo / msgs * 1e6,
                softirq_us=(q1 - q0) / msgs * 1e6, kthreads_us=(k1 - k0) / msgs * 1e6, raw_machine_us=(m1 - m0) / msgs * 1e6,
                base=base_rate)


results = {(s, c, z): [] for s in STRATEGIES for c in CONNS for z in SIZES}
for r in range(rounds):
    for z in SIZES:
        for c in CONNS:
            for s in STRATEGIES:
                x = cell(s, c, z)
                results[(s, c, z)].append(x)
                print(f"round {r + 1} {s:8} {z:5} B {c:5} conns: {x['rps']:9.0f} msg/s  "
                      f"server {x['server_us']:.2f} us/msg  load {x['load_us']:.2f}  softirq "
                      f"{x['softirq_us']:.2f}  kthreads {x['kthreads_us']:.2f}  echo total "
                      f"{x['echo_us']:.2f}  machine "
                      f"{x['raw_machine_us']:.2f} (other work before: "
                      f"{x['base'] * 100:.0f}% of a CPU)  errors {x['errors']}", flush=True)

med = lambda s, c, z, k: statistics.median(x[k] for x in results[(s, c, z)])
print()
print("| size | conns | strategy | msg/s | server | load | softirq | kworkers "
      "| server+load+kworkers | whole machine |")
print("|---|---|---|---|---|---|---|---|---|---|")
for z in SIZES:
    for c in CONNS:
        for s in STRATEGIES:
            print(f"| {z} | {c} | {s} | {med(s, c, z, 'rps'):.0f} | "
                  + " | ".join(f"{med(s, c, z, k):.2f}" for k in
                               ["server_us", "load_us", "softirq_us", "kthreads_us", "echo_us",
                                "raw_machine_us"]) + " |")
print()
for z in SIZES:
    for c in CONNS:
        for base in ("epoll-et", "uring"):
            print(f"{z} B, {c} conns: kernel / {base}: " + ", ".join(
                f"{k} {med('kernel', c, z, k) / med(base, c, z, k):.2f}x"
                for k in ["raw_machine_us", "echo_us", "rps"]))
EOF
