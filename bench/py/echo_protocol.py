"""The echo server of the Python loop benchmarks, as one asyncio Protocol.

Every loop under test (asyncio, uvloop, rloop, c10k's) serves this same class: the
figures differ by the loop only. `python -m c10k serve echo_protocol:Echo` serves it
too (the factory is the class).

`EchoWork` is the same echo after burning WORK_CPU_S of this thread's CPU time per
chunk received (like `c10k serve --work cpu=200us`): bench/python.sh serves it to
make the server, not the load, the bottleneck of its --processes run.
"""
import asyncio
import time

WORK_CPU_S = 200e-6


class Echo(asyncio.Protocol):
    """Writes every chunk it receives back to its peer."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoWork(Echo):
    """Echo, after WORK_CPU_S of CPU (thread time, so a preemption does not shorten
    it) per chunk received."""

    def data_received(self, data):
        until = time.thread_time() + WORK_CPU_S
        while time.thread_time() < until:
            pass
        self.transport.write(data)
