"""Server scenarios of well-known asyncio test suites, written anew for this corpus.

Each docstring names the suite and test whose scenario it follows; no code is copied.
"""

import asyncio
import errno
import socket

from harness import collapse, differential, exc_name
from protocols import Recorder, pattern

CLIENTS = 30
PAYLOAD = 256 * 1024


async def echo_handler(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def sc_many_clients(env):
    served = []

    async def handler(reader, writer):
        served.append(1)
        await echo_handler(reader, writer)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]

    async def client(i):
        reader, writer = await asyncio.open_connection(*addr)
        payload = pattern(PAYLOAD, seed=100 + i)

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await reader.read()  # to EOF
        await sender
        writer.close()
        await writer.wait_closed()
        return got == payload

    ok = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    server.close()
    await server.wait_closed()
    return {"all_identical": all(ok), "clients": len(ok), "served": len(served),
            "handler": env.handler_calls}


def test_many_concurrent_clients_large_payload(loop_kind):
    """uvloop tests/test_tcp.py, test_create_server_1 style: many concurrent clients
    each send a large payload and read it back from one echo server."""
    rec = differential(loop_kind, sc_many_clients)
    assert rec == {"all_identical": True, "clients": CLIENTS, "served": CLIENTS, "handler": []}


async def sc_start_server_sock(env):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    name = lsock.getsockname()
    server = await asyncio.start_server(echo_handler, sock=lsock, start_serving=False)
    same_name = server.sockets[0].getsockname() == name
    serving_before = server.is_serving()
    await server.start_serving()
    replies = []
    for i in range(3):
        r, w = await asyncio.open_connection(*name)
        w.write(b"ping %d" % i)
        w.write_eof()
        replies.append(await r.read())
        w.close()
        await w.wait_closed()
    server.close()
    await server.wait_closed()
    return {"same_name": same_name, "serving_before": serving_before, "replies": replies,
            "listening_socket_closed": lsock.fileno() == -1, "handler": env.handler_calls}


def test_start_server_with_sock(loop_kind):
    """CPython Lib/test/test_asyncio/test_server.py, BaseStartServer.test_start_server_1
    scenario (start_serving=False, then start_serving()), with a pre-bound sock= argument."""
    rec = differential(loop_kind, sc_start_server_sock)
    assert rec == {
        "same_name": True,
        "serving_before": False,
        "replies": [b"ping 0", b"ping 1", b"ping 2"],
        "listening_socket_closed": True,
        "handler": [],
    }


async def sc_reuse_port(env):
    loop = env.loop
    counts = [0, 0]

    def factory(i):
        def make():
            counts[i] += 1
            return EchoOnce()
        return make

    s1 = await loop.create_server(factory(0), "127.0.0.1", 0, reuse_port=True)
    port = s1.sockets[0].getsockname()[1]
    s2 = await loop.create_server(factory(1), "127.0.0.1", port, reuse_port=True)
    try:
        await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        clash = None
    except OSError as exc:
        clash = (type(exc).__name__, exc.errno == errno.EADDRINUSE)
    opts = [s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            for s in (s1, s2)]
    replies = []
    for i in range(8):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"%d" % i)
        replies.append(await r.read())
        w.close()
        await w.wait_closed()
    for s in (s1, s2):
        s.close()
        await s.wait_closed()
    return {"clash": clash, "so_reuseport": opts, "replies": replies,
            "served_total": sum(counts), "handler": env.handler_calls}


class EchoOnce(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


def test_create_server_reuse_port(loop_kind):
    """uvloop tests/test_tcp.py, test_create_server_4/reuse_port style: two servers
    share a port with reuse_port=True; a third without it fails with EADDRINUSE."""
    rec = differential(loop_kind, sc_reuse_port)
    assert rec == {
        "clash": ("OSError", True),
        "so_reuseport": [True, True],
        "replies": [b"%d" % i for i in range(8)],
        "served_total": 8,
        "handler": [],
    }


class Client(Recorder):
    pass


async def sc_create_connection(env):
    loop = env.loop
    served = []

    class Server(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.writelines([b"<", memoryview(data), bytearray(b">")])

    server = await loop.create_server(lambda: Server(loop, served), "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]
    transport, client = await loop.create_connection(lambda: Client(loop), *addr)
    peer_ok = transport.get_extra_info("peername") == addr
    transport.writelines([b"a" * 10, bytearray(b"b" * 10), memoryview(b"c" * 10)])
    while len(client.data) < 32:
        await asyncio.sleep(0.001)
    transport.write_eof()
    await client.done
    await served[0].done
    server.close()
    await server.wait_closed()
    data = bytes(client.data)
    return {
        "peer_ok": peer_ok,
        "client_got": data[:1] + data[-1:] + bytes(sorted(set(data[1:-1]))),
        "server_got": bytes(served[0].data),
        "client_events": collapse(client.events),
        "server_events": collapse(served[0].events),
        "client_exc": exc_name(client.exc),
        "handler": env.handler_calls,
    }


def test_create_connection_same_loop(loop_kind):
    """uvloop tests/test_tcp.py, test_create_connection_1 style (and writelines): a
    Protocol client on the same loop talks to a Protocol server; both see orderly close."""
    rec = differential(loop_kind, sc_create_connection)
    assert rec == {
        "peer_ok": True,
        "client_got": b"<>abc",
        "server_got": b"a" * 10 + b"b" * 10 + b"c" * 10,
        "client_events": ["connection_made", "data_received", "eof_received",
                          "connection_lost:None"],
        "server_events": ["connection_made", "data_received", "eof_received",
                          "connection_lost:None"],
        "client_exc": None,
        "handler": [],
    }
