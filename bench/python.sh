#!/usr/bin/env bash
# Issue 17's figures: Python event loops serving the same echo asyncio Protocol
# (bench/py/echo_protocol.py, through bench/py/serve.py): asyncio, uvloop, rloop,
# c10k's loop (epoll-et, uring, epoll-lt), and gevent (StreamServer) and Twisted
# echoes as extra rows; c10k's own epoll-et (Rust, no Python) as the floor.
#
# Part 1, server CPU per message. Measured by `c10k compare` (crates/lab), the
# project's own harness, with the Python servers as peers: each cell starts its
# server pinned to CPU 0 and runs `c10k load` (echo, closed loop, one message
# outstanding per connection) pinned to CPU 1; the server's CPU is utime+stime of its
# whole process tree from /proc, read when the measured window opens and when it
# closes, divided by the replies counted over the same interval. Each round runs the
# whole matrix, so the servers alternate round by round; a figure is the median of
# the rounds (min-max beside it). 64 B and 1 KiB messages, 100 and 1,000
# connections. p99 is the load's reply latency: in a closed loop it grows with the
# server's time per message, so it is a second view of the same cost, not a tail
# under a fixed rate. Ratios (candidate / reference, server CPU per message) against
# the better of uvloop and rloop in that cell and against asyncio, from the same run.
#
# Part 2, c10k's loop with `python -m c10k serve --processes 2` against 1 (epoll-et,
# server unpinned: it may use both CPUs; rounds interleaved 1, 2, 1, 2...). Each
# message costs the server 200 us of CPU (echo_protocol.EchoWork burns thread CPU
# time, like `c10k serve --work cpu=200us`), so one process saturates near 5,000
# messages/s while the load (Rust, about 2-4 us of CPU per message) needs under 5% of
# a CPU at 10,000/s: the server is the bottleneck, not the load. The load's own CPU
# is printed beside each round so that this can be checked, not assumed.
#
# Writes the tables to docs/notes/python-loop.md (or $3). The virtualenv
# target/bench-venv gets uvloop, rloop, gevent and twisted from PyPI and c10k from
# ./crates/py (`pip install ./crates/py`); without it the c10k rows say so and stay
# TODO. Traffic goes to 127.0.0.1 only; every load is bounded by its duration and
# every run by a timeout.
#
# Usage: bench/python.sh [rounds=3] [seconds=3] [out=docs/notes/python-loop.md]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
secs=${2:-3}
out=${3:-docs/notes/python-loop.md}
venv=${VENV:-target/bench-venv}

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
py=$PWD/$venv/bin/python
"$py" -c 'import uvloop, rloop, gevent, twisted' 2>/dev/null ||
    "$py" -m pip install -q uvloop rloop gevent twisted
if [[ -f crates/py/pyproject.toml ]]; then
    "$py" -m pip install -q ./crates/py ||
        echo "python.sh: pip install ./crates/py failed: the c10k rows will be n/a" >&2
else
    echo "python.sh: crates/py is not here: the c10k rows will be n/a (pip install ./crates/py)" >&2
fi
have_c10k=0
"$py" -c 'import c10k' 2>/dev/null && have_c10k=1

cargo build --release -q -p c10k
C=$PWD/target/release/c10k
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

serve="$py $PWD/bench/py/serve.py"
for loop in asyncio uvloop rloop c10k-epoll-et gevent twisted; do
    $serve --loop "$loop" --version 2>&1 || true
done | tee "$tmp/versions.txt"

# --- part 1: server CPU per message ------------------------------------------------
peers=(--peer asyncio --peer uvloop --peer rloop --peer c10k-py --peer c10k-py-uring)
if ((have_c10k)); then
    peers+=(--peer "c10k-py-lt=$serve --loop c10k-epoll-lt --listen 127.0.0.1:{port}")
