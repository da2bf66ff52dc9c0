"""The echo server of the Python loop benchmarks, as one asyncio Protocol.

Every loop under test (asyncio, uvloop, rloop, c10k's) serves this same class: the
figures differ by the loop only. `python -m c10k serve echo_protocol:Echo` serves it
too (the factory is the class).
"""
import asyncio


class Echo(asyncio.Protocol):
    """Writes every chunk it receives back to its peer."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
