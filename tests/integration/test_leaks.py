"""Keys that must not leave by a side door: a hostile upstream that quotes the key back in its
errors, and proxies from the environment that would see a plain-http upstream's headers.

Real dariod processes against the fake upstream (its `echo_key` action plays the hostile
upstream) and a recording stand-in for a proxy.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_security import api
from tests.support import Dariod

pytestmark = pytest.mark.timeout(90)

MODEL = "claude-sonnet-4-6"
MESSAGE = orjson.dumps({"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]})
STREAM = orjson.dumps({**orjson.loads(MESSAGE), "stream": True})
CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})


# -- a proxy that records and never forwards ---------------------------------------------


class RecordingProxy:
    """Accepts connections on loopback, keeps every byte it is sent, answers 502."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.received = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while b"\r\n\r\n" not in self.received and (data := conn.recv(65536)):
                    with self._lock:
                        self.received += data
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    p = RecordingProxy().start()
    yield p
    p.stop()


def proxy_env(url: str) -> dict[str, str]:
    names = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    return {**{name: url for name in names}, "NO_PROXY": "", "no_proxy": ""}


def served_past_a_proxy(d: Dariod, upstream: Any) -> int:
    """Log in a loopback http:// account and send requests; return how many reached the upstream
    (the key check included). `d` runs with every proxy variable pointing at a RecordingProxy."""
    key = f"sk-ant-api03-proxy-{uuid.uuid4().hex}"
    assert upstream.url.startswith("http://127.0.0.1:")
    d.login("local", key, upstream.url)  # the key check goes upstream too
    assert api(d, "POST", "/v1/messages", MESSAGE).status == 200
    assert api(d, "POST", "/v1/messages", STREAM).status == 200
    assert api(d, "POST", "/v1/chat/completions", CHAT).status == 200
    return [r["key"] for r in upstream.requests()].count(key)


def test_loopback_http_account_never_goes_through_a_proxy(
    dariod_factory: Callable[..., Dariod], upstream: Any, proxy: RecordingProxy
) -> None:
    d = dariod_factory(env=proxy_env(proxy.url))
    assert served_past_a_proxy(d, upstream) >= 4  # served directly
    assert proxy.connections == 0 and bytes(proxy.received) == b""


# -- a hostile upstream that quotes the key ----------------------------------------------


def _scan(root: Path, needles: list[str], skip: set[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.name not in skip:
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)} contains {n!r}" for n in needles if n.encode() in data]
    return hits


def _sqlite_text(path: Path) -> str:
    # The file scan sees pages as bytes; read the rows too, in case a page is compressed or split.
    with sqlite3.connect(path) as conn:
        return repr(conn.execute("SELECT * FROM usage").fetchall())


def _tray_text(status: Any) -> str:
    from dario.tray.model import menu_model, settings_text, tooltip

    labels = []

    def walk(entries: Any) -> None:
        for e in entries:
            labels.append(e.label)
            walk(e.children)

    walk(menu_model(status))
    return "\n".join([tooltip(status), settings_text(status), *labels])


def echo_key_leaks(d: Dariod, upstream: Any) -> tuple[int, list[str], dict[str, Any]]:
    """Drive a dariod through a key-echoing upstream; return (places checked, leaks, status).

    Two accounts: one with an Anthropic-shaped key, one with a key of no known shape (only the
    exact-secret rule can catch it). Each quotes its key in a 529, an in-stream error, a spend
    limit 429 and finally a 401.
    """
    marker = uuid.uuid4().hex
    shaped = f"sk-ant-api03-ECHOED-{marker}"
    plain = f"vendor-key-{marker[::-1]}"
    needles = [shaped, plain, marker, marker[::-1]]
    d.login("shaped", shaped, upstream.url)
    d.login("plain", plain, upstream.url)
    said: list[str] = []

    def ctl(*args: str) -> None:
        result = d.ctl(*args)
        said.append(f"ctl {' '.join(args)}: {result.stdout}{result.stderr}")

    replies = []

    def hostile(action: dict[str, Any], body: bytes, path: str = "/v1/messages") -> None:
        for key in (shaped, plain):
            upstream.script(action, key=key)
        replies.append(api(d, "POST", path, body))
        assert upstream.pending() == [], "each account answered the hostile way once"
        ctl("status", "--json")  # the reasons quote the upstream

    hostile({"echo_key": True, "status": 529}, MESSAGE)
    hostile({"echo_key": True, "stream_error": "overloaded_error"}, STREAM)  # in-stream, before content
    hostile({"echo_key": True, "status": 429, "spend_limit": True}, CHAT, "/v1/chat/completions")
    ctl("refresh")  # a fresh key check clears the spend-limit block
    hostile({"echo_key": True}, MESSAGE)  # 401 on both
    assert replies[-1].status == 401, replies[-1]
    status = d.ctl_json("status")
    reasons = [a["reason"] for a in status["accounts"]]
    assert all(r and "[redacted]" in r for r in reasons), reasons  # the upstream text is kept, minus the key
    for path in ("/accounts", "/analytics", "/health"):
        replies.append(api(d, "GET", path))
    for args in (("status", "--json"), ("status",), ("accounts", "list", "--json"), ("accounts", "list"),
                 ("usage", "--json"), ("usage",), ("refresh",)):
        ctl(*args)
    tray = _tray_text(status)
    sent = {r["key"] for r in upstream.requests()}
    assert {shaped, plain} <= sent  # both keys really went upstream and were really echoed

    places = [f"reply {r.status} {r.headers} {r.body.decode(errors='replace')}" for r in replies]
    places += said
    places.append(f"tray: {tray}")
    assert d.stop() == 0
    places.append("dariod stdout: " + "\n".join(d.stdout_lines))
    places.append("dariod log: " + d.stderr())
    db = d.home / "state" / "dario" / "usage.sqlite3"
    places.append("analytics rows: " + _sqlite_text(db))
    leaks = [p[:400] for p in places if any(n in p for n in needles)]
    files = [p for p in d.home.rglob("*") if p.is_file() and p.name not in {"keyring.json", "keyring.tmp"}]
    leaks += _scan(d.home, needles, skip={"keyring.json", "keyring.tmp"})
    assert (d.home / "state" / "dario" / "pool-state.json").exists()
    return len(places) + len(files), leaks, status


def test_echoed_key_is_redacted_everywhere(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(args=["--verbose"])
    checked, leaks, _ = echo_key_leaks(d, upstream)
    assert checked > 20
    assert not leaks, leaks
