"""Protocols that do not read (test_bounded.py).

``NeverRead``: connection_made writes ``b"hello\\n"`` and calls
``transport.pause_reading()``; it never resumes. ``ReadOnce``: the same, but SIGUSR1
makes every connection read one chunk and pause again. A ``data_received`` or
``eof_received`` call while paused (which a paused transport must not make) is
reported on stderr, so the tests can assert there is none.
"""

import asyncio
import signal
import sys


class NeverRead(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"hello\n")
        transport.pause_reading()

    def data_received(self, data):
        print(f"never_read: data_received({len(data)} bytes) while paused", file=sys.stderr,
              flush=True)

    def eof_received(self):
        print("never_read: eof_received while paused", file=sys.stderr, flush=True)



class ReadOnce(asyncio.Protocol):
    """Greets and pauses reading; on SIGUSR1 (to the serving process) every paused
    connection resumes reading, takes one chunk, pauses again for good and writes
    ``b"again\\n"``. So data reaches the engine only once the kernel's buffers are full."""

    live = set()

    def connection_made(self, transport):
        self.transport = transport
        self.state = "paused"
        if not ReadOnce.live:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, ReadOnce.resume_all)
        ReadOnce.live.add(self)
        transport.write(b"hello\n")
        transport.pause_reading()

    @classmethod
    def resume_all(cls):
        for p in list(cls.live):
            if p.state == "paused":
                p.state = "reading"
                p.transport.resume_reading()

    def data_received(self, data):
        if self.state != "reading":
            print(f"never_read: data_received({len(data)} bytes) while paused", file=sys.stderr,
                  flush=True)
            return
        self.state = "done"
        self.transport.pause_reading()
        self.transport.write(b"again\n")

    def eof_received(self):
        print("never_read: eof_received while paused", file=sys.stderr, flush=True)

    def connection_lost(self, exc):
        ReadOnce.live.discard(self)
