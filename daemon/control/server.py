"""The control API: HTTP/1.1 + JSON on the Unix socket, for dario-ctl and the tray.

Like Tailscale's LocalAPI it refuses anything that looks like it came from a browser
(an Origin or Referer header) and expects its own Host sentinel. The socket itself is
0600 in a 0700 folder: only this user gets here at all.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
import trio

from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.accounts.errors import (
    AccountError,
    AccountNotFound,
    InvalidAccount,
    KeyRejected,
    KeyringUnavailable,
    ManagedByConfig,
    UpstreamRefused,
    UpstreamUnreachable,
)
from dario.daemon.accounts.kinds import LoginFields
from dario.daemon.accounts.service import AccountService
from dario.daemon.asgi import (
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
)
from dario.daemon.control.api import CONTROL_HOST, LIMIT_NAMES
from dario.daemon.views import StatusView

log = logging.getLogger("dario.control")

ALLOWED_HOSTS = frozenset({CONTROL_HOST.encode(), b"localhost", b""})

# Each domain error of the account service as the control API answers it: status and error type.
# The handlers only encode results; this table is the one place that knows HTTP.
ACCOUNT_ERRORS: dict[type[AccountError], tuple[int, str]] = {
    InvalidAccount: (400, "invalid_request"),
    ManagedByConfig: (409, "managed_by_config"),
    KeyRejected: (400, "key_rejected"),
    AccountNotFound: (404, "not_found"),
    UpstreamRefused: (502, "upstream_error"),
    UpstreamUnreachable: (502, "upstream_unreachable"),
    KeyringUnavailable: (503, "keyring_unavailable"),
}


class ControlFailure(Exception):
    """A control request that cannot be served as asked; status + type + message go to the caller."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


def failure_for(exc: AccountError) -> ControlFailure:
    """The control API's answer to a domain error: the table's status and type, the error's message."""
    for cls, (status, type_) in ACCOUNT_ERRORS.items():
        if isinstance(exc, cls):
            return ControlFailure(status, type_, str(exc))
    return ControlFailure(500, "internal_error", str(exc))


