"""asyncio streams on the loop under test: start_server + open_connection on the same loop."""

import asyncio

from harness import differential
from protocols import pattern

BIG = 1024 * 1024


async def stream_server(env, log, limit=2**16):
    async def handle(reader, writer):
        peer = writer.get_extra_info("peername")
        log.append(("peer", type(peer).__name__))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    log.append(("eof", reader.at_eof()))
                    break
                if line.startswith(b"N "):
                    writer.write(await reader.readexactly(int(line[2:])))
                elif line.startswith(b"U "):
                    writer.write(await reader.readuntil(line[2:-1]))
                else:
                    writer.write(line.upper())
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            log.append(("IncompleteReadError", exc.partial, exc.expected))
            writer.write(b"short\n")
        except ValueError as exc:
            log.append(("ValueError", str(exc)))
            writer.write(b"toolong\n")
        writer.close()
        await writer.wait_closed()
        log.append(("closed", writer.is_closing()))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=limit)
    return server, server.sockets[0].getsockname()[:2]


async def sc_stream_echo(env):
    log = []
    server, addr = await stream_server(env, log)
    reader, writer = await asyncio.open_connection(*addr)
    out = {}
    writer.write(b"hello\n")
    out["line"] = await reader.readline()
    writer.write(b"N 5\nabcde")
    out["exactly"] = await reader.readexactly(5)
    writer.write(b"U --\nsplit ")
    await writer.drain()
    await asyncio.sleep(0)
    writer.write(b"across writes--tail\n")
    out["until"] = await reader.readuntil(b"--")
    out["after_until"] = await reader.readline()
    big = pattern(BIG, seed=7)
    writer.write(b"N %d\n" % BIG)
    writer.write(big)
    await writer.drain()
    out["big_identical"] = await reader.readexactly(BIG) == big
    out["can_write_eof"] = writer.can_write_eof()
    writer.write_eof()
    out["rest"] = await reader.read()
    out["at_eof"] = reader.at_eof()
    writer.close()
    out["is_closing"] = writer.is_closing()
    await writer.wait_closed()
    while len(log) < 3:
        await asyncio.sleep(0.001)
    server.close()
    await server.wait_closed()
    return {"client": out, "server": log, "handler": env.handler_calls}


def test_stream_echo(loop_kind):
    """readline/readexactly/readuntil/drain/write_eof/wait_closed over start_server."""
    rec = differential(loop_kind, sc_stream_echo)
    assert rec == {
        "client": {
            "line": b"HELLO\n",
            "exactly": b"abcde",
            "until": b"split across writes--",
            "after_until": b"TAIL\n",
            "big_identical": True,
            "can_write_eof": True,
            "rest": b"",
            "at_eof": True,
            "is_closing": True,
        },
        "server": [("peer", "tuple"), ("eof", True), ("closed", True)],
        "handler": [],
    }


async def sc_stream_errors(env):
    log = []
    server, addr = await stream_server(env, log, limit=1024)
    results = []
    # 1: EOF in the middle of readexactly
    r, w = await asyncio.open_connection(*addr)
    w.write(b"N 10\nabc")
    w.write_eof()
    results.append(await r.read())
    w.close()
    await w.wait_closed()
    # 2: a line longer than the server's limit
    r, w = await asyncio.open_connection(*addr)
    w.write(b"x" * 3000)
    await w.drain()
    results.append(await r.read())
    w.close()
    await w.wait_closed()
    # 3: the client side limit: readline on the client's StreamReader
    r, w = await asyncio.open_connection(*addr, limit=8)
    w.write(b"0123456789abcdef\n")
    try:
        await r.readline()
        results.append(None)
    except ValueError as exc:
        results.append(("ValueError", str(exc)))
    w.close()
    await w.wait_closed()
    while len([e for e in log if e[0] == "closed"]) < 3:
        await asyncio.sleep(0.001)
    server.close()
    await server.wait_closed()
    return {"client": results, "server": log, "handler": env.handler_calls}


def test_stream_errors(loop_kind):
    """IncompleteReadError (partial, expected) and the readline limit ValueError."""
    rec = differential(loop_kind, sc_stream_errors)
    limit_msg = "Separator is not found, and chunk exceed the limit"
    found_msg = "Separator is found, but chunk is longer than limit"
    assert rec["client"] == [b"short\n", b"toolong\n", ("ValueError", found_msg)]
    assert rec["server"] == [
        ("peer", "tuple"), ("IncompleteReadError", b"abc", 10), ("closed", True),
        ("peer", "tuple"), ("ValueError", limit_msg), ("closed", True),
        ("peer", "tuple"), ("eof", True), ("closed", True),
    ]
    assert rec["handler"] == []
