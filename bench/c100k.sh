#!/usr/bin/env bash
# C100K: hold 100,000 concurrent connections against each strategy (epoll-et, uring,
# green by default), every connection sending a 64 B echo message every 10 s (open
# loop, 10,000 messages/s in total) for DURATION seconds after all are connected and a
# 10 s warm-up (one message on every connection). Prints a markdown table: connect time
# p99, message latency p50/p99/p99.9, errors, server CPU per message, and user-space and
# kernel memory per connection. See docs/notes/c100k.md.
#
# Processes: one process may open only `ulimit -n` descriptors (20,000 here), so the
# server runs as `c10k serve --processes P` and the load as `c10k load --processes Q`,
# P and Q chosen so each process holds under 85% of its limit (6 and 6 for 100,000).
# CPUs: the server tree is pinned to SERVER_CPUS (default CPU 0), the load tree to
# LOAD_CPUS (default CPU 1).
#
# Kernel settings: raised only where below what the run needs, each change printed,
# and restored at exit (printed too; KEEP_SYSCTLS=1 keeps them):
#   net.core.somaxconn            >= 65535   (accept queues under the connect burst)
#   net.ipv4.tcp_max_syn_backlog  >= 65535
#   vm.max_map_count              >= 262144  (green: each green thread maps a stack and
#                                             its guard page, per server process)
#   net.ipv4.ip_local_port_range  widened only if 127.0.0.2-252 would not do: each load
#                                 process binds its own 127.0.0.x addresses, at most
#                                 half the range each (about 13,600 by default)
#   fs.nr_open, fs.file-max       >= what every socket of both ends needs
#   net.netfilter.nf_conntrack_max >= 2 x CONNS, if conntrack is loaded
# It also raises its own soft open-files limit to the hard one. Every connection is on
# 127.0.0.0/8; every wait is bounded.
#
# Memory: user space is the server tree's PSS (and RSS) growth from before the load to
# the window's start, over CONNS. Kernel is the growth of /proc/net/sockstat's TCP
# `mem` (pages of socket buffers) plus the per-socket slab caches of /proc/slabinfo
# (TCP, sock_inode_cache, filp, dentry, eventpoll_epi, ...), over CONNS: both ends of
# each connection are on this machine, so that is two sockets' worth (the server's is
# about half). Both are machine-wide: other activity on the machine is noise in them.
# CPU per message: the server tree's user+sys time (/proc/PID/stat) over an interval
# inside the window, divided by the messages the server received in it (its
# c10k_received_bytes_total / 64).
#
# Usage: [CONNS=100000] [DURATION=60] [STRATEGIES="epoll-et uring green"]
#        [RATE=CONNS/10] [CONNECT_RATE=10000] [SERVER_PROCS=P] [LOAD_PROCS=Q]
#        [SERVER_CPUS=0] [LOAD_CPUS=1] [OUT=dir] bench/c100k.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The table, from a run's raw readings (also: bench/c100k.sh --table DIR).
table() {
    python3 - "$1" <<'PY'
import json, os, sys
out = sys.argv[1]
settings = json.load(open(os.path.join(out, "settings.json")))
conns, size, procs = settings["conns"], settings["size"], settings["server_procs"]
strategies = settings["strategies"].split()

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

print()
print("| strategy | server processes | connected | connect p99 ms | latency p50 / p99 / p99.9 ms | errors | server CPU us/msg | user B/conn (PSS) | kernel B/conn |")
print("|---|---|---|---|---|---|---|---|---|")
details = []
for s in strategies:
    d = os.path.join(out, s)
    rep, b, st, en = (load(os.path.join(d, f)) for f in ("load.json", "before.json", "start.json", "end.json"))
    if not (rep and b and st and en):
        print(f"| {s} | {procs} | run failed: see {d} | | | | | | |")
        continue
    msgs = (en["received_bytes"] - st["received_bytes"]) / size
    cpu_s = (en["cpu_ticks"] - st["cpu_ticks"]) * st["tick_s"]
    cpu_us = cpu_s / msgs * 1e6 if msgs > 0 else float("nan")
    pss = (st["pss_kib"] - b["pss_kib"]) * 1024 / conns
    rss = (st["rss_kib"] - b["rss_kib"]) * 1024 / conns
    sock_mem = (st["sockstat"].get("mem", 0) - b["sockstat"].get("mem", 0)) * st["page"]
    slab = {k: st["slab_bytes"].get(k, 0) - b["slab_bytes"].get(k, 0) for k in st["slab_bytes"]}
    kernel = (sock_mem + sum(slab.values())) / conns
    e = rep["errors"]
    print(f"| {s} | {procs} | {rep['connected']} of {rep['conns']} | {rep['connect_p99_us'] / 1000:.2f} | "
          f"{rep['p50_us'] / 1000:.2f} / {rep['p99_us'] / 1000:.2f} / {rep['p999_us'] / 1000:.2f} | "
          f"{e['total']} | {cpu_us:.1f} | {pss:.0f} | {kernel:.0f} |")
    kinds = ", ".join(f"{k} {v / conns:+.0f}" for k, v in sorted(slab.items(), key=lambda kv: -kv[1]) if v)
    details.append(
        f"- {s}: {rep['requests']} messages in a {rep['window_s']:.1f} s window "
        f"({rep['throughput_rps']:.0f}/s, {rep['scheduled']} due), max {rep['max_us'] / 1000:.1f} ms; "
        f"errors {', '.join(f'{k}={v}' for k, v in e.items() if v and k != 'total') or 'none'}; "
        f"server CPU {cpu_s:.2f} s for {msgs:.0f} messages (open at the window: {st['open']:.0f}); "
        f"RSS {rss:.0f} B/conn; sockstat TCP mem {sock_mem / conns:+.0f} B/conn "
        f"(inuse {b['sockstat'].get('inuse')} -> {st['sockstat'].get('inuse')}); slabs B/conn: {kinds}; "
        f"load CPU user {rep['cpu_user_s']:.1f} s sys {rep['cpu_sys_s']:.1f} s, busiest thread "
        f"{rep['cpu_busiest_thread_percent']:.0f}%"
        + ("".join(f"; warning: {w}" for w in rep["warnings"])))
print()
print("\n".join(details))
PY
}

