"""``c10k.run(main, processes=2)`` as a script (test_processes.py runs it).

Environment: ``C10K_TEST_PORT`` (the port every child serves ``PidEcho`` on, with
``create_server``'s default ``reuse_port``), ``C10K_TEST_STRATEGY``,
``C10K_TEST_DRAIN`` (drain timeout, seconds). Each child prints ``ready <pid>`` on
stdout once its server accepts; when ``run`` returns the script prints ``run
returned <value>`` and exits 0.
"""

import asyncio
import os
import sys

import c10k

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apps.pid_echo import PidEcho  # noqa: E402


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PidEcho, "127.0.0.1", int(os.environ["C10K_TEST_PORT"]))
    os.write(1, b"ready %d\n" % os.getpid())  # one write: the two children share the pipe
    await server.serve_forever()


if __name__ == "__main__":
    result = c10k.run(
        main,
        processes=2,
        strategy=os.environ["C10K_TEST_STRATEGY"],
        drain_timeout=float(os.environ.get("C10K_TEST_DRAIN", "5")),
    )
    print(f"run returned {result!r}", flush=True)
    sys.exit(0)
