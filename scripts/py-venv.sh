#!/usr/bin/env bash
# Makes the Python virtualenv the tests drive Python clients from (target/py-venv,
# or $C10K_PY_VENV), with redis-py (the `redis` package from PyPI) in it, unless it
# is there already. crates/cli/tests/python_redis.rs uses it and fails, never skips,
# without it. scripts/test.sh runs this; run it by hand before a lone `cargo test`.
#
# Fails loudly when python3, its venv module or PyPI is not available.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=${C10K_PY_VENV:-target/py-venv}
# redis-py 5 and later (the RESP2 pub/sub API the test uses is older than that).
requirement='redis>=5,<9'

if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import redis' 2>/dev/null; then
    printf '==> found redis-py %s in %s\n' \
        "$("$venv/bin/python" -c 'import redis; print(redis.__version__)')" "$venv"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || {
    echo "error: python3 not found: install it (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
}
printf '==> creating %s with %s\n' "$venv" "$requirement"
rm -rf "$venv"
python3 -m venv "$venv" || {
    echo "error: 'python3 -m venv $venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 1
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" || {
    echo "error: 'pip install $requirement' into $venv failed (is PyPI reachable?)" >&2
    rm -rf "$venv"
    exit 1
}
"$venv/bin/python" -c 'import redis' || {
    echo "error: redis-py installed into $venv but cannot be imported" >&2
    exit 1
}
printf '==> found redis-py %s in %s\n' \
    "$("$venv/bin/python" -c 'import redis; print(redis.__version__)')" "$venv"
