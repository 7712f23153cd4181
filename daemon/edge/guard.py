"""Who may talk to the public endpoint: Host and Origin checks, the client key check.

The proxy on 127.0.0.1 adds real credentials to what it forwards, which makes it a
target for DNS rebinding (a web page whose host name resolves to 127.0.0.1) and for
cross-site requests from any page the user opens. So the Host must name this machine,
a browser Origin must be dario's own, and with DARIO_API_KEY set every request but
/health must carry a key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from dario.daemon.asgi import HTTPScope, header
from dario.daemon.edge.peergate import PeerGate

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _host_only(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _listen_host_name(listen_host: str) -> str:
    """The listen address as a Host header names it: an IPv6 literal in brackets (RFC 3986 section 3.2.2)."""
    bare = listen_host.strip().lower()
    if ":" in bare and not bare.startswith("["):
        return f"[{bare}]"  # a bare IPv6 address ("fd00::1"); a host name has no colon
    return _host_only(bare)


class Guard:
    def __init__(
        self,
        *,
        listen_host: str,
        port_ref: Callable[[], int],
        allowed_hosts: tuple[str, ...] = (),
        allowed_origins: tuple[str, ...] = (),
        api_key: str | None = None,
        client_key_check: Callable[[str], str | None] | None = None,
        peer_gate: PeerGate | None = None,
    ) -> None:
        hosts = set(LOOPBACK_NAMES)
        hosts.add(_listen_host_name(listen_host))
        hosts.update(h.lower() for h in allowed_hosts)
        self.hosts = frozenset(hosts)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.port_ref = port_ref
        self.api_key = api_key
        self.client_key_check = client_key_check
        self.peer_gate = peer_gate

    def peer_problem(self, scope: HTTPScope, client_key_name: str | None) -> str | None:
        """Without DARIO_API_KEY on Linux, a caller with no client key must be dario's own user."""
        if self.peer_gate is None or client_key_name or self.peer_gate.allows(scope):
            return None
        return self.peer_gate.refusal

    def host_problem(self, scope: HTTPScope) -> str | None:
        raw = header(scope, b"host")
        if not raw:
            return "a Host header is required"
        host = _host_only(raw.decode("latin-1"))
        if host in self.hosts or host.endswith(".localhost"):
            return None
        return (
            f"Host {host!r} is not allowed: dario answers only to loopback names (localhost, 127.0.0.1, [::1]) "
            "and its configured host; add others with DARIO_ALLOWED_HOSTS"
        )

    def origin_problem(self, scope: HTTPScope) -> str | None:
        raw = header(scope, b"origin")
        if raw is None:
            return None
        origin = raw.decode("latin-1").rstrip("/").lower()
        port = self.port_ref()
        own = {f"http://{h}:{port}" for h in ("localhost", "127.0.0.1", "[::1]")}
        if origin in own or origin in self.allowed_origins:
            return None
        return (
            f"Origin {origin!r} is not allowed: web pages may not use dario unless you list them in "
            "DARIO_ALLOWED_ORIGINS"
        )

    def authenticate(self, scope: HTTPScope) -> tuple[bool, str | None]:
        """(allowed, client name if a client key matched)."""
        presented = _presented_key(scope)
        if self.api_key is None:
            # No gate; a client key still names the caller for attribution.
            if presented and self.client_key_check is not None:
                return True, self.client_key_check(presented)
            return True, None
        if presented is None:
            return False, None
        if hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return True, None
        if self.client_key_check is not None:
            name = self.client_key_check(presented)
            if name is not None:
                return True, name
        return False, None


def _presented_key(scope: HTTPScope) -> str | None:
    key = header(scope, b"x-api-key")
    if key:
        return key.decode("latin-1")
    auth = header(scope, b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip()
    return None
