"""dario.daemon.upstream.httpclient against real servers on 127.0.0.1.

Every server here is started by its test (trio + h11, or raw bytes). Synchronisation
between client and server is by trio Events, never by sleeping; the only timers are
the client timeouts under test and a fail_after guard around each test.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import socket
import ssl
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
import trustme

from dario.daemon.upstream import httpclient
from dario.daemon.upstream.httpclient import (
    ConnectError,
    HttpClient,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    Timeouts,
    UpstreamError,
    WriteError,
)

SECRET = b"sk-ant-api03-SECRET-do-not-leak"
# A name only the test proxy resolves (to 127.0.0.1): loopback names never go through a proxy.
PROXIED_HOST = "upstream.test"
_ENV = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


@pytest.fixture(autouse=True)
def http_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own proxy settings must not leak into these tests.
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def http_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def http_server_tls(http_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    http_ca.issue_cert("127.0.0.1", "localhost", PROXIED_HOST).configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@pytest.fixture
def http_client_tls(http_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    http_ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def http_conns(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every upstream connection the client opens, kept referenced: a socket closed only by
    garbage collection would otherwise pass for one the client closed."""
    made: list[Any] = []
    original = httpclient._Connection.__init__

    def spy(self: Any, *args: Any) -> None:
        original(self, *args)
        made.append(self)

    monkeypatch.setattr(httpclient._Connection, "__init__", spy)
    return made


def closed(conn: Any) -> bool:
    return bool(conn.sock.fileno() == -1)


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test under trio with a hard deadline (a hang fails, it doesn't stall)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            with trio.fail_after(15):
                await fn(*args, **kwargs)

        trio.run(main)

    return wrapper


# ----------------------------------------------------------------------------- test servers

Handler = Callable[["Server", trio.abc.Stream], Awaitable[None]]


class Server:
    """A loopback TCP (optionally TLS) server; `handler` owns each accepted connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.port = 0
        self.accepts = 0
        self.open = 0
        self.max_open = 0
        self.eofs = 0  # connections the client closed (EOF seen by the server)
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.alpn: list[str | None] = []
        self.eof_event = trio.Event()
        self.gate = trio.Event()  # tests open it to let a stalled handler go on
        self.lines: list[bytes] = []  # raw request heads (proxy)
        self.state: set[bytes] = set()  # behaviour switches for the proxy

    async def start(self, nursery: trio.Nursery) -> Server:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def saw_eof(self) -> None:
        self.eofs += 1
        self.eof_event.set()

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        s: trio.abc.Stream = stream
        try:
            if self.tls is not None:
                tls = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
                await tls.do_handshake()
                self.alpn.append(tls.selected_alpn_protocol())
                s = tls
            await self.handler(self, s)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            self.open -= 1
            await trio.aclose_forcefully(s)


async def read_request(h: h11.Connection, stream: trio.abc.Stream) -> tuple[h11.Request, bytes] | None:
    """One request and its body, or None at a clean EOF between requests."""
    req: h11.Request | None = None
    body = bytearray()
    while True:
        ev = h.next_event()
        if ev is h11.NEED_DATA:
            h.receive_data(await stream.receive_some(65536))
        elif isinstance(ev, h11.Request):
            req = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            assert req is not None
            return req, bytes(body)
        elif isinstance(ev, h11.ConnectionClosed):
            return None
        else:
            raise AssertionError(ev)


async def send_response(
    h: h11.Connection,
    stream: trio.abc.Stream,
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    length: bool = True,
) -> None:
    hdrs = list(headers or [])
    if length:
        hdrs.append((b"content-length", b"%d" % len(body)))
    out = h.send(h11.Response(status_code=status, headers=hdrs))
    if body:
        out += h.send(h11.Data(data=body))
    out += h.send(h11.EndOfMessage())
    await stream.send_all(out)


async def keepalive(server: Server, stream: trio.abc.Stream) -> None:
    """Answer every request with "hello N" (N counts requests server-wide)."""
    h = h11.Connection(h11.SERVER)
    while True:
        got = await read_request(h, stream)
        if got is None:
            server.saw_eof()
            return
        server.requests.append(got)
        await send_response(h, stream, body=b"hello %d" % len(server.requests))
        if h.our_state is h11.MUST_CLOSE:
            return
        h.start_next_cycle()


async def wait_eof(stream: trio.abc.Stream) -> bool:
    """Drain until the client closes; True on EOF/reset."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# ----------------------------------------------------------------------------- keep-alive, bodies


@trio_test
async def test_keepalive_five_requests_one_connection() -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive).start(n)
        async with HttpClient(trust_env=False) as client:
            for i in range(1, 6):
                resp = await client.request("GET", srv.url(f"/r{i}?x=1"), [(b"X-Api-Key", SECRET)])
                assert resp.status == 200
                assert resp.reason == b""
                assert resp.header(b"content-length") == b"%d" % len(b"hello 1")
                assert resp.header(b"nope") is None
                assert await resp.read() == b"hello %d" % i
                await resp.aclose()
            assert srv.accepts == 1
            req, _ = srv.requests[2]
            assert req.target == b"/r3?x=1"
            assert (b"host", b"127.0.0.1:%d" % srv.port) in list(req.headers)
            assert (b"x-api-key", SECRET) in list(req.headers)
            assert (b"content-length", b"0") not in list(req.headers)  # GET without body
            # The pooled socket has Nagle off: small heads must not wait for ACKs.
            (pool,) = client._pools.values()
            assert pool.idle[0].sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        n.cancel_scope.cancel()


