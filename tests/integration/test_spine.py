"""The spine: what a new user does first, against a real `dariod` and a real fake upstream.

Start the daemon with no accounts, log in with `dario-ctl`, look at the state, send a request,
send garbage, log out, stop the daemon. Every step is a real process talking over real sockets.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.support import ROOT, Dariod

pytestmark = pytest.mark.timeout(60)

MAX_BODY = 32 * 1024 * 1024
MODEL = "claude-sonnet-4-5-20250929"
MESSAGE = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
API_HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


# -- helpers ---------------------------------------------------------------------------


def call(d: Dariod, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to dario's public port; (status, lower-case headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def anthropic_error(body: bytes) -> dict[str, Any]:
    """Assert the Anthropic error shape and return its `error` object."""
    parsed = orjson.loads(body)
    assert parsed["type"] == "error", parsed
    err: dict[str, Any] = parsed["error"]
    assert isinstance(err["type"], str) and isinstance(err["message"], str) and err["message"]
    return err


def keyring_secret(d: Dariod, alias: str) -> str | None:
    """What the keyring (the same backend dariod uses) holds for `alias`, read in a fresh process."""
    code = f"import keyring, json; print(json.dumps(keyring.get_password('dario', {alias!r})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=d.env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    value: str | None = json.loads(result.stdout)
    return value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(d: Dariod) -> dict[str, Any]:
    status, _, body = call(d, "GET", "/health")
    assert status == 200, body
    result: dict[str, Any] = orjson.loads(body)
    return result


def accounts_json(d: Dariod) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = d.ctl_json("accounts", "list")["accounts"]
    return result


@pytest.fixture(scope="module")
def empty() -> Iterator[Dariod]:
    """One daemon for the tests that must leave it without accounts (refused logins)."""
    d = Dariod().start()
    try:
        yield d
    finally:
        d.cleanup()


# -- 1. no accounts yet ----------------------------------------------------------------


def test_no_accounts_health_answers_and_messages_say_to_log_in(dariod: Dariod, upstream: Any) -> None:
    h = health(dariod)
    assert h["status"] == "ok"
    assert h["accounts"] == 0
    assert h["requests_served"] == 0
    assert isinstance(h["uptime_s"], int | float) and 0 <= h["uptime_s"] < 60

    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, headers, body = call(dariod, "POST", path, MESSAGE, API_HEADERS)
        assert status == 503, path
        assert headers["content-type"].startswith("application/json")
        assert "dario-ctl login" in anthropic_error(body)["message"]
    assert upstream.requests() == []
    h = health(dariod)
    assert h["status"] == "ok" and h["accounts"] == 0


# -- 2. login, status, logout ----------------------------------------------------------


def test_login_status_and_logout(dariod: Dariod, upstream: Any) -> None:
    key = f"sk-ant-spine-{uuid.uuid4().hex}"
    result = dariod.ctl("login", "work", "--kind", "anthropic-compatible", "--base-url", upstream.url,
                        input=key + "\n")
    assert result.returncode == 0, result.stderr
    assert "work" in result.stdout
    assert key not in result.stdout + result.stderr
    # The key was checked with one cheap call that costs no tokens, using the key itself.
    seen = upstream.requests()
    assert [(r["method"], r["path"]) for r in seen] == [("GET", "/v1/models")]
    assert seen[0]["key"] == key

    status = dariod.ctl_json("status")
    assert [a["alias"] for a in status["accounts"]] == ["work"]
    acc = status["accounts"][0]
    assert acc["kind"] == "anthropic-compatible"
    assert acc["base_url"] == upstream.url
    assert acc["status"] == "ok" and acc["enabled"] is True
    assert status["pool"]["total"] == 1 and status["pool"]["available"] == 1
    assert status["listen"] == dariod.url

    human = dariod.ctl("status")
    assert human.returncode == 0, human.stderr
    assert "work" in human.stdout and "ok" in human.stdout

    listed = accounts_json(dariod)
    assert [(a["alias"], a["status"]) for a in listed] == [("work", "ok")]
    assert keyring_secret(dariod, "work") == key
    assert health(dariod)["accounts"] == 1

    # It serves: a request reaches the fake with this account's key.
    code, headers, _ = call(dariod, "POST", "/v1/messages", MESSAGE, API_HEADERS)
    assert code == 200 and headers["x-dario-account"] == "work"
    assert upstream.requests()[-1]["key"] == key
    assert health(dariod)["requests_served"] == 1

    out = dariod.ctl("logout", "work")
    assert out.returncode == 0, out.stderr
    assert accounts_json(dariod) == []
    assert keyring_secret(dariod, "work") is None
    assert health(dariod)["accounts"] == 0
    code, _, body = call(dariod, "POST", "/v1/messages", MESSAGE, API_HEADERS)
    assert code == 503 and "dario-ctl login" in anthropic_error(body)["message"]

    again = dariod.ctl("logout", "work")
    assert again.returncode == 1
    assert "work" in again.stderr


def test_login_again_replaces_the_key_only_when_the_new_one_works(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-ant-first-key", upstream.url)
    rejected = dariod.ctl("login", "work", "--kind", "anthropic-compatible", "--base-url", upstream.url,
                          input="sk-bad-replacement\n")
    assert rejected.returncode == 1
    assert keyring_secret(dariod, "work") == "sk-ant-first-key"
    upstream.clear()
    assert call(dariod, "POST", "/v1/messages", MESSAGE, API_HEADERS)[0] == 200
    assert upstream.requests()[-1]["key"] == "sk-ant-first-key"

    dariod.login("work", "sk-ant-second-key", upstream.url)
    assert keyring_secret(dariod, "work") == "sk-ant-second-key"
    assert [a["alias"] for a in accounts_json(dariod)] == ["work"]
    assert call(dariod, "POST", "/v1/messages", MESSAGE, API_HEADERS)[0] == 200
    assert upstream.requests()[-1]["key"] == "sk-ant-second-key"


def _assert_nothing_stored(d: Dariod, alias: str) -> None:
    assert accounts_json(d) == []
    assert d.ctl_json("status")["accounts"] == []
    assert keyring_secret(d, alias) is None
    accounts_file = d.home / "config" / "dario" / "accounts.json"
    if accounts_file.exists():
        assert alias not in accounts_file.read_text()


def test_login_with_rejected_key_stores_nothing(empty: Dariod, upstream: Any) -> None:
    alias = f"rej-{uuid.uuid4().hex[:8]}"
    key = f"sk-bad-{uuid.uuid4().hex}"
    result = empty.ctl("login", alias, "--kind", "anthropic-compatible", "--base-url", upstream.url,
                        input=key + "\n")
    assert result.returncode == 1
    assert "rejected" in result.stderr and "nothing was stored" in result.stderr
    assert key not in result.stdout + result.stderr
    assert [r["key"] for r in upstream.requests()] == [key]  # it did ask the upstream
    _assert_nothing_stored(empty, alias)


def test_login_to_unreachable_url_fails(empty: Dariod) -> None:
    alias = f"gone-{uuid.uuid4().hex[:8]}"
    result = empty.ctl("login", alias, "--kind", "anthropic-compatible",
                        "--base-url", f"http://127.0.0.1:{closed_port()}", input="sk-ant-unreachable\n")
    assert result.returncode == 1
    assert "could not reach" in result.stderr
    assert "sk-ant-unreachable" not in result.stderr
    _assert_nothing_stored(empty, alias)


def test_login_refuses_plain_http_to_another_host(empty: Dariod) -> None:
    for url in ("http://192.0.2.10", "http://api.example.com/v1", "http://10.1.2.3:8080"):
        alias = f"plain-{uuid.uuid4().hex[:8]}"
        result = empty.ctl("login", alias, "--kind", "anthropic-compatible", "--base-url", url,
                           input="sk-ant-would-cross-the-network\n")
        assert result.returncode == 1, url
        assert "https://" in result.stderr, url
        _assert_nothing_stored(empty, alias)


def test_login_with_empty_stdin_is_a_usage_error(empty: Dariod, upstream: Any) -> None:
    result = empty.ctl("login", "empty", "--kind", "anthropic-compatible", "--base-url", upstream.url, input="")
    assert result.returncode == 2
    assert upstream.requests() == []
    assert accounts_json(empty) == []


def test_ctl_without_a_daemon_exits_3_and_names_dariod(dariod_factory: Callable[..., Dariod]) -> None:
    never = dariod_factory(start=False)
    result = never.ctl("status")
    assert result.returncode == 3
    assert "dariod" in result.stderr

    d = dariod_factory()
    assert d.ctl("status").returncode == 0
    assert d.stop() == 0
    for args in (("status",), ("status", "--json"), ("accounts", "list", "--json")):
        result = d.ctl(*args)
        assert result.returncode == 3, args
        assert "dariod" in result.stderr
        assert result.stdout == ""


# -- 4. bad input ----------------------------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def _served(d: Dariod, upstream: Any) -> tuple[int, int]:
    return health(d)["requests_served"], upstream.stats()["requests"]


@pytest.fixture(scope="module")
def serving(fake: Any) -> Iterator[Dariod]:
    d = Dariod().start()
    try:
        d.login("work", "sk-ant-bad-input", fake.url)
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def logged_in(serving: Dariod, upstream: Any) -> Dariod:
    return serving


def test_oversized_body_with_content_length_is_413(logged_in: Dariod, upstream: Any) -> None:
    before = _served(logged_in, upstream)
    with socket.create_connection(("127.0.0.1", logged_in.port), timeout=30) as sock:
        # The head alone is enough: dario refuses on the declared length without reading 32 MB.
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        status, headers, body = _read_response(sock)
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    assert anthropic_error(body)["type"] == "request_too_large"
    assert _served(logged_in, upstream) == before


def test_oversized_chunked_body_is_413(logged_in: Dariod, upstream: Any) -> None:
    before = _served(logged_in, upstream)
    piece = b"x" * (1024 * 1024)
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", logged_in.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        def pour() -> None:
            # dario may answer and close before all of it is sent; that is its right.
            try:
                for _ in range(MAX_BODY // len(piece) + 2):
                    sock.sendall(chunk)
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass

        writer = threading.Thread(target=pour, daemon=True)
        writer.start()
        status, headers, body = _read_response(sock)
        writer.join(30)
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    assert anthropic_error(body)["type"] == "request_too_large"
    assert _served(logged_in, upstream) == before


def test_malformed_json_is_400(logged_in: Dariod, upstream: Any) -> None:
    before = _served(logged_in, upstream)
    for raw in (b'{"model": "claude', b"not json at all", b"", b"[1, 2, 3]", b'{"model": 42}'):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            status, headers, body = call(logged_in, "POST", path, raw, API_HEADERS)
            assert status == 400, (path, raw, body)
            assert anthropic_error(body)["type"] == "invalid_request_error"
            assert headers.get("request-id")
    assert _served(logged_in, upstream) == before
    # ... and the next good request goes through as usual.
    status, _, _ = call(logged_in, "POST", "/v1/messages", MESSAGE, API_HEADERS)
    assert status == 200
