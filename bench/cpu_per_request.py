#!/usr/bin/env python3
"""Server CPU per request, c10k against a reference, alternating in one run.

Each round starts the server pinned to CPU 0, runs the load generator pinned to CPU 1,
and reads utime+stime of the server's whole process tree from /proc before and after
the load. CPU per request = CPU seconds / requests the load generator counted. Rounds
alternate reference and candidate; the report gives per-round figures, medians and the
ratio candidate/reference. Throughput is printed too but swings ~2x on a shared
2-core machine; CPU per request is the figure that holds.

Usage:
  bench/cpu_per_request.py --rounds 3 --kind echo \
     --ref 'epoll_echo=/tmp/c10k-anchors/epoll_echo {port}' \
     --cand 'c10k-epoll-et=target/release/c10k serve --strategy epoll-et --app echo --listen 127.0.0.1:{port}' \
     --load '/tmp/c10k-anchors/echo_load -p {port} -c 1000 -d 10 -w 1 -s 64'
Kinds: echo (echo_load output), wrk (wrk --latency), redis (redis-benchmark --csv),
pubsub (`c10k load --app pubsub ... --json {json}`: the script fills {json} with a
temporary file and reads the report from it). For pubsub the "requests" are the
delivered messages, and the server's CPU is read when the load says on stderr that
publishing starts and that the deliveries have settled (its connections still open),
so the subscribe phase and the closes are left out.
Every load is bounded by its own duration or request count; traffic goes to 127.0.0.1 only.
"""
import argparse, csv, io, json, os, re, shlex, signal, socket, statistics, subprocess, sys, tempfile, time

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, rest):
    """CPU seconds of one process: utime+stime from its stat (clock ticks, so a process
    that ran under 10 ms shows 0, as each of 1,000 prefork workers may), or the exact
    sum of its live threads' run time from schedstat (ns), whichever is larger (stat
    also holds the time of threads that already exited)."""
    ticks = (int(rest[11]) + int(rest[12])) / TICK
    ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return max(ticks, ns / 1e9)


def tree_cpu(pid):
    """CPU seconds of pid and all its descendants (threads included), plus the CPU of
    pid's children already reaped (cutime+cstime: a fork server's connection
    processes that ended during the window)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append((int(d), rest))
    total, todo = 0.0, [pid]
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        rest = st[st.rindex(")") + 2:].split()
        total += proc_cpu(pid, rest) + (int(rest[13]) + int(rest[14])) / TICK
    except OSError:
        pass
    while todo:
        p = todo.pop()
        for (c, rest) in kids.get(p, []):
            total += proc_cpu(c, rest)
            todo.append(c)
    return total


def tree_user_sys(pid):
    """utime and stime (seconds, clock ticks) of pid and its live descendants: the
    user/kernel split of the server's CPU."""
    user = sys_ = 0.0
    pids = [pid]
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            rest = st[st.rindex(")") + 2:].split()
            user += int(rest[11]) / TICK
            sys_ += int(rest[12]) / TICK
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            pass
    return user, sys_


def tree_switches(pid):
    """Voluntary context switches of the live threads of pid and its descendants: how
    often the server went to sleep waiting for work (one wake-up each)."""
    n = 0
    pids = [pid]
    for p in pids:
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            n += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return n


