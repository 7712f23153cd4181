"""The few ASGI helpers dario's two apps share: read a body with a cap, send a whole response."""

from __future__ import annotations

import math

import orjson
import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
)
from hypercorn.typing import Scope as Scope  # re-exported: what an ASGI app is called with

# The ASGI 3 types as hypercorn (the server dario runs in) spells them: `Scope` is what an app is
# called with (http or lifespan here; dario serves no websockets), `HTTPScope` what a request
# handler sees once the type is known.
Receive = ASGIReceiveCallable
Send = ASGISendCallable
Message = ASGISendEvent

JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class BodyTimeout(Exception):
    """The client stopped sending its body (or sent it too slowly)."""


def header(scope: HTTPScope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: HTTPScope, receive: Receive, limit: int, *, idle_timeout: float = math.inf,
                    deadline: float = math.inf) -> bytes:
    """Read the whole request body, refusing more than `limit` bytes as early as possible.

    hypercorn times out a connection only while it is idle between requests; once a head has
    arrived nothing bounds the body. A client that stalls (or drips a byte at a time) would hold
    its connection and file descriptor for ever, so each read gets `idle_timeout` seconds and
    the whole body `deadline` seconds from now. One cancel scope serves both bounds (its
    deadline moves after each read): this runs on every request, and each scope costs.
    """
    length = header(scope, b"content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise BodyTooLarge()
        except ValueError:
            pass
    now = trio.current_time()
    last_moment = now + deadline
    first = b""
    chunks: list[bytes] | None = None
    size = 0
    with trio.CancelScope(deadline=min(last_moment, now + idle_timeout)) as bound:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone()  # http.disconnect: the only other event an HTTP request receives
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
            bound.deadline = min(last_moment, trio.current_time() + idle_timeout)
    if bound.cancelled_caught:
        raise BodyTimeout()
    return b"".join(chunks) if chunks is not None else first


def response_start(status: int, headers: list[tuple[bytes, bytes]]) -> HTTPResponseStartEvent:
    return {"type": "http.response.start", "status": status, "headers": headers}


def response_body(body: bytes, *, more: bool = False) -> HTTPResponseBodyEvent:
    """A piece of the body; `more=False` ends the response."""
    return {"type": "http.response.body", "body": body, "more_body": more}


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
) -> None:
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(h for h in headers if h[0] not in (b"content-type", b"content-length"))
    await send(response_start(status, out))
    await send(response_body(body))


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
