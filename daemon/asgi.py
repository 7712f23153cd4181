"""The few ASGI helpers dario's two apps share: read a body with a cap, send a whole response."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class BodyTimeout(Exception):
    """The client stopped sending its body (or sent it too slowly)."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, *, idle_timeout: float = math.inf,
                    deadline: float = math.inf) -> bytes:
    """Read the whole request body, refusing more than `limit` bytes as early as possible.

    hypercorn times out a connection only while it is idle between requests; once a head has
    arrived nothing bounds the body. A client that stalls (or drips a byte at a time) would hold
    its connection and file descriptor for ever, so each read gets `idle_timeout` seconds and
    the whole body `deadline` seconds from now.
    """
    body: bytes | None = None
    with trio.move_on_after(deadline):
        body = await _read_body(scope, receive, limit, idle_timeout)
    if body is None:
        raise BodyTimeout()
    return body


async def _read_body(scope: Scope, receive: Receive, limit: int, idle_timeout: float) -> bytes:
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
        message: Message | None = None
        with trio.move_on_after(idle_timeout):
            message = await receive()
        if message is None:
            raise BodyTimeout()
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