fi
peers+=(--peer "gevent=$serve --loop gevent --listen 127.0.0.1:{port}")
peers+=(--peer "twisted=$serve --loop twisted --listen 127.0.0.1:{port}")
cells=$((9 * 2 * rounds))
for size in 64 1024; do
    echo "== echo $size B, 100 and 1,000 connections, $rounds rounds of ${secs}s"
    timeout $((120 + cells * (secs + 20))) "$C" compare --app echo --size "$size" \
        --conns 100,1000 --work none --rounds "$rounds" --duration "${secs}s" \
        --warmup 1s --no-idle --strategies epoll-et --python-bin "$py" "${peers[@]}" \
        --out "$tmp/size$size" >/dev/null
done

# --- part 2: --processes 2 against 1 -----------------------------------------------
procs_run() { # processes round
    local p=$1 r=$2
    PYTHONPATH=$PWD/bench/py "$py" -m c10k serve echo_protocol:EchoWork --strategy epoll-et \
        --listen 127.0.0.1:0 --processes "$p" >"$tmp/serve.out" 2>"$tmp/serve.err" &
    local pid=$! addr=""
    for _ in $(seq 200); do
        addr=$(sed -n 's/^listening on //p' "$tmp/serve.out")
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || { echo "c10k serve did not start: $(cat "$tmp/serve.err")" >&2; exit 1; }
    sleep 0.5 # the other processes start
    timeout $((secs + 30)) "$C" load --connect "$addr" --app echo --conns 100 \
        --duration "${secs}s" --warmup 1s --json "$tmp/procs-p$p-r$r.json" >/dev/null
    kill -TERM "$pid"
    wait "$pid"
}
if ((have_c10k)); then
    echo "== python -m c10k serve --processes 1 and 2, 100 connections, 200 us CPU per message"
    for r in $(seq "$rounds"); do
        procs_run 1 "$r"
        procs_run 2 "$r"
    done
else
    echo "== --processes run skipped: c10k is not importable by $py (pip install ./crates/py)"
fi

# --- the tables ----------------------------------------------------------------------
python3 - "$tmp" "$rounds" "$secs" "$out" "$have_c10k" <<'EOF'
import glob, json, os, platform, statistics, subprocess, sys

tmp, rounds, secs, out, have_c10k = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
ROWS = ["asyncio", "uvloop", "rloop", "c10k-py", "c10k-py-uring", "c10k-py-lt", "gevent", "twisted",
        "epoll-et"]
LABEL = {"c10k-py": "c10k loop, epoll-et", "c10k-py-uring": "c10k loop, uring",
         "c10k-py-lt": "c10k loop, epoll-lt", "gevent": "gevent StreamServer (extra)",
         "twisted": "Twisted Protocol (extra)", "epoll-et": "c10k serve epoll-et (Rust, no Python)"}
CONNS = [100, 1000]


def cell_figures(results):
    """(target, conns) -> dict of medians and spreads, or the reason it did not run."""
    cells = {}
    for c in results["cells"]:
        key = (c["target"], c["conns"])
        ok = [r["metrics"] for r in c["rounds"] if r.get("metrics") and r["status"] == "ok"]
        per = [m["server_cpu_per_request_us"] for m in ok if m.get("server_cpu_per_request_us")]
        if not per:
            reason = c.get("reason") or next((r.get("reason") for r in c["rounds"] if r.get("reason")), None)
            cells[key] = {"na": reason or c["status"]}
            continue
        cells[key] = {
            "cpu": statistics.median(per), "lo": min(per), "hi": max(per), "n": len(per),
            "p99": statistics.median(m["p99_us"] for m in ok),
            "rps": statistics.median(m["throughput_rps"] for m in ok),
            "errors": sum(m["errors"] for m in ok),
        }
    return cells