if [[ ${1:-} == --table ]]; then
    table "${2:?usage: bench/c100k.sh --table DIR}"
    exit
fi

{ # Parsed whole before it runs, so that editing this file cannot derail a run.

CONNS=${CONNS:-100000}
DURATION=${DURATION:-60}
STRATEGIES=${STRATEGIES:-"epoll-et uring green"}
RATE=${RATE:-$((CONNS / 10))}
CONNECT_RATE=${CONNECT_RATE:-10000}
WARMUP=${WARMUP:-10}
SIZE=64
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
OUT=${OUT:-$(mktemp -d /tmp/c100k.XXXXXX)}
mkdir -p "$OUT"
((DURATION >= 10)) || { echo "DURATION must be at least 10 (seconds)" >&2; exit 2; }

ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
per_proc=$((NOFILE * 85 / 100))
need_procs=$(((CONNS + per_proc - 1) / per_proc))
((need_procs >= 2)) || need_procs=2
SERVER_PROCS=${SERVER_PROCS:-$need_procs}
LOAD_PROCS=${LOAD_PROCS:-$need_procs}

cargo build --release -q -p c10k
bin=$PWD/target/release/c10k

# --- kernel settings --------------------------------------------------------------
changed=()
sysctl_file() { echo "/proc/sys/${1//.//}"; }
raise() { # key minimum
    local key=$1 want=$2 file cur
    file=$(sysctl_file "$key")
    [[ -e $file ]] || return 0
    cur=$(cat "$file")
    if ((cur < want)); then
        echo "$want" >"$file" || { echo "cannot raise $key to $want (run as root)" >&2; exit 1; }
        changed+=("$key=$cur")
        echo "sysctl: $key raised from $cur to $want"
    else
        echo "sysctl: $key = $cur (enough, unchanged)"
    fi
}
restore() {
    local kv key
    for kv in "${changed[@]}"; do
        key=${kv%%=*}
        if [[ ${KEEP_SYSCTLS:-0} == 1 ]]; then
            echo "sysctl: $key kept at $(cat "$(sysctl_file "$key")") (KEEP_SYSCTLS=1; it was ${kv#*=})"
        else
            echo "${kv#*=}" >"$(sysctl_file "$key")" && echo "sysctl: $key restored to ${kv#*=}"
        fi
    done
}
cleanup() {
    local p
    # Only what this script started, by pid: the load (timeout passes SIGTERM on; its
    # children die with it) and the server supervisor (its children have a death signal).
    [[ -n ${lpid:-} ]] && kill -TERM "$lpid" 2>/dev/null
    [[ -n ${spid:-} ]] && kill -TERM "$spid" 2>/dev/null
    sleep 1
    [[ -n ${spid:-} ]] && kill -KILL "$spid" 2>/dev/null
    restore
}
trap cleanup EXIT

raise net.core.somaxconn 65535
raise net.ipv4.tcp_max_syn_backlog 65535
[[ " $STRATEGIES " == *" green "* ]] && raise vm.max_map_count 262144
raise fs.nr_open $((NOFILE > 1048576 ? NOFILE : 1048576))
raise fs.file-max $((2 * CONNS + 65536))
if [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; then
    raise net.netfilter.nf_conntrack_max $((2 * CONNS))
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
# Each load process binds its own 127.0.0.x addresses, at most half the range each (past
# that, every bind scans the range: see crates/load/src/processes.rs).
per_addr=$(((port_hi - port_lo + 1) / 2 - 512))
addrs=$(((CONNS + per_addr - 1) / per_addr + LOAD_PROCS))
if ((addrs > 240)); then
    new_lo=$((port_hi - 2 * ((CONNS / 240) + 512)))
    ((new_lo >= 1024)) || { echo "$CONNS connections do not fit 127.0.0.2-252: use fewer" >&2; exit 1; }
    echo "$new_lo $port_hi" >/proc/sys/net/ipv4/ip_local_port_range
    changed+=("net.ipv4.ip_local_port_range=$port_lo $port_hi")
    echo "sysctl: net.ipv4.ip_local_port_range widened from $port_lo $port_hi to $new_lo $port_hi"
else
    echo "sysctl: net.ipv4.ip_local_port_range = $port_lo $port_hi (unchanged: about $addrs source addresses of $per_addr connections at most)"
fi

# --- readings -----------------------------------------------------------------------
cat >"$OUT/read.py" <<'PY'
"""snap PID METRICS_ADDR: one JSON object of the server tree's and the kernel's readings."""
import json, os, sys, urllib.request

SLABS = ["TCP", "request_sock_TCP", "tw_sock_TCP", "sock_inode_cache", "filp", "dentry",
         "eventpoll_epi", "eventpoll_pwq", "skbuff_head_cache", "skbuff_small_head"]

def tree(root):
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()
        if f[0] != "Z":
            kids.setdefault(int(f[1]), []).append(int(p))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

def cpu_ticks(pid):
    stat = open(f"/proc/{pid}/stat").read()
    f = stat[stat.rfind(")") + 2:].split()
    return int(f[11]) + int(f[12])

def rollup(pid):
    m = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        k, _, v = line.partition(":")
        if v.strip().endswith("kB"):
            m[k] = int(v.split()[0])
    return m

def sockstat():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            w = line.split()[1:]
            return {w[i]: int(w[i + 1]) for i in range(0, len(w), 2)}
    return {}

def slabs():
    out = {}
    try:
        for line in open("/proc/slabinfo"):
            f = line.split()
            if f and f[0] in SLABS:
                out[f[0]] = int(f[1]) * int(f[3])
    except OSError:
        pass
    return out

def metrics(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    total = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        name = name.split("{")[0]
        try:
            total[name] = total.get(name, 0) + float(value)
        except ValueError:
            pass
    return total

cmd, pid, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pids = tree(pid)
cpu = pss = rss = 0
for p in pids:
    try:
        cpu += cpu_ticks(p)
        r = rollup(p)
        pss += r.get("Pss", 0)
        rss += r.get("Rss", 0)
    except OSError:
        pass
m = metrics(addr)
print(json.dumps({
    "processes": len(pids), "cpu_ticks": cpu, "tick_s": 1 / os.sysconf("SC_CLK_TCK"),
    "pss_kib": pss, "rss_kib": rss, "sockstat": sockstat(), "slab_bytes": slabs(),
    "page": os.sysconf("SC_PAGE_SIZE"),
    "received_bytes": m.get("c10k_received_bytes_total", 0),
    "open": m.get("c10k_connections_open", 0),
    "workers": m.get("c10k_workers", 0),
}))
PY
snap() { python3 "$OUT/read.py" snap "$spid" "$maddr"; }
metric() { python3 -c 'import json,sys; print(int(json.load(sys.stdin)[sys.argv[1]]))' "$1"; }
our_tw() { ss -Htn state time-wait | awk '$3 !~ /^127\.0\.0\.1:/ && $3 ~ /^127\./' | wc -l; }

# --- one strategy ---------------------------------------------------------------------
run_strategy() {
    local s=$1 dir=$OUT/$1 addr="" t0 bound
    mkdir -p "$dir"
    # The previous run's client sockets sit in TIME_WAIT for 60 s on the same source
    # addresses, holding their ports: wait (at most 75 s) until they are gone.
    local tw
    t0=$SECONDS
    tw=$(our_tw)
    if ((tw > 1000)); then
        echo "$s: waiting for $tw TIME_WAIT sockets of 127.0.0.2+ to expire (at most 75 s)"
        while (($(our_tw) > 1000 && SECONDS - t0 < 75)); do
            sleep 1
        done
        echo "$s: waited $((SECONDS - t0)) s, $(our_tw) left"
    fi
    taskset -c "$SERVER_CPUS" "$bin" serve --strategy "$s" --app echo --listen 127.0.0.1:0 \
        --processes "$SERVER_PROCS" --max-conns "$CONNS" --idle-timeout 300s \
        --metrics 127.0.0.1:0 --log-level info >"$dir/serve.out" 2>"$dir/serve.err" &
    spid=$!
    maddr=""
    for _ in $(seq 200); do
        addr=$(sed -n 's/^listening on //p' "$dir/serve.out")
        maddr=$(sed -n 's|.*metrics on http://\([^/]*\)/.*|\1|p' "$dir/serve.err" | head -1)
        [[ -n $addr && -n $maddr ]] && break
        sleep 0.05
    done
    [[ -n $addr && -n $maddr ]] || { echo "$s: server did not start: $(tail -3 "$dir/serve.err")" >&2; return 1; }
    for _ in $(seq 100); do
        (($(snap | metric workers) >= SERVER_PROCS)) && break
        sleep 0.1
    done
    sleep 0.5
    snap >"$dir/before.json"
    bound=$((CONNS / CONNECT_RATE + WARMUP + DURATION + 90))
    taskset -c "$LOAD_CPUS" timeout "$bound" "$bin" load --connect "$addr" --app echo \
        --size "$SIZE" --conns "$CONNS" --rate "$RATE" --connect-rate "$CONNECT_RATE" \
        --processes "$LOAD_PROCS" --timeout 10s --warmup "${WARMUP}s" \
        --duration "${DURATION}s" --json "$dir/load.json" >"$dir/load.txt" 2>"$dir/load.err" &
    lpid=$!
    t0=$SECONDS
    local open=0
    while ((SECONDS - t0 < CONNS / CONNECT_RATE + 40)) && kill -0 "$lpid" 2>/dev/null; do
        open=$(snap | metric open)
        ((open >= CONNS)) && break
        sleep 0.2
    done
    echo "$s: $open of $CONNS connections open after $((SECONDS - t0)) s; warm-up ${WARMUP} s"
    sleep "$((WARMUP + 1))"
    snap >"$dir/start.json"
    sleep "$((DURATION - 5))"
    snap >"$dir/end.json"
    wait "$lpid" || echo "$s: c10k load exited with status $? (see $dir/load.err)" >&2
    lpid=""
    kill -TERM "$spid"
    for _ in $(seq 300); do
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=""
}

printf '{"conns": %d, "size": %d, "server_procs": %d, "strategies": "%s"}\n' \
    "$CONNS" "$SIZE" "$SERVER_PROCS" "$STRATEGIES" >"$OUT/settings.json"
echo "C100K: $CONNS connections, $RATE messages/s of $SIZE B (one per connection every $((CONNS / RATE)) s), ${DURATION} s window after a ${WARMUP} s warm-up"
echo "server: --processes $SERVER_PROCS on CPU $SERVER_CPUS; load: --processes $LOAD_PROCS on CPU $LOAD_CPUS; open files limit $NOFILE; raw readings in $OUT"
available=$("$bin" strategies)
for s in $STRATEGIES; do
    line=$(awk -v s="$s" '$1 == s' <<<"$available")
    if [[ $line != *" available:"* ]]; then
        echo "$s: skipped: ${line:-unknown strategy}"
        continue
    fi
    run_strategy "$s" || echo "$s: failed" >&2
done

table "$OUT"
exit
}
