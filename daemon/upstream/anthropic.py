"""The Anthropic adapter: Anthropic's own API and any endpoint that speaks its Messages API.

It only ever calls the fixed paths below under the account's base URL, with the account's
own key and dario's own User-Agent. Nothing from the client that identifies the client or
carries its credentials is forwarded.
"""

from __future__ import annotations

from dario.daemon import __version__
from dario.daemon.upstream.httpclient import HttpClient, Response

PATH_MESSAGES = "/v1/messages"
PATH_COUNT_TOKENS = "/v1/messages/count_tokens"
PATH_MODELS = "/v1/models"
FIXED_PATHS = frozenset({PATH_MESSAGES, PATH_COUNT_TOKENS, PATH_MODELS})

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
    headers = build_headers(secret, client_headers, bool(body))
    return await client.request(method, url_for(base_url, path, query), headers, body, read_timeout=read_timeout)


async def validate_key(
    client: HttpClient, base_url: str, secret: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A cheap authenticated call that costs no tokens: list one model. Returns (status, headers, body)."""
    response = await send(client, base_url, secret, "GET", PATH_MODELS, b"limit=1", [], b"", read_timeout=30)
    try:
        body = await response.read()
    finally:
        await response.aclose()
    return response.status, response.headers, body
