#!/usr/bin/env bash
# Issue 14's pub/sub figures: fan-out of 64 B messages from 1 publisher to 1,000 and
# 10,000 subscribers on one channel. redis-server (--save "" --appendonly no) and each
# c10k strategy (--app resp) alternate in one run, server pinned to CPU 0 and load
# (c10k load --app pubsub, one thread) to CPU 1; bench/cpu_per_request.py --kind pubsub
# reports per round and the median over the rounds:
#   server CPU per delivered message (utime+stime of the server's process tree from
#   /proc, read when publishing starts and when the deliveries have settled),
#   delivery p99 (publish -> receipt), lost deliveries (must be 0).
#
# Usage: bench/pubsub.sh [rounds=3] [duration=10s] ["strategies"] ["subscriber counts"]
#   e.g. bench/pubsub.sh 3 10s "epoll-et epoll-lt uring" "1000 10000"
#        bench/pubsub.sh 3 5s "" 1000      # redis-server alone (c10k serves no pub/sub yet)
# The publish rate is DELIVERIES / subscribers (DELIVERIES=100000 a second by default:
# 100 msg/s to 1,000 subscribers, 10 msg/s to 10,000), so that every run delivers the
# same number of messages and the load generator stays off its core's limit.
# Bounded: rounds x servers x (connect + duration + at most grace+timeout) per count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
duration=${2:-10s}
strategies=${3-"epoll-et epoll-lt uring"}
counts=${4:-"1000 10000"}
deliveries=${DELIVERIES:-100000}
size=${SIZE:-64}

command -v redis-server >/dev/null || { echo "redis-server missing: scripts/test.sh installs it" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset missing (util-linux)" >&2; exit 1; }
cargo build --release -q -p c10k
C=$PWD/target/release/c10k

# 10,000 subscribers + 1 publisher, in the load and in the server (which inherits it).
want=32768
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want)); then want=$hard; fi
ulimit -Sn "$want"
if (($(ulimit -Sn) < 10100)); then
    echo "warning: open files limit $(ulimit -Sn): 10,000 subscribers will not fit" >&2
fi

for n in $counts; do
    rate=$((deliveries / n))
    ((rate > 0)) || rate=1
    echo "== pub/sub fan-out: 1 publisher, $n subscribers, 1 channel, $size B, $rate msg/s, $duration"
    args=(--ref "redis=redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000")
    for s in $strategies; do
        args+=(--cand "c10k-$s=$C serve --strategy $s --app resp --listen 127.0.0.1:{port} ${EXTRA_ARGS:-}")
    done
    bench/cpu_per_request.py --rounds "$rounds" --kind pubsub "${args[@]}" \
        --load "$C load --connect 127.0.0.1:{port} --app pubsub --subscribers $n --publishers 1 --channels 1 --rate $rate --size $size --duration $duration --threads 1 --json {json}"
done
