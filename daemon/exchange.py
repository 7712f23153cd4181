"""What every layer passes: one client request, what became of it, and where the answer goes.

`Incoming` is a request already read, parsed and translated to the upstream's form (the edge and
a dialect build it); `Outcome` is what happened (the relay fills it; recorders read it);
`Answer` is an upstream answer as a dialect's `Sink` needs it. Nothing here does I/O, and this
module imports nothing else of dario's, so every room may depend on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import trio

if TYPE_CHECKING:
    from dario.daemon.errors import DarioError


class Dialect(StrEnum):
    """The API a client speaks; the value is what logs, metrics labels and analytics rows carry."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"


@dataclass(slots=True)
class Estimate:
    """What one request is expected to take from an account's windows."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    def update(self, usage: object) -> None:
        """Take values from an Anthropic usage object; they are cumulative, so the last wins."""
        if not isinstance(usage, dict):
            return
        for src, dst in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                         ("cache_read_input_tokens", "cache_read")):
            v = usage.get(src)
            if isinstance(v, int):
                setattr(self, dst, v)
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            v5, v1 = creation.get("ephemeral_5m_input_tokens"), creation.get("ephemeral_1h_input_tokens")
            if isinstance(v5, int):
                self.cache_write_5m = v5
            if isinstance(v1, int):
                self.cache_write_1h = v1
        else:
            v = usage.get("cache_creation_input_tokens")
            if isinstance(v, int):
                self.cache_write_5m = v


class CacheKey(NamedTuple):
    """A prompt prefix the upstream may cache: a digest of the model and the prefix, never the text."""

    digest: bytes
    ttl: float  # seconds the upstream keeps it after a write or a read


class CacheKeys(NamedTuple):
    """A request's prompt-cache prefixes (routing/affinity.py computes them)."""

    written: tuple[CacheKey, ...]  # each breakpoint's prefix, in prompt order: what a success caches
    lookup: tuple[bytes, ...]  # digests a cache read could match (breakpoints and lookback), longest first


@dataclass(slots=True)
class Incoming:
    """One client request, already read, parsed and translated to the upstream's form."""

    dialect: Dialect
    endpoint: str  # "messages" | "count_tokens" | "chat"
    path: str  # upstream path
    query: bytes
    headers: list[tuple[bytes, bytes]]  # the client's, lower-case names
    body: bytes  # exactly what goes upstream
    stream: bool
    model: str | None
    estimate: Estimate
    client: str
    t_start: float  # perf_counter when the request arrived
    # Watches for the client hanging up and cancels the given scope. Used around a wait in the
    # queue; None when the caller already watches the whole request (streams).
    watch_hangup: Callable[[trio.CancelScope], Awaitable[None]] | None = None
    cache_keys: CacheKeys | None = None  # prompt-cache prefixes, for the pool's affinity; None: no breakpoints


@dataclass(slots=True)
class Outcome:
    """What happened, for analytics and the access log."""

    account: str | None = None
    account_kind: str | None = None  # the serving account's kind: its prices may differ
    status: int = 0
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    failovers: int = 0
    queue_wait_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_ms: float = 0.0


@dataclass(slots=True)
class Answer:
    """An upstream answer as the sink needs it."""

    status: int
    headers: list[tuple[bytes, bytes]]  # to send to the client (already filtered, x-dario-* added)
    body: bytes
    account: str
    parsed: Any = None  # the body as JSON, when the relay already parsed it (a sink need not again)


class Sink(Protocol):
    async def error(self, err: DarioError) -> None: ...
    async def answer(self, ans: Answer) -> None: ...  # a whole response (success or upstream error)
    async def stream_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    async def stream_data(self, block: bytes) -> None: ...  # complete SSE events
    async def stream_abort(self, type: str, message: str) -> None: ...
    async def stream_end(self) -> None: ...
