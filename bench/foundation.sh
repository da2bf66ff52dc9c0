#!/usr/bin/env bash
# The foundation issue's first measurement: server CPU per request, c10k against the
# reference servers of ../shared/anchors, alternating in one run, server on CPU 0 and
# load on CPU 1. Prints per-round figures, medians and ratios.
#   echo 64 B, 1,000 connections: epoll-et (and epoll-lt) vs the C epoll anchor (echo_load)
#   HTTP plaintext, wrk -t1 -c100: epoll-et --app http vs nginx, 1 worker
#   RESP, redis-benchmark -c 50, -P 1 and -P 16: epoll-et --app resp vs redis-server
# Usage: bench/foundation.sh [rounds]   (needs ../shared/anchors/build.sh run first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
A=/tmp/c10k-anchors
[[ -x $A/epoll_echo && -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
C=$PWD/target/release/c10k
B=bench/cpu_per_request.py

echo "== echo 64 B, 1000 connections"
$B --rounds "$rounds" --kind echo \
  --ref "c-epoll=$A/epoll_echo {port}" \
  --cand "c10k-epoll-et=$C serve --strategy epoll-et --app echo --listen 127.0.0.1:{port}" \
  --cand "c10k-epoll-lt=$C serve --strategy epoll-lt --app echo --listen 127.0.0.1:{port}" \
  --load "$A/echo_load -p {port} -c 1000 -d 10 -w 1 -s 64"

echo "== HTTP plaintext, wrk -t1 -c100 -d10s"
mkdir -p $A/nginx/logs $A/nginx/tmp
$B --rounds "$rounds" --kind wrk \
  --ref "nginx=sh -c 'sed s/8080/{port}/ ../shared/anchors/nginx.conf > $A/nginx/bench-{port}.conf && exec nginx -p $A/nginx -c $A/nginx/bench-{port}.conf'" \
  --cand "c10k-epoll-et=$C serve --strategy epoll-et --app http --listen 127.0.0.1:{port}" \
  --load "wrk -t1 -c100 -d10s --latency http://127.0.0.1:{port}/"

for p in 1 16; do
  n=$((p == 1 ? 200000 : 1000000))
  echo "== RESP, redis-benchmark -t ping,set,get -c 50 -P $p -n $n"
  $B --rounds "$rounds" --kind redis --requests $n \
    --ref "redis=redis-server --port {port} --save '' --appendonly no --maxclients 10000" \
    --cand "c10k-epoll-et=$C serve --strategy epoll-et --app resp --listen 127.0.0.1:{port}" \
    --load "redis-benchmark -p {port} -t ping,set,get -n $n -c 50 -P $p --csv"
done
