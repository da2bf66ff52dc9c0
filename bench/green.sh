#!/usr/bin/env bash
# Issue 6's closing measurement: server CPU per echo message for green against epoll-et
# and thread at 1,000 connections (64 B messages), alternating in one run, server on
# CPU 0 and load on CPU 1 (bench/cpu_per_request.py); then the server's memory with
# 1,000 idle connections (bench/blocking_memory.py), once per round.
# Usage: bench/green.sh [rounds] [conns]   (needs ../shared/anchors/build.sh for echo_load)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-5}
c=${2:-1000}
A=/tmp/c10k-anchors
[[ -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
C=$PWD/target/release/c10k
S="$C serve --app echo --listen 127.0.0.1:{port} --strategy"
echo "== echo 64 B, $c connections"
bench/cpu_per_request.py --rounds "$rounds" --kind echo \
  --ref "c10k-epoll-et=$S epoll-et" \
  --cand "c10k-green=$S green" \
  --cand "c10k-thread=$S thread" \
  --load "$A/echo_load -p {port} -c $c -d 10 -w 1 -s 64"
for r in $(seq "$rounds"); do
  echo "== memory with $c idle connections, round $r"
  python3 bench/blocking_memory.py --conns "$c" --bin "$C" --only epoll-et,thread,green
done