@trio_test
async def test_post_adds_content_length_and_drops_caller_framing_headers() -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive).start(n)
        async with HttpClient(trust_env=False) as client:
            hdrs = [(b"Content-Length", b"999"), (b"Host", b"evil"), (b"Transfer-Encoding", b"chunked")]
            async with client.stream("POST", srv.url("/empty"), hdrs) as resp:
                assert await resp.read() == b"hello 1"
            async with client.stream("POST", srv.url("/data"), [], b'{"a":1}') as resp:
                assert resp.status == 200
        (r1, b1), (r2, b2) = srv.requests
        assert (b"content-length", b"0") in list(r1.headers) and b1 == b""
        assert (b"host", b"127.0.0.1:%d" % srv.port) in list(r1.headers)
        assert all(name != b"transfer-encoding" for name, _ in r1.headers)
        assert (b"content-length", b"7") in list(r2.headers) and b2 == b'{"a":1}'
        n.cancel_scope.cancel()


@trio_test
async def test_chunked_stream_is_not_buffered() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while (got := await read_request(h, stream)) is not None:
            server.requests.append(got)
            # No Content-Length to an HTTP/1.1 client: h11 frames this chunked.
            await stream.send_all(
                h.send(h11.Response(status_code=200, headers=[])) + h.send(h11.Data(data=b"first"))
            )
            await server.gate.wait()  # the second chunk exists only once the client has the first
            await stream.send_all(h.send(h11.Data(data=b"second")) + h.send(h11.EndOfMessage()))
            h.start_next_cycle()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request("GET", srv.url(), [])
            assert resp.header(b"transfer-encoding") == b"chunked"
            chunks = resp.aiter_bytes()
            assert await chunks.__anext__() == b"first"
            srv.gate.set()
            assert await chunks.__anext__() == b"second"
            with pytest.raises(StopAsyncIteration):
                await chunks.__anext__()
            await resp.aclose()
            # Chunked body read to the end: the connection is reused.
            resp = await client.request("GET", srv.url(), [])
            assert await resp.read() == b"firstsecond"
            assert srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_content_length_body_large() -> None:
    payload = os.urandom(300_000)  # several receive chunks

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while await read_request(h, stream) is not None:
            await send_response(h, stream, body=payload)
            h.start_next_cycle()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            for _ in range(2):
                resp = await client.request("GET", srv.url(), [])
                assert resp.header(b"content-length") == b"300000"
                assert await resp.read() == payload
            assert srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_read_until_close_body_then_new_connection() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        # HTTP/1.0 style: no length, no chunking, the end of the body is the close.
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await stream.send_all(b"part two")
        await stream.aclose()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            for _ in range(2):
                resp = await client.request("GET", srv.url(), [])
                assert resp.http_version == b"1.0"
                assert await resp.read() == b"part one, part two"
            assert srv.accepts == 2
        n.cancel_scope.cancel()


@trio_test
async def test_connection_close_header_not_reused() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        await send_response(h, stream, body=b"bye", headers=[(b"connection", b"close")])

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            for _ in range(3):
                resp = await client.request("GET", srv.url(), [])
                assert await resp.read() == b"bye"
            assert srv.accepts == 3
            assert not next(iter(client._pools.values())).idle
        n.cancel_scope.cancel()