def tree_rss_kib(pid):
    total = 0
    pids = [pid]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def parse(kind, out):
    if kind == "echo":
        m = re.search(r"msgs_per_s=(\d+).*p50_us=(\d+) p99_us=(\d+).*total_msgs=(\d+).*errors=(\d+)", out)
        if not m:
            raise RuntimeError("cannot parse echo_load output: " + out)
        return dict(rps=float(m[1]), p50_us=int(m[2]), p99_us=int(m[3]), requests=int(m[4]), errors=int(m[5]))
    if kind == "wrk":
        reqs = int(re.search(r"(\d+) requests in", out)[1])
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
        errs = 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if m:
            errs += int(m[1])
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            errs += sum(int(x) for x in m.groups())
        return dict(rps=rps, requests=reqs, errors=errs)
    if kind == "redis":
        rows = list(csv.reader(io.StringIO(out)))
        n = 0
        rps = 0.0
        for r in rows[1:]:
            rps += float(r[1])
        return dict(rps=rps, requests=None, errors=0, tests=len(rows) - 1)
    if kind == "pubsub":
        v = json.loads(out)
        p = v["pubsub"]
        if p["delivered"] == 0 or p["subscribed"] < p["subscribers"]:
            raise RuntimeError(f"{p['subscribed']} of {p['subscribers']} subscribed, {p['delivered']} "
                               f"delivered; warnings: {v['warnings']}")
        return dict(rps=p["delivered_per_s"], requests=p["delivered"], errors=v["errors"]["total"],
                    p99_us=p["delivery_p99_us"], lost=p["lost"], expected=p["expected"],
                    disconnected=p["disconnected_subscribers"],
                    undelivered_disconnected=p["undelivered_to_disconnected"])
    raise ValueError(kind)


