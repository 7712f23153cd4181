"""The Anthropic adapter: Anthropic's own API and any endpoint that speaks its Messages API.

It only ever calls the fixed paths below under the account's base URL, with the account's
own key and dario's own User-Agent. Nothing from the client that identifies the client or
carries its credentials is forwarded.
"""

from __future__ import annotations

from dario.daemon import __version__
from dario.daemon.upstream import ratelimits
from dario.daemon.upstream.base import Call, Request, StreamDecoder, Upstream, Verdict, VerdictKind
from dario.daemon.upstream.errors import parse_error
from dario.daemon.upstream.httpclient import HttpClient, Response
from dario.daemon.upstream.sse import EventSplitter, is_event_stream

PATH_MESSAGES = "/v1/messages"
PATH_COUNT_TOKENS = "/v1/messages/count_tokens"
PATH_MODELS = "/v1/models"
FIXED_PATHS = frozenset({PATH_MESSAGES, PATH_COUNT_TOKENS, PATH_MODELS})
KINDS = ("anthropic", "anthropic-compatible")
MODEL_LIST_KINDS = frozenset(KINDS)  # the account kinds whose model list `send` may fetch

USER_AGENT = f"dario/{__version__}".encode()
DEFAULT_VERSION = b"2023-06-01"

# Client headers that are safe and meaningful to pass on. Everything else (auth, the
# client's identity and telemetry, hop-by-hop headers) stays behind.
FORWARDED_REQUEST_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta"})


def build_headers(secret: str, client_headers: list[tuple[bytes, bytes]], has_body: bool) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = [(b"x-api-key", secret.encode())]
    version = None
    for name, value in client_headers:
        if name in FORWARDED_REQUEST_HEADERS:
            if name == b"anthropic-version":
                version = value
            else:
                out.append((name, value))
    out.append((b"anthropic-version", version or DEFAULT_VERSION))
    if has_body:
        out.append((b"content-type", b"application/json"))
    out.append((b"user-agent", USER_AGENT))
    out.append((b"accept", b"application/json, text/event-stream"))
    return out


def url_for(base_url: str, path: str, query: bytes = b"") -> str:
    if path not in FIXED_PATHS and not path.startswith(PATH_MODELS + "/"):
        raise ValueError("not an upstream path dario calls")
    url = base_url + path
    if query:
        url += "?" + query.decode("latin-1")
    return url


# https://docs.anthropic.com/en/api/errors: 401/403 are the key's fault; 429 a rate limit;
# 500 api_error, 529 overloaded_error, and the gateway statuses a proxy in between may add, pass.
AUTH_STATUS = frozenset({401, 403})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504, 529})


def classify(status: int, body: bytes) -> Verdict:
    """What an Anthropic answer means for the account and the request."""
    if status < 400:
        return Verdict(VerdictKind.OK)
    info = parse_error(status, body)
    if status == 429:
        return Verdict(VerdictKind.SPEND_LIMITED if info.spend_limit else VerdictKind.RATE_LIMITED, info)
    if status in AUTH_STATUS:
        return Verdict(VerdictKind.AUTH, info)
    if status in TRANSIENT_STATUS:
        return Verdict(VerdictKind.OVERLOADED, info)
    return Verdict(VerdictKind.FINAL, info)


class AnthropicUpstream:
    """The Upstream for Anthropic's API and every endpoint that speaks its Messages API."""

    def __init__(self, client: HttpClient, kind: str = "anthropic") -> None:
        self.client = client
        self.kind = kind

    def prepare(self, base_url: str, secret: str, call: Call) -> Request:
        headers = build_headers(secret, list(call.headers), bool(call.body))
        return Request(call.method, url_for(base_url, call.path, call.query), headers, call.body)

    async def send(self, request: Request, *, read_timeout: float | None = None) -> Response:
        return await self.client.request(request.method, request.url, request.headers, request.body,
                                         read_timeout=read_timeout)

    def classify(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Verdict:
        return classify(status, body)

    def limits(self, headers: list[tuple[bytes, bytes]]) -> ratelimits.Snapshot:
        return ratelimits.parse(headers)

    def secret_values(self, secret: str) -> tuple[str, ...]:
        return (secret,)  # the key itself

    def check_label(self, base_url: str, secret: str) -> str:
        return f"{base_url} (GET /v1/models)"

    def check_warning(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
        return None  # any error while listing models means the key (or the URL) is not usable

    def is_stream(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return is_event_stream(headers)

    def stream_decoder(self) -> StreamDecoder:
        return EventSplitter()  # already Anthropic SSE: only split into complete events

    def answer_body(self, body: bytes) -> bytes:
        return body

    async def check_key(self, base_url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # Listing one model is authenticated and costs no tokens
        # (https://docs.anthropic.com/en/api/models-list).
        request = self.prepare(base_url, secret, Call("GET", PATH_MODELS, b"limit=1"))
        response = await self.send(request, read_timeout=30)
        try:
            body = await response.read()
        finally:
            await response.aclose()
        return response.status, response.headers, body


async def send(
    client: HttpClient,
    base_url: str,
    secret: str,
    method: str,
    path: str,
    query: bytes,
    client_headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    read_timeout: float | None = None,
) -> Response:
    """One call outside the relay (a key check, the model list), built as the relay's are."""
    up = AnthropicUpstream(client)
    request = up.prepare(base_url, secret, Call(method, path, query, client_headers, body))
    return await up.send(request, read_timeout=read_timeout)


def upstreams(client: HttpClient) -> dict[str, Upstream]:
    """The Upstream for each account kind this module serves, sharing one HTTP client."""
    return {kind: AnthropicUpstream(client, kind) for kind in KINDS}
