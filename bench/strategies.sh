#!/usr/bin/env bash
# Server CPU per echo message (64 B, closed loop, echo_load from ../shared/anchors) for
# several strategies at several concurrency levels, as ratios to the first strategy,
# alternating in one run; server on CPU 0, load on CPU 1.
# Usage: bench/strategies.sh "epoll-et select poll pool epoll-lt" "100 1000" [rounds] [seconds]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
strategies=${1:-"epoll-et select poll pool epoll-lt"}
conns=${2:-"100 1000"}
rounds=${3:-3}
secs=${4:-5}
A=/tmp/c10k-anchors
[[ -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
C=$PWD/target/release/c10k
for n in $conns; do
  echo "== echo 64 B, $n connections"
  set -- $strategies
  ref=$1; shift
  args=(--ref "$ref=$C serve --strategy $ref --app echo --listen 127.0.0.1:{port} ${EXTRA_ARGS:-}")
  for s in "$@"; do
    args+=(--cand "$s=$C serve --strategy $s --app echo --listen 127.0.0.1:{port} ${EXTRA_ARGS:-}")
  done
  bench/cpu_per_request.py --rounds "$rounds" --kind echo "${args[@]}" \
    --load "$A/echo_load -p {port} -c $n -d $secs -w 1 -s 64"
done
