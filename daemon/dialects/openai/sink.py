"""The OpenAI Chat Completions dialect's sink: Anthropic answers translated as they arrive."""

from __future__ import annotations

import orjson

from dario.daemon.asgi import Send, response_body, response_start, send_response
from dario.daemon.dialects.link import SSE_HEADERS, ClientLink
from dario.daemon.dialects.openai.errors import openai_error_from_anthropic
from dario.daemon.dialects.openai.request import ChatContext
from dario.daemon.dialects.openai.response import message_to_chat
from dario.daemon.dialects.openai.stream import ChatStreamTranslator
from dario.daemon.dialects.openai.thinking import ThinkingCache
from dario.daemon.errors import DarioError, openai_error_status_and_body
from dario.daemon.exchange import Answer
from dario.daemon.upstream.sse import iter_events


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
        await self.send(response_start(200, out))

    async def stream_data(self, block: bytes) -> None:
        assert self.translator is not None
        frames: list[bytes] = []
        for name, data in iter_events(block):
            frames.extend(self.translator.feed(name.decode("latin-1"), data))
        if frames:
            await self.send(response_body(b"".join(frames), more=True))

    async def stream_abort(self, type: str, message: str) -> None:
        assert self.translator is not None
        await self.send(response_body(self.translator.error_frame(type, message)))

    async def stream_end(self) -> None:
        assert self.translator is not None
        await self.send(response_body(b"".join(self.translator.finish())))
