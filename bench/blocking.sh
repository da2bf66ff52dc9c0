#!/usr/bin/env bash
# Issue 4's closing measurement: server CPU per echo message (and the server tree's RSS
# after the load) for thread, fork and prefork against epoll-et, at 100 and 1,000
# connections, alternating in one run, server on CPU 0 and load on CPU 1; then the
# server tree's memory with 100 and 1,000 idle connections (bench/blocking_memory.py,
# RSS and PSS). prefork runs with --workers equal to the connection count (its
# concurrency is its pool size). The rss column of the CPU runs is read after the load
# has closed its connections (fork's connection processes are gone by then): use the
# memory tables for memory.
# Usage: bench/blocking.sh [rounds]   (needs ../shared/anchors/build.sh for echo_load)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
A=/tmp/c10k-anchors
[[ -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
C=$PWD/target/release/c10k
S="$C serve --app echo --listen 127.0.0.1:{port} --strategy"
for c in 100 1000; do
  echo "== echo 64 B, $c connections"
  bench/cpu_per_request.py --rounds "$rounds" --kind echo \
    --ref "c10k-epoll-et=$S epoll-et" \
    --cand "c10k-thread=$S thread" \
    --cand "c10k-fork=$S fork" \
    --cand "c10k-prefork=$S prefork --workers $c" \
    --load "$A/echo_load -p {port} -c $c -d 10 -w 1 -s 64"
done
for c in 100 1000; do
  echo "== memory with $c idle connections"
  python3 bench/blocking_memory.py --conns $c --bin "$C"
done
