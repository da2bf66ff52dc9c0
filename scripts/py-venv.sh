#!/usr/bin/env bash
# Makes the Python virtualenv the tests use (target/py-venv, or $C10K_PY_VENV):
# - redis-py (the `redis` package), which crates/cli/tests/python_redis.rs drives;
# - pytest and maturin, and c10k's own Python package built from ./crates/py
#   (`pip install ./crates/py`, reinstalled on every run so the tests see this
#   checkout), which the corpus crates/py/tests runs against;
# - uvloop, gevent, twisted and rloop: the CPython field `c10k compare --python`
#   measures (crates/cli/tests/compare_python.rs checks each serves correctly).
# scripts/test.sh runs this; run it by hand before a lone `cargo test` or pytest.
#
# Fails loudly when python3, its venv module or PyPI is not available.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=${C10K_PY_VENV:-target/py-venv}
[[ $venv = /* ]] || venv=$PWD/$venv
# redis-py 5 and later (the RESP2 pub/sub API the test uses is older than that).
# rloop publishes wheels for Linux x86_64/aarch64 only.
requirements=('redis>=5,<9' 'pytest>=8' 'maturin>=1.9,<2' 'uvloop>=0.19' 'gevent>=24' 'twisted>=24' 'rloop>=0.1')

command -v python3 >/dev/null 2>&1 || {
    echo "error: python3 not found: install it (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
}
if ! [[ -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import redis, pytest, maturin, uvloop, gevent, twisted, rloop' 2>/dev/null; then
    printf '==> creating %s with %s\n' "$venv" "${requirements[*]}"
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "error: 'python3 -m venv $venv' failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" || {
        echo "error: 'pip install ${requirements[*]}' into $venv failed (is PyPI reachable?)" >&2
        rm -rf "$venv"
        exit 1
    }
fi
printf '==> found redis-py %s, pytest %s in %s\n' \
    "$("$venv/bin/python" -c 'import redis; print(redis.__version__)')" \
    "$("$venv/bin/python" -c 'import pytest; print(pytest.__version__)')" "$venv"

# c10k's package, as a user installs it (maturin is in the venv already, so the
# build needs no isolated environment of its own).
printf '==> pip install ./crates/py into %s\n' "$venv"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-build-isolation --force-reinstall --no-deps ./crates/py || {
    echo "error: 'pip install ./crates/py' failed (see the maturin/cargo output above)" >&2
    exit 1
}
"$venv/bin/python" -c 'import c10k; print("==> found c10k", c10k.STRATEGIES)'