class ControlApp:
    def __init__(self, accounts: AccountService, view: StatusView, client_keys: ClientKeyStore,
                 token: str | None = None) -> None:
        self.accounts = accounts
        self.view = view
        self.client_keys = client_keys
        # Set when the control API is on loopback TCP (no AF_UNIX, or DARIO_CONTROL=tcp): any local
        # user can reach a TCP port, so every request must carry the token from the user-only file.
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        if header(scope, b"origin") is not None or header(scope, b"referer") is not None:
            await _fail(send, 403, "forbidden", "the control API does not answer browsers (Origin/Referer present)")
            return
        if (header(scope, b"host") or b"").lower() not in ALLOWED_HOSTS:
            await _fail(send, 403, "forbidden", f"the control API expects Host: {CONTROL_HOST}")
            return
        if self.token is not None and not _token_ok(scope, self.token):
            await _fail(send, 401, "unauthorized",
                        "the control API on TCP needs the token from dariod's control file (dario-ctl reads it)")
            return
        method: str = scope["method"]
        parts = [unquote(p) for p in scope["path"].strip("/").split("/")]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            body: dict[str, Any] = {}
            if method in ("POST", "PUT", "DELETE"):
                raw = await read_body(scope, receive, 1024 * 1024)
                if raw:
                    parsed = orjson.loads(raw)
                    if not isinstance(parsed, dict):
                        raise ControlFailure(400, "invalid_request", "the body must be a JSON object")
                    body = parsed
            status, result = await self.dispatch(method, parts, body, query)
        except AccountError as exc:
            failure = failure_for(exc)
            await _fail(send, failure.status, failure.type, failure.message)
            return
        except ControlFailure as exc:
            await _fail(send, exc.status, exc.type, exc.message)
            return
        except orjson.JSONDecodeError:
            await _fail(send, 400, "invalid_request", "the body is not valid JSON")
            return
        except BodyTooLarge:
            await _fail(send, 413, "too_large", "control requests are limited to 1 MB")
            return
        except ClientGone:
            return
        await send_json(send, status, result)

    async def dispatch(self, method: str, parts: list[str], body: dict[str, Any],
                       query: dict[str, str]) -> tuple[int, Any]:
        accounts, view = self.accounts, self.view
        if parts[:1] != ["v1"]:
            raise ControlFailure(404, "not_found", "unknown control route")
        route = parts[1:]
        match method, route:
            case "GET", ["status"]:
                return 200, view.status()
            case "GET", ["accounts"]:
                return 200, {"accounts": view.pool.views()}
            case "POST", ["accounts"]:
                alias = _str(body, "alias")
                kind = body.get("kind") or "anthropic"
                base_url = body.get("base_url")
                if not isinstance(kind, str) or (base_url is not None and not isinstance(base_url, str)):
                    raise ControlFailure(400, "invalid_request", "kind and base_url must be strings")
                fields = _login_fields(body)
                # Credentials kept by reference (an AWS profile, Google ADC) come with no secret.
                secret = body.get("secret") if fields.credential in ("profile", "adc") else _str(body, "secret")
                if secret is not None and not isinstance(secret, str):
                    raise ControlFailure(400, "invalid_request", "secret must be a string")
                limits = {k: body[k] for k in LIMIT_NAMES if k in body}
                return 201, await accounts.login_account(alias, secret or "", kind, base_url, fields, limits)
            case "DELETE", ["accounts", alias]:
                await accounts.logout(alias)
                return 200, {"removed": alias}
            case "POST", ["accounts", alias, "enable"]:
                return 200, {"account": await accounts.set_enabled(alias, True)}
            case "POST", ["accounts", alias, "disable"]:
                return 200, {"account": await accounts.set_enabled(alias, False)}
            case "POST", ["accounts", alias, "limits"]:
                unknown = sorted(set(body) - set(LIMIT_NAMES) - {"clear"})
                if unknown:
                    raise ControlFailure(400, "invalid_request",
                                         f"unknown fields {unknown}; expected {', '.join(LIMIT_NAMES)}, clear")
                clear = body.get("clear", False)
                if not isinstance(clear, bool):
                    raise ControlFailure(400, "invalid_request", "clear must be true or false")
                changes = {k: body[k] for k in LIMIT_NAMES if k in body}
                return 200, {"account": await accounts.set_limits(alias, changes, clear=clear)}
            case "POST", ["prefer"]:
                alias_or_none = body.get("alias")
                if alias_or_none is not None and not isinstance(alias_or_none, str):
                    raise ControlFailure(400, "invalid_request", "alias must be a string or null")
                return 200, {"preferred": await accounts.prefer(alias_or_none)}
            case "POST", ["refresh"]:
                target = body.get("alias")
                if target is not None and not isinstance(target, str):
                    raise ControlFailure(400, "invalid_request", "alias must be a string or null")
                return 200, {"results": await accounts.refresh(target)}
            case "GET", ["usage"]:
                try:
                    return 200, await view.usage(query.get("window", "24h"))
                except ValueError as exc:
                    raise ControlFailure(400, "invalid_request", str(exc)) from None
            case "GET", ["keys"]:
                return 200, {"keys": self.client_keys.list()}
            case "POST", ["keys"]:
                name = _str(body, "name")
                auto_cache = body.get("auto_cache", False)
                if not isinstance(auto_cache, bool):
                    raise ControlFailure(400, "invalid_request", "auto_cache must be true or false")
                try:
                    # The store writes its file (fsync) — keep that off the event loop.
                    key = await trio.to_thread.run_sync(self.client_keys.create, name, auto_cache)
                except ValueError as exc:
                    raise ControlFailure(400, "invalid_request", str(exc)) from None
                return 201, {"name": name, "key": key, "auto_cache": auto_cache}
            case "DELETE", ["keys", name]:
                try:
                    await trio.to_thread.run_sync(self.client_keys.revoke, name)
                except KeyError:
                    raise ControlFailure(404, "not_found", f"no client key named {name!r}") from None
                return 200, {"revoked": name}
        raise ControlFailure(404, "not_found", f"unknown control route {method} /{'/'.join(parts)}")


def _token_ok(scope: HTTPScope, token: str) -> bool:
    presented = header(scope, b"authorization") or b""
    if presented[:7].lower() != b"bearer ":
        return False
    return hmac.compare_digest(presented[7:].strip(), token.encode())


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlFailure(400, "invalid_request", f"{name} is required")
    return value


async def _fail(send: Send, status: int, type: str, message: str) -> None:
    await send_json(send, status, {"error": {"type": type, "message": message}})


def _login_fields(body: dict[str, Any]) -> LoginFields:
    """The non-secret settings of a Bedrock or Vertex login (see LoginRequest)."""
    values: dict[str, str | None] = {}
    for name in ("region", "project", "credential", "aws_profile", "inference_profile"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ControlFailure(400, "invalid_request", f"{name} must be a string")
        values[name] = value or None
    return LoginFields(**values)
