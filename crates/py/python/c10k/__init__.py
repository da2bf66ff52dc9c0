"""c10k for Python: asyncio on c10k's engine.

The I/O path of an asyncio event loop (accepting, reading, buffering, writing, flow
control) runs in Rust on the strategy you choose: ``"epoll-et"``, ``"epoll-lt"`` or
``"uring"``. asyncio's own scheduling (callbacks, timers, futures, tasks) is asyncio's,
unchanged. Stock ``asyncio.Protocol``/``BufferedProtocol`` servers and
``asyncio.start_server`` stream handlers run on it as they are::

    import asyncio, c10k

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 8000)
        await server.serve_forever()

    c10k.run(main, strategy="uring", processes=2)   # one interpreter per core

Python 3.12+: ``asyncio.run(main(), loop_factory=c10k.new_event_loop)``; 3.9-3.11:
``asyncio.set_event_loop_policy(c10k.EventLoopPolicy())`` or ``c10k.run``.

Blocking-style handlers (``handler(conn)`` with ``recv``/``sendall``/``makefile``, as
``socketserver`` handlers are written) run on threads or processes with every wait in
Rust, the interpreter's lock released: ``c10k.serve_blocking(handler, ("127.0.0.1",
8000), strategy="thread")`` (or ``"fork"``, ``"prefork"``).
"""

from ._blocking import BLOCKING_STRATEGIES, serve_blocking
from ._engine import Connection, Transport
from ._loop import STRATEGIES, EventLoopPolicy, Loop, new_event_loop, probe
from ._run import DEFAULT_DRAIN_TIMEOUT, ChildrenCrashing, run, serve

__all__ = [
    "BLOCKING_STRATEGIES",
    "STRATEGIES",
    "DEFAULT_DRAIN_TIMEOUT",
    "ChildrenCrashing",
    "Connection",
    "EventLoopPolicy",
    "Loop",
    "Transport",
    "new_event_loop",
    "probe",
    "run",
    "serve",
    "serve_blocking",
]
