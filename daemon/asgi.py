"""The few ASGI helpers dario's two apps share: read a body with a cap, send a whole response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than `limit` bytes as early as possible."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise BodyTooLarge()
        except ValueError:
            pass
    first = b""
    chunks: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            if chunks is not None:
                chunks.append(chunk)
            elif first:
                chunks = [first, chunk]
            else:
                first = chunk
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if chunks is not None else first


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
) -> None:
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(h for h in headers if h[0] not in (b"content-type", b"content-length"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: object, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_response(send, status, orjson.dumps(obj), headers)


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
