"""The OpenAI Chat Completions adapter: the pure translators in this package, wired to the edge.

`request` turns a Chat Completions body into an Anthropic Messages body, `response` and `stream`
turn answers back, `errors` maps upstream errors; this adapter adds only what the edge needs:
an `Incoming`, a sink, and dario's own errors in OpenAI's shape.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from dario.daemon.asgi import Send
from dario.daemon.dialects.base import RequestInfo
from dario.daemon.dialects.openai.autocache import add_breakpoints
from dario.daemon.dialects.openai.request import ChatContext, chat_to_messages
from dario.daemon.dialects.openai.sink import OpenAISink
from dario.daemon.dialects.openai.thinking import ThinkingCache
from dario.daemon.errors import DarioError, openai_error_status_and_body
from dario.daemon.exchange import Dialect, Estimate, Incoming
from dario.daemon.routing.affinity import cache_keys
from dario.daemon.routing.models import ModelTable

_BYTES_PER_TOKEN = 4
_MAX_ESTIMATE = 1_000_000
# Of the client's headers only the beta flags mean anything to the upstream; the rest (its OpenAI
# key, its SDK's x-stainless-* headers) are not the Messages API's business.
_FORWARDED_HEADERS = frozenset({b"anthropic-beta"})


class OpenAIDialect:
    """`/v1/chat/completions`, translated to and from `/v1/messages`."""

    name = Dialect.OPENAI
    endpoint = "chat"

    def __init__(self, upstream_path: str, thinking: ThinkingCache | None = None) -> None:
        self.upstream_path = upstream_path
        self.thinking = thinking if thinking is not None else ThinkingCache()

    def parse(self, body: bytes, parsed: dict[str, Any], headers: list[tuple[bytes, bytes]], query: bytes,
              info: RequestInfo, models: ModelTable,
              force_model: str | None) -> tuple[Incoming, tuple[ChatContext, int]]:
        created = int(time.time())
        anthropic_body, ctx = chat_to_messages(parsed, models, thinking_cache=self.thinking,
                                               thinking_owner=info.owner, force_model=force_model)
        if info.auto_cache:
            anthropic_body = add_breakpoints(anthropic_body)
        upstream_body = orjson.dumps(anthropic_body)
        max_tokens = anthropic_body.get("max_tokens")
        incoming = Incoming(
            dialect=self.name, endpoint=self.endpoint, path=self.upstream_path, query=b"",
            headers=[h for h in headers if h[0] in _FORWARDED_HEADERS], body=upstream_body,
            stream=bool(anthropic_body.get("stream")), model=anthropic_body.get("model"),
            estimate=Estimate(min(len(upstream_body) // _BYTES_PER_TOKEN, _MAX_ESTIMATE),
                              max_tokens if isinstance(max_tokens, int) else 0),
            client=info.client, t_start=info.t_start,
            cache_keys=cache_keys(anthropic_body.get("model"), anthropic_body, upstream_body),
        )
        return incoming, (ctx, created)

    def sink(self, send: Send, info: RequestInfo, context: Any = None) -> OpenAISink:
        if context is None:
            return OpenAISink(send, info.request_id, None, int(time.time()), None)
        ctx, created = context
        return OpenAISink(send, info.request_id, ctx, created, self.thinking)

    def error_response(self, err: DarioError, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status, body = openai_error_status_and_body(err.status, err.type, err.message, code=err.openai_code,
                                                    param=err.param)
        return status, err.headers + [(b"x-request-id", request_id.encode())], body
