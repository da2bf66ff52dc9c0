"""The differential harness for the c10k Python corpus (conftest.py exposes the fixture).

Every scenario is an ``async def scenario(env) -> recording`` coroutine function.
``differential(kind, scenario, ...)`` runs it on the loop under test and, when
that loop is a c10k one, also on the stock asyncio loop, and asserts the two
recordings are equal.  Tests then assert the recording is the expected one.

The c10k parameters never skip: when ``import c10k`` fails they fail with the
command that installs the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import socket
import sys
import threading
import traceback

import pytest

STOCK = "asyncio"
C10K_STRATEGIES = ("epoll-et", "epoll-lt", "uring")
LOOP_IDS = (STOCK,) + tuple(f"c10k-{s}" for s in C10K_STRATEGIES)

# Hang guard for one scenario (never a timing assertion).
TIMEOUT = 10.0

INSTALL_HINT = (
    "the c10k Python package is not importable: run `pip install ./crates/py` "
    "(scripts/test.sh installs it into target/py-venv)"
)


def import_c10k():
    """Import c10k or fail the test (never skip) with the install command."""
    try:
        return importlib.import_module("c10k")
    except Exception as exc:  # ImportError, or a broken extension module
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # Outside the except block, so the report is this one line, not a chain.
    pytest.fail(f"{INSTALL_HINT}; import c10k failed: {detail}", pytrace=False)


@dataclasses.dataclass(frozen=True)
class LoopKind:
    """One column of the matrix: the stock loop or c10k with one strategy."""

    id: str
    strategy: str | None  # None for the stock loop

    @property
    def is_stock(self):
        return self.strategy is None

    def new_loop(self):
        if self.is_stock:
            return asyncio.new_event_loop()
        c10k = import_c10k()
        assert tuple(c10k.STRATEGIES) == C10K_STRATEGIES, c10k.STRATEGIES
        loop = c10k.new_event_loop(strategy=self.strategy)
        assert isinstance(loop, asyncio.AbstractEventLoop), type(loop)
        return loop


STOCK_KIND = LoopKind(STOCK, None)
KINDS = (STOCK_KIND,) + tuple(LoopKind(f"c10k-{s}", s) for s in C10K_STRATEGIES)


@pytest.fixture(params=KINDS, ids=[k.id for k in KINDS])
def loop_kind(request):
    """The loop under test.  A c10k kind imports c10k when the test makes its loop
    (LoopKind.new_loop), so a missing package FAILS the test, never skips or errors it."""
    return request.param


class Env:
    """What a scenario gets: its loop, the exception-handler log, helpers."""

    def __init__(self, loop, kind):
        self.loop = loop
        self.kind = kind
        self.handler_calls = []  # (message, exception type name or None)
        self.handler_contexts = []

    def _handler(self, loop, context):
        exc = context.get("exception")
        self.handler_calls.append(
            (context.get("message"), type(exc).__name__ if exc is not None else None)
        )
        self.handler_contexts.append(context)

    def thread(self, fn, *args):
        """Run blocking ``fn(*args)`` in a fresh daemon thread; await its result.

        A fresh thread per call (not the default executor, which has few workers
        on a 2-core machine) so any number of blocking clients can run at once.
        """
        fut = self.loop.create_future()
        loop = self.loop

        def settle(ok, value):
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def body():
            try:
                value = fn(*args)
            except BaseException as exc:  # handed back to the awaiting coroutine
                loop.call_soon_threadsafe(settle, False, exc)
            else:
                loop.call_soon_threadsafe(settle, True, value)

        threading.Thread(target=body, daemon=True, name=f"client-{fn.__name__}").start()
        return fut

    async def idle(self, rounds=20):
        """Let the loop poll for I/O a number of times (no timing assertion)."""
        for _ in range(rounds):
            await asyncio.sleep(0.002)


def run_on(kind, scenario, *args, timeout=TIMEOUT):
    """Run ``scenario(env, *args)`` on a fresh loop of ``kind``; return its recording."""
    loop = kind.new_loop()
    env = Env(loop, kind)
    asyncio.set_event_loop(loop)
    try:
        loop.set_exception_handler(env._handler)
        return loop.run_until_complete(asyncio.wait_for(scenario(env, *args), timeout))
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            asyncio.set_event_loop(None)


_stock_cache = {}


def stock_recording(scenario, *args):
    key = (scenario.__module__, scenario.__qualname__, args)
    if key not in _stock_cache:
        _stock_cache[key] = run_on(STOCK_KIND, scenario, *args)
    return _stock_cache[key]


def differential(kind, scenario, *args):
    """Run the scenario on ``kind``; on c10k, assert it records what stock asyncio does."""
    rec = run_on(kind, scenario, *args)
    if not kind.is_stock:
        ref = stock_recording(scenario, *args)
        assert rec == ref, (
            f"{kind.id} differs from stock asyncio in {scenario.__name__}:\n"
            f"  {kind.id}: {rec!r}\n  asyncio: {ref!r}"
        )
    return rec


# ----------------------------------------------------------------- recording helpers


def exc_name(exc):
    return None if exc is None else type(exc).__name__


def collapse(events):
    """Drop consecutive repeats: chunking of a byte stream is not observable behaviour."""
    out = []
    for e in events:
        if not out or out[-1] != e:
            out.append(e)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_all(sock, limit=None):
    """Read until EOF (or ``limit`` bytes); return (bytes, how it ended)."""
    chunks, n = [], 0
    end = "eof"
    while limit is None or n < limit:
        try:
            b = sock.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        if not b:
            break
        chunks.append(b)
        n += len(b)
    else:
        end = "limit"
    return b"".join(chunks), end


def connect(addr, rcvbuf=None, timeout=TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(addr)
    return s


# Server.wait_closed() called after close() returns at once up to 3.11 (3.12 waits).
PY311 = sys.version_info < (3, 12)


def differential_fn(kind, fn, *args):
    """Like differential, for a synchronous ``fn(kind, *args)`` that manages its own loop."""
    rec = fn(kind, *args)
    if not kind.is_stock:
        key = ("fn", fn.__module__, fn.__qualname__, args)
        if key not in _stock_cache:
            _stock_cache[key] = fn(STOCK_KIND, *args)
        ref = _stock_cache[key]
        assert rec == ref, (
            f"{kind.id} differs from stock asyncio in {fn.__name__}:\n"
            f"  {kind.id}: {rec!r}\n  asyncio: {ref!r}"
        )
    return rec
