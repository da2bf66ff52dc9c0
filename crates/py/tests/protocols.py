"""Recording server protocols shared by the scenarios (and the CLI test's factory)."""

import asyncio

from harness import exc_name


def pattern(n, seed=0):
    """n bytes that are not periodic at any small stride (so reordering shows)."""
    out = bytearray(n)
    x = seed * 2654435761 + 12345
    for i in range(0, n, 4):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out[i : i + 4] = x.to_bytes(4, "little")[: n - i]
    return bytes(out)


class Recorder(asyncio.Protocol):
    """Records every callback; subclasses add behaviour."""

    def __init__(self, loop, registry=None):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.exc = None
        self.made = loop.create_future()
        self.done = loop.create_future()
        if registry is not None:
            registry.append(self)

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("connection_made")
        self.made.set_result(None)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        self.events.append("data_received")
        self.data += data

    def eof_received(self):
        self.events.append("eof_received")
        return None

    def connection_lost(self, exc):
        self.events.append(f"connection_lost:{exc_name(exc)}")
        self.exc = exc
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    """BufferedProtocol echo; records callbacks like Recorder (get_buffer counted apart)."""

    def __init__(self, loop, registry, bufsize):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.buf = bytearray(bufsize)
        self.get_buffer_calls = 0
        self.hints_are_ints = True
        self.unpaired_updates = 0  # buffer_updated without a get_buffer before it
        self._outstanding = False
        self.done = loop.create_future()
        registry.append(self)

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("connection_made")

    def get_buffer(self, sizehint):
        self.get_buffer_calls += 1
        self.hints_are_ints &= isinstance(sizehint, int)
        self._outstanding = True
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        if not self._outstanding:
            self.unpaired_updates += 1
        self._outstanding = False
        self.events.append("buffer_updated")
        chunk = bytes(self.buf[:nbytes])
        self.data += chunk
        self.transport.write(chunk)

    def eof_received(self):
        self.events.append("eof_received")

    def connection_lost(self, exc):
        self.events.append(f"connection_lost:{exc_name(exc)}")
        self.done.set_result(None)


class CliEcho(asyncio.Protocol):
    """Plain echo factory for the CLI test (`MODULE:FACTORY` = protocols:CliEcho)."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
