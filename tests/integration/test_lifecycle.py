"""dariod's life: clean stops, in-flight streams across SIGTERM, one daemon per socket, restarts.

Real processes and real signals. Waiting is done by polling a condition with a deadline (a
process exit, a file disappearing), never by sleeping a guessed amount.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import orjson
import pytest

from tests.fakeupstream import LONG_WORDS
from tests.support import Dariod

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-4-6"
HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01"}




def post_message(d: Dariod, text: str = "Hello") -> tuple[int, dict[str, str], bytes]:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=orjson.dumps(body), headers=HEADERS)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def health_ok(d: Dariod) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        return resp.status == 200 and orjson.loads(resp.read())["status"] == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_and_removes_the_socket(dariod: Dariod, sig: int) -> None:
    assert dariod.socket.is_socket()
    assert dariod.ctl("status").returncode == 0
    assert dariod.stop(sig) == 0
    assert not dariod.socket.exists()
    assert "Traceback" not in dariod.stderr()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", dariod.port))


def test_in_flight_stream_completes_after_sigterm(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-ant-lifecycle", upstream.url)
    # About 16 events 0.2 s apart: a stream that is still running when SIGTERM arrives.
    upstream.script({"event_delay": 0.2})
    texts: list[str] = []
    signalled_at = stream_done_at = 0.0
    with anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0, timeout=30) as client:
        with client.messages.stream(model=MODEL, max_tokens=256,
                                    messages=[{"role": "user", "content": "[[long:10]]"}]) as stream:
            for event in stream:
                if event.type == "text":
                    texts.append(event.text)
                    if len(texts) == 1:
                        assert dariod.proc is not None
                        dariod.proc.send_signal(signal.SIGTERM)
                        signalled_at = time.monotonic()
            final = stream.get_final_message()
            stream_done_at = time.monotonic()
    assert signalled_at and stream_done_at - signalled_at > 1.0  # the stream really outlived the signal
    assert "".join(texts) == "".join(LONG_WORDS[i % len(LONG_WORDS)] for i in range(10))
    assert final.stop_reason == "end_turn"
    assert dariod.proc is not None
    assert dariod.proc.wait(timeout=15) == 0
    assert not dariod.socket.exists()


def test_stream_longer_than_the_grace_period_is_cut(dariod_factory: Callable[..., Dariod],
                                                    upstream: Any) -> None:
    d = dariod_factory(args=["--grace-period", "1"])
    d.login("work", "sk-ant-lifecycle", upstream.url)
    upstream.script({"event_delay": 0.5})  # ~8 s of stream
    got_text = threading.Event()
    texts: list[str] = []
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            with anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0, timeout=30) as client:
                with client.messages.stream(model=MODEL, max_tokens=256,
                                            messages=[{"role": "user", "content": "[[long:12]]"}]) as stream:
                    for event in stream:
                        if event.type == "text":
                            texts.append(event.text)
                            got_text.set()
                    stream.get_final_message()
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert got_text.wait(15)
    assert d.proc is not None
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5  # the grace period, not the whole stream
    worker.join(15)
    assert outcome and outcome[0] is not None, "the client saw a complete stream from a daemon that stopped"
    assert len(texts) < 12
    # Cut well-formed: an `error` event the SDK raises as an API error, not a broken connection.
    assert isinstance(outcome[0], anthropic.APIStatusError), repr(outcome[0])
    assert "incomplete" in str(outcome[0])


def test_sigterm_is_prompt_with_an_idle_keep_alive_client(dariod: Dariod, upstream: Any) -> None:
    """Regression: the hang-up watcher once cancelled the request on the "disconnect" hypercorn sends
    from inside the final send(), leaving the connection half recycled: never idle, never closed, and
    shutdown waited the whole grace period for it."""
    dariod.login("work", "sk-ant-lifecycle", upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", dariod.port, timeout=30)
    try:
        body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
        conn.request("POST", "/v1/messages", body=orjson.dumps(body), headers=HEADERS)
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()  # done; the connection stays open, idle, as every HTTP client pool keeps it
        assert dariod.proc is not None
        t0 = time.monotonic()
        dariod.proc.send_signal(signal.SIGTERM)
        try:
            code = dariod.proc.wait(timeout=4)  # the default grace period is 10 s
        except subprocess.TimeoutExpired:
            dariod.kill()
            raise AssertionError("dariod waited for an idle keep-alive connection on SIGTERM") from None
        assert code == 0 and time.monotonic() - t0 < 4
    finally:
        conn.close()


def test_connection_close_is_honoured_after_a_proxied_request(dariod: Dariod, upstream: Any) -> None:
    """Regression: the same early cancel left the connection open after a `Connection: close` request."""
    dariod.login("work", "sk-ant-lifecycle", upstream.url)
    body = orjson.dumps({"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
    for method, path, payload in (("GET", "/health", b""), ("POST", "/v1/messages", body)):
        with socket.create_connection(("127.0.0.1", dariod.port), timeout=2) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"anthropic-version: 2023-06-01\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                .encode() + payload
            )
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                raise AssertionError(f"{path}: no EOF after the response to a Connection: close request") from None
            assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_second_dariod_on_the_same_port_refuses(dariod_factory: Callable[..., Dariod]) -> None:
    first = dariod_factory()
    second = dariod_factory(args=["--port", str(first.port)], start=False)
    with pytest.raises(RuntimeError):
        second.start(timeout=15)
    assert second.proc is not None and second.proc.returncode == 1
    assert "already in use" in second.stderr() and "Traceback" not in second.stderr()
    assert not second.socket.exists()
    assert health_ok(first)


def test_second_dariod_on_the_same_socket_refuses(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    first = dariod_factory()
    first.login("work", "sk-ant-first", upstream.url)
    inode = first.socket.stat().st_ino
    second = dariod_factory(args=["--socket", str(first.socket)], start=False)
    with pytest.raises(RuntimeError):
        second.start(timeout=15)
    assert second.proc is not None and second.proc.returncode not in (0, None)
    assert "another dariod is already running" in second.stderr()
    # The first one never noticed.
    assert first.socket.stat().st_ino == inode
    assert health_ok(first)
    status = first.ctl_json("status")
    assert first.proc is not None and status["pid"] == first.proc.pid
    assert [a["alias"] for a in status["accounts"]] == ["work"]
    code, headers, _ = post_message(first)
    assert code == 200 and headers["x-dario-account"] == "work"


def test_restart_after_kill_9_keeps_accounts_and_preference(dariod_factory: Callable[..., Dariod],
                                                            upstream: Any) -> None:
    first = dariod_factory()
    first.login("alpha", "sk-ant-alpha-key", upstream.url)
    first.login("beta", "sk-ant-beta-key", upstream.url)
    assert first.ctl("accounts", "prefer", "beta").returncode == 0
    assert first.ctl("accounts", "disable", "alpha").returncode == 0
    assert first.ctl("accounts", "enable", "alpha").returncode == 0
    code, headers, _ = post_message(first)
    assert code == 200 and headers["x-dario-account"] == "beta"

    first.kill()
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    assert first.socket.exists()  # the stale socket file a crash leaves behind
    assert first.ctl("status").returncode == 3

    second = dariod_factory(home=first.home)
    assert second.socket == first.socket
    status = second.ctl_json("status")
    accounts = {a["alias"]: a for a in status["accounts"]}
    assert set(accounts) == {"alpha", "beta"}
    assert accounts["beta"]["preferred"] is True and accounts["alpha"]["preferred"] is False
    assert all(a["status"] == "ok" and a["enabled"] for a in accounts.values()), accounts
    assert accounts["alpha"]["base_url"] == upstream.url

    # The secrets came back from the keyring: each account's own key reaches the upstream.
    upstream.clear()
    code, headers, _ = post_message(second)
    assert code == 200 and headers["x-dario-account"] == "beta"
    assert second.ctl("accounts", "prefer", "alpha").returncode == 0
    code, headers, _ = post_message(second)
    assert code == 200 and headers["x-dario-account"] == "alpha"
    assert [r["key"] for r in upstream.requests() if r["path"] == "/v1/messages"] == [
        "sk-ant-beta-key", "sk-ant-alpha-key"
    ]

    # A clean stop and a third start keep the new preference too.
    assert second.stop() == 0
    third = dariod_factory(home=first.home)
    accounts = {a["alias"]: a for a in third.ctl_json("accounts", "list")["accounts"]}
    assert accounts["alpha"]["preferred"] is True


def test_restart_remembers_a_rejected_key(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    """A key the upstream rejected stays needs_login across a restart; dario does not hammer it."""
    first = dariod_factory()
    first.login("work", "sk-ant-revoked-later", upstream.url)
    upstream.script({"status": 401}, key="sk-ant-revoked-later")
    code, _, _ = post_message(first)
    assert code == 401
    assert first.ctl_json("status")["accounts"][0]["status"] == "needs_login"
    assert first.stop() == 0
    upstream.clear()
    second = dariod_factory(home=first.home)
    assert second.ctl_json("status")["accounts"][0]["status"] == "needs_login"
    code, _, body = post_message(second)
    assert code == 503 and b"work" in body
    assert upstream.requests() == []


def test_unreadable_account_registry_stops_startup_with_a_clear_message(
        dariod_factory: Callable[..., Dariod]) -> None:
    d = dariod_factory(start=False)
    registry = d.home / "config" / "dario" / "accounts.json"
    registry.parent.mkdir(parents=True)
    registry.write_text("{not json")
    with pytest.raises(RuntimeError):
        d.start(timeout=15)
    assert d.proc is not None and d.proc.returncode == 1
    stderr = d.stderr()
    assert f"dariod: {registry} is not valid JSON" in stderr and "move it aside" in stderr
    assert "Traceback" not in stderr and not d.socket.exists()
