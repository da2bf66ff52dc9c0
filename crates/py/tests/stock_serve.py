"""Reference for the CLI contract on the stock loop, so the CLI test is differential.

    python stock_serve.py serve MODULE:FACTORY --listen IP:PORT

prints exactly `listening on IP:PORT` once accepting, serves the Protocol factory,
and on SIGTERM stops accepting, waits for open connections to finish, exits 0.
(`python -m c10k serve ...` must behave the same.)
"""

import argparse
import asyncio
import importlib
import signal
import sys


async def serve(factory, host, port):
    loop = asyncio.get_running_loop()
    live = set()
    idle = asyncio.Event()
    idle.set()

    class Tracked:
        def __init__(self):
            self.inner = factory()

        def connection_made(self, transport):
            live.add(self)
            idle.clear()
            self.inner.connection_made(transport)

        def connection_lost(self, exc):
            live.discard(self)
            if not live:
                idle.set()
            self.inner.connection_lost(exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    server = await loop.create_server(Tracked, host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    await idle.wait()


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["serve"])
    ap.add_argument("app")
    ap.add_argument("--listen", required=True)
    args = ap.parse_args(argv)
    module, _, name = args.app.partition(":")
    factory = getattr(importlib.import_module(module), name)
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(factory, host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
