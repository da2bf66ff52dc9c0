"""Type stubs for c10k: asyncio on c10k's engine."""

import asyncio
import socket
from typing import Any, Awaitable, Callable, Coroutine, Literal, Mapping, Optional, Tuple, TypeVar, Union

_T = TypeVar("_T")

Strategy = Literal["epoll-et", "epoll-lt", "uring"]

STRATEGIES: Tuple[str, ...]
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
