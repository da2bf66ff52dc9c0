"""``PidEcho``: says which process serves the connection, then echoes.

On connection_made it writes ``b"<pid>\\n"`` (``os.getpid()`` of the serving
process), then echoes every byte it receives.
"""

import asyncio
import os


class PidEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"%d\n" % os.getpid())

    def data_received(self, data):
        self.transport.write(data)
