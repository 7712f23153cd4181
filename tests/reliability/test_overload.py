"""Overload is passed through, not held; slow clients are cut off: timed, with a summary row.

Not a load test: one account, a handful of requests, and a few hundred idle sockets on loopback.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.reliability import harness, load
from tests.reliability.harness import ask, attempts, post, start_pool

KEYS = load.KEYS
ROWS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    if ROWS:
        harness.report("overload and slow clients:\n" + "".join(ROWS))


@pytest.fixture
def fake() -> Iterator[load.BigLogFake]:
    upstream = load.BigLogFake().start()
    try:
        yield upstream
    finally:
        upstream.stop()


def test_six_529s_then_a_request_is_not_held(fake: load.BigLogFake) -> None:
    d = start_pool(fake, "a", args=["--queue-timeout", "60"])
    try:
        fake.script(*[{"status": 529}] * 6, key=KEYS["a"])
        marker = uuid.uuid4().hex
        for i in range(6):
            status, _, body = post(d.url, "/v1/messages", ask(f"{marker} {i}"))
            assert status == 529, body  # the upstream's own overload, passed through
        started = time.monotonic()
        status, _, body = post(d.url, "/v1/messages", ask(f"{marker} 7"))
        waited = time.monotonic() - started
        assert status == 200, body
        assert len(attempts(fake, marker)) == 7
        assert waited < 1.0, f"the seventh request waited {waited:.2f} s behind the cooldown"
        ROWS.append(f"  six 529s in a row on a lone account, then a request: answered in {waited:.2f} s "
                    "(it waited 16 s when a cooldown held requests)\n")
    finally:
        d.cleanup()


def test_many_stalled_bodies_do_not_starve_health(fake: load.BigLogFake) -> None:
    n = 200
    d = start_pool(fake, "a", env={"DARIO_BODY_IDLE_TIMEOUT": "2", "DARIO_BODY_DEADLINE": "5"})
    head = harness.request_head("POST", "/v1/messages", d.port, {"content-type": "application/json"}, body_len=100)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=15)
            s.sendall(head + b"{")  # 1 of 100 bytes, then nothing
            socks.append(s)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as probe:
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert probe.recv(64).startswith(b"HTTP/1.1 200")
        health = time.monotonic() - started
        for s in socks:
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        closed = time.monotonic() - started
        assert health < 2.0 and closed < 10.0
        ROWS.append(f"  {n} request bodies stalled after 1 byte: /health answered in {health:.2f} s; all {n} got "
                    f"408 and were closed {closed:.1f} s later (idle bound 2 s)\n")
    finally:
        for s in socks:
            s.close()
        d.cleanup()
