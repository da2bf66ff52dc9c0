#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the conformance suite against every
# strategy (crates/cli/tests), and doc tests.
#
# It first installs the external clients the conformance suite drives, when they
# are missing: curl, and redis-cli / redis-benchmark (Debian package redis-tools),
# redis-server (package redis-server; crates/proto/tests/redis_differential.rs runs
# the pub/sub commands against it),
# promtool (Debian package prometheus), which validates the /metrics output,
# haproxy, and nginx (crates/cli/tests/compare_peers.rs runs `c10k compare --peer
# nginx`); then the Python virtualenv target/py-venv with redis-py, pytest and
# maturin from PyPI and c10k's Python package from ./crates/py (scripts/py-venv.sh;
# crates/cli/tests/python_redis.rs and the pytest corpus crates/py/tests use it).
# The tests never skip a missing client: they fail and point here.
#
# Usage: scripts/test.sh [extra arguments for `cargo test`, e.g. -- --nocapture]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }

# --- external clients -------------------------------------------------------------
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
    missing+=(redis-tools)
fi
# crates/load/tests/pubsub.rs (c10k load --app pubsub) and
# crates/proto/tests/redis_differential.rs (pub/sub replies) run a real Redis.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# crates/cli/tests/haproxy.rs runs a real HAProxy in front of two backends. Debian
# installs it in /usr/sbin, which a normal user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# crates/cli/tests/compare_peers.rs runs the nginx preset of `c10k compare` (also in
# /usr/sbin).
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
# scripts/py-venv.sh needs python3 and its venv module (with ensurepip).
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    say "installing missing packages: ${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: ${missing[*]} missing and apt-get is not available; install them by hand" >&2
        exit 1
    fi
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "error: not root and no sudo: cannot install ${missing[*]}" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
fi
for tool in curl redis-cli redis-benchmark redis-server promtool haproxy nginx; do
    path=$(command -v "$tool") || {
        echo "error: $tool is still missing after the install step" >&2
        exit 1
    }
    say "found $tool: $path"
done
scripts/py-venv.sh

# --- file descriptors ---------------------------------------------------------------
# The 1,000-connection test holds 1,000 client sockets in the test process and 1,000
# in the server (which inherits this limit); two such tests may run in parallel.
want=16384
hard=$(ulimit -Hn)
soft=$(ulimit -Sn)
if [[ $hard == unlimited ]]; then
    target=$want
elif ((hard < want)); then
    target=$hard
else
    target=$want
fi
if [[ $soft != unlimited ]] && ((soft < target)); then
    say "raising the open files limit: $soft -> $target (hard limit $hard)"
    ulimit -Sn "$target"
fi
say "open files limit: $(ulimit -Sn)"
if [[ $(ulimit -Sn) != unlimited ]] && (($(ulimit -Sn) < 4096)); then
    echo "warning: fewer than 4096 descriptors; the 1,000-connection tests may fail" >&2
fi

# --- tests ----------------------------------------------------------------------------
say "cargo test --workspace --all-targets${*:+ $*}"
cargo test --workspace --all-targets "$@"
say "cargo test --workspace --doc"
cargo test --workspace --doc
say "pytest crates/py/tests (c10k's asyncio loop against the stock one)"
target/py-venv/bin/python -m pytest -q -p no:cacheprovider crates/py/tests
say "all tests passed"
