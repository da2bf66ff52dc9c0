"""``c10k.serve_blocking`` called from a program (not the CLI): prints the address
from ``on_listening``, then the exit status ``serve_blocking`` returned."""

import sys

import c10k

from apps_blocking.handlers import echo

if __name__ == "__main__":
    strategy = sys.argv[1]
    status = c10k.serve_blocking(
        echo,
        ("127.0.0.1", 0),
        strategy=strategy,
        idle_timeout=30,
        drain_timeout=5,
        on_listening=lambda shown: print(f"api listening on {shown}", flush=True),
    )
    print(f"serve_blocking returned {status}", flush=True)
