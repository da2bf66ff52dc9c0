#!/usr/bin/env bash
# --processes scaling: epoll-et echo with 200 us of CPU work per request, served by
# --processes 1 and --processes 2 (server unpinned: it may use both CPUs), rounds
# interleaved (1, 2, 1, 2, ...). The CPU work makes the server the bottleneck: at
# 10,000 requests/s the load needs about a tenth of a CPU, so it barely competes.
# Prints each round and the median ratio. Loopback only; every run is bounded.
#
# Usage: bench/processes.sh [rounds=3] [seconds=5] [conns=100]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
secs=${2:-5}
conns=${3:-100}
cargo build --release -q -p c10k
bin=target/release/c10k
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # processes round
    local p=$1 r=$2
    "$bin" serve --strategy epoll-et --app echo --listen 127.0.0.1:0 --processes "$p" \
        --work cpu=200us --log-level warn >"$out/serve.out" 2>"$out/serve.err" &
    local pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$out/serve.out")
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || { echo "server did not start: $(cat "$out/serve.err")" >&2; exit 1; }
    sleep 0.3 # the children start
    timeout $((secs + 30)) "$bin" load --connect "$addr" --app echo --conns "$conns" \
        --duration "${secs}s" --warmup 1s --json "$out/p$p-r$r.json" >/dev/null
    kill -TERM "$pid"
    wait "$pid"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(round(d['throughput_rps']), d['errors']['total'] if isinstance(d['errors'],dict) else d['errors'])" "$out/p$p-r$r.json"
}

declare -a one two
for r in $(seq "$rounds"); do
    read -r a ea < <(run 1 "$r")
    read -r b eb < <(run 2 "$r")
    one+=("$a"); two+=("$b")
    printf 'round %d: --processes 1: %s req/s (%s errors), --processes 2: %s req/s (%s errors), ratio %.2f\n' \
        "$r" "$a" "$ea" "$b" "$eb" "$(echo "$b / $a" | bc -l)"
done
python3 - "${one[@]}" -- "${two[@]}" <<'PY'
import statistics, sys
args = sys.argv[1:]
i = args.index("--")
one = [float(x) for x in args[:i]]
two = [float(x) for x in args[i + 1:]]
ratios = sorted(b / a for a, b in zip(one, two))
print(f"median --processes 1: {statistics.median(one):.0f} req/s, --processes 2: "
      f"{statistics.median(two):.0f} req/s; ratio median {statistics.median(ratios):.2f} "
      f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})")
PY
