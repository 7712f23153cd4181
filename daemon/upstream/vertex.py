"""The Vertex AI adapter: Claude through Google Cloud's rawPredict / streamRawPredict.

On the wire (https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude):

* `POST {base}/publishers/anthropic/models/{model}:rawPredict`, or `:streamRawPredict` when the
  body says `"stream": true`; the stream is Anthropic's own SSE, so it passes through as is.
* The body is an Anthropic Messages API body with `model` taken out (it is in the URL, with its
  `@version`, e.g. `claude-sonnet-4-5@20250929`) and `"anthropic_version": "vertex-2023-10-16"`
  added (https://docs.anthropic.com/en/api/claude-on-vertex-ai). The client's `anthropic-beta`
  header becomes the body list `anthropic_beta`, and is also passed on as a header, as
  Anthropic's Vertex SDK client sends it: Google does not say which of the two it reads.
* count_tokens: `POST {base}/publishers/anthropic/models/count-tokens:rawPredict` with the
  count_tokens body, `model` kept in it (as Anthropic's Vertex SDK client does).
* Auth: `Authorization: Bearer <OAuth 2 access token>` for the scope
  `https://www.googleapis.com/auth/cloud-platform`, from google-auth.

How an account's settings reach `prepare` (the Upstream protocol passes `base_url, secret,
call` only; nothing else changes):

* **base_url** is the location's resource URL,
  `https://{host}/v1/projects/{project}/locations/{region}` (see `base_url_for`), so project and
  region travel in it. The host is `aiplatform.googleapis.com` for `global`,
  `aiplatform.{us|eu}.rep.googleapis.com` for the multi-regions `us` and `eu`, and
  `{region}-aiplatform.googleapis.com` otherwise. `--base-url` replaces only the scheme/host
  part (a gateway may add a path prefix): `base_url_for(project, region, host=...)`.
* **secret** is either the service-account JSON key file's contents (kept in the keyring), or
  the literal `adc`: application default credentials by reference (`google.auth.default()`,
  which reads GOOGLE_APPLICATION_CREDENTIALS, gcloud's user credentials or the metadata server).

Tokens: one cache entry per credential (keyed by a hash of the secret). `prepare` never blocks:
it uses a cached token when there is one. `send` awaits a fetch only when the cache has no
usable token (the first request, or after a failure). Fetches run in a worker thread because
google-auth's refresh is blocking I/O. `TokenCache.run`, started in the daemon's nursery,
refreshes each token while it still has a while to live (`REFRESH_AHEAD`, or half its
lifetime if that is shorter), so requests find a fresh token waiting.

Vertex sends no `anthropic-ratelimit-*` headers: `limits` is an empty Snapshot.

Errors: Vertex passes Anthropic's own errors through (e.g. 529 `overloaded_error`) and answers
quota, auth and project problems in Google's shape, `{"error": {"code", "status", "message"}}`,
sometimes inside a JSON array (https://cloud.google.com/apis/design/errors). `send` rewrites
every error body into Anthropic's shape so the relay can pass it on, and `classify` maps
Google's status names to verdicts.

A request this adapter cannot make (an unknown model, a path Vertex does not serve, unusable
credentials) becomes a local error answer from `send` with nothing sent, so the relay treats it
like any upstream answer.

Wiring it in: add `upstreams(client, table.ids)` to the relay's kinds, and start
`upstream.tokens.run` in the daemon's nursery (without it tokens are still fetched, on the
request path, when the cached one has expired).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio

from dario.daemon import __version__
from dario.daemon.upstream import anthropic, ratelimits
from dario.daemon.upstream.base import Call, Request, StreamDecoder, Upstream, Verdict, VerdictKind
from dario.daemon.upstream.errors import MAX_MESSAGE, UpstreamErrorInfo, parse_error
from dario.daemon.upstream.httpclient import ConnectError, HttpClient, Response
from dario.daemon.upstream.local import LocalReply, error_body, json_headers, read_capped, refusal
from dario.daemon.upstream.modelids import ModelIds
from dario.daemon.upstream.sse import EventSplitter, is_event_stream

log = logging.getLogger("dario.upstream.vertex")

KIND = "vertex"
VERTEX_VERSION = "vertex-2023-10-16"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
ADC_SECRET = "adc"
PATH_MESSAGES = "/v1/messages"
PATH_COUNT_TOKENS = "/v1/messages/count_tokens"
USER_AGENT = f"dario/{__version__}".encode()
MULTI_REGIONS = frozenset({"us", "eu"})

REFRESH_AHEAD = 300.0  # seconds before expiry to fetch the next token
RETRY_AFTER_FAILURE = 15.0  # a failed background refresh is tried again this much later
IDLE_DROP = 3600.0  # a credential unused this long is forgotten (its account may be gone)
TOKEN_TIMEOUT = 30.0  # seconds for one token fetch
MAX_ERROR_BODY = 256 * 1024

# Anthropic's model ids → Vertex's ids come from the shared table (modelids.py, extended by the
# user's models.json); an id already in Vertex's `name@YYYYMMDD` form passes through.
BUILTIN_IDS = ModelIds()


def vertex_model(model: str, ids: ModelIds = BUILTIN_IDS) -> str | None:
    """The Vertex id for a model a client names, or None if the table does not know it.

    An id already in Vertex's `name@YYYYMMDD` form passes as is, so a new model works before
    the table knows it.
    """
    return ids.vertex_id(model)


def host_for(region: str) -> str:
    """Vertex's own host for a location: global, a multi-region, or a region."""
    if region == "global":
        return "https://aiplatform.googleapis.com"
    if region in MULTI_REGIONS:
        return f"https://aiplatform.{region}.rep.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_BASE = re.compile(r"^(?P<host>https?://[^/]+(?:/.*?)?)/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)$")


def base_url_for(project: str, region: str, host: str | None = None) -> str:
    """An account's base_url: the location's resource URL on Vertex's host (or `host`)."""
    if not _NAME.match(project) and not project.isdigit():
        raise ValueError(f"{project!r} is not a Google Cloud project id")
    if not _NAME.match(region):
        raise ValueError(f"{region!r} is not a Vertex AI location (e.g. us-east5, europe-west1, global)")
    root = (host or host_for(region)).rstrip("/")
    return f"{root}/v1/projects/{project}/locations/{region}"


def parse_base_url(base_url: str) -> tuple[str, str, str]:
    """(host, project, region) from an account's base_url; ValueError if it is not one."""
    m = _BASE.match(base_url.rstrip("/"))
    if m is None:
        raise ValueError("a Vertex base URL ends in /v1/projects/PROJECT/locations/REGION")
    return m["host"], m["project"], m["region"]


# ----------------------------------------------------------------------------- errors

# Google's canonical codes (https://cloud.google.com/apis/design/errors#handling_errors) →
# what they mean for the account, and the Anthropic error type a client understands.
GOOGLE_STATUS: dict[str, tuple[VerdictKind, str]] = {
    "RESOURCE_EXHAUSTED": (VerdictKind.RATE_LIMITED, "rate_limit_error"),
    "UNAVAILABLE": (VerdictKind.OVERLOADED, "overloaded_error"),
    "INTERNAL": (VerdictKind.OVERLOADED, "api_error"),
    "UNKNOWN": (VerdictKind.OVERLOADED, "api_error"),
    "DEADLINE_EXCEEDED": (VerdictKind.OVERLOADED, "timeout_error"),
    "UNAUTHENTICATED": (VerdictKind.AUTH, "authentication_error"),
    "PERMISSION_DENIED": (VerdictKind.AUTH, "permission_error"),
    "INVALID_ARGUMENT": (VerdictKind.FINAL, "invalid_request_error"),
    "FAILED_PRECONDITION": (VerdictKind.FINAL, "invalid_request_error"),  # e.g. the model is not enabled
    "OUT_OF_RANGE": (VerdictKind.FINAL, "invalid_request_error"),
    "NOT_FOUND": (VerdictKind.FINAL, "not_found_error"),
}


def _google_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of a Google-shaped error body (maybe inside an array), else None."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or data.get("type") == "error":
        return None  # Anthropic's own shape, passed through by Vertex
    err = data.get("error")
    if isinstance(err, dict) and isinstance(err.get("status"), str):
        return err
    return None


def google_error_info(status: int, body: bytes) -> tuple[VerdictKind, UpstreamErrorInfo] | None:
    """A Google-shaped error body read as an Anthropic error, with its verdict; None if it is not one."""
    err = _google_error(body)
    if err is None:
        return None
    name = err["status"]
    kind, etype = GOOGLE_STATUS.get(name, (None, None))
    if kind is None or etype is None:
        return None
    message = err.get("message")
    text = message if isinstance(message, str) and message else f"Vertex AI error {name} (HTTP {status})"
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return kind, UpstreamErrorInfo(type=etype, message=text, spend_limit=False, declared_type=name)


def classify(status: int, body: bytes) -> Verdict:
    if status < 400:
        return Verdict(VerdictKind.OK)
    google = google_error_info(status, body)
    if google is not None:
        return Verdict(google[0], google[1])
    return anthropic.classify(status, body)  # Anthropic's errors, passed through; or a bare status


def anthropic_error_body(status: int, body: bytes) -> bytes:
    """Any error body Vertex sends, in Anthropic's shape (Anthropic's own passes unchanged)."""
    google = google_error_info(status, body)
    if google is None:
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict):
            return body
        info = parse_error(status, body)
        return error_body(info.type, info.message)
    info = google[1]
    # Google's status name stays beside the Anthropic type: analytics and classify read it again.
    return orjson.dumps({"type": "error", "error": {"type": info.type, "message": info.message,
                                                     "status": info.declared_type}})


