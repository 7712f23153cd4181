"""The public ASGI app on 127.0.0.1:3456: its routes, in one table.

Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`), OpenAI Chat
Completions (`/v1/chat/completions`), models for both (`/v1/models`), and dario's own
views (`/health`, `/accounts`, `/analytics`, `/metrics`, the dashboard at `/`).
The three exchanges share one path (`exchange`); what differs between dialects is in
their adapters (dialects.anthropic, dialects.openai.adapter).
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
from urllib.parse import parse_qsl

import orjson
import trio

from dario.daemon import __version__
from dario.daemon.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    HTTPScope,
    Receive,
    Scope,
    Send,
    header,
    lifespan,
    read_body,
    send_json,
    send_response,
)
from dario.daemon.dialects.anthropic import AnthropicDialect
from dario.daemon.dialects.base import DialectAdapter, LinkedSink, RequestInfo
from dario.daemon.dialects.link import ClientLink
from dario.daemon.dialects.model import model_to_ask
from dario.daemon.dialects.openai.adapter import OpenAIDialect
from dario.daemon.dialects.openai.thinking import ThinkingCache, thinking_owner
from dario.daemon.edge.guard import Guard
from dario.daemon.edge.openapi import openapi_json
from dario.daemon.errors import DarioError
from dario.daemon.exchange import Estimate, Incoming, Outcome
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.models import model_id_ok
from dario.daemon.routing.relay import Relay
from dario.daemon.upstream import anthropic as upstream
from dario.daemon.views import EdgeServices

__all__ = ["PublicApp", "RequestInfo"]

log = logging.getLogger("dario.server")

Handler = Callable[[HTTPScope, Receive, Send, RequestInfo], Awaitable[None]]
MAX_HEAD_BYTES = 64 * 1024


class PublicApp:
    def __init__(self, state: EdgeServices, relay: Relay, guard: Guard, models: ModelCatalog,
                 auto_cache_key: Callable[[str], bool] | None = None) -> None:
        self.state = state
        self.auto_cache_key = auto_cache_key  # is a client key marked for automatic cache breakpoints?
        self.relay = relay
        self.guard = guard
        self.models = models
        self.settings = state.settings
        self.thinking = ThinkingCache()
        self._ids = itertools.count(1)
        self._id_prefix = f"req_dario_{os.getpid():x}_"
        self.anthropic: DialectAdapter = AnthropicDialect("messages", upstream.PATH_MESSAGES)
        self.openai: DialectAdapter = OpenAIDialect(upstream.PATH_MESSAGES, self.thinking)
        count_tokens = AnthropicDialect("count_tokens", upstream.PATH_COUNT_TOKENS)
        self.routes: dict[tuple[str, str], Handler] = {
            # The exchanges: each relays through the adapter of the dialect its path speaks.
            ("POST", "/v1/messages"): partial(self.exchange, self.anthropic),
            ("POST", "/v1/messages/count_tokens"): partial(self.exchange, count_tokens),
            ("POST", "/v1/chat/completions"): partial(self.exchange, self.openai),
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/health"): self.health,
            ("GET", "/accounts"): self.accounts,
            ("GET", "/analytics"): self.analytics,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/openapi.json"): self.openapi,
            ("GET", "/"): self.dashboard,
        }
        self._dashboard_cache: dict[str, bytes] = {}

    def _dialect_of(self, path: str) -> DialectAdapter:
        """The error shape for a path: OpenAI's under /v1/chat (any method), Anthropic's elsewhere."""
        return self.openai if path.startswith("/v1/chat") else self.anthropic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        t_start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        dialect = self._dialect_of(path)
        request_id = f"{self._id_prefix}{next(self._ids)}"
        refused = self._refusal(scope, method, path)
        if refused is not None:
            await _error(send, dialect, refused, request_id)
            return
        handler = self._handler(method, path)
        if handler is None:
            await _error(send, dialect, self._no_route(method, path), request_id)
            return
        client = ""
        key_name: str | None = None
        if _needs_key(path):
            allowed, key_name = self.guard.authenticate(scope)
            if not allowed:
                await _error(send, dialect, DarioError(
                    401, "authentication_error",
                    "this dario requires a key: send DARIO_API_KEY (or a dario client key) as x-api-key "
                    "or Authorization: Bearer",
                ), request_id)
                return
            peer_problem = self.guard.peer_problem(scope, key_name)
            if peer_problem:
                await _error(send, dialect, DarioError(403, "permission_error", peer_problem), request_id)
                return
            client = key_name or ""
        family = self.state.client_family(header(scope, b"user-agent"))
        if not client:
            client = family
        peer = scope.get("client")
        owner = thinking_owner(key_name, family, peer[0] if peer else None)
        auto_cache = self.settings.auto_cache or bool(
            key_name and self.auto_cache_key is not None and self.auto_cache_key(key_name)
        )
        await handler(scope, receive, send, RequestInfo(t_start, request_id, client, owner, auto_cache))

    def _refusal(self, scope: HTTPScope, method: str, path: str) -> DarioError | None:
        """A request refused before routing: an oversized head, or a Host/Origin that is not ours."""
        # hypercorn bounds a head only while it is incomplete (up to ~128 KB arrives in one read);
        # the limit users are told about is checked here, exactly.
        head_size = len(scope["raw_path"]) + len(scope["query_string"])
        for name, value in scope["headers"]:
            head_size += len(name) + len(value) + 4
        if head_size > MAX_HEAD_BYTES:
            return DarioError(431, "invalid_request_error",
                              f"request headers are larger than {MAX_HEAD_BYTES // 1024} KB")
        problem = self.guard.host_problem(scope) or self.guard.origin_problem(scope)
        if problem:
            return DarioError(403, "permission_error", problem)
        return None

    def _handler(self, method: str, path: str) -> Handler | None:
        handler = self.routes.get((method, path))
        if handler is None and method == "GET":
            if path.startswith("/v1/models/"):
                return self.get_model
            if path.startswith("/static/"):
                return self.static
        return handler

    def _no_route(self, method: str, path: str) -> DarioError:
        """405 with Allow for a known path (RFC 9110 §15.5.6), 404 for an unknown one."""
        methods = sorted({m for m, p in self.routes if p == path})
        if not methods and path.startswith(("/v1/models/", "/static/")):
            methods = ["GET"]
        if methods:
            return DarioError(405, "invalid_request_error", f"{method} {path} is not allowed",
                              headers=[(b"allow", ", ".join(methods).encode())])
        return DarioError(404, "not_found_error", f"dario has no endpoint {method} {path}")

    # -- the exchanges: any dialect, one path ------------------------------------------
    async def _read_json(self, scope: HTTPScope, receive: Receive) -> tuple[bytes, dict[str, Any]]:
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

    async def exchange(self, dialect: DialectAdapter, scope: HTTPScope, receive: Receive, send: Send,
                       info: RequestInfo) -> None:
        """Read, parse through the dialect's adapter, relay, answer through that dialect's sink."""
        requested: object = None
        try:
            body, parsed = await self._read_json(scope, receive)
            requested = parsed.get("model")
            await self._learn_models_for(requested)
            inc, context = dialect.parse(body, parsed, list(scope["headers"]), scope.get("query_string", b""), info,
                                         self.models.table, self.settings.force_model)
        except DarioError as err:
            await dialect.sink(send, info).error(err)
            if err.openai_code == "model_not_found":
                self._record_unknown_model(dialect, info, requested)
            return
        except ClientGone:
            return
        await self._forward(inc, dialect.sink(send, info, context), receive)

    async def _learn_models_for(self, requested: object) -> None:
        """An alias follows the upstream's model list: fetch a missing or stale one first (bounded)."""
        if isinstance(requested, str) and requested and model_id_ok(requested):
            await self.models.refresh_for_alias(model_to_ask(requested, self.settings.force_model))

    async def _forward(self, inc: Incoming, sink: LinkedSink, receive: Receive) -> None:
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

    def _record_unknown_model(self, dialect: DialectAdapter, info: RequestInfo, model: object) -> None:
        """An unknown model is answered here, not upstream, but it is still a failed request: usage and
        the dashboard count it with the other errors (served by no account)."""
        inc = Incoming(
            dialect=dialect.name, endpoint=dialect.endpoint, path=dialect.upstream_path, query=b"", headers=[],
            body=b"", stream=False, model=model[:200] if isinstance(model, str) else None, estimate=Estimate(),
            client=info.client, t_start=info.t_start,
        )
        self.state.record(inc, Outcome(status=404, error_type="not_found_error"))

    # -- models (both dialects on one path) ---------------------------------------------
    async def list_models(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
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
            await _error(send, self.anthropic,
                         DarioError(400, "invalid_request_error", "limit must be a whole number 1–1000"),
                         info.request_id)
            return
        await send_json(send, 200, page)

    async def get_model(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        model_id = scope["path"][len("/v1/models/"):]
        await self.models.refresh_if_stale()
        item = self.models.get(model_id)
        if item is None:
            # One path serves both SDKs; only the Anthropic SDK sends these headers.
            anthropic_client = any(header(scope, name) is not None for name in (b"anthropic-version", b"x-api-key"))
            await _error(send, self.anthropic if anthropic_client else self.openai, DarioError(
                404, "not_found_error", f"model {model_id!r} not found", openai_code="model_not_found", param="model",
            ), info.request_id)
            return
        await send_json(send, 200, item)

    # -- dario's own views -------------------------------------------------------------
    async def health(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        pool = self.state.pool.pool_view()
        analytics = self.state.analytics_health()
        await send_json(send, 200, {
            "status": "ok",
            "version": __version__,
            "accounts": pool["total"],
            "accounts_available": pool["available"],
            "pool": pool["health"],
            "store": self.state.pool.store_health,
            "requests_served": self.state.requests_served,
            "uptime_s": round(time.time() - self.state.started_at, 3),
            # Unauthenticated: whether usage rows get stored, never where (the URL names a host and user).
            "analytics": None if analytics is None else {
                "store": analytics["store"], "ok": analytics["ok"], "pending": analytics["pending"],
                "dropped": analytics["dropped"],
            },
        })

    async def accounts(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await send_json(send, 200, {"pool": self.state.pool.pool_view(), "accounts": self.state.pool.views()})

    async def analytics(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        window = _query(scope).get("window", "24h")
        try:
            usage = await self.state.usage(window)
        except ValueError as exc:
            await _error(send, self.anthropic, DarioError(400, "invalid_request_error", str(exc)), info.request_id)
            return
        usage["accounts"] = self.state.pool.views()
        await send_json(send, 200, usage)

    async def metrics(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        body, content_type = self.state.render_metrics()
        await send_response(send, 200, body, content_type=content_type.encode())

    async def openapi(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await send_response(send, 200, openapi_json(__version__))

    async def dashboard(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
        await self._static_file(send, "index.html")

    async def static(self, scope: HTTPScope, receive: Receive, send: Send, info: RequestInfo) -> None:
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


async def _error(send: Send, dialect: DialectAdapter, err: DarioError, request_id: str) -> None:
    status, headers, body = dialect.error_response(err, request_id)
    await send_response(send, status, body, headers)


def _needs_key(path: str) -> bool:
    """Only /health and the dashboard's shell and files answer without a key."""
    return path != "/health" and path != "/" and not path.startswith("/static/")


def _query(scope: HTTPScope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
