#!/usr/bin/env bash
# io_uring counters per echo message: runs `c10k serve --strategy uring` (pinned to
# CPU 0) under echo_load (pinned to CPU 1) for a few seconds, stops it with SIGTERM and
# prints the load's figures and the ring counters each worker logs at exit (enters,
# waits, submissions and completions per receive completion, completions per batch).
# Usage: bench/uring_counters.sh [connections] [seconds] [extra serve args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
conns=${1:-1000}
secs=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
A=/tmp/c10k-anchors
[[ -x $A/echo_load ]] || bash ../shared/anchors/build.sh
cargo build --release -q -p c10k
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
taskset -c 0 target/release/c10k serve --strategy uring --app echo \
  --listen "127.0.0.1:$port" --log-level debug "$@" 2>"$log" &
srv=$!
trap 'kill $srv 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
taskset -c 1 "$A/echo_load" -p "$port" -c "$conns" -d "$secs" -w 1 -s 64
kill -TERM $srv
wait $srv || true
grep -o 'worker [0-9]*: io_uring.*' "$log"