# ----------------------------------------------------------------------------- tokens


class _ProxyAwareHttp:
    """urllib3 pools for google-auth's token calls, honouring HTTPS_PROXY / NO_PROXY as curl does.

    urllib3 reads no proxy settings itself; loopback and link-local hosts (the metadata server)
    never go through a proxy.
    """

    def __init__(self) -> None:
        import urllib3

        self._direct = urllib3.PoolManager()
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get("https")
        self._proxied = urllib3.ProxyManager(proxy) if proxy else None

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        host = urlsplit(url).hostname or ""
        direct = (self._proxied is None or host in ("localhost", "169.254.169.254", "metadata.google.internal")
                  or host.startswith("127.") or host == "::1" or _bypass(host))
        return (self._direct if direct else self._proxied).request(method, url, **kwargs)  # type: ignore[union-attr]


def _bypass(host: str) -> bool:
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 (untyped in typeshed)
    return bool(bypass(host))


def _credentials_for(secret: str) -> Any:
    """google-auth credentials for a secret (blocking: ADC may read files and probe the metadata server)."""
    import google.auth
    from google.oauth2 import service_account

    if secret == ADC_SECRET:
        creds, _project = google.auth.default(scopes=list(SCOPES))
        return creds
    try:
        info = orjson.loads(secret)
    except orjson.JSONDecodeError:
        raise ValueError("the account's Vertex credentials are not a service-account JSON key") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError("the account's Vertex credentials are not a service-account JSON key")
    return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))