@trio_test
async def test_head_204_304_have_no_body_and_keep_alive() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while (got := await read_request(h, stream)) is not None:
            req, _ = got
            if req.method == b"HEAD":
                # A HEAD answer announces the GET length but carries no body.
                await send_response(h, stream, headers=[(b"content-length", b"1234")], length=False)
            else:
                await send_response(h, stream, status=int(req.target[1:]), length=False)
            h.start_next_cycle()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            for method, path, status in (("HEAD", "/", 200), ("GET", "/204", 204), ("GET", "/304", 304)):
                resp = await client.request(method, srv.url(path), [])
                assert resp.status == status
                assert await resp.read() == b""
            resp = await client.request("HEAD", srv.url(), [])
            assert resp.header(b"content-length") == b"1234"
            await resp.aclose()  # nothing read, but there was nothing to read: reusable
            assert srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_informational_response_is_skipped() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
        await wait_eof(stream)

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request("POST", srv.url(), [], b"x")
            assert (resp.status, resp.reason) == (201, b"Created")
            assert await resp.read() == b"ok"
        n.cancel_scope.cancel()


@trio_test
async def test_10mb_request_body_arrives_intact() -> None:
    body = os.urandom(10 * 1024 * 1024)

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while (got := await read_request(h, stream)) is not None:
            req, data = got
            server.requests.append((req, b""))
            await send_response(
                h, stream, body=b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
            )
            h.start_next_cycle()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request(
                "PUT", srv.url("/upload"), [(b"content-type", b"application/octet-stream")], body
            )
            assert await resp.read() == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
            req, _ = srv.requests[0]
            assert (b"content-length", b"%d" % len(body)) in list(req.headers)
        n.cancel_scope.cancel()


@trio_test
async def test_early_response_during_upload_is_returned() -> None:
    # A plain-HTTP server may refuse a large body before reading it (413) and close; the
    # caller should get that answer, not a bare WriteError. (Over TLS, trio's SSLStream is
    # unusable after a failed write, so there this surfaces as WriteError.)
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        server.lines.append(buf.partition(b"\r\n\r\n")[0])
        await stream.send_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        await stream.aclose()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request("POST", srv.url(), [], b"\0" * (16 * 1024 * 1024))
            assert resp.status == 413
            assert await resp.read() == b"too big!"
            assert not next(iter(client._pools.values())).idle  # the upload never finished
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------- retry rules


@pytest.mark.parametrize(
    ("liveness_check", "method"),
    [(True, "POST"), (False, "GET")],
    ids=["detected-idle-close", "retry-after-send"],
)
def test_server_closed_idle_connection_next_request_succeeds(
    monkeypatch: pytest.MonkeyPatch, liveness_check: bool, method: str
) -> None:
    if not liveness_check:
        # Simulate the race where the FIN lands after checkout: the request is sent on the
        # dead socket and the one-shot retry must carry it (idempotent methods only).
        monkeypatch.setattr(httpclient._Connection, "looks_dead", lambda self: False)

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)
        await send_response(h, stream, body=b"hello %d" % len(server.requests))
        await stream.aclose()  # keep-alive was promised; the server drops it while idle
        server.gate.set()

    @trio_test
    async def run() -> None:
        async with trio.open_nursery() as n:
            srv = await Server(handler).start(n)
            async with HttpClient(trust_env=False) as client:
                resp = await client.request(method, srv.url(), [], b"one")
                assert await resp.read() == b"hello 1"
                assert len(next(iter(client._pools.values())).idle) == 1  # pooled
                await srv.gate.wait()
                resp = await client.request(method, srv.url(), [], b"two")
                assert await resp.read() == b"hello 2"
            assert [body for _, body in srv.requests] == [b"one", b"two"]  # each seen once
            assert srv.accepts == 2
            n.cancel_scope.cancel()

    run()


