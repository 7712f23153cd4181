"""The Anthropic Messages dialect: answers pass through byte for byte.

Upstream bytes are already in this dialect, so the sink only frames them; errors that dario
makes itself use the Anthropic error shape.
"""

from __future__ import annotations

import orjson

from dario.daemon.asgi import Send, send_response
from dario.daemon.dialects.link import SSE_HEADERS, ClientLink
from dario.daemon.errors import DarioError, anthropic_error_body, anthropic_type_for_status
from dario.daemon.exchange import Answer


class AnthropicSink:
    __slots__ = ("link", "request_id", "send", "started")

    def __init__(self, send: Send, request_id: str) -> None:
        self.link = ClientLink(send)
        self.send: Send = self.link
        self.request_id = request_id
        self.started = False

    async def error(self, err: DarioError) -> None:
        body = anthropic_error_body(err.type, err.message, self.request_id)
        await send_response(self.send, err.status, body, err.headers + [(b"request-id", self.request_id.encode())])

    async def answer(self, ans: Answer) -> None:
        ctype: bytes | None = None
        for name, value in ans.headers:
            if name == b"content-type":
                ctype = value
        body = ans.body
        if ans.status >= 400 and (ctype is None or not ctype.startswith(b"application/json")):
            # An upstream error that is not JSON (a proxy's HTML page, an empty body) still
            # reaches the client in the Anthropic error shape it can parse.
            text = body[:500].decode("utf-8", "replace").strip() or "no body"
            body = anthropic_error_body(
                anthropic_type_for_status(ans.status), f"upstream answered {ans.status}: {text}", self.request_id
            )
            ctype = b"application/json"
        await send_response(self.send, ans.status, body, ans.headers, ctype or b"application/json")

    async def stream_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers + SSE_HEADERS})

    async def stream_data(self, block: bytes) -> None:
        await self.send({"type": "http.response.body", "body": block, "more_body": True})

    async def stream_abort(self, type: str, message: str) -> None:
        event = orjson.dumps({"type": "error", "error": {"type": type, "message": message}})
        await self.send({"type": "http.response.body", "body": b"event: error\ndata: " + event + b"\n\n"})

    async def stream_end(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})
