"""The Anthropic Messages dialect: requests and answers pass through byte for byte.

Upstream bytes are already in this dialect, so the adapter only checks the model name (and
rewrites it when an alias or a forced model changes it) and the sink only frames answers;
errors that dario makes itself use the Anthropic error shape.
"""

from __future__ import annotations

from typing import Any

import orjson

from dario.daemon.asgi import Send, response_body, response_start, send_response
from dario.daemon.dialects.base import RequestInfo
from dario.daemon.dialects.link import SSE_HEADERS, ClientLink
from dario.daemon.dialects.model import model_to_ask, resolve_model
from dario.daemon.errors import DarioError, anthropic_error_body, anthropic_type_for_status
from dario.daemon.exchange import Answer, Dialect, Estimate, Incoming
from dario.daemon.routing.affinity import cache_keys
from dario.daemon.routing.models import ModelTable, model_id_ok

# A rough input size for the pool's headroom check: about four bytes of JSON per token, capped.
_BYTES_PER_TOKEN = 4
_MAX_ESTIMATE = 1_000_000


class AnthropicDialect:
    """`/v1/messages` or `/v1/messages/count_tokens`, passed through to the same upstream path."""

    name = Dialect.ANTHROPIC

    def __init__(self, endpoint: str, upstream_path: str) -> None:
        self.endpoint = endpoint
        self.upstream_path = upstream_path

    def parse(self, body: bytes, parsed: dict[str, Any], headers: list[tuple[bytes, bytes]], query: bytes,
              info: RequestInfo, models: ModelTable, force_model: str | None) -> tuple[Incoming, None]:
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            raise DarioError(400, "invalid_request_error", "model: field required (a Claude model id)")
        if not model_id_ok(model):
            raise DarioError(400, "invalid_request_error", "model: must not contain control characters")
        # An unknown name is the upstream's to judge: it knows models dario's table does not.
        resolved = resolve_model(model, models, force_model) or model_to_ask(model, force_model)
        if resolved != model:
            parsed["model"] = resolved
            body = orjson.dumps(parsed)
        max_tokens = parsed.get("max_tokens")
        estimate = Estimate(
            input_tokens=min(len(body) // _BYTES_PER_TOKEN, _MAX_ESTIMATE),
            output_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0,
        )
        incoming = Incoming(
            dialect=self.name, endpoint=self.endpoint, path=self.upstream_path, query=query, headers=headers,
            body=body, stream=parsed.get("stream") is True and self.endpoint == "messages", model=resolved,
            estimate=estimate, client=info.client, t_start=info.t_start,
            cache_keys=cache_keys(resolved, parsed, body) if self.endpoint == "messages" else None,
        )
        return incoming, None

    def sink(self, send: Send, info: RequestInfo, context: Any = None) -> AnthropicSink:
        return AnthropicSink(send, info.request_id)

    def error_response(self, err: DarioError, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return err.status, err.headers + [(b"request-id", request_id.encode())], anthropic_error_body(
            err.type, err.message, request_id
        )


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
        await self.send(response_start(status, headers + SSE_HEADERS))

    async def stream_data(self, block: bytes) -> None:
        await self.send(response_body(block, more=True))

    async def stream_abort(self, type: str, message: str) -> None:
        event = orjson.dumps({"type": "error", "error": {"type": type, "message": message}})
        await self.send(response_body(b"event: error\ndata: " + event + b"\n\n"))

    async def stream_end(self) -> None:
        await self.send(response_body(b""))
