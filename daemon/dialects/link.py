"""The client side of one response, shared by both dialects' sinks."""

from __future__ import annotations

from dario.daemon.asgi import Message, Send

# Proxies and browsers must not buffer or cache a stream (nginx honours X-Accel-Buffering).
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class ClientLink:
    """The client side of one response: knows when the last byte is on its way.

    Sinks send through it, so the hang-up watcher can tell a client that left early from the
    end of a response that went out whole.
    """

    __slots__ = ("_send", "complete")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)
