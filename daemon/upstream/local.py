"""Answers an adapter makes itself: a refusal before anything is sent, or an error body rewritten.

Bedrock and Vertex answer some requests without calling the provider (a model they cannot map,
a credential that cannot be used) and rewrite every provider error into Anthropic's error shape
(https://docs.anthropic.com/en/api/errors). A `LocalReply` carries such an answer through the
same `Reply` interface as a real response, so the relay treats it like any upstream answer and
needs no knowledge of the kind that made it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import trio

from dario.daemon.upstream.base import Reply
from dario.daemon.upstream.httpclient import UpstreamError

MAX_ERROR_BODY = 256 * 1024


class LocalReply:
    """An answer made by an adapter (a refusal, or a converted error body): a whole body in memory."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self._body: bytes | None = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self, hold_until: float | None = None) -> bytes | None:
        await trio.lowlevel.checkpoint()
        body, self._body = self._body, None
        return body or None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([c async for c in self.aiter_bytes()])

    async def aclose(self) -> None:
        self._body = None


def error_body(etype: str, message: str) -> bytes:
    """An Anthropic error body."""
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})


def json_headers(body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    """`extra` (the provider's headers, maybe) without framing headers, plus those of a JSON `body`."""
    skip = {b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"}
    out = [(k, v) for k, v in extra or [] if k not in skip]
    return [*out, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]


def refusal(status: int, etype: str, message: str) -> LocalReply:
    """An Anthropic-shaped error answered by dario itself, nothing sent."""
    body = error_body(etype, message)
    return LocalReply(status, json_headers(body), body)


async def read_capped(response: Reply, cap: int = MAX_ERROR_BODY) -> bytes:
    """An error body, at most `cap` bytes; a body cut short by the connection is still an error."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                break
            chunks.append(chunk)
    except UpstreamError:
        pass
    return b"".join(chunks)