def test_a_post_that_went_out_on_a_dying_connection_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server may have acted on a POST it received whole: the caller decides, not the client."""
    monkeypatch.setattr(httpclient._Connection, "looks_dead", lambda self: False)

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)
        await send_response(h, stream, body=b"hello")
        await stream.aclose()
        server.gate.set()

    @trio_test
    async def run() -> None:
        async with trio.open_nursery() as n:
            srv = await Server(handler).start(n)
            async with HttpClient(trust_env=False) as client:
                resp = await client.request("POST", srv.url(), [], b"one")
                assert await resp.read() == b"hello"
                await srv.gate.wait()
                with pytest.raises(RemoteProtocolError):
                    await client.request("POST", srv.url(), [], b"two")
            assert [body for _, body in srv.requests] == [b"one"]
            assert srv.accepts == 1  # no second connection: nothing was sent again
            n.cancel_scope.cancel()

    run()


@trio_test
async def test_fresh_connection_closed_without_response_is_not_retried() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            with pytest.raises(RemoteProtocolError, match="without sending a response") as info:
                await client.request("POST", srv.url(), [(b"x-api-key", SECRET)], b"once")
        assert SECRET.decode() not in full_text(info.value)
        assert len(srv.requests) == 1 and srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_reused_connection_failing_after_response_bytes_is_not_retried() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)
        await send_response(h, stream, body=b"ok")
        h.start_next_cycle()
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Le")  # then dies mid head

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            assert await (await client.request("GET", srv.url(), [])).read() == b"ok"
            with pytest.raises(RemoteProtocolError, match="mid response head"):
                await client.request("GET", srv.url(), [])
        assert len(srv.requests) == 2 and srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_truncated_body_raises_and_stays_failed() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        assert await read_request(h, stream) is not None
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request("GET", srv.url(), [])
            with pytest.raises(RemoteProtocolError, match="closed before the response body ended"):
                await resp.read()
            with pytest.raises(RemoteProtocolError):  # a truncated body never looks complete later
                await resp.read()
        n.cancel_scope.cancel()


@trio_test
async def test_invalid_response_header_message_hides_values() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        assert await read_request(h, stream) is not None
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Echo: " + SECRET + b"\x00\r\nContent-Length: 0\r\n\r\n")

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            with pytest.raises(RemoteProtocolError, match="invalid response head") as info:
                await client.request("GET", srv.url(), [])
            assert SECRET.decode() not in full_text(info.value)
        n.cancel_scope.cancel()


@trio_test
async def test_invalid_request_header_is_refused_without_echoing_it() -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive).start(n)
        async with HttpClient(trust_env=False) as client:
            with pytest.raises(ValueError) as info:
                await client.request("GET", srv.url(), [(b"x-api-key", SECRET + b"\r\nInjected: 1")])
            assert SECRET.decode() not in full_text(info.value)
            with pytest.raises(ValueError):
                await client.request("GET", "ftp://127.0.0.1/", [])
        assert srv.accepts == 0  # refused before any connection
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------- timeouts, errors


@trio_test
async def test_read_timeouts_head_override_and_body(http_conns: list[Any]) -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        if got[0].target == b"/partial":
            await stream.send_all(
                h.send(h11.Response(status_code=200, headers=[])) + h.send(h11.Data(data=b"x"))
            )
        await wait_eof(stream)  # stall; then note that the client hung up
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False, timeouts=Timeouts(read=0.3)) as client:
            t0 = time.monotonic()
            with pytest.raises(ReadTimeout, match=f"127.0.0.1:{srv.port}"):
                await client.request("GET", srv.url("/stall"), [(b"x-api-key", SECRET)])
            assert 0.25 <= time.monotonic() - t0 < 2.0

            t0 = time.monotonic()
            with pytest.raises(ReadTimeout):  # per-request override
                await client.request("GET", srv.url("/stall"), [], read_timeout=0.1)
            assert 0.08 <= time.monotonic() - t0 < 0.28

            resp = await client.request("GET", srv.url("/partial"), [])
            chunks = resp.aiter_bytes()
            assert await chunks.__anext__() == b"x"
            t0 = time.monotonic()
            with pytest.raises(ReadTimeout) as info:  # inactivity mid-body
                await chunks.__anext__()
            assert 0.25 <= time.monotonic() - t0 < 2.0
            assert SECRET.decode() not in full_text(info.value)
            with trio.fail_after(5):
                while srv.eofs < 3:  # every timed-out connection was closed, none pooled
                    await srv.eof_event.wait()
                    srv.eof_event = trio.Event()
            assert not next(iter(client._pools.values())).idle
            assert len(http_conns) == 3 and all(map(closed, http_conns))
        n.cancel_scope.cancel()


@trio_test
async def test_connect_refused_is_connect_error() -> None:
    port = free_port()
    async with HttpClient(trust_env=False) as client:
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}: TCP connect failed"):
            await client.request("GET", f"http://127.0.0.1:{port}/", [])


@trio_test
async def test_connect_timeout_covers_tls_handshake(http_client_tls: ssl.SSLContext) -> None:
    async def silent(server: Server, stream: trio.abc.Stream) -> None:
        await wait_eof(stream)  # accepts TCP, never answers the ClientHello

    async with trio.open_nursery() as n:
        srv = await Server(silent).start(n)
        client = HttpClient(trust_env=False, ssl_context=http_client_tls, timeouts=Timeouts(connect=0.3))
        t0 = time.monotonic()
        with pytest.raises(ConnectError, match="TLS handshake timed out"):
            await client.request("GET", f"https://127.0.0.1:{srv.port}/", [])
        assert 0.25 <= time.monotonic() - t0 < 2.0
        n.cancel_scope.cancel()


@trio_test
async def test_write_timeout_then_connection_closed(http_conns: list[Any]) -> None:
    async def deaf(server: Server, stream: trio.abc.Stream) -> None:
        await server.gate.wait()  # reads nothing until the client has given up
        await wait_eof(stream)
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(deaf).start(n)
        async with HttpClient(trust_env=False, timeouts=Timeouts(write=0.3)) as client:
            t0 = time.monotonic()
            with pytest.raises(WriteError, match="timed out sending"):
                await client.request("POST", srv.url(), [], b"\0" * (64 * 1024 * 1024))
            assert 0.25 <= time.monotonic() - t0 < 3.0
            assert closed(http_conns[0])
            srv.gate.set()
            await srv.eof_event.wait()
        n.cancel_scope.cancel()


@trio_test
async def test_pool_timeout_and_slot_release() -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive).start(n)
        client = HttpClient(trust_env=False, max_connections_per_origin=1, timeouts=Timeouts(pool=0.2))
        held = await client.request("GET", srv.url(), [])
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match=r"127\.0\.0\.1"):
            await client.request("GET", srv.url(), [])
        assert 0.15 <= time.monotonic() - t0 < 2.0
        await held.aclose()  # body unread (but buffered): finishing it frees the slot, keeps the socket
        assert await (await client.request("GET", srv.url(), [])).read() == b"hello 2"
        assert srv.accepts == 1
        await client.aclose()
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------- cancellation


@trio_test
async def test_cancel_mid_body_closes_connection(http_conns: list[Any]) -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        if server.accepts > 1:
            return await keepalive(server, stream)
        h = h11.Connection(h11.SERVER)
        assert await read_request(h, stream) is not None
        await stream.send_all(
            h.send(h11.Response(status_code=200, headers=[])) + h.send(h11.Data(data=b"one"))
        )
        await wait_eof(stream)
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        # One slot and no pool wait: a leaked slot would fail the follow-up request.
        client = HttpClient(trust_env=False, max_connections_per_origin=1, timeouts=Timeouts(pool=0.5))
        got: list[bytes] = []
        with trio.CancelScope() as scope:
            resp = await client.request("GET", srv.url(), [])
            async for chunk in resp.aiter_bytes():
                got.append(bytes(chunk))
                scope.cancel()  # the next receive is cancelled
        assert scope.cancelled_caught and got == [b"one"]
        assert closed(http_conns[0])
        await srv.eof_event.wait()  # the client closed the socket without being asked to
        await resp.aclose()  # idempotent after the abort
        with pytest.raises(RemoteProtocolError):
            await resp.read()
        assert await (await client.request("GET", srv.url(), [])).read() == b"hello 1"
        assert srv.accepts == 2
        await client.aclose()
        n.cancel_scope.cancel()


@trio_test
async def test_cancel_while_sending_closes_connection(http_conns: list[Any]) -> None:
    async def deaf(server: Server, stream: trio.abc.Stream) -> None:
        if server.accepts > 1:
            return await keepalive(server, stream)
        await server.gate.wait()
        await wait_eof(stream)
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(deaf).start(n)
        async with HttpClient(trust_env=False, max_connections_per_origin=1) as client:
            with trio.move_on_after(0.3) as scope:  # the caller gives up mid-upload
                await client.request("POST", srv.url(), [], b"\0" * (64 * 1024 * 1024))
            assert scope.cancelled_caught
            assert closed(http_conns[0])
            srv.gate.set()
            await srv.eof_event.wait()
            assert await (await client.request("GET", srv.url(), [])).read() == b"hello 1"
            assert srv.accepts == 2
        n.cancel_scope.cancel()


@trio_test
async def test_response_aclose_in_cancelled_scope_closes_socket() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        assert await read_request(h, stream) is not None
        await stream.send_all(h.send(h11.Response(status_code=200, headers=[(b"content-length", b"100")])))
        await wait_eof(stream)
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        async with HttpClient(trust_env=False) as client:
            resp = await client.request("GET", srv.url(), [])
            with trio.CancelScope() as scope:
                scope.cancel()
                await resp.aclose()
                await resp.aclose()
            assert not scope.cancelled_caught  # aclose neither raised Cancelled nor blocked
            await srv.eof_event.wait()
            assert not next(iter(client._pools.values())).idle
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------- pool behaviour


def test_idle_ttl_expires_connections() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        async with trio.open_nursery() as n:
            srv = await Server(keepalive).start(n)
            async with HttpClient(trust_env=False, idle_ttl=55.0) as client:
                await (await client.request("GET", srv.url(), [])).read()
                clock.jump(30)
                await (await client.request("GET", srv.url(), [])).read()
                assert srv.accepts == 1
                clock.jump(56)
                await (await client.request("GET", srv.url(), [])).read()
                assert srv.accepts == 2
                await srv.eof_event.wait()  # the expired one was closed, not leaked
            n.cancel_scope.cancel()

    trio.run(main, clock=clock)


@trio_test
async def test_max_idle_and_client_aclose() -> None:
    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while (got := await read_request(h, stream)) is not None:
            server.requests.append(got)
            if len(server.requests) == 2:
                server.gate.set()
            await server.gate.wait()  # the first two requests are in flight together
            await send_response(h, stream, body=b"ok")
            h.start_next_cycle()
        server.saw_eof()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        client = HttpClient(trust_env=False, max_idle_per_origin=1)

        async def one() -> None:
            assert await (await client.request("GET", srv.url(), [])).read() == b"ok"

        async with trio.open_nursery() as inner:
            inner.start_soon(one)
            inner.start_soon(one)
        assert srv.accepts == 2
        await srv.eof_event.wait()  # only one may idle: the other was closed
        await one()
        assert srv.accepts == 2 and srv.eofs == 1
        await client.aclose()
        while srv.eofs < 2:
            srv.eof_event = trio.Event()
            await srv.eof_event.wait()
        with pytest.raises(RuntimeError):
            await client.request("GET", srv.url(), [])
        n.cancel_scope.cancel()


@trio_test
async def test_200_concurrent_requests_over_16_connections() -> None:
    limit = 16

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        while (got := await read_request(h, stream)) is not None:
            server.requests.append(got)
            if server.open == limit:
                server.gate.set()
            await server.gate.wait()  # hold the first wave until the client uses all its slots
            await send_response(h, stream, body=got[0].target)
            h.start_next_cycle()

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        results: dict[int, bytes] = {}
        async with HttpClient(trust_env=False, max_connections_per_origin=limit) as client:

            async def one(i: int) -> None:
                resp = await client.request("GET", srv.url(f"/{i}"), [])
                results[i] = await resp.read()

            async with trio.open_nursery() as inner:
                for i in range(200):
                    inner.start_soon(one, i)
        assert results == {i: b"/%d" % i for i in range(200)}
        assert srv.max_open == limit and srv.accepts == limit
        n.cancel_scope.cancel()


@trio_test
async def test_1000_concurrent_streams() -> None:
    count = 1000

    async def handler(server: Server, stream: trio.abc.Stream) -> None:
        h = h11.Connection(h11.SERVER)
        got = await read_request(h, stream)
        assert got is not None
        server.requests.append(got)
        await stream.send_all(h.send(h11.Response(status_code=200, headers=[])) + h.send(h11.Data(data=b"a")))
        if len(server.requests) == count:
            server.gate.set()
        await server.gate.wait()  # all 1000 streams are open at once before any ends
        await stream.send_all(h.send(h11.Data(data=b"b")) + h.send(h11.EndOfMessage()))
        await wait_eof(stream)

    async with trio.open_nursery() as n:
        srv = await Server(handler).start(n)
        done = 0
        async with HttpClient(trust_env=False, max_connections_per_origin=count) as client:

            async def one() -> None:
                nonlocal done
                async with client.stream("GET", srv.url(), []) as resp:
                    assert await resp.read() == b"ab"
                done += 1

            async with trio.open_nursery() as inner:
                for _ in range(count):
                    inner.start_soon(one)
        assert done == count and srv.max_open == count
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------- TLS


@trio_test
async def test_https_with_test_ca(http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        async with HttpClient(trust_env=False, ssl_context=http_client_tls) as client:
            for i in range(1, 4):
                resp = await client.request("GET", srv.url(), [])
                assert await resp.read() == b"hello %d" % i
            body = os.urandom(3 * 1024 * 1024)
            resp = await client.request("POST", srv.url(), [], body)
            assert await resp.read() == b"hello 4"
        assert srv.requests[3][1] == body
        assert srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_https_default_context_refuses_unknown_ca(http_server_tls: ssl.SSLContext) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        async with HttpClient(trust_env=False) as client:
            with pytest.raises(ConnectError, match=r"TLS handshake failed.*certificate verify failed"):
                await client.request("GET", srv.url(), [])
        n.cancel_scope.cancel()


def test_https_default_context_honours_ssl_cert_file_and_alpn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http_ca: trustme.CA, http_server_tls: ssl.SSLContext
) -> None:
    pem = tmp_path / "ca.pem"
    http_ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))

    @trio_test
    async def run() -> None:
        async with trio.open_nursery() as n:
            srv = await Server(keepalive, tls=http_server_tls).start(n)
            async with HttpClient() as client:
                assert await (await client.request("GET", srv.url(), [])).read() == b"hello 1"
            assert srv.alpn == ["http/1.1"]
            n.cancel_scope.cancel()

    run()


# ----------------------------------------------------------------------------- proxies


async def proxy_handler(server: Server, stream: trio.abc.Stream) -> None:
    """CONNECT tunnels to loopback targets; absolute-form requests answered directly."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    server.lines.append(head)
    line = head.split(b"\r\n", 1)[0]
    method, target, _ = line.split(b" ")
    if server.gate.is_set():  # tests set the gate to make the proxy misbehave
        if method == b"CONNECT" and b"refuse" in server.state:
            await stream.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            return
        await wait_eof(stream)  # never answers
        return
    if method != b"CONNECT":
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia proxy")
        return
    host, _, port = target.rpartition(b":")
    assert host == PROXIED_HOST.encode()  # the test proxy only tunnels this name, to loopback
    upstream = await trio.open_tcp_stream("127.0.0.1", int(port))
    await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n" + rest)

    async def pipe(src: trio.abc.Stream, dst: trio.abc.Stream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    async with upstream, trio.open_nursery() as n:
        n.start_soon(pipe, stream, upstream, n.cancel_scope)
        n.start_soon(pipe, upstream, stream, n.cancel_scope)


def proxied_url(srv: Server, path: str = "/") -> str:
    return f"https://{PROXIED_HOST}:{srv.port}{path}"


def header_of(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@trio_test
async def test_https_through_connect_proxy_with_auth(
    monkeypatch: pytest.MonkeyPatch, http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        proxy = await Server(proxy_handler).start(n)
        monkeypatch.setenv("HTTPS_PROXY", f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}")
        async with HttpClient(ssl_context=http_client_tls) as client:
            for i in range(1, 3):
                assert await (await client.request("GET", proxied_url(srv, "/x"), [])).read() == b"hello %d" % i
        assert proxy.accepts == 1 and srv.accepts == 1  # the tunnel is kept alive and reused
        (head,) = proxy.lines
        assert head.split(b"\r\n")[0] == b"CONNECT upstream.test:%d HTTP/1.1" % srv.port
        assert header_of(head, b"host") == b"upstream.test:%d" % srv.port
        assert header_of(head, b"proxy-authorization") == b"Basic " + base64.b64encode(b"us@er:p:ss")
        # The TLS server inside the tunnel never sees proxy credentials.
        assert all(name != b"proxy-authorization" for name, _ in srv.requests[0][0].headers)
        n.cancel_scope.cancel()


@trio_test
async def test_https_through_tls_proxy(
    monkeypatch: pytest.MonkeyPatch, http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        proxy = await Server(proxy_handler, tls=http_server_tls).start(n)
        monkeypatch.setenv("https_proxy", f"https://127.0.0.1:{proxy.port}")  # TLS inside TLS
        async with HttpClient(ssl_context=http_client_tls) as client:
            assert await (await client.request("GET", proxied_url(srv), [])).read() == b"hello 1"
        assert proxy.accepts == 1 and proxy.lines[0].startswith(b"CONNECT upstream.test:%d " % srv.port)
        n.cancel_scope.cancel()


@trio_test
async def test_no_proxy_bypasses_proxy(
    monkeypatch: pytest.MonkeyPatch, http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        proxy = await Server(proxy_handler).start(n)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "example.com, 127.0.0.1")
        async with HttpClient(ssl_context=http_client_tls) as client:
            assert await (await client.request("GET", srv.url(), [])).read() == b"hello 1"
        assert proxy.accepts == 0 and srv.accepts == 1
        n.cancel_scope.cancel()


@trio_test
async def test_http_never_goes_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would see every header of a plain-http request in clear text, x-api-key included.
    async with trio.open_nursery() as n:
        proxy = await Server(proxy_handler).start(n)
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        async with HttpClient(timeouts=Timeouts(connect=2)) as client:
            # .invalid never resolves: going direct, the name lookup fails and nothing is sent.
            with pytest.raises(ConnectError):
                await client.request("GET", "http://api.example.invalid:8080/v1/x", [(b"x-api-key", SECRET)])
        assert proxy.accepts == 0 and proxy.lines == []
        n.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@trio_test
async def test_loopback_destinations_bypass_the_proxy(
    host: str, monkeypatch: pytest.MonkeyPatch, http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as n:
        srv = await Server(keepalive, tls=http_server_tls).start(n)
        plain = await Server(keepalive).start(n)
        proxy = await Server(proxy_handler).start(n)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")  # and no NO_PROXY at all
        async with HttpClient(ssl_context=http_client_tls) as client:
            assert await (await client.request("GET", f"https://{host}:{srv.port}/", [])).read() == b"hello 1"
            assert await (await client.request("GET", f"http://{host}:{plain.port}/", [])).read() == b"hello 1"
        assert proxy.accepts == 0 and srv.accepts == 1 and plain.accepts == 1
        n.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("localhost", True), ("LocalHost.", True), ("api.localhost", True),
     ("10.0.0.1", False), ("::2", False), ("api.anthropic.com", False), ("localhost.example.com", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert httpclient._is_loopback(host) is loopback


@trio_test
async def test_proxy_refusal_and_stall_are_connect_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    async with trio.open_nursery() as n:
        proxy = await Server(proxy_handler).start(n)
        proxy.gate.set()
        proxy.state.add(b"refuse")
        monkeypatch.setenv("ALL_PROXY", f"http://user:hunter2@127.0.0.1:{proxy.port}")  # fallback variable
        async with HttpClient(timeouts=Timeouts(connect=0.3)) as client:
            with pytest.raises(ConnectError, match="HTTP 407") as info:
                await client.request("GET", "https://api.example.invalid/", [])
            assert "hunter2" not in full_text(info.value)
            proxy.state.clear()
            t0 = time.monotonic()
            with pytest.raises(ConnectError, match=r"CONNECT through proxy .* timed out"):
                await client.request("GET", "https://api.example.invalid/", [])
            assert 0.25 <= time.monotonic() - t0 < 2.0
        n.cancel_scope.cancel()


def test_unsupported_proxy_scheme_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:hunter2@127.0.0.1:1080")
    with pytest.raises(ValueError, match="HTTPS_PROXY") as info:
        HttpClient()
    assert "hunter2" not in str(info.value)
    HttpClient(trust_env=False)  # and the environment is ignored when asked


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        (".example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("example.com:8443", "example.com", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("127.0.0.1", "127.0.0.1", 8080, True),
        ("127.0.0.1", "127.0.0.2", 8080, False),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("::1", "::1", 443, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 443, False),
        ("localhost", "localhost", 80, True),
        ("", "127.0.0.1", 80, False),
        ("foo, , bar.org", "x.bar.org", 80, True),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    everything, rules = httpclient._parse_no_proxy(no_proxy)
    assert not everything
    assert httpclient._bypasses_proxy(host, port, rules) is bypass


def test_no_proxy_star() -> None:
    assert httpclient._parse_no_proxy("foo, *")[0]


def test_errors_share_a_base_class() -> None:
    for cls in (ConnectError, WriteError, ReadTimeout, RemoteProtocolError, PoolTimeout):
        assert issubclass(cls, UpstreamError)


# ----------------------------------------------------------------------------- unsolicited bytes


class _Corked(trio.abc.Stream):
    """A TCP stream that can hold writes back and send them as one: two TLS records, one segment."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.held: list[bytes] | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is not None:
            self.held.append(bytes(data))
        else:
            await self.inner.send_all(data)

    async def flush(self) -> None:
        held, self.held = self.held or [], None
        await self.inner.send_all(b"".join(held))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


LATE = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate"


async def _answer_then_late_bytes(stream: trio.SocketStream, tls: ssl.SSLContext | None,
                                  answers: list[bytes]) -> None:
    """Answer the first request and, in the same TCP write, send a stray second response."""
    corked = _Corked(stream)
    s: trio.abc.Stream = corked
    if tls is not None:
        s = trio.SSLStream(corked, tls, server_side=True, https_compatible=True)
        await s.do_handshake()
    h = h11.Connection(h11.SERVER)
    try:
        while await read_request(h, s) is not None:
            corked.held = []
            await send_response(h, s, body=answers.pop(0))
            if len(answers) == 1:  # after the first answer only
                await s.send_all(LATE)  # its own TLS record, in the same segment
            await corked.flush()
            h.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(s)


@pytest.mark.parametrize("use_tls", [False, True])
@trio_test
async def test_unsolicited_bytes_on_an_idle_connection_never_reach_the_next_request(
        use_tls: bool, http_server_tls: ssl.SSLContext, http_client_tls: ssl.SSLContext) -> None:
    answers = [b"first", b"second"]
    async with trio.open_nursery() as n:
        handler = functools.partial(_answer_then_late_bytes, tls=http_server_tls if use_tls else None,
                                    answers=answers)
        listeners = await n.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"{'https' if use_tls else 'http'}://127.0.0.1:{port}/"
        async with HttpClient(trust_env=False, ssl_context=http_client_tls) as client:
            resp = await client.request("GET", url, [])
            assert await resp.read() == b"first"
            resp = await client.request("GET", url, [])
            # The stray response was discarded with its connection; this one is the server's answer.
            assert await resp.read() == b"second"
        n.cancel_scope.cancel()
