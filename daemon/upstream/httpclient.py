"""The upstream HTTP/1.1 client: a small keep-alive pool on h11 + trio.

This is the gateway's hot path. A prototype on httpx added ~3.5 ms per request and
fell to ~250 req/s at concurrency 64; a thin pool on h11 added ~1.2 ms and held
750–900 req/s. So this module does only what the gateway needs, directly:

* one `h11.Connection` per socket, recycled with `start_next_cycle()`;
* request head + small body in a single `send_all` (TCP_NODELAY is on);
* response bodies streamed as h11 hands them over (no extra copies);
* per-origin keep-alive pools with a slot semaphore, idle TTL and a one-shot retry
  for requests that hit a connection the server closed while it sat idle;
* http/https; https may go through a proxy from the environment (a CONNECT tunnel),
  never plain http and never a loopback destination.

Header values may be API keys: nothing here logs headers or puts header values
(request or response) into exception messages.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import unquote, urlsplit

import h11
import trio

__all__ = [
    "ConnectError",
    "HttpClient",
    "PoolTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "Response",
    "Timeouts",
    "UpstreamError",
    "WriteError",
]

_RECV_SIZE = 65536  # bytes per receive_some
_SMALL_BODY = 65536  # bodies up to this size go out in the same send_all as the head
_MAX_HEAD = 65536  # largest response head we accept (h11's default is 16 KiB)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", b"POST", b"PUT", b"PATCH"})
# We frame the body and name the host ourselves; a caller's copy would conflict.
_MANAGED_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_URL_SPLIT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*)([^#]*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


# ----------------------------------------------------------------------------- errors


class UpstreamError(Exception):
    """Base class for every failure talking to the upstream."""


class ConnectError(UpstreamError):
    """DNS, TCP connect, TLS handshake or proxy CONNECT failed (or timed out). Nothing was sent."""


class WriteError(UpstreamError):
    """Failed (or timed out) while sending the request."""


class ReadTimeout(UpstreamError):
    """No bytes arrived from the upstream for the read timeout."""


class RemoteProtocolError(UpstreamError):
    """The connection closed or broke mid-response, or the upstream spoke invalid HTTP."""


class PoolTimeout(UpstreamError):
    """No connection slot for the origin became free within the pool timeout."""


class _NoResponse(Exception):
    """EOF/reset before a single response byte (internal)."""


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class _StaleConnection(Exception):
    """A reused idle connection turned out closed before any response byte (internal)."""


def _why(exc: BaseException) -> str:
    # trio wraps the OSError/SSLError that says what actually happened.
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    text = str(cause)
    return text if text else type(cause).__name__


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 600.0  # inactivity between received chunks (and for the response head)
    write: float = 60.0
    pool: float = 30.0


@dataclass(frozen=True, slots=True)
class _Proxy:
    scheme: str  # "http" or "https" (TLS to the proxy itself)
    host: str
    port: int
    auth: bytes | None  # ready Proxy-Authorization value

    @property
    def label(self) -> str:
        return _hostport(self.host, self.port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_proxy(value: str, var: str) -> _Proxy:
    # Messages name the variable, never the value: proxy URLs carry passwords.
    if "://" not in value:
        value = "http://" + value  # curl and httpx accept "host:port"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{var} is not a valid proxy URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{var}: only http:// and https:// proxies are supported, not {scheme}://")
    if not parts.hostname:
        raise ValueError(f"{var} has no host")
    auth = None
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = b"Basic " + base64.b64encode(creds.encode("utf-8"))
    return _Proxy(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], auth)


_NoProxyRule = tuple["str | ipaddress.IPv4Network | ipaddress.IPv6Network", "int | None"]


def _parse_no_proxy(value: str) -> tuple[bool, list[_NoProxyRule]]:
    """NO_PROXY as curl reads it: comma list of `*`, domains (suffix match, leading
    dot optional), IP literals or CIDRs, each optionally with `:port`."""
    rules: list[_NoProxyRule] = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True, []
        if "://" in entry:  # httpx-style "http://host"; the scheme adds nothing here
            entry = entry.split("://", 1)[1]
        port: int | None = None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif entry.count(":") == 1:
            host, _, p = entry.partition(":")
            if p.isdigit():
                port = int(p)
        else:
            host = entry  # bare name, IPv4, or bare IPv6 (several colons)
        host = host.rstrip(".")
        try:
            rules.append((ipaddress.ip_network(host, strict=False), port))
        except ValueError:
            host = host.lstrip("*").lstrip(".")
            if host:
                rules.append((host, port))
    return False, rules


def _bypasses_proxy(host: str, port: int, rules: list[_NoProxyRule]) -> bool:
    host = host.lower().rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for target, rule_port in rules:
        if rule_port is not None and rule_port != port:
            continue
        if isinstance(target, str):
            if host == target or host.endswith("." + target):
                return True
        elif ip is not None and ip.version == target.version and ip in target:
            return True
    return False


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost (RFC 6761 §6.3: it always resolves to loopback).
    Traffic for this machine has no business leaving it through a proxy."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


# ----------------------------------------------------------------------------- connections


class _Connection:
    __slots__ = ("h11", "idle_since", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self.sock = sock  # the TCP socket under any TLS layers: closing it is synchronous
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.idle_since = 0.0

    def close(self) -> None:
        # Synchronous on purpose: safe from cancelled scopes and `finally` blocks. We skip
        # TLS close_notify, as browsers do; the streams are https_compatible.
        self.sock.close()

    def looks_dead(self) -> bool:
        # An idle HTTP/1.1 connection has nothing to read; readable means the server sent
        # FIN/RST (or junk). One poll() syscall saves a doomed send in the common case.
        # Unsolicited bytes (a late response) must never be read as the next request's answer.
        try:
            if self.sock.is_readable():
                return True
        except (OSError, ValueError):
            return True
        return _tls_buffered(self.stream)


def _tls_buffered(stream: trio.abc.Stream) -> bool:
    """Whether a TLS layer holds received bytes the socket no longer shows.

    OpenSSL hands over one TLS record per read; a record that came in the same TCP segment as the
    end of a response stays in trio's incoming BIO (or, decrypted, in the SSLObject) where a poll
    of the socket cannot see it. Any such byte on an idle connection is unsolicited.
    """
    while isinstance(stream, trio.SSLStream):
        ssl_object = getattr(stream, "_ssl_object", None)  # trio internals, read defensively
        incoming = getattr(stream, "_incoming", None)
        try:
            if ssl_object is not None and ssl_object.pending():
                return True
            if incoming is not None and incoming.pending:
                return True
        except (ssl.SSLError, ValueError, AttributeError):
            return True
        stream = stream.transport_stream
    return False


class _Pool:
    """Connections for one origin (scheme, host, port, proxy)."""

    __slots__ = (
        "closed",
        "host",
        "host_header",
        "idle",
        "label",
        "max_idle",
        "port",
        "proxy",
        "scheme",
        "sem",
        "ttl",
        "tunnel",
    )

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        proxy: _Proxy | None,
        max_conns: int,
        max_idle: int,
        ttl: float,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.proxy = proxy
        self.label = _hostport(host, port)
        bracketed = f"[{host}]" if ":" in host else host
        default = port == _DEFAULT_PORTS[scheme]
        self.host_header = (bracketed if default else f"{bracketed}:{port}").encode("ascii")
        # Only https goes through a proxy, always in a CONNECT tunnel.
        self.tunnel = proxy is not None and scheme == "https"
        self.sem = trio.Semaphore(max_conns)
        self.idle: collections.deque[_Connection] = collections.deque()
        self.max_idle = max_idle
        self.ttl = ttl
        self.closed = False

    def checkout(self) -> _Connection | None:
        idle = self.idle
        if not idle:
            return None
        oldest_ok = trio.current_time() - self.ttl
        while idle:
            conn = idle.pop()  # newest first: the least likely to have been closed by the server
            if conn.idle_since < oldest_ok:
                conn.close()  # this one and every older one have outlived idle_ttl
                self.close_idle()
                return None
            if conn.looks_dead():
                conn.close()
                continue
            return conn
        return None

    def checkin(self, conn: _Connection) -> None:
        if self.closed or self.max_idle <= 0:
            conn.close()
            return
        now = trio.current_time()
        conn.idle_since = now
        idle = self.idle
        oldest_ok = now - self.ttl
        while idle and idle[0].idle_since < oldest_ok:
            idle.popleft().close()
        if len(idle) >= self.max_idle:
            idle.popleft().close()
        idle.append(conn)

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()


# ----------------------------------------------------------------------------- response


_OPEN, _DONE, _ABORTED = 0, 1, 2


class Response:
    """A response whose head has arrived; the body streams from the connection.

    Holds a connection slot until the body is read to the end (the connection then goes
    back to the pool at once) or `aclose()` is called. Always `aclose()` it.
    """

    __slots__ = (
        "_conn",
        "_pool",
        "_read_timeout",
        "_reusable",
        "_state",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(
        self, event: h11.Response, conn: _Connection, pool: _Pool, read_timeout: float, reusable: bool
    ) -> None:
        self.status: int = event.status_code
        self.reason: bytes = event.reason
        self.http_version: bytes = event.http_version
        self.headers: list[tuple[bytes, bytes]] = list(event.headers)  # h11 lower-cases names
        self._conn: _Connection | None = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self._reusable = reusable
        self._state = _OPEN

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Body data as it arrives (chunked framing removed). Chunks are the buffers h11
        hands over (`bytearray`, bytes-like) to avoid a copy per chunk."""
        return _BodyIterator(self)

    async def next_chunk(self, hold_until: float | None = None) -> bytes | None:
        """The next body chunk as it arrives; None at the end of the body.

        With `hold_until` (on trio's clock), b"" if nothing arrived by then: the connection stays
        intact and the caller may read on (used to hold a stream back for a short while).
        """
        return await _BodyIterator(self).next(hold_until)

    async def read(self) -> bytes:
        """The rest of the body."""
        return b"".join([chunk async for chunk in _BodyIterator(self)])

    async def aclose(self) -> None:
        """Idempotent; never blocks or checkpoints, so it is safe in cancelled scopes."""
        conn = self._conn
        if conn is None:
            return
        # If h11 already holds the rest of the body, finishing it needs no I/O and
        # lets the connection be reused.
        h = conn.h11
        try:
            while True:
                event = h.next_event()
                if isinstance(event, h11.Data):
                    continue
                if isinstance(event, h11.EndOfMessage):
                    self._finish()
                    return
                break
        except h11.RemoteProtocolError:
            pass
        self._abort()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _finish(self) -> None:
        conn = self._conn
        assert conn is not None
        self._conn = None
        self._state = _DONE
        h = conn.h11
        pool = self._pool
        if (
            self._reusable
            and h.our_state is h11.DONE
            and h.their_state is h11.DONE
            and h.trailing_data == (b"", False)
        ):
            h.start_next_cycle()
            pool.checkin(conn)
        else:  # Connection: close, HTTP/1.0, read-until-close body, upload cut short, stray bytes
            conn.close()
        pool.sem.release()

    def _abort(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._state = _ABORTED
        conn.close()
        self._pool.sem.release()

    def __repr__(self) -> str:
        return f"<Response {self.status} from {self._pool.label}>"


# h11 parses an HTTP chunk in tens of microseconds; one 64 KiB read of 1-byte chunks holds
# ~11,000 of them. Handing over at most this many per call keeps each step near a millisecond,
# so the relay yields to other requests often (a 1-byte-chunk drip held /health for seconds).
_MAX_PARTS = 32


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _BodyIterator:
    __slots__ = ("_resp",)

    def __init__(self, resp: Response) -> None:
        self._resp = resp

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next(None)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def next(self, hold_until: float | None) -> bytes | None:
        """The next chunk; None at the end of the body; b"" if `hold_until` (trio time) passed first."""
        resp = self._resp
        conn = resp._conn
        if conn is None:
            if resp._state == _DONE:
                return None
            # Never let a truncated body look complete.
            raise RemoteProtocolError(f"response from {resp._pool.label} was closed before its body ended")
        h = conn.h11
        # Everything h11 can parse from what was already received goes out as one chunk: an
        # upstream that sends many tiny HTTP chunks (1 byte each, say) then costs one hand-over
        # per socket read, not one per HTTP chunk.
        parts: list[bytes] = []
        try:
            while True:
                event = h.next_event()
                if isinstance(event, h11.Data):
                    if event.data:
                        parts.append(event.data)
                        if len(parts) >= _MAX_PARTS:
                            return _joined(parts)  # bounded work per call: the caller can yield
                elif isinstance(event, h11.EndOfMessage):
                    resp._finish()  # a later call returns None
                    return _joined(parts) if parts else None
                elif event is h11.NEED_DATA:
                    if parts:
                        return _joined(parts)
                    if not await self._receive(conn, hold_until):
                        return b""
                else:
                    what = getattr(event, "__name__", type(event).__name__)
                    raise RemoteProtocolError(f"unexpected {what} in response from {resp._pool.label}")
        except h11.RemoteProtocolError:
            if parts:
                return _joined(parts)  # the data before the error first; h11 raises again next time
            resp._abort()
            closed = h.trailing_data[1]
            what = "connection closed before the response body ended" if closed else "invalid body framing"
            # h11's own text can quote trailer values, so it is not chained.
            raise RemoteProtocolError(f"{what} from {resp._pool.label}") from None
        except BaseException:
            # Cancelled, timed out or broken mid-body: the stream state is unknown.
            resp._abort()
            raise

    async def _receive(self, conn: _Connection, hold_until: float | None = None) -> bool:
        """Feed h11 one read; False if `hold_until` came first (nothing was consumed)."""
        resp = self._resp
        deadline = trio.current_time() + resp._read_timeout
        held = hold_until is not None and hold_until < deadline
        with trio.move_on_at(hold_until if held else deadline) as scope:  # type: ignore[arg-type]
            try:
                data = await conn.stream.receive_some(_RECV_SIZE)
            except _IO_ERRORS as exc:
                raise RemoteProtocolError(
                    f"connection to {resp._pool.label} broke mid-response: {_why(exc)}"
                ) from exc
        if scope.cancelled_caught:
            if held:
                # A cancelled receive_some consumes nothing (outside a TLS handshake), so the
                # connection stays usable: the caller just gets control back.
                return False
            raise ReadTimeout(f"no data from {resp._pool.label} for {resp._read_timeout:g} s")
        conn.h11.receive_data(cast(bytes, data))  # b"" is EOF: ends a read-until-close body, else h11 errors
        return True


# ----------------------------------------------------------------------------- client


class HttpClient:
    """HTTP/1.1 client with per-origin keep-alive pools. Use from one trio run."""

    def __init__(
        self,
        *,
        timeouts: Timeouts = Timeouts(),  # frozen, so sharing the default is safe
        max_connections_per_origin: int = 512,
        max_idle_per_origin: int = 64,
        idle_ttl: float = 55.0,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = True,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._timeouts = timeouts
        self._max_conns = max_connections_per_origin
        self._max_idle = max_idle_per_origin
        self._ttl = idle_ttl
        if ssl_context is None:
            ssl_context = ssl.create_default_context()
            ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl = ssl_context
        self._proxies: dict[str, _Proxy] = {}
        self._no_proxy_all = False
        self._no_proxy: list[_NoProxyRule] = []
        if trust_env:
            self._load_proxy_env()
        self._routes: dict[str, _Pool] = {}  # "scheme://authority" exactly as callers write it
        self._pools: dict[tuple[str, str, int, _Proxy | None], _Pool] = {}
        self._closed = False

    def _load_proxy_env(self) -> None:
        # Lower-case wins, as in curl and urllib. Only https uses a proxy (see _proxy_for), so
        # HTTP_PROXY is never read; that also sidesteps "httpoxy" (a CGI header injecting it).
        for name in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]:
            value = _env(name)
            if value is not None:
                self._proxies["https"] = _parse_proxy(value, name)
                break
        no_proxy = _env("no_proxy", "NO_PROXY")
        if no_proxy is not None:
            self._no_proxy_all, self._no_proxy = _parse_no_proxy(no_proxy)

    def _proxy_for(self, scheme: str, host: str, port: int) -> _Proxy | None:
        # Plain http through a proxy would hand it every header in clear text, x-api-key
        # included; only https goes through one (inside a CONNECT tunnel, RFC 9110 §9.3.6).
        if scheme != "https" or _is_loopback(host):
            return None
        proxy = self._proxies.get(scheme)
        if proxy is not None and (self._no_proxy_all or _bypasses_proxy(host, port, self._no_proxy)):
            return None
        return proxy

    # -- routing ------------------------------------------------------------------

    def _route(self, url: str) -> tuple[_Pool, bytes]:
        match = _URL_SPLIT.match(url)
        if match is None:
            raise ValueError("URL must be absolute: http://host/... or https://host/...")
        prefix, rest = match.groups()
        pool = self._routes.get(prefix)
        if pool is None:
            pool = self._pool_for(prefix)
        if not rest:
            rest = "/"
        elif rest[0] == "?":
            rest = "/" + rest
        try:
            return pool, rest.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("URL path must be ASCII (percent-encode it)") from None

    def _pool_for(self, prefix: str) -> _Pool:
        try:
            parts = urlsplit(prefix)
            scheme = parts.scheme.lower()
            host = parts.hostname
            port = parts.port
        except ValueError:
            raise ValueError("invalid URL authority") from None
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        if not host:
            raise ValueError("URL has no host")
        port = port or _DEFAULT_PORTS[scheme]
        proxy = self._proxy_for(scheme, host, port)
        key = (scheme, host, port, proxy)
        pool = self._pools.get(key)
        if pool is None:
            pool = _Pool(scheme, host, port, proxy, self._max_conns, self._max_idle, self._ttl)
            self._pools[key] = pool
        if len(self._routes) >= 1024:  # callers only ever use a handful; bound it anyway
            self._routes.clear()
        self._routes[prefix] = pool
        return pool

    # -- requests -----------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request; return once the response head has arrived.

        Adds Host and (when there is a body, or for POST/PUT/PATCH) Content-Length; a
        caller's own Host/Content-Length/Transfer-Encoding headers are dropped.
        """
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        pool, target = self._route(url)
        req = self._build_request(pool, method, target, headers, body)
        rtimeout = self._timeouts.read if read_timeout is None else read_timeout
        await self._acquire(pool)
        try:
            conn = pool.checkout()
            if conn is not None:
                try:
                    return await self._exchange(pool, conn, req, body, rtimeout, reused=True)
                except _StaleConnection:
                    pass  # closed while idle before it could act on this request: go again once
            conn = await self._connect(pool)
            return await self._exchange(pool, conn, req, body, rtimeout, reused=False)
        except BaseException:
            pool.sem.release()
            raise

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        read_timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """`async with client.stream(...) as resp:` — `request` plus a guaranteed `aclose`."""
        resp = await self.request(method, url, headers, body, read_timeout=read_timeout)
        try:
            yield resp
        finally:
            await resp.aclose()

    @staticmethod
    def _build_request(
        pool: _Pool, method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> h11.Request:
        hdrs: list[tuple[bytes, bytes]] = [(b"host", pool.host_header)]
        for name, value in headers:
            if name.lower() not in _MANAGED_HEADERS:
                hdrs.append((name, value))
        if body or method in _BODY_METHODS:
            hdrs.append((b"content-length", b"%d" % len(body)))
        try:
            return h11.Request(method=method, target=target, headers=hdrs)
        except h11.LocalProtocolError:
            # h11's message quotes the offending value, which may be a key.
            raise ValueError("invalid request method, URL target or header (values not shown)") from None

    async def _acquire(self, pool: _Pool) -> None:
        try:
            pool.sem.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        acquired = False
        with trio.move_on_after(self._timeouts.pool):
            await pool.sem.acquire()
            acquired = True
        if not acquired:
            raise PoolTimeout(
                f"no free connection to {pool.label} within {self._timeouts.pool:g} s "
                f"({self._max_conns} in use)"
            )

    async def _exchange(
        self, pool: _Pool, conn: _Connection, req: h11.Request, body: bytes, rtimeout: float, *, reused: bool
    ) -> Response:
        h = conn.h11
        try:
            head = h.send(req)
            if body:
                # Content-Length framing: h11 passes the body through untouched, so send the
                # caller's buffer ourselves instead of letting h11 join (copy) it.
                h.send_with_data_passthrough(h11.Data(data=body))
            h.send(h11.EndOfMessage())
            write_error: BaseException | None = None
            with trio.move_on_after(self._timeouts.write) as scope:
                try:
                    if len(body) <= _SMALL_BODY:
                        await conn.stream.send_all(head + body if body else head)
                    else:
                        await conn.stream.send_all(head)
                        await conn.stream.send_all(body)
                except _IO_ERRORS as exc:
                    write_error = exc
            if scope.cancelled_caught:
                raise WriteError(
                    f"timed out sending the request to {pool.label} ({self._timeouts.write:g} s)"
                )
            try:
                # Even after a failed write: a server may answer early (e.g. 413) and close.
                event = await self._read_head(conn, rtimeout, pool.label)
            except _NoResponse as exc:
                # A reused connection that died before any response byte was usually closed by the
                # server while idle. Going again is safe only if the server cannot have acted on
                # the request: it could not take all of it (the write failed), or the method is
                # idempotent. A POST that went out whole may have been received: never re-sent.
                if reused and (write_error is not None or req.method in _IDEMPOTENT):
                    raise _StaleConnection from None
                if write_error is not None:
                    raise WriteError(
                        f"sending the request to {pool.label} failed: {_why(write_error)}"
                    ) from write_error
                reason = f": {_why(exc.__cause__)}" if exc.__cause__ else ""
                raise RemoteProtocolError(
                    f"{pool.label} closed the connection without sending a response{reason}"
                ) from exc.__cause__
            # h11 counts the request as sent once serialised; only we know if the bytes went out.
            return Response(event, conn, pool, rtimeout, reusable=write_error is None)
        except BaseException:
            conn.close()  # cancelled or failed mid-exchange: the connection state is unknown
            raise

    @staticmethod
    async def _read_head(conn: _Connection, rtimeout: float, label: str) -> h11.Response:
        h = conn.h11
        got_bytes = False
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                # h11's text may quote header values: not chained.
                if h.trailing_data[1]:
                    raise RemoteProtocolError(f"{label} closed the connection mid response head") from None
                raise RemoteProtocolError(f"invalid response head from {label}") from None
            if event is h11.NEED_DATA:
                with trio.move_on_after(rtimeout) as scope:
                    try:
                        data = await conn.stream.receive_some(_RECV_SIZE)
                    except _IO_ERRORS as exc:
                        if not got_bytes:
                            raise _NoResponse from exc
                        raise RemoteProtocolError(
                            f"connection to {label} broke mid response head: {_why(exc)}"
                        ) from exc
                if scope.cancelled_caught:
                    raise ReadTimeout(f"no response from {label} within {rtimeout:g} s")
                if not data and not got_bytes:
                    raise _NoResponse
                got_bytes = True
                h.receive_data(cast(bytes, data))  # trio types it bytes | bytearray
            elif isinstance(event, h11.Response):
                return event
            elif isinstance(event, h11.InformationalResponse):
                continue  # 1xx (e.g. 100 Continue): the final response follows
            else:
                raise RemoteProtocolError(f"unexpected {type(event).__name__} from {label}")

    # -- connecting ---------------------------------------------------------------

    async def _connect(self, pool: _Pool) -> _Connection:
        stage = ["TCP connect"]  # what we were doing, for the error message
        try:
            with trio.move_on_after(self._timeouts.connect):
                return await self._open(pool, stage)
        except UpstreamError:
            raise
        except (*_IO_ERRORS, ssl.SSLError) as exc:
            raise ConnectError(f"{self._connect_what(pool)}: {stage[0]} failed: {_why(exc)}") from exc
        raise ConnectError(
            f"{self._connect_what(pool)}: {stage[0]} timed out after {self._timeouts.connect:g} s"
        )

    @staticmethod
    def _connect_what(pool: _Pool) -> str:
        via = f" via proxy {pool.proxy.label}" if pool.proxy is not None else ""
        return f"connecting to {pool.label}{via}"

    async def _open(self, pool: _Pool, stage: list[str]) -> _Connection:
        proxy = pool.proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (pool.host, pool.port)
        tcp = await trio.open_tcp_stream(host, port)
        sock = tcp.socket
        try:
            # trio already sets TCP_NODELAY; say it here too, it is what keeps small writes prompt.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream: trio.abc.Stream = tcp
            if proxy is not None and proxy.scheme == "https":
                stage[0] = f"TLS handshake with proxy {proxy.label}"
                stream = trio.SSLStream(stream, self._ssl, server_hostname=proxy.host, https_compatible=True)
                await stream.do_handshake()
            if pool.tunnel:
                assert proxy is not None
                stage[0] = f"CONNECT through proxy {proxy.label}"
                await self._tunnel(stream, pool, proxy)
            if pool.scheme == "https":
                stage[0] = "TLS handshake"
                stream = trio.SSLStream(stream, self._ssl, server_hostname=pool.host, https_compatible=True)
                await stream.do_handshake()
            return _Connection(stream, sock)
        except BaseException:
            sock.close()
            raise

    @staticmethod
    async def _tunnel(stream: trio.abc.Stream, pool: _Pool, proxy: _Proxy) -> None:
        authority = _hostport(pool.host, pool.port).encode("ascii")
        hdrs = [(b"host", authority)]
        if proxy.auth is not None:
            hdrs.append((b"proxy-authorization", proxy.auth))
        h = h11.Connection(h11.CLIENT)
        await stream.send_all(
            h.send(h11.Request(method=b"CONNECT", target=authority, headers=hdrs))
            + h.send(h11.EndOfMessage())
        )
        where = f"proxy {proxy.label} (CONNECT to {pool.label})"
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                raise ConnectError(f"invalid HTTP from {where}") from None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_RECV_SIZE)
                if not data:
                    raise ConnectError(f"{where} closed the connection")
                h.receive_data(cast(bytes, data))  # trio types it bytes | bytearray
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                if not 200 <= event.status_code < 300:
                    raise ConnectError(f"{where} refused: HTTP {event.status_code}")
                # The TLS server speaks only after our ClientHello, so nothing may follow.
                if h.trailing_data[0]:
                    raise ConnectError(f"{where} sent unexpected bytes after 2xx")
                return
            else:
                raise ConnectError(f"unexpected {type(event).__name__} from {where}")

    # -- lifetime -----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close idle connections. Responses still open close their connection when done;
        new requests raise RuntimeError. Does not checkpoint (safe in cancelled scopes)."""
        self._closed = True
        for pool in self._pools.values():
            pool.closed = True
            pool.close_idle()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
