"""The Upstream interface: what the relay needs from one kind of provider.

An upstream kind knows how to build and sign a request for one account, send it, judge the
answer, read its rate-limit headers, and turn its body or stream into Anthropic Messages API
events. The relay speaks only Anthropic's dialect, so a provider that frames its answers
differently converts here. The seam is shaped for the next two kinds: Bedrock (SigV4-signed
requests to a path that names the model, answers in AWS's binary event-stream framing) and
Vertex (an OAuth bearer token, the model in the URL) both change the URL, body and headers in
`prepare` and the framing in `stream_decoder`. Every error answer `send` returns is in Anthropic's
error shape, whatever the provider sent: the relay passes it on as is, to either dialect.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from dario.daemon.upstream.errors import UpstreamErrorInfo
from dario.daemon.upstream.ratelimits import Snapshot


@dataclass(frozen=True, slots=True)
class Call:
    """What dario wants from the upstream, in Anthropic Messages API terms."""

    method: str
    path: str  # an Anthropic API path, e.g. /v1/messages
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = ()  # the client's, lower-case
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Request:
    """A request ready to go on the wire: URL, headers (signed), body."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


class VerdictKind(enum.Enum):
    """What an answer means for the account that gave it and for the request."""

    OK = "ok"  # a success: pass it on
    RATE_LIMITED = "rate_limited"  # not processed; this account is back when its window resets
    SPEND_LIMITED = "spend_limited"  # the account's spend limit: no retry on it for a long while
    OVERLOADED = "overloaded"  # a passing failure (overload, 5xx): another account may succeed
    AUTH = "auth"  # the key was rejected: the account needs a new one
    FINAL = "final"  # the request's own fault (4xx): pass it on, whatever account serves


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    error: UpstreamErrorInfo | None = None  # the parsed body, for every answer but OK


class Reply(Protocol):
    """An answer whose head has arrived, its body still streaming (the HTTP client's `Response`).

    Body reads raise `dario.daemon.upstream.httpclient.UpstreamError` when the connection fails.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...

    async def next_chunk(self, hold_until: float | None = None) -> bytes | None:
        """The next body chunk; None at the end; b"" if nothing came by `hold_until` (trio's clock)."""
        ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """Take bytes as they arrive; return the complete Anthropic SSE events they finish (maybe b"").

        Raises `dario.daemon.upstream.sse.EventTooLarge` for an event past the cap.
        """
        ...


class Upstream(Protocol):
    """One kind of upstream; one object serves every account of that kind."""

    kind: str

    def prepare(self, base_url: str, secret: str, call: Call) -> Request: ...

    async def send(self, request: Request, *, read_timeout: float | None = None) -> Reply: ...

    def classify(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Verdict: ...

    def limits(self, headers: list[tuple[bytes, bytes]]) -> Snapshot: ...

    def secret_values(self, secret: str) -> tuple[str, ...]:
        """Every secret string inside an account's secret, for redacting upstream text.

        An Anthropic key is one string; a Bedrock or Vertex secret is a document holding several.
        """
        ...

    def is_stream(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether this answer is an event stream (to be read through `stream_decoder`)."""
        ...

    def stream_decoder(self) -> StreamDecoder: ...

    def answer_body(self, body: bytes) -> bytes:
        """A whole (non-streaming) success body → an Anthropic Messages API body."""
        ...

    async def check_key(self, base_url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A cheap authenticated call that costs no tokens, for login and refresh: (status, headers, body)."""
        ...

    def check_label(self, base_url: str, secret: str) -> str:
        """What `check_key` checks, in words, for messages (never a secret)."""
        ...

    def check_warning(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
        """For a `check_key` error that still proves the credential (e.g. the one model checked is
        not enabled): what to tell the user. None: the answer means what its status says."""
        ...
