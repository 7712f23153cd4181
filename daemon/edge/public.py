"""The public ASGI app on 127.0.0.1:3456: its routes, in one table.

Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`), OpenAI Chat
Completions (`/v1/chat/completions`), models for both (`/v1/models`), and dario's own
views (`/health`, `/accounts`, `/analytics`, `/metrics`, the dashboard at `/`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from typing import Any

import orjson
import trio

from dario.daemon import __version__
from dario.daemon.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    lifespan,
    read_body,
    send_json,
    send_response,
)
from dario.daemon.dialects.anthropic import AnthropicSink
from dario.daemon.dialects.link import ClientLink
from dario.daemon.dialects.openai.request import chat_to_messages
from dario.daemon.dialects.openai.sink import OpenAISink
from dario.daemon.dialects.openai.thinking import ThinkingCache, thinking_owner
from dario.daemon.edge.guard import Guard
from dario.daemon.edge.openapi import openapi_json
from dario.daemon.errors import DarioError, anthropic_error_body, openai_error_status_and_body
from dario.daemon.exchange import Estimate, Incoming, Outcome
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.relay import Relay, model_id_ok
from dario.daemon.upstream import anthropic as upstream
from dario.daemon.views import EdgeServices

log = logging.getLogger("dario.server")

Handler = Callable[[Scope, Receive, Send, "RequestInfo"], Awaitable[None]]
DEFAULT_MAX_TOKENS = 4096
MAX_HEAD_BYTES = 64 * 1024


class RequestInfo:
    __slots__ = ("client", "owner", "request_id", "t_start")

    def __init__(self, t_start: float, request_id: str, client: str, owner: str = "") -> None:
        self.t_start = t_start
        self.request_id = request_id
        self.client = client
        self.owner = owner  # who this caller is, for state private to a client (thinking blocks)


class PublicApp:
    def __init__(self, state: EdgeServices, relay: Relay, guard: Guard, models: ModelCatalog) -> None:
        self.state = state
        self.relay = relay
        self.guard = guard
        self.models = models
        self.settings = state.settings
        self.thinking = ThinkingCache()
        self._ids = itertools.count(1)
        self._id_prefix = f"req_dario_{os.getpid():x}_"
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/health"): self.health,
            ("GET", "/accounts"): self.accounts,
            ("GET", "/analytics"): self.analytics,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/openapi.json"): self.openapi,
            ("GET", "/"): self.dashboard,
        }
        self._dashboard_cache: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        t_start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        openai_side = path.startswith("/v1/chat")
        request_id = f"{self._id_prefix}{next(self._ids)}"

        # hypercorn bounds a head only while it is incomplete (up to ~128 KB arrives in one read);
        # the limit users are told about is checked here, exactly.
        head_size = len(scope["raw_path"]) + len(scope["query_string"])
        for name, value in scope["headers"]:
            head_size += len(name) + len(value) + 4
        if head_size > MAX_HEAD_BYTES:
            await _error(send, openai_side, DarioError(
                431, "invalid_request_error",
                f"request headers are larger than {MAX_HEAD_BYTES // 1024} KB",
            ), request_id)
            return
        problem = self.guard.host_problem(scope) or self.guard.origin_problem(scope)
        if problem:
            await _error(send, openai_side, DarioError(403, "permission_error", problem), request_id)
            return
        handler = self.routes.get((method, path))
        if handler is None:
            if method == "GET" and path.startswith("/v1/models/"):
                handler = self.get_model
            elif method == "GET" and path.startswith("/static/"):
                handler = self.static
            else:
                methods = sorted({m for m, p in self.routes if p == path})
                if not methods and path.startswith(("/v1/models/", "/static/")):
                    methods = ["GET"]
                if methods:
                    err = DarioError(405, "invalid_request_error", f"{method} {path} is not allowed",
                                     headers=[(b"allow", ", ".join(methods).encode())])
                else:
                    err = DarioError(404, "not_found_error", f"dario has no endpoint {method} {path}")
                await _error(send, openai_side, err, request_id)
                return
        client = ""
        key_name: str | None = None
        if path != "/health" and not path.startswith("/static/") and path != "/":
            allowed, key_name = self.guard.authenticate(scope)
            if not allowed:
                await _error(send, openai_side, DarioError(
                    401, "authentication_error",
                    "this dario requires a key: send DARIO_API_KEY (or a dario client key) as x-api-key "
                    "or Authorization: Bearer",
                ), request_id)
                return
            peer_problem = self.guard.peer_problem(scope, key_name)
            if peer_problem:
                await _error(send, openai_side, DarioError(403, "permission_error", peer_problem), request_id)
                return
            client = key_name or ""
        family = self.state.client_family(header(scope, b"user-agent"))
        if not client:
            client = family
        peer = scope.get("client")
        owner = thinking_owner(key_name, family, peer[0] if peer else None)
        await handler(scope, receive, send, RequestInfo(t_start, request_id, client, owner))

    # -- Anthropic Messages ------------------------------------------------------------
    async def _read_json(self, scope: Scope, receive: Receive) -> tuple[bytes, Any]:
        try:
            body = await read_body(scope, receive, self.settings.max_body,
                                   idle_timeout=self.settings.body_idle_timeout,
                                   deadline=self.settings.body_deadline)
        except BodyTimeout:
            # 408 and a closed connection, as RFC 9110 §15.5.9 describes for a request not completed in time.
            raise DarioError(
                408, "invalid_request_error",
                f"the request body did not arrive in time (nothing for {self.settings.body_idle_timeout:g} s, "
                f"or not all of it within {self.settings.body_deadline:g} s); send the whole body at once",
                headers=[(b"connection", b"close")],
            ) from None
        except BodyTooLarge:
            raise DarioError(
                413, "request_too_large",
                f"request body is larger than {self.settings.max_body // (1024 * 1024)} MB",
            ) from None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DarioError(400, "invalid_request_error", f"request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise DarioError(400, "invalid_request_error", "request body must be a JSON object")
        return body, parsed

    async def messages(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await self._anthropic(scope, receive, send, info, upstream.PATH_MESSAGES, "messages")

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await self._anthropic(scope, receive, send, info, upstream.PATH_COUNT_TOKENS, "count_tokens")

    async def _anthropic(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo,
                         path: str, endpoint: str) -> None:
        sink = AnthropicSink(send, info.request_id)
        try:
            body, parsed = await self._read_json(scope, receive)
            model = parsed.get("model")
            if not isinstance(model, str) or not model:
                raise DarioError(400, "invalid_request_error", "model: field required (a Claude model id)")
            if not model_id_ok(model):
                raise DarioError(400, "invalid_request_error", "model: must not contain control characters")
            await self.models.refresh_for_alias(model)
            resolved = self.settings.force_model or self.models.resolve_anthropic(model)
            if resolved != model:
                parsed["model"] = resolved
                body = orjson.dumps(parsed)
            stream = parsed.get("stream") is True and endpoint == "messages"
            max_tokens = parsed.get("max_tokens")
            est = Estimate(
                input_tokens=min(len(body) // 4, 1_000_000),
                output_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0,
            )
        except DarioError as err:
            await sink.error(err)
            return
        except ClientGone:
            return
        inc = Incoming(
            dialect="anthropic", endpoint=endpoint, path=path, query=scope.get("query_string", b""),
            headers=scope["headers"], body=body, stream=stream, model=resolved, estimate=est,
            client=info.client, t_start=info.t_start,
        )
        await self._forward(inc, sink, receive)

    async def _forward(self, inc: Incoming, sink: Any, receive: Receive) -> None:
        """Relay; a client that hangs up stops its stream (and its upstream request) at once."""
        self.state.requests_served += 1
        if inc.stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_hangup, receive, sink.link, nursery.cancel_scope)
                await self.relay.forward(inc, sink)
                nursery.cancel_scope.cancel()
        else:
            # A whole answer needs no watcher while it is being fetched (that would cost a task
            # per request); only a wait in the queue watches for the client leaving.
            inc.watch_hangup = partial(_cancel_on_hangup, receive, sink.link)
            await self.relay.forward(inc, sink)  # the recorder's access log writes the --verbose line

    # -- OpenAI Chat Completions -------------------------------------------------------
    async def chat_completions(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        created = int(time.time())
        try:
            _, parsed = await self._read_json(scope, receive)
            requested = parsed.get("model")
            if isinstance(requested, str) and model_id_ok(requested):
                await self.models.refresh_for_alias(requested)
            anthropic_body, ctx = chat_to_messages(parsed, self.models.table, thinking_cache=self.thinking,
                                                   thinking_owner=info.owner)
        except DarioError as err:
            await OpenAISink(send, info.request_id, None, created, None).error(err)
            if err.openai_code == "model_not_found":
                self._record_unknown_model(info, parsed.get("model"))
            return
        except ClientGone:
            return
        if self.settings.force_model:
            anthropic_body["model"] = self.settings.force_model
        body = orjson.dumps(anthropic_body)
        max_tokens = anthropic_body.get("max_tokens")
        inc = Incoming(
            dialect="openai", endpoint="chat", path=upstream.PATH_MESSAGES, query=b"",
            headers=[h for h in scope["headers"] if h[0] == b"anthropic-beta"], body=body,
            stream=bool(anthropic_body.get("stream")), model=anthropic_body.get("model"),
            estimate=Estimate(min(len(body) // 4, 1_000_000), max_tokens if isinstance(max_tokens, int) else 0),
            client=info.client, t_start=info.t_start,
        )
        await self._forward(inc, OpenAISink(send, info.request_id, ctx, created, self.thinking), receive)

    def _record_unknown_model(self, info: RequestInfo, model: object) -> None:
        """An unknown model is answered here, not upstream, but it is still a failed request: usage and
        the dashboard count it with the other errors (served by no account)."""
        inc = Incoming(
            dialect="openai", endpoint="chat", path=upstream.PATH_MESSAGES, query=b"", headers=[], body=b"",
            stream=False, model=model[:200] if isinstance(model, str) else None, estimate=Estimate(),
            client=info.client, t_start=info.t_start,
        )
        self.state.record(inc, Outcome(status=404, error_type="not_found_error"))

    # -- models (both dialects on one path) ---------------------------------------------
    async def list_models(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await self.models.refresh_if_stale()
        query = _query(scope)
        raw_limit = query.get("limit") or ""
        try:
            if raw_limit and not (raw_limit.isascii() and raw_limit.isdigit()):
                raise ValueError
            page = self.models.page(
                limit=int(raw_limit) if raw_limit else None,
                after_id=query.get("after_id"), before_id=query.get("before_id"),
            )
        except ValueError:
            await _error(send, False, DarioError(400, "invalid_request_error", "limit must be a whole number 1–1000"),
                         info.request_id)
            return
        await send_json(send, 200, page)

    async def get_model(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        model_id = scope["path"][len("/v1/models/"):]
        await self.models.refresh_if_stale()
        item = self.models.get(model_id)
        if item is None:
            openai_side = header(scope, b"anthropic-version") is None and header(scope, b"x-api-key") is None
            await _error(send, openai_side, DarioError(
                404, "not_found_error", f"model {model_id!r} not found", openai_code="model_not_found", param="model",
            ), info.request_id)
            return
        await send_json(send, 200, item)

    # -- dario's own views -------------------------------------------------------------
    async def health(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        pool = self.state.pool.pool_view()
        await send_json(send, 200, {
            "status": "ok",
            "version": __version__,
            "accounts": pool["total"],
            "accounts_available": pool["available"],
            "pool": pool["health"],
            "requests_served": self.state.requests_served,
            "uptime_s": round(time.time() - self.state.started_at, 3),
        })

    async def accounts(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await send_json(send, 200, {"pool": self.state.pool.pool_view(), "accounts": self.state.pool.views()})

    async def analytics(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        window = _query(scope).get("window", "24h")
        try:
            usage = await self.state.usage(window)
        except ValueError as exc:
            await _error(send, False, DarioError(400, "invalid_request_error", str(exc)), info.request_id)
            return
        usage["accounts"] = self.state.pool.views()
        await send_json(send, 200, usage)

    async def metrics(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        body, content_type = self.state.render_metrics()
        await send_response(send, 200, body, content_type=content_type.encode())

    async def openapi(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await send_response(send, 200, openapi_json(__version__))

    async def dashboard(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await self._static_file(send, "index.html")

    async def static(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        name = scope["path"][len("/static/"):]
        await self._static_file(send, name)

    async def _static_file(self, send: Send, name: str) -> None:
        types = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
                 "css": b"text/css; charset=utf-8", "svg": b"image/svg+xml"}
        ext = name.rsplit(".", 1)[-1]
        # Only plain file names: a NUL or other odd character (from %-decoding) is a 404, not an error.
        if not _STATIC_NAME.fullmatch(name) or ext not in types:
            await send_response(send, 404, b"not found", content_type=b"text/plain")
            return
        body = self._dashboard_cache.get(name)
        if body is None:
            try:
                body = resources.files("dario.daemon.edge").joinpath("static", name).read_bytes()
            except (OSError, ValueError):
                await send_response(send, 404, b"not found", content_type=b"text/plain")
                return
            self._dashboard_cache[name] = body
        await send_response(send, 200, body, [
            (b"content-security-policy",
             b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             b"connect-src 'self'; frame-ancestors 'none'"),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-cache"),
        ], content_type=types[ext])


_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


async def _cancel_on_hangup(receive: Receive, link: ClientLink, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # hypercorn also says "disconnect" when it recycles a keep-alive connection, from
            # inside our final send(); cancelling then would leave that connection half
            # recycled (never idle, holding up shutdown). Only a hang-up before the end counts.
            if not link.complete:
                scope.cancel()
            return


async def _error(send: Send, openai_side: bool, err: DarioError, request_id: str) -> None:
    if openai_side:
        status, body = openai_error_status_and_body(err.status, err.type, err.message, code=err.openai_code,
                                                    param=err.param)
        await send_response(send, status, body, err.headers + [(b"x-request-id", request_id.encode())])
    else:
        await send_response(send, err.status, anthropic_error_body(err.type, err.message, request_id),
                            err.headers + [(b"request-id", request_id.encode())])


def _query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
