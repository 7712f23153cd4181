"""The peer-uid gate: asked once per connection under hypercorn, never reused across connections."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dario.daemon import peercred
from dario.daemon.asgi import Receive, Scope, Send, lifespan, send_response
from dario.daemon.edge.peergate import PeerGate

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel socket table is Linux's")


@linux_only
def test_netlink_and_proc_agree_on_a_loopback_connection() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as c:
            accepted, _ = srv.accept()
            with accepted:
                local, remote = c.getsockname(), c.getpeername()
                assert peercred.netlink_owner_uid(local, remote) == os.getuid()
                assert peercred.proc_owner_uid(local, remote) == os.getuid()
                # The server's end, asked the other way round, is ours too.
                assert peercred.tcp_owner_uid(accepted.getsockname(), accepted.getpeername()) == os.getuid()
        with pytest.raises(peercred.PeerUnknown):
            peercred.netlink_owner_uid(("127.0.0.1", 1), srv.getsockname())
        with pytest.raises(peercred.PeerUnknown):
            peercred.proc_owner_uid(("127.0.0.1", 1), srv.getsockname())


def test_unix_peer_is_this_process() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peercred.unix_peer_uid(a) == os.getuid()


def test_gate_is_off_with_an_api_key_or_off_linux() -> None:
    assert PeerGate.for_settings("a-key") is None
    assert (PeerGate.for_settings(None) is not None) == sys.platform.startswith("linux")


class _App:
    def __init__(self, gate: PeerGate) -> None:
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        ok = self.gate.allows(scope)
        await send_response(send, 200 if ok else 403, b"ok" if ok else b"no", content_type=b"text/plain")


async def _requests_on_one_connection(port: int, n: int) -> list[int]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    statuses = []
    async with stream:
        buffer = b""
        for _ in range(n):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while b"\r\n\r\n" not in buffer or len(buffer.partition(b"\r\n\r\n")[2]) < 2:
                chunk = await stream.receive_some(65536)
                assert chunk, "server closed early"
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            statuses.append(int(head.split()[1]))
            buffer = rest[2:]
    return statuses


async def _serve_and_call(gate: PeerGate, plan: list[int]) -> list[list[int]]:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    results: list[list[int]] = []
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(_App(gate), config, shutdown_trigger=stop.wait,  # type: ignore[arg-type]
                                      task_status=task_status, mode="asgi"))
        port = int(binds[0].rsplit(":", 1)[1])
        for n in plan:
            results.append(await _requests_on_one_connection(port, n))
        stop.set()
    return results


def test_lookup_is_once_per_connection_and_each_connection_is_asked_afresh() -> None:
    asked: list[tuple[Any, Any]] = []
    # As root, the gate's own uid is 1000 here: uid 0 is always trusted and is not what is tested.
    own = os.getuid() or 1000
    verdicts = iter([own, own + 4242, own])  # ours, someone else's, ours

    def lookup(local: tuple[str, int], remote: tuple[str, int]) -> int:
        asked.append((local, remote))
        return next(verdicts)

    gate = PeerGate(own, lookup)
    results = trio.run(_serve_and_call, gate, [3, 2, 4])
    assert results == [[200, 200, 200], [403, 403], [200, 200, 200, 200]]
    assert len(asked) == 3 == gate.lookups  # one per connection, not one per request
    # The client's own address is what was asked about, with dario's as the remote end.
    assert all(local[0] == "127.0.0.1" and remote[0] == "127.0.0.1" for local, remote in asked)


@linux_only
def test_real_lookup_serves_our_own_connections() -> None:
    gate = PeerGate(os.getuid())
    assert trio.run(_serve_and_call, gate, [2]) == [[200, 200]]
    assert gate.lookups == 1


def test_non_loopback_or_unknown_client_is_refused() -> None:
    gate = PeerGate(os.getuid(), lambda local, remote: os.getuid())
    assert not gate.allows({"client": ("192.0.2.7", 5000), "server": ("127.0.0.1", 3456)})
    assert not gate.allows({"client": None, "server": None})

    def unknown(local: tuple[str, int], remote: tuple[str, int]) -> int:
        raise peercred.PeerUnknown("gone")

    assert not PeerGate(os.getuid(), unknown).allows({"client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 3456)})
