"""``FlowEcho``: an echo server that honours flow control, and reports what it saw.

``pause_writing`` pauses reading, ``resume_writing`` resumes it (the asyncio recipe
for a bounded echo). After every write it records ``get_write_buffer_size()``; it
also records the largest chunk ``data_received`` got. On stderr, one line each:

* ``flow_echo pause PORT`` the first time writing is paused on the connection from
  client port PORT;
* ``flow_echo lost PORT key=value ...`` on connection_lost: ``peak`` (largest write
  buffer size seen), ``chunk`` (largest chunk received), ``high``/``low`` (the
  transport's write-buffer limits), ``pauses``, ``received`` (bytes), ``while_paused``
  (data_received calls while reading was paused: must be 0), ``exc``.

On EOF it returns None, so the transport closes once the echo is flushed.
"""

import asyncio
import sys


class FlowEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("peername")[1]
        self.peak = self.chunk = self.pauses = self.received = self.while_paused = 0
        self.paused = False

    def data_received(self, data):
        if self.paused:
            self.while_paused += 1
        self.received += len(data)
        self.chunk = max(self.chunk, len(data))
        self.transport.write(data)
        self.peak = max(self.peak, self.transport.get_write_buffer_size())

    def pause_writing(self):
        self.pauses += 1
        self.paused = True
        self.transport.pause_reading()
        if self.pauses == 1:
            print(f"flow_echo pause {self.port}", file=sys.stderr, flush=True)

    def resume_writing(self):
        self.paused = False
        self.transport.resume_reading()

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        low, high = self.transport.get_write_buffer_limits()
        print(
            f"flow_echo lost {self.port} peak={self.peak} chunk={self.chunk} high={high}"
            f" low={low} pauses={self.pauses} received={self.received}"
            f" while_paused={self.while_paused} exc={type(exc).__name__ if exc else None}",
            file=sys.stderr,
            flush=True,
        )