# The fields of a service-account key file that are secret
# (https://cloud.google.com/iam/docs/keys-create-delete#creating), and of user credentials.
SECRET_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token")


def secret_values(secret: str) -> tuple[str, ...]:
    """The secret strings inside an account's credential, for redacting upstream text.

    The whole document is kept too; a private key is also listed line by line, since a message
    may quote part of the PEM.
    """
    if secret == ADC_SECRET:
        return ()  # a reference, not a secret
    try:
        info = orjson.loads(secret)
    except orjson.JSONDecodeError:
        return (secret,)
    out = [secret]
    if isinstance(info, dict):
        for name in SECRET_FIELDS:
            value = info.get(name)
            if isinstance(value, str) and value:
                out.append(value)
                if name == "private_key":
                    out += [line for line in value.splitlines() if len(line) >= 16 and "-----" not in line]
    return tuple(out)


class TokenError(Exception):
    """No access token: `auth` says whether the credential itself was refused (else: try later)."""

    def __init__(self, message: str, *, auth: bool) -> None:
        super().__init__(message)
        self.auth = auth


def _why_refused(exc: BaseException) -> str:
    """A short reason from a google-auth error, without anything the token endpoint echoed back."""
    args: tuple[Any, ...] = exc.args
    detail = args[1] if len(args) > 1 else None
    if isinstance(detail, dict) and isinstance(detail.get("error"), str):
        return str(detail["error"])[:100]  # an OAuth error code, e.g. invalid_grant (RFC 6749 §5.2)
    return type(exc).__name__


