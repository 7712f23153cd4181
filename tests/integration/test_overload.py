"""One client cannot starve the rest, and dario answers odd input with 4xx, never 5xx of its own.

Raw sockets on loopback, against real dariod processes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support import Dariod

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@contextmanager
def connect(dariod: Dariod, timeout: float = 10.0) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", dariod.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open after {timeout} s; got {out[:200]!r}") from None
        if not chunk:
            return out, time.monotonic() - started
        out += chunk


def exchange(dariod: Dariod, data: bytes, quiet: float = 2.0) -> bytes:
    """Send `data`; what comes back until the server closes or stays quiet for `quiet` seconds."""
    with connect(dariod) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return out
            if not chunk:
                return out
            out += chunk


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


UPGRADE_H2C = (
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
)


def test_cleartext_http2_is_off_unless_asked_for(dariod_factory: Any) -> None:
    dariod = dariod_factory()
    upgraded = exchange(dariod, UPGRADE_H2C)
    assert status_of(upgraded) == 200  # the Upgrade is ignored (RFC 9110 §7.8): plain HTTP/1.1
    assert b"upgrade: h2c" not in upgraded.lower()
    preface = exchange(dariod, H2_PREFACE + H2_EMPTY_SETTINGS)
    assert 400 <= status_of(preface) < 500  # an HTTP/1.1 refusal, not an HTTP/2 SETTINGS frame
    assert b"HTTP/1.1 5" not in preface
    # The flag turns it back on.
    h2 = dariod_factory(args=["--http2-cleartext"])
    assert exchange(h2, UPGRADE_H2C).startswith(b"HTTP/1.1 101 ")
    assert not exchange(h2, H2_PREFACE + H2_EMPTY_SETTINGS).startswith(b"HTTP/")


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def post_head(length: int) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: " + str(length).encode() + b"\r\n\r\n"
    )


def test_a_stalled_body_is_answered_408_and_closed(dariod_factory: Any) -> None:
    dariod = dariod_factory(env={"DARIO_BODY_IDLE_TIMEOUT": "1", "DARIO_BODY_DEADLINE": "3"})
    with connect(dariod) as sock:
        sock.sendall(post_head(100) + b"{")  # 1 of 100 bytes, then nothing
        response, took = read_until_closed(sock, 10.0)
    assert status_of(response) == 408, response
    assert took < 3.0


def test_a_dripping_body_is_cut_at_the_body_deadline(dariod_factory: Any) -> None:
    dariod = dariod_factory(env={"DARIO_BODY_IDLE_TIMEOUT": "1", "DARIO_BODY_DEADLINE": "2"})
    with connect(dariod) as sock:
        sock.sendall(post_head(100))
        started = time.monotonic()
        sock.settimeout(0.3)
        response = b""
        # One byte every 0.3 s never trips the idle timeout; the total deadline still ends it.
        while time.monotonic() - started < 8.0:
            try:
                sock.sendall(b" ")
            except OSError:
                break  # closed on us
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            response += chunk
        took = time.monotonic() - started
    assert status_of(response) == 408, response
    assert took < 5.0


def test_health_answers_while_many_bodies_stall(dariod_factory: Any) -> None:
    dariod = dariod_factory(env={"DARIO_BODY_IDLE_TIMEOUT": "2", "DARIO_BODY_DEADLINE": "4"})
    stalled = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", dariod.port), timeout=10.0)
            sock.sendall(post_head(100) + b"{")
            stalled.append(sock)
        started = time.monotonic()
        assert status_of(exchange(dariod, HEALTH)) == 200
        assert time.monotonic() - started < 2.0
        # Every stalled connection is closed by the server within the bound.
        for sock in stalled:
            response, _ = read_until_closed(sock, 10.0)
            assert status_of(response) == 408
        assert time.monotonic() - started < 8.0
    finally:
        for sock in stalled:
            sock.close()


def test_odd_bytes_in_a_path_or_query_get_4xx_never_5xx(dariod: Dariod) -> None:
    for target, expected in (
        (b"/static/a%00.js", 404),  # a NUL once reached open(): ValueError, 500
        (b"/static/a%ff.js", 404),
        (b"/static/%2e%2e%2fx.js", 404),
        (b"/static/dashboard.js", 200),
        (b"/v1/models?after_id=%00%ff", 200),
        (b"/v1/models?limit=%ff", 400),
        (b"/analytics?window=%00", 400),
        (b"/health?\x7f=1", 400),
        (b"/v1/models?after_id=\xff\xfe", 400),
        (b"/v1/models/%00", 404),
    ):
        response = exchange(dariod, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status_of(response) == expected, (target, response[:300])
    assert "Traceback" not in dariod.stderr()


def rss_mb(dariod: Dariod) -> float:
    assert dariod.proc is not None
    with open(f"/proc/{dariod.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_long_user_agents_do_not_grow_memory_for_good(dariod: Dariod) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", dariod.port, timeout=30)
    try:
        def models(user_agent: str) -> None:
            conn.request("GET", "/v1/models", headers={"user-agent": user_agent})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200

        for i in range(50):  # warm up: allocator, model catalogue, first responses
            models(f"warm{i}/1.0")
        before = rss_mb(dariod)
        for i in range(1100):  # each a distinct 60 KB User-Agent
            models(f"tool{i}/1.0 " + "x" * 60_000)
        grown = rss_mb(dariod) - before
    finally:
        conn.close()
    print(f"RSS grew {grown:.1f} MB")
    assert grown < 20, f"RSS grew {grown:.1f} MB"  # it was ~60 MB when every agent was kept whole
