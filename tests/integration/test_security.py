"""Security defaults, checked against real processes with raw HTTP where a library would be too polite.

DNS rebinding and foreign Origins, the client key gate, refusing to listen beyond loopback
without one, the control socket's permissions and its refusal of browsers, fixed upstream
paths whatever the client sends, and a planted key that must never show up anywhere dario
writes or answers.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import REAL_KEYRING, ROOT, Dariod, base_env

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-4-6"
MESSAGE = orjson.dumps({"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]})
CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
COUNT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
FIXED_PATHS = {"/v1/messages", "/v1/messages/count_tokens", "/v1/models"}
ACCOUNT_KEY = "sk-ant-security-account"


# -- raw HTTP ----------------------------------------------------------------------------


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1."), raw[:200]
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        self.body = body
        if self.headers.get("transfer-encoding") == "chunked":
            self.body = _dechunk(body)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lowered = head.lower()
    for line in lowered.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return len(body) >= int(value)
    if b"transfer-encoding: chunked" in lowered:
        return body.endswith(b"0\r\n\r\n")
    return False


def _exchange(sock: socket.socket, request: bytes) -> Reply:
    # Read by the message's own framing, not to EOF: how soon dario closes is not what is tested here.
    sock.settimeout(20)
    sock.sendall(request)
    data = b""
    while not _complete(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return Reply(data)


def request_bytes(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
                  host: str | None = "127.0.0.1", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def tcp(d: Dariod, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
        host: str | None = "", version: str = "HTTP/1.1") -> Reply:
    """One raw request to the public port; `host=""` means the right one, None means no Host at all."""
    if host == "":
        host = f"127.0.0.1:{d.port}"
    with socket.create_connection(("127.0.0.1", d.port)) as sock:
        return _exchange(sock, request_bytes(method, target, headers, body, host, version))


def unix(path: Path, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
         host: str | None = "dario.sock") -> Reply:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        return _exchange(sock, request_bytes(method, target, headers, body, host))


def api(d: Dariod, method: str, path: str, body: bytes = b"", **headers: str) -> Reply:
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return tcp(d, method, path, h, body)


def assert_anthropic_error(reply: Reply, status: int, etype: str) -> str:
    assert reply.status == status, reply
    parsed = reply.json()
    assert parsed["type"] == "error" and parsed["error"]["type"] == etype, parsed
    message: str = parsed["error"]["message"]
    return message


@pytest.fixture(scope="module")
def gw(fake: Any) -> Iterator[Dariod]:
    """One daemon with one account, for the tests that only send requests."""
    d = Dariod().start()
    try:
        d.login("work", ACCOUNT_KEY, fake.url)
        yield d
    finally:
        d.cleanup()


# -- Host and Origin -------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.evil.example",
    "192.168.1.10:{port}", "0.0.0.0:{port}",
])
def test_dns_rebinding_host_is_refused(gw: Dariod, upstream: Any, host: str) -> None:
    host = host.format(port=gw.port)
    reply = tcp(gw, "POST", "/v1/messages",
                {"content-type": "application/json", "anthropic-version": "2023-06-01"}, MESSAGE, host=host)
    message = assert_anthropic_error(reply, 403, "permission_error")
    assert "Host" in message
    for path in ("/health", "/v1/models", "/accounts", "/metrics", "/"):
        assert tcp(gw, "GET", path, host=host).status == 403, path
    assert upstream.requests() == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST:{port}",
                                  "127.0.0.1", "localhost"])
def test_loopback_hosts_are_served(gw: Dariod, host: str) -> None:
    reply = tcp(gw, "GET", "/health", host=host.format(port=gw.port))
    assert reply.status == 200 and reply.json()["status"] == "ok"


def test_empty_or_missing_host_is_refused(gw: Dariod, upstream: Any) -> None:
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    empty = tcp(gw, "POST", "/v1/messages", h, MESSAGE, host=" ")
    assert empty.status in (400, 403), empty
    missing_10 = tcp(gw, "POST", "/v1/messages", h, MESSAGE, host=None, version="HTTP/1.0")
    assert missing_10.status in (400, 403), missing_10
    missing_11 = tcp(gw, "POST", "/v1/messages", h, MESSAGE, host=None)
    assert missing_11.status in (400, 403), missing_11
    assert tcp(gw, "GET", "/health", host=" ").status in (400, 403)
    assert upstream.requests() == []


@pytest.mark.parametrize("origin", [
    "https://evil.example", "null", "http://evil.example:{port}", "http://127.0.0.1:1",
    "https://127.0.0.1:{port}", "http://localhost.evil.example:{port}",
])
def test_foreign_origin_is_refused(gw: Dariod, upstream: Any, origin: str) -> None:
    origin = origin.format(port=gw.port)
    reply = api(gw, "POST", "/v1/messages", MESSAGE, origin=origin)
    assert "Origin" in assert_anthropic_error(reply, 403, "permission_error")
    chat = api(gw, "POST", "/v1/chat/completions", CHAT, origin=origin)
    assert chat.status == 403 and "error" in chat.json() and "type" not in chat.json()  # the OpenAI shape
    assert api(gw, "GET", "/v1/models", origin=origin).status == 403
    assert api(gw, "GET", "/accounts", origin=origin).status == 403
    assert upstream.requests() == []


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://[::1]:{port}"])
def test_own_origin_is_served(gw: Dariod, upstream: Any, origin: str) -> None:
    reply = api(gw, "POST", "/v1/messages", MESSAGE, origin=origin.format(port=gw.port))
    assert reply.status == 200, reply
    assert reply.json()["type"] == "message"
    assert len(upstream.requests()) == 1


# -- listening beyond loopback, and the client key -------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_non_loopback_host_without_api_key_refuses_to_start(tmp_path: Path, host: str, how: str) -> None:
    env = base_env(tmp_path)
    args = [sys.executable, "-m", "dario.daemon.main", "--port", "0", "--socket", str(tmp_path / "ctl.sock")]
    if how == "flag":
        args += ["--host", host]
    else:
        env["DARIO_HOST"] = host
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "DARIO_API_KEY" in result.stderr
    assert "listening on" not in result.stdout
    assert not (tmp_path / "ctl.sock").exists()


GATED = [
    ("POST", "/v1/messages", MESSAGE),
    ("POST", "/v1/messages/count_tokens", COUNT),
    ("POST", "/v1/chat/completions", CHAT),
    ("GET", "/v1/models", b""),
    ("GET", "/v1/models/claude-opus-4-7", b""),
    ("GET", "/accounts", b""),
    ("GET", "/analytics", b""),
    ("GET", "/metrics", b""),
]


def test_dario_api_key_gates_every_endpoint_but_health(dariod_factory: Callable[..., Dariod],
                                                       upstream: Any) -> None:
    secret = f"local-gate-{uuid.uuid4().hex}"
    d = dariod_factory(env={"DARIO_API_KEY": secret})
    d.login("work", ACCOUNT_KEY, upstream.url)
    upstream.clear()
    assert d.ctl_json("status")["auth_required"] is True

    health = api(d, "GET", "/health")
    assert health.status == 200 and health.json()["status"] == "ok"
    for method, path, body in GATED:
        for creds in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"},
                      {"authorization": secret}, {"x-api-key": secret[:-1]}, {"x-api-key": ""}):
            reply = api(d, method, path, body, **creds)
            assert reply.status == 401, (method, path, creds, reply)
            parsed = reply.json()
            if path.startswith("/v1/chat"):
                assert parsed["error"]["type"] == "authentication_error" or parsed["error"]["code"]
            else:
                assert parsed["type"] == "error" and parsed["error"]["type"] == "authentication_error"
            assert secret not in reply.body.decode()
    assert upstream.requests() == []

    for creds in ({"x-api-key": secret}, {"authorization": f"Bearer {secret}"}):
        for method, path, body in GATED:
            reply = api(d, method, path, body, **creds)
            assert reply.status == 200, (method, path, creds, reply)
    # The local key is dario's, not the upstream's: the account's key went upstream, never this one.
    seen = upstream.requests()
    assert seen and {r["key"] for r in seen} == {ACCOUNT_KEY}
    assert not any(secret in orjson.dumps(r).decode() for r in seen)


# -- the control socket ----------------------------------------------------------------


def test_control_socket_is_private(dariod_factory: Callable[..., Dariod]) -> None:
    d = dariod_factory(start=False)
    # A folder someone left open is tightened, not trusted.
    d.socket.parent.mkdir(parents=True, mode=0o755)
    os.chmod(d.socket.parent, 0o755)
    d.start()
    assert stat.S_ISSOCK(d.socket.stat().st_mode)
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o700
    assert d.socket.stat().st_uid == os.getuid()


def test_socket_in_a_shared_folder_leaves_the_folder_alone(dariod_factory: Callable[..., Dariod],
                                                           tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: dario must not make it 0700 under everyone else's feet
    sock = shared / "ctl.sock"
    d = dariod_factory(args=["--socket", str(sock)])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert d.stop() == 0
    assert not sock.exists()


def test_socket_path_that_is_a_file_is_not_deleted(dariod_factory: Callable[..., Dariod], tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    d = dariod_factory(args=["--socket", str(precious)], start=False)
    with pytest.raises(RuntimeError):
        d.start(timeout=15)
    assert d.proc is not None and d.proc.returncode not in (0, None)
    assert "not a socket" in d.stderr()
    assert precious.read_text() == "keep me"


def test_control_api_refuses_browsers(dariod: Dariod, upstream: Any) -> None:
    ok = unix(dariod.socket, "GET", "/v1/status")
    assert ok.status == 200 and ok.json()["accounts"] == []

    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/x"},
                    {"Origin": f"http://127.0.0.1:{dariod.port}"}, {"Referer": f"{dariod.url}/"}):
        reply = unix(dariod.socket, "GET", "/v1/status", headers)
        assert reply.status == 403, (headers, reply)
        assert reply.json()["error"]["type"] == "forbidden"
        assert b"accounts" not in reply.body
        login = orjson.dumps({"alias": "planted", "secret": "sk-ant-from-a-browser", "kind": "anthropic-compatible",
                              "base_url": upstream.url})
        reply = unix(dariod.socket, "POST", "/v1/accounts", {**headers, "Content-Type": "application/json"}, login)
        assert reply.status == 403, (headers, reply)
    assert unix(dariod.socket, "GET", "/v1/status", host="evil.example").status == 403
    # Nothing was stored, and the upstream was never asked to check a key.
    assert dariod.ctl_json("accounts", "list") == {"accounts": []}
    assert upstream.requests() == []


# -- fixed upstream paths --------------------------------------------------------------


def test_client_cannot_steer_the_upstream_path(gw: Dariod, upstream: Any) -> None:
    fake = upstream.url.split("//", 1)[1]
    # A canary in the fake: a request that reached its admin API (/_fake/reset) would clear it.
    upstream.script({"status": 418}, key="canary-never-used")
    attacks = [
        ("POST", "/v1/messages/../../admin"),
        ("POST", "/v1/messages/../../_fake/reset"),
        ("POST", "/v1/messages/%2e%2e/%2e%2e/_fake/reset"),
        ("POST", "/v1/messages%2F..%2F..%2F_fake%2Freset"),
        ("POST", "/v1/messages/count_tokens/../../../_fake/reset"),
        ("POST", "/v1/chat/completions/../../../_fake/reset"),
        ("POST", f"http://{fake}/_fake/reset"),
        ("POST", f"http://{fake}/v1/messages"),
        ("POST", "http://evil.example/v1/messages"),
        ("POST", "//evil.example/v1/messages"),
        ("POST", "/v1/messages@evil.example"),
        ("POST", "/v1/messages?x=../"),
        ("POST", "/v1/messages?x=/../../_fake/reset"),
        ("POST", "/v1/messages?a#/../../_fake/reset"),
        ("POST", "/v1/messages/count_tokens?x=../../_fake/reset"),
        ("POST", "/v1/chat/completions?x=../../_fake/reset"),
        ("GET", "/v1/models/../../_fake/requests"),
        ("GET", "/v1/models/..%2F..%2F_fake%2Freset"),
        ("GET", "/v1/models/%2e%2e%2f%2e%2e%2f_fake%2freset"),
        ("GET", "/v1/models/claude-opus-4-7/../../../_fake/reset"),
        ("GET", "/v1/models?after_id=../../_fake/reset"),
        ("GET", "/v1/models?x=1&beta=true#/../../_fake/reset"),
    ]
    for method, target in attacks:
        body = CHAT if "chat" in target else COUNT if "count_tokens" in target else MESSAGE
        reply = tcp(gw, method, target, {"content-type": "application/json", "anthropic-version": "2023-06-01"},
                    body if method == "POST" else b"")
        assert 200 <= reply.status < 600, (target, reply)
    assert upstream.pending() == [{"key": "canary-never-used", "action": {"status": 418}}]
    seen = upstream.requests()
    assert seen, "no attack was served at all, so the check below proves nothing"
    for entry in seen:
        assert entry["path"] in FIXED_PATHS, entry["path"]
        assert entry["key"] == ACCOUNT_KEY
        assert entry["headers"]["host"] == fake
    assert ("/v1/messages", "x=../") in {(e["path"], e["query"]) for e in seen}


# -- secrets ---------------------------------------------------------------------------


def test_login_without_a_keyring_names_the_fix(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    result = d.ctl("login", "work", "--kind", "anthropic-compatible", "--base-url", upstream.url,
                   input="sk-ant-nowhere-to-keep\n")
    assert result.returncode == 1
    assert "keyring" in result.stderr and "PYTHON_KEYRING_BACKEND" in result.stderr
    assert "sk-ant-nowhere-to-keep" not in result.stdout + result.stderr
    assert d.ctl_json("accounts", "list") == {"accounts": []}
    assert upstream.requests() == []  # it failed before sending the key anywhere


def _scan(root: Path, needles: list[str], skip: set[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.name not in skip:
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)} contains {n!r}" for n in needles if n.encode() in data]
    return hits


def test_planted_key_never_leaks(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    marker = uuid.uuid4().hex
    key = f"sk-ant-api03-PLANTED-{marker}"
    bad_key = f"sk-bad-PLANTED-{marker}-rejected"
    needles = [key, marker]
    d = dariod_factory(args=["--verbose"])
    said: list[str] = []

    def ctl(*args: str, input: str | None = None, expect: int | None = 0) -> str:
        result = d.ctl(*args, input=input)
        if expect is not None:
            assert result.returncode == expect, (args, result.stderr)
        said.append(result.stdout + result.stderr)
        return result.stdout

    ctl("login", "planted", "--kind", "anthropic-compatible", "--base-url", upstream.url, input=key + "\n")
    # Failed logins of the same and of another planted key.
    ctl("login", "other", "--kind", "anthropic-compatible", "--base-url", upstream.url, input=bad_key + "\n",
        expect=1)
    ctl("login", "gone", "--kind", "anthropic-compatible", "--base-url", "http://127.0.0.1:1",
        input=key + "\n", expect=1)
    ctl("login", "plain", "--kind", "anthropic-compatible", "--base-url", "http://192.0.2.7",
        input=key + "\n", expect=1)

    replies = [
        api(d, "POST", "/v1/messages", MESSAGE),
        api(d, "POST", "/v1/messages", orjson.dumps({**orjson.loads(MESSAGE), "stream": True})),
        api(d, "POST", "/v1/messages/count_tokens", COUNT),
        api(d, "POST", "/v1/chat/completions", CHAT),
        api(d, "GET", "/v1/models"),
    ]
    assert [r.status for r in replies] == [200, 200, 200, 200, 200]
    upstream.script({"status": 500}, key=key)
    replies.append(api(d, "POST", "/v1/messages", MESSAGE))
    assert replies[-1].status == 500
    upstream.script({"status": 401}, key=key)
    replies.append(api(d, "POST", "/v1/messages", MESSAGE))  # waits out the short 500 cooldown first
    assert replies[-1].status == 401
    replies.append(api(d, "POST", "/v1/messages", MESSAGE))  # needs_login now: dario's own 503
    assert replies[-1].status == 503
    replies.append(api(d, "POST", "/v1/chat/completions", CHAT))
    ctl("refresh", "planted")  # the key is fine after all: back to ok
    replies.append(api(d, "POST", "/v1/messages", MESSAGE))
    assert replies[-1].status == 200
    for path in ("/accounts", "/health", "/metrics", "/analytics", "/v1/models/claude-opus-4-7"):
        reply = api(d, "GET", path)
        assert reply.status == 200, path
        replies.append(reply)
    for args in (("status", "--json"), ("status",), ("accounts", "list", "--json"), ("accounts", "list"),
                 ("usage", "--json"), ("usage",)):
        ctl(*args)

    # Every request went upstream with the planted key, so it was really in use.
    assert {r["key"] for r in upstream.requests()} == {key, bad_key}
    leaks = [f"reply {r.status}: {r.headers} {r.body[:300]!r}" for r in replies
             if any(n in repr(r.headers) + r.body.decode(errors="replace") for n in needles)]
    leaks += [s for s in said if any(n in s for n in needles)]
    assert d.stop() == 0
    stdout = "\n".join(d.stdout_lines)
    leaks += [f"dariod stdout: {n}" for n in needles if n in stdout]
    # Everything dario wrote: config, state, the usage database, its own stderr. The stand-in
    # keyring file (when not using the real Secret Service) is the one place the key belongs.
    leaks += _scan(d.home, needles, skip={"keyring.json", "keyring.tmp"})
    assert not leaks, leaks
    # The scan was not vacuous: these exist and were looked at.
    assert (d.home / "config" / "dario" / "accounts.json").exists()
    assert (d.home / "state" / "dario" / "usage.sqlite3").exists()
    assert "planted" in d.stderr()  # --verbose logged requests, naming the account
    if not REAL_KEYRING:
        assert key in (d.home / "keyring.json").read_text()


# -- the real keyring ------------------------------------------------------------------


@pytest.mark.skipif(not REAL_KEYRING, reason="only in the real Secret Service run (DARIO_TEST_KEYRING=secretservice)")
def test_real_run_uses_the_secret_service(dariod: Dariod, upstream: Any) -> None:
    code = "import keyring; b = keyring.get_keyring(); print(type(b).__module__ + '.' + type(b).__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dariod.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "keyring.backends.SecretService.Keyring"
    assert "PYTHON_KEYRING_BACKEND" not in dariod.env

    from keyring.backends import SecretService

    alias = f"ss-{uuid.uuid4().hex[:8]}"
    key = f"sk-ant-secret-service-{uuid.uuid4().hex}"
    dariod.login(alias, key, upstream.url)
    try:
        assert SecretService.Keyring().get_password("dario", alias) == key
        assert not (dariod.home / "keyring.json").exists()
    finally:
        assert dariod.ctl("logout", alias).returncode == 0
    assert SecretService.Keyring().get_password("dario", alias) is None