@dataclass(eq=False)
class _Entry:
    secret: str = field(repr=False)
    credentials: Any = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float = 0.0  # trio clock
    refresh_at: float = math.inf  # trio clock: when the background task fetches the next one
    last_used: float = 0.0
    inflight: trio.Event | None = None
    error: TokenError | None = None


class TokenCache:
    """Access tokens per credential, fetched in a worker thread, refreshed ahead of expiry."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._wake = trio.Event()
        self._http: _ProxyAwareHttp | None = None
        self.fetches = 0  # token fetches started
        self.fetches_done = 0  # token fetches ended, well or not
        self._fetch_ended = trio.Event()
        self.fetches_on_request_path = 0  # of which a request waited for

    def auth_headers(self, secret: str, token: str) -> list[tuple[bytes, bytes]]:
        """The bearer token, and the quota project user credentials bill to, as google-auth's `apply` sets them."""
        out = [(b"authorization", b"Bearer " + token.encode())]
        entry = self._entries.get(self.key(secret))
        quota = getattr(entry.credentials, "quota_project_id", None) if entry is not None else None
        if isinstance(quota, str) and quota:
            out.append((b"x-goog-user-project", quota.encode()))
        return out

    async def next_fetch_end(self) -> None:
        """Return when the next token fetch ends (for status views and tests)."""
        await self._fetch_ended.wait()

    @staticmethod
    def key(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def cached(self, secret: str) -> str | None:
        """A usable token for this credential without waiting, or None (never blocks)."""
        now = trio.current_time()
        entry = self._entries.get(self.key(secret))
        if entry is None:
            self._entries[self.key(secret)] = entry = _Entry(secret)
        entry.last_used = now
        if entry.token is None or now >= entry.expires_at:
            return None
        if now >= entry.refresh_at:
            self._wake.set()  # past its refresh time and the background task has not caught up
        return entry.token

    async def token(self, secret: str) -> str:
        """A usable token, fetched now if the cache has none. Raises TokenError."""
        token = self.cached(secret)
        if token is not None:
            return token
        entry = self._entries[self.key(secret)]
        self.fetches_on_request_path += 1
        await self._refresh(entry)
        if entry.token is None or trio.current_time() >= entry.expires_at:
            raise entry.error or TokenError("no access token", auth=False)
        return entry.token

    async def _refresh(self, entry: _Entry) -> None:
        if entry.inflight is not None:  # one fetch per credential at a time; the others wait on it
            await entry.inflight.wait()
            return
        entry.inflight = done = trio.Event()
        try:
            self.fetches += 1
            started = trio.current_time()
            try:
                token, lifetime = await trio.to_thread.run_sync(self._fetch, entry, abandon_on_cancel=True)
            except TokenError as exc:
                entry.error = exc
                entry.refresh_at = trio.current_time() + RETRY_AFTER_FAILURE
                log.warning("Vertex AI token fetch failed: %s", exc)
                return
            entry.token, entry.error = token, None
            entry.expires_at = started + lifetime
            entry.refresh_at = started + lifetime - min(REFRESH_AHEAD, lifetime / 2)
        finally:
            entry.inflight = None
            done.set()
            self._wake.set()
            self.fetches_done += 1
            self._fetch_ended.set()
            self._fetch_ended = trio.Event()

    def _fetch(self, entry: _Entry) -> tuple[str, float]:
        """In a worker thread: (token, seconds it lives). Raises TokenError."""
        import google.auth.exceptions
        from google.auth.transport.urllib3 import Request as AuthRequest

        try:
            if entry.credentials is None:
                entry.credentials = _credentials_for(entry.secret)
            if self._http is None:
                self._http = _ProxyAwareHttp()
            entry.credentials.refresh(AuthRequest(self._http))
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise TokenError(f"no application default credentials: {str(exc)[:200]}", auth=True) from None
        except google.auth.exceptions.RefreshError as exc:
            retryable = getattr(exc, "retryable", False)
            raise TokenError(f"Google refused the credentials ({_why_refused(exc)})", auth=not retryable) from None
        except google.auth.exceptions.TransportError as exc:
            raise TokenError(f"could not reach Google's token endpoint ({_why_refused(exc)})", auth=False) from None
        except ValueError as exc:  # a malformed key file
            raise TokenError(str(exc)[:200], auth=True) from None
        creds = entry.credentials
        expiry = creds.expiry  # naive UTC (google-auth's convention)
        utcnow = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        lifetime = (expiry - utcnow).total_seconds() if expiry is not None else 3600.0
        return str(creds.token), max(lifetime, 1.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh each credential in use before its token expires. Start it in the daemon's nursery."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._wake = trio.Event()
                next_at = self._start_due(nursery)
                with trio.move_on_at(next_at):
                    await self._wake.wait()

    def _start_due(self, nursery: trio.Nursery) -> float:
        """Start the refreshes that are due; return when the next one is."""
        now = trio.current_time()
        next_at = math.inf
        for key, entry in list(self._entries.items()):
            if now - entry.last_used > IDLE_DROP and entry.inflight is None:
                del self._entries[key]
            elif entry.inflight is not None or entry.token is None:
                continue  # being fetched, or never fetched: the first request does that
            elif entry.refresh_at <= now:
                nursery.start_soon(self._refresh, entry)
            else:
                next_at = min(next_at, entry.refresh_at)
        return next_at


# ----------------------------------------------------------------------------- the upstream


@dataclass(frozen=True, slots=True)
class VertexRequest(Request):
    """A Request plus what `send` needs: the credential to authorize it, or a refusal made here."""

    secret: str = field(default="", repr=False)
    refused: tuple[int, str, str] | None = None  # (status, Anthropic error type, message)


def _betas(headers: list[tuple[bytes, bytes]]) -> list[str]:
    out: list[str] = []
    for name, value in headers:
        if name == b"anthropic-beta":
            out += [b.strip() for b in value.decode("latin-1").split(",") if b.strip()]
    return out


class VertexUpstream:
    """The Upstream for Claude on Vertex AI; one object serves every Vertex account."""

    def __init__(self, client: HttpClient, kind: str = KIND, ids: ModelIds = BUILTIN_IDS) -> None:
        self.client = client
        self.kind = kind
        self.ids = ids  # the model table: Anthropic id → Vertex id
        self.tokens = TokenCache()

    def prepare(self, base_url: str, secret: str, call: Call) -> VertexRequest:
        base = base_url.rstrip("/")
        if call.method != "POST" or call.path not in (PATH_MESSAGES, PATH_COUNT_TOKENS):
            return self._refuse(404, "not_found_error", f"Vertex AI does not serve {call.method} {call.path}")
        try:
            body = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            return self._refuse(400, "invalid_request_error", "the request body is not JSON")
        if not isinstance(body, dict):
            return self._refuse(400, "invalid_request_error", "the request body is not a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._refuse(400, "invalid_request_error", "model: Field required")
        target = vertex_model(model, self.ids)
        if target is None:
            return self._refuse(400, "invalid_request_error",
                                f"model {model!r} has no Vertex AI id in dario's table; name a known model "
                                f"or Vertex's own id (e.g. claude-sonnet-4-5@20250929)")
        body["anthropic_version"] = VERTEX_VERSION
        betas = _betas(list(call.headers))
        if betas:
            given = body.get("anthropic_beta")
            known = [b for b in given if isinstance(b, str)] if isinstance(given, list) else []
            body["anthropic_beta"] = known + [b for b in betas if b not in known]
        if call.path == PATH_COUNT_TOKENS:
            body["model"] = target
            url = f"{base}/publishers/anthropic/models/count-tokens:rawPredict"
        else:
            del body["model"]
            method = "streamRawPredict" if body.get("stream") is True else "rawPredict"
            url = f"{base}/publishers/anthropic/models/{target}:{method}"
        headers = [(b"content-type", b"application/json"), (b"user-agent", USER_AGENT),
                   (b"accept", b"application/json, text/event-stream")]
        if betas:
            headers.append((b"anthropic-beta", ",".join(betas).encode()))
        token = self.tokens.cached(secret)
        if token is not None:
            headers[:0] = self.tokens.auth_headers(secret, token)
        return VertexRequest("POST", url, headers, orjson.dumps(body), secret=secret)

    @staticmethod
    def _refuse(status: int, etype: str, message: str) -> VertexRequest:
        return VertexRequest("POST", "", [], b"", refused=(status, etype, message))

    async def send(self, request: Request, *, read_timeout: float | None = None) -> Response | LocalReply:
        headers = request.headers
        if isinstance(request, VertexRequest):
            if request.refused is not None:
                return refusal(*request.refused)
            if not any(name == b"authorization" for name, _ in headers):
                try:
                    token = await self.tokens.token(request.secret)
                except TokenError as exc:
                    if not exc.auth:  # nothing was sent: the relay tries another account
                        raise ConnectError(f"Vertex AI token: {exc}") from None
                    return self._token_refused(str(exc))
                headers = [*self.tokens.auth_headers(request.secret, token), *headers]
        response = await self.client.request(request.method, request.url, headers, request.body,
                                             read_timeout=read_timeout)
        if response.status < 400:
            return response
        try:
            body = await read_capped(response, MAX_ERROR_BODY)
        finally:
            await response.aclose()
        for name, value in headers:  # an upstream that echoes the token back must not pass it on
            if name == b"authorization" and value.startswith(b"Bearer ") and len(value) > 7:
                body = body.replace(value[7:], b"[redacted]")
        converted = anthropic_error_body(response.status, body)
        return LocalReply(response.status, json_headers(converted, response.headers), converted)

    @staticmethod
    def _token_refused(message: str) -> LocalReply:
        body = orjson.dumps({"type": "error", "error": {"type": "authentication_error", "message": message,
                                                         "status": "UNAUTHENTICATED"}})
        return LocalReply(401, json_headers(body), body)

    def classify(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Verdict:
        return classify(status, body)

    def secret_values(self, secret: str) -> tuple[str, ...]:
        return secret_values(secret)

    def check_label(self, base_url: str, secret: str) -> str:
        try:
            _, project, region = parse_base_url(base_url)
            where = f"project {project}, {region}"
        except ValueError:
            where = base_url
        how = "application default credentials" if secret == ADC_SECRET else "the service-account key"
        return f"Vertex AI count-tokens with {how} ({where})"

    def check_warning(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
        """A 400/404 after a token was issued and accepted: count-tokens (or the model checked) is
        not offered in this location, which says nothing of the credential (see `check_key`)."""
        if status in (400, 404):
            return (f"the credentials were accepted, but count-tokens for claude-sonnet-4-5 is not available "
                    f"here ({parse_error(status, body).message})")
        return None

    def limits(self, headers: list[tuple[bytes, bytes]]) -> ratelimits.Snapshot:
        # No anthropic-ratelimit-* headers on Vertex; a Retry-After, if a proxy adds one, still counts.
        return ratelimits.Snapshot({}, ratelimits.parse_retry_after(headers))

    def is_stream(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return is_event_stream(headers)

    def stream_decoder(self) -> StreamDecoder:
        return EventSplitter()  # streamRawPredict answers in Anthropic's own SSE

    def answer_body(self, body: bytes) -> bytes:
        return body

    async def check_key(self, base_url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Fetch a token, then count the tokens of a one-word message through count-tokens:rawPredict.

        Authenticated and free of charge
        (https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude/count-tokens).
        A refused credential is a 401 (made here when the token fetch is refused) or a 401/403 from
        Vertex (e.g. no Vertex AI permission on the project). Google offers count-tokens in some
        locations and for some models only: a 400/404 means the credential was accepted, but count
        tokens (or the model) is not available there, which login should report, not reject.
        """
        body = orjson.dumps({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]})
        request = self.prepare(base_url, secret, Call("POST", PATH_COUNT_TOKENS, b"", [], body))
        reply = await self.send(request, read_timeout=30)
        try:
            data = await reply.read()
        finally:
            await reply.aclose()
        return reply.status, reply.headers, data


def upstreams(client: HttpClient, ids: ModelIds = BUILTIN_IDS) -> dict[str, Upstream]:
    """The Upstream for the `vertex` account kind, taking model ids from `ids` (the model table)."""
    return {KIND: VertexUpstream(client, ids=ids)}