def run_pubsub_load(srv_pid, cmd):
    """Runs a `c10k load --app pubsub` command (with {json} filled in) and samples the
    server between its two stderr marks. Returns (report text, samples before, after)."""
    fd, path = tempfile.mkstemp(prefix="c10k-pubsub-", suffix=".json")
    os.close(fd)
    sample = lambda: (tree_cpu(srv_pid), tree_user_sys(srv_pid), tree_switches(srv_pid), time.time())
    before = after = None
    try:
        lp = subprocess.Popen(["taskset", "-c", "1"] + shlex.split(cmd.replace("{json}", path)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = []
        for line in lp.stderr:
            err.append(line)
            if before is None and "publishing" in line:
                before = sample()
            elif before is not None and "deliveries settled" in line:
                after = sample()
        lp.wait(timeout=600)
        if lp.returncode != 0 or before is None:
            raise RuntimeError("c10k load failed: " + "".join(err)[-2000:])
        if after is None:
            after = sample()
        with open(path) as f:
            return f.read(), before, after
    finally:
        os.unlink(path)


BACKGROUND = None


def one(name, server_cmd, load_cmd, kind, requests_hint):
    port = free_port()
    scmd = ["taskset", "-c", "0"] + shlex.split(server_cmd.format(port=port))
    srv = subprocess.Popen(scmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bg = None
    try:
        wait_port(port)
        if BACKGROUND:
            bg = subprocess.Popen(["taskset", "-c", "1"] + shlex.split(BACKGROUND.format(port=port)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)
        time.sleep(0.2)
        if kind == "pubsub":
            out, (c0, us0, sw0, t0), (c1, us1, sw1, t1) = run_pubsub_load(
                srv.pid, load_cmd.replace("{port}", str(port)))
            wall = t1 - t0
        else:
            c0 = tree_cpu(srv.pid)
            us0 = tree_user_sys(srv.pid)
            sw0 = tree_switches(srv.pid)
            t0 = time.time()
            out = subprocess.run(["taskset", "-c", "1"] + shlex.split(load_cmd.format(port=port)),
                                 capture_output=True, text=True, timeout=600).stdout
            wall = time.time() - t0
            c1 = tree_cpu(srv.pid)
            us1 = tree_user_sys(srv.pid)
            sw1 = tree_switches(srv.pid)
        rss = tree_rss_kib(srv.pid)
    finally:
        if bg:
            bg.kill()
            bg.wait()
        try:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(timeout=10)
        except Exception:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()
    r = parse(kind, out)
    if r["requests"] is None:
        r["requests"] = requests_hint * r.pop("tests")
    r["cpu_s"] = c1 - c0
    r["us_per_req"] = (c1 - c0) / max(1, r["requests"]) * 1e6
    r["wall_s"] = wall
    r["msgs_per_sleep"] = r["requests"] / max(1, sw1 - sw0)
    du, ds = us1[0] - us0[0], us1[1] - us0[1]
    r["user_frac"] = du / (du + ds) if du + ds > 0 else 0.0
    r["rss_kib"] = rss
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="NAME=COMMAND with {port}")
    ap.add_argument("--cand", action="append", default=[], help="NAME=COMMAND with {port} (none: the reference alone)")
    ap.add_argument("--load", required=True, help="load command with {port}")
    ap.add_argument("--kind", required=True, choices=["echo", "wrk", "redis", "pubsub"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=0, help="redis-benchmark -n (requests per test)")
    ap.add_argument("--background", help="a command with {port} run beside the load (e.g. idle connections)")
    a = ap.parse_args()
    global BACKGROUND
    BACKGROUND = a.background
    servers = [a.ref] + a.cand
    results = {s.split("=", 1)[0]: [] for s in servers}
    for rnd in range(a.rounds):
        for s in servers:
            name, cmd = s.split("=", 1)
            try:
                r = one(name, cmd, a.load, a.kind, a.requests)
            except RuntimeError as e:
                # A pub/sub server that cannot serve the run (no SUBSCRIBE yet, too
                # few descriptors) is reported and the others go on.
                if a.kind != "pubsub":
                    raise
                print(f"round {rnd+1} {name:<16} FAILED: {str(e)[:600]}", flush=True)
                results[name].append(None)
                continue
            results[name].append(r)
            extra = ""
            if a.kind == "pubsub":
                extra = (f"  delivery p99 {r['p99_us']:9.0f} us  lost {r['lost']} of {r['expected']}  "
                         f"disconnected {r['disconnected']} (undelivered {r['undelivered_disconnected']})")
            print(f"round {rnd+1} {name:<16} {r['us_per_req']:7.2f} us/req  {r['rps']:10.0f} req/s  "
                  f"errors {r['errors']}  rss {r['rss_kib']} KiB  "
                  f"user {100*r['user_frac']:4.1f}%  {r['msgs_per_sleep']:6.1f} req/sleep{extra}", flush=True)
    ref = a.ref.split("=", 1)[0]
    # Each candidate round ran right after the reference's round of the same number, so
    # the two shared the machine's load at the time: the median of these per-round
    # ratios resists a busy neighbour better than the ratio of the medians. (Failed
    # pub/sub rounds are None and left out.)
    paired = {name: statistics.median([c["us_per_req"] / r["us_per_req"]
                                       for c, r in zip(rs, results[ref]) if c and r] or [float("nan")])
              for name, rs in results.items()}
    results = {name: [x for x in rs if x] for name, rs in results.items()}
    if not results[ref]:
        sys.exit(f"every round of the reference {ref} failed")
    ref_med = statistics.median(x["us_per_req"] for x in results[ref])
    print(f"\nmedian server CPU per request ({a.rounds} rounds, server CPU 0, load CPU 1):")
    for name, rs in results.items():
        if not rs:
            print(f"  {name:<16} every round failed")
            continue
        med = statistics.median(x["us_per_req"] for x in rs)
        print(f"  {name:<16} {med:7.2f} us/req   ratio to {ref}: {med/ref_med:5.2f} (paired {paired[name]:4.2f})   "
              f"median {statistics.median(x['rps'] for x in rs):9.0f} req/s   "
              f"spread {min(x['us_per_req'] for x in rs):.2f}-{max(x['us_per_req'] for x in rs):.2f}   "
              f"user {100*statistics.median(x['user_frac'] for x in rs):4.1f}% of CPU   "
              f"{statistics.median(x['msgs_per_sleep'] for x in rs):6.1f} req/sleep")
        if a.kind == "pubsub":
            print(f"  {'':<16} (req = delivered message)   median delivery p99 "
                  f"{statistics.median(x['p99_us'] for x in rs):9.0f} us   lost per round "
                  f"{[x['lost'] for x in rs]}   disconnected per round {[x['disconnected'] for x in rs]}")


if __name__ == "__main__":
    main()