def table(size, results):
    cells = cell_figures(results)
    lines = [f"### Echo {size} B",
             "",
             "Server CPU per message in us (median of the rounds, min-max), p99 in us, ratios of "
             "server CPU per message: to the better of uvloop and rloop in that column (named), "
             "and to asyncio. Below 1 is cheaper.",
             ""]
    head = "| loop |"
    rule = "|---|"
    for n in CONNS:
        head += f" {n:,} conns: CPU/msg | p99 | vs best of uvloop/rloop | vs asyncio |"
        rule += "---:|---:|---:|---:|"
    lines += [head, rule]
    notes = []
    refs = {}
    for n in CONNS:
        cand = [(cells[(r, n)]["cpu"], r) for r in ("uvloop", "rloop") if "cpu" in cells.get((r, n), {})]
        refs[n] = (min(cand) if cand else None, cells.get(("asyncio", n), {}).get("cpu"))
    for row in ROWS:
        if not any((row, n) in cells for n in CONNS):
            continue
        line = f"| {LABEL.get(row, row)} |"
        for n in CONNS:
            c = cells.get((row, n), {"na": "not run"})
            if "na" in c:
                if c["na"] not in notes:
                    notes.append(c["na"])
                todo = "TODO " if row.startswith("c10k-py") else ""
                line += f" {todo}n/a [{notes.index(c['na']) + 1}] | | | |"
                continue
            best, asyncio_cpu = refs[n]
            vs_best = f"{c['cpu'] / best[0]:.2f} ({best[1]})" if best else "n/a"
            vs_asyncio = f"{c['cpu'] / asyncio_cpu:.2f}" if asyncio_cpu else "n/a"
            errs = f", {c['errors']} errors" if c["errors"] else ""
            line += (f" {c['cpu']:.1f} ({c['lo']:.1f}-{c['hi']:.1f}){errs} | {c['p99']:,.0f} | "
                     f"{vs_best} | {vs_asyncio} |")
        lines.append(line)
    lines.append("")
    lines += [f"[{i}] {why}" + ("" if i == len(notes) else "  ") for i, why in enumerate(notes, 1)]
    if notes:
        lines.append("")
    return lines


def processes():
    runs = {1: [], 2: []}
    for p in (1, 2):
        for f in sorted(glob.glob(f"{tmp}/procs-p{p}-r*.json")):
            d = json.load(open(f))
            load_cpu = (d["cpu_user_s"] + d["cpu_sys_s"]) / max(d["window_s"], 1e-9)
            runs[p].append((d["throughput_rps"], d["errors"]["total"], load_cpu, d["p99_us"]))
    if not runs[1] or not runs[2]:
        return ["TODO: not run here (c10k is not importable: `pip install ./crates/py`).", ""]
    lines = ["| round | --processes 1 msg/s | --processes 2 msg/s | ratio | load CPU (1 / 2) | errors |",
             "|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for i, (a, b) in enumerate(zip(runs[1], runs[2]), 1):
        ratios.append(b[0] / a[0])
        lines.append(f"| {i} | {a[0]:,.0f} | {b[0]:,.0f} | {b[0] / a[0]:.2f} | "
                     f"{100 * a[2]:.0f}% / {100 * b[2]:.0f}% of a CPU | {a[1]} / {b[1]} |")
    lines += ["", f"Median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f}).", ""]
    return lines


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "unknown"


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
versions = open(f"{tmp}/versions.txt").read().strip().splitlines()
doc = ["# Python event loops: server CPU per echo message", "",
       "Written by `bench/python.sh` (see its header for the method). "
       f"{rounds} round{'s' if rounds > 1 else ''} of {secs} s cells after 1 s of warm-up; server on CPU 0, load on CPU 1.", "",
       f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; c10k "
       f"{sh('git', 'rev-parse', '--short', 'HEAD')}.", "",
       "Versions (`bench/py/serve.py --loop LOOP --version`):", ""]
doc += [f"- {v}" for v in versions] + [""]
doc += ["## Server CPU per message", ""]
for size in (64, 1024):
    path = f"{tmp}/size{size}/results.json"
    if os.path.exists(path):
        doc += table(size, json.load(open(path)))
doc += ["## c10k's loop, --processes 2 against 1", "",
        "`python -m c10k serve echo_protocol:EchoWork --strategy epoll-et --processes N`, server "
        "unpinned, 100 connections, closed loop, 200 us of CPU per message in the Protocol so that "
        "the server is the bottleneck; the load's own CPU is shown.", ""]
doc += processes()
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as f:
    f.write("\n".join(doc))
print("\n".join(doc))
print(f"wrote {out}", file=sys.stderr)
EOF
