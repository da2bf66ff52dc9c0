"""``CrashOnConnect``: the serving process dies (``os._exit(3)``) on every connection."""

import asyncio
import os


class CrashOnConnect(asyncio.Protocol):
    def connection_made(self, transport):
        os._exit(3)
