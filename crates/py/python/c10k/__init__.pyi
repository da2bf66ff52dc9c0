"""Type stubs for c10k: asyncio on c10k's engine."""

import asyncio
import socket
from typing import Any, Awaitable, Callable, Coroutine, Literal, Mapping, Optional, Tuple, TypeVar, Union

_T = TypeVar("_T")

Strategy = Literal["epoll-et", "epoll-lt", "uring"]
BlockingStrategy = Literal["thread", "fork", "prefork"]

STRATEGIES: Tuple[str, ...]
BLOCKING_STRATEGIES: Tuple[str, ...]
DEFAULT_DRAIN_TIMEOUT: float

class ChildrenCrashing(RuntimeError):
    """Children kept dying right after they started (``run``/``serve`` with processes > 1)."""

class Transport(asyncio.Transport):
    """asyncio's socket transport with its I/O in Rust (not a subclass at run time)."""

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None: ...
    def writelines(self, list_of_data: Any) -> None: ...
    def write_eof(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def is_reading(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: Optional[int] = ..., low: Optional[int] = ...) -> None: ...
    def get_write_buffer_limits(self) -> Tuple[int, int]: ...
    def get_write_buffer_size(self) -> int: ...
    def get_extra_info(self, name: str, default: Any = ...) -> Any: ...
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None: ...
    def get_protocol(self) -> asyncio.BaseProtocol: ...

class Loop(asyncio.AbstractEventLoop):
    """An asyncio event loop whose I/O runs on c10k's engine."""

    def __init__(self, strategy: Strategy = ..., *, reuse_port: bool = ...) -> None: ...
    @property
    def strategy(self) -> str: ...
    def connections(self) -> int:
        """Open connections on this loop."""
    async def drain(self, timeout: float) -> int:
        """Stop this loop's servers accepting; wait up to ``timeout`` s for their
        connections; return how many were still open."""

class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, strategy: Strategy = ...) -> None: ...
    def new_event_loop(self) -> Loop: ...

def new_event_loop(strategy: Strategy = ...) -> Loop:
    """A new event loop on c10k's engine."""

def probe(strategy: str) -> Optional[str]:
    """None when ``strategy`` can run here, else why not."""

def run(
    main: Union[Callable[[], Awaitable[_T]], Coroutine[Any, Any, _T]],
    *,
    strategy: Strategy = ...,
    processes: int = ...,
    drain_timeout: float = ...,
) -> Optional[_T]:
    """Run ``main`` on c10k's loop, in one process or ``processes`` forked ones."""

def serve(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    strategy: Strategy = ...,
    processes: int = ...,
    drain_timeout: float = ...,
    backlog: int = ...,
    on_listening: Optional[Callable[[str], None]] = ...,
) -> int:
    """Serve ``protocol_factory`` on ``host:port`` until SIGTERM."""

class Connection:
    """What a blocking handler gets: a socket-like connection whose waits release the GIL."""

    def recv(self, bufsize: int, flags: int = ...) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at end of stream, once the server drains and
        nothing waits, or after the idle timeout."""
    def recv_into(self, buffer: Any, nbytes: int = ..., flags: int = ...) -> int: ...
    def send(self, data: Any, flags: int = ...) -> int: ...
    def sendall(self, data: Any, flags: int = ...) -> None: ...
    def makefile(
        self,
        mode: str = ...,
        buffering: Optional[int] = ...,
        *,
        encoding: Optional[str] = ...,
        errors: Optional[str] = ...,
        newline: Optional[str] = ...,
    ) -> Any: ...
    def settimeout(self, value: Optional[float]) -> None: ...
    def gettimeout(self) -> Optional[float]: ...
    def setblocking(self, flag: bool) -> None: ...
    def getblocking(self) -> bool: ...
    def getpeername(self) -> Tuple[Any, ...]: ...
    def getsockname(self) -> Tuple[Any, ...]: ...
    def fileno(self) -> int: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Connection": ...
    def __exit__(self, *args: Any) -> None: ...

def serve_blocking(
    handler: Callable[[Connection], object],
    address: Union[Tuple[str, int], str],
    *,
    strategy: BlockingStrategy = ...,
    workers: Optional[int] = ...,
    processes: int = ...,
    drain_timeout: float = ...,
    idle_timeout: float = ...,
    max_conns: int = ...,
    backlog: int = ...,
    on_listening: Optional[Callable[[str], None]] = ...,
) -> int:
    """Serve ``handler(conn)`` on threads or processes until SIGTERM; returns 0 after the drain."""
