#!/usr/bin/env bash
# Issue 9's closing figure: HTTP throughput through HAProxy (deploy/haproxy.cfg: PROXY
# v2 to the backends, health checks, retries) against the same backend served
# directly, alternating in one run.
#
#   direct   c10k load -> c10k (http, epoll-et, no header)
#   haproxy  c10k load -> HAProxy (1 thread) -> 2 x c10k (http, epoll-et, --proxy-protocol v2)
#
# Every backend is pinned to CPU 0 (so the backends have the same one core in both
# set-ups); HAProxy and the load generator share CPU 1. On a 2-core machine the proxy
# therefore competes with the load: the figure is what one more hop costs when it
# has no core of its own, a floor for a proxy on its own machine.
#
# Usage: bench/haproxy.sh [rounds=3] [conns=50] [duration=5s]
# Bounded: rounds x 2 runs of (1 s warm-up + duration), plus start-up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
conns=${2:-50}
duration=${3:-5s}

cargo build --release -q -p c10k
C=$PWD/target/release/c10k
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $HAPROXY ]] || { echo "haproxy missing: scripts/test.sh installs it" >&2; exit 1; }
pin0=() pin1=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    pin0=(taskset -c 0) pin1=(taskset -c 1)
fi

tmp=$(mktemp -d)
# Every process started records its pid in $tmp/NAME.pid (start runs in a subshell).
cleanup() {
    for f in "$tmp"/*.pid; do
        [[ -e $f ]] && kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME ARGS...: a backend on a kernel-picked port; prints the port.
start() {
    local name=$1
    shift
    "${pin0[@]}" "$C" serve --app http --strategy epoll-et --listen 127.0.0.1:0 "$@" \
        >"$tmp/$name.out" 2>"$tmp/$name.err" &
    echo $! >"$tmp/$name.pid"
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$tmp/$name.out"; then
            sed -n 's/^listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$tmp/$name.out"
            return
        fi
        sleep 0.05
    done
    echo "backend $name did not start: $(cat "$tmp/$name.err")" >&2
    exit 1
}

direct=$(start direct)
p1=$(start proxied1 --proxy-protocol v2)
p2=$(start proxied2 --proxy-protocol v2)
front=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s/bind 127.0.0.1:8080/bind 127.0.0.1:$front/" \
    -e "s/127.0.0.1:7001/127.0.0.1:$p1/" -e "s/127.0.0.1:7002/127.0.0.1:$p2/" \
    deploy/haproxy.cfg >"$tmp/haproxy.cfg"
"${pin1[@]}" "$HAPROXY" -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
echo $! >"$tmp/haproxy.pid"
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$front/" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "http GET /, $conns keep-alive connections, $duration per run, $rounds round(s)"
"$HAPROXY" -v 2>&1 | sed -n 1p
# ticks NAME...: user+system CPU clock ticks of these processes (all their threads).
ticks() {
    local t=0 name
    for name in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$(cat "$tmp/$name.pid")/stat")))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)
# CPU columns: microseconds of CPU per request over the whole run (warm-up included),
# of the backend(s) and of HAProxy; steadier than req/s on a shared machine.
printf '%-8s %-6s %12s %10s %10s %8s %12s %12s\n' target round 'req/s' 'p50 us' 'p99 us' errors \
    'backend cpu' 'haproxy cpu'
for r in $(seq "$rounds"); do
    for target in direct haproxy; do
        port=$direct backends=(direct)
        if [[ $target == haproxy ]]; then
            port=$front backends=(proxied1 proxied2)
        fi
        b0=$(ticks "${backends[@]}") h0=$(ticks haproxy)
        "${pin1[@]}" "$C" load --connect "127.0.0.1:$port" --app http --conns "$conns" \
            --duration "$duration" --warmup 1s --json "$tmp/$target-$r.json" >/dev/null
        b1=$(ticks "${backends[@]}") h1=$(ticks haproxy)
        python3 - "$tmp/$target-$r.json" "$target" "$r" $((b1 - b0)) $((h1 - h0)) "$hz" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
target, rnd, bt, ht, hz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
# Requests over the whole run: the measured window's rate times warm-up plus window.
n = d['throughput_rps'] * (d['warmup_s'] + d['window_s'])
cpu = lambda t: f"{t / hz * 1e6 / n:12.2f}" if n else f"{'-':>12}"
hcpu = cpu(ht) if target == 'haproxy' else f"{'-':>12}"
print(f"{target:<8} {rnd:<6} {d['throughput_rps']:12,.0f} {d['p50_us']:10,.0f} {d['p99_us']:10,.0f} {d['errors']['total']:8} {cpu(bt)} {hcpu}")
PY
    done
done
