"""How a relayed answer is written to the client, one `Sink` per dialect.

The Anthropic sink passes bytes through untouched. The OpenAI sink translates the
Anthropic answer (whole or streamed) into Chat Completions.
"""

from __future__ import annotations

import orjson

from dario.daemon.asgi import Message, Send, send_response
from dario.daemon.errors import (
    DarioError,
    anthropic_error_body,
    anthropic_type_for_status,
    openai_error_status_and_body,
)
from dario.daemon.openai.errors import openai_error_from_anthropic
from dario.daemon.openai.request import ChatContext
from dario.daemon.openai.response import message_to_chat
from dario.daemon.openai.stream import ChatStreamTranslator
from dario.daemon.openai.thinking import ThinkingCache
from dario.daemon.relay import Answer
from dario.daemon.sse import EventSplitter, iter_events

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


class OpenAISink:
    """Chat Completions on the outside, Anthropic Messages on the inside."""

    def __init__(self, send: Send, request_id: str, ctx: ChatContext | None, created: int,
                 thinking: ThinkingCache | None) -> None:
        self.link = ClientLink(send)
        self.send: Send = self.link
        self.request_id = request_id
        self.ctx = ctx
        self.created = created
        self.thinking = thinking
        self.translator: ChatStreamTranslator | None = None
        self.splitter = EventSplitter()

    def _headers(self, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", self.request_id.encode())]
        for name, value in extra:
            if name == b"request-id":
                out[0] = (b"x-request-id", value)
            elif name != b"content-type":
                out.append((name, value))
        return out

    async def error(self, err: DarioError) -> None:
        status, body = openai_error_status_and_body(
            err.status, err.type, err.message, code=err.openai_code, param=err.param
        )
        await send_response(self.send, status, body, self._headers(err.headers))

    async def answer(self, ans: Answer) -> None:
        if ans.status >= 400:
            status, body = openai_error_from_anthropic(ans.status, ans.body)
            await send_response(self.send, status, body, self._headers(ans.headers))
            return
        assert self.ctx is not None
        try:
            message = ans.parsed if ans.parsed is not None else orjson.loads(ans.body)
            chat = message_to_chat(message, self.ctx, created=self.created, thinking_cache=self.thinking)
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
            status, body = openai_error_status_and_body(
                502, "api_error", "the upstream answered with a body dario could not read"
            )
            await send_response(self.send, status, body, self._headers(ans.headers))
            return
        await send_response(self.send, 200, orjson.dumps(chat), self._headers(ans.headers))

    async def stream_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.ctx is not None
        self.translator = ChatStreamTranslator(self.ctx, created=self.created, thinking_cache=self.thinking)
        out = self._headers(headers) + [(b"content-type", b"text/event-stream; charset=utf-8")] + SSE_HEADERS
        await self.send({"type": "http.response.start", "status": 200, "headers": out})

    async def stream_data(self, block: bytes) -> None:
        assert self.translator is not None
        frames: list[bytes] = []
        for name, data in iter_events(block):
            frames.extend(self.translator.feed(name.decode("latin-1"), data))
        if frames:
            await self.send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})

    async def stream_abort(self, type: str, message: str) -> None:
        assert self.translator is not None
        await self.send({"type": "http.response.body", "body": self.translator.error_frame(type, message)})

    async def stream_end(self) -> None:
        assert self.translator is not None
        await self.send({"type": "http.response.body", "body": b"".join(self.translator.finish())})
