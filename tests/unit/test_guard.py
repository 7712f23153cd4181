"""The guard: Host and Origin checks (DNS rebinding, cross-site requests), keys, and the peer gate's verdict."""

from __future__ import annotations

from typing import Any

import pytest

from dario.daemon.edge.guard import Guard
from dario.daemon.edge.peergate import PeerGate

API_KEY = "dario-shared-secret"
CLIENT_KEYS = {"dk_aider_0123456789": "aider"}


def scope(*headers: tuple[bytes, bytes], client: tuple[str, int] = ("127.0.0.1", 50000)) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers), "client": client, "server": ("127.0.0.1", 3456)}


def guard(**kw: Any) -> Guard:
    kw.setdefault("listen_host", "127.0.0.1")
    return Guard(port_ref=lambda: 3456, **kw)


# --- Host -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    b"localhost", b"localhost:3456", b"127.0.0.1:3456", b"[::1]:3456", b"[::1]", b"LOCALHOST:3456",
    b"app.localhost:3456",  # *.localhost is loopback by definition (RFC 6761 section 6.3)
])
def test_loopback_hosts_pass(host: bytes) -> None:
    assert guard().host_problem(scope((b"host", host))) is None


@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:3456", b"127.0.0.1.evil.example",
                                  b"localhost.evil.example", b"10.0.0.1:3456"])
def test_other_hosts_are_refused(host: bytes) -> None:
    problem = guard().host_problem(scope((b"host", host)))
    assert problem is not None and "DARIO_ALLOWED_HOSTS" in problem


def test_a_missing_host_is_refused() -> None:
    assert guard().host_problem(scope()) == "a Host header is required"


def test_configured_hosts_pass() -> None:
    g = guard(listen_host="0.0.0.0", allowed_hosts=("Dario.LAN",))
    assert g.host_problem(scope((b"host", b"dario.lan:3456"))) is None
    assert g.host_problem(scope((b"host", b"0.0.0.0:3456"))) is None
    assert g.host_problem(scope((b"host", b"other.lan"))) is not None


@pytest.mark.parametrize("listen_host", ["fd00::1", "[fd00::1]", "FD00::1"])
def test_an_ipv6_listen_address_is_allowed_as_a_host(listen_host: str) -> None:
    # A Host header always writes an IPv6 literal in brackets, however --host was spelt.
    g = guard(listen_host=listen_host)
    assert g.host_problem(scope((b"host", b"[fd00::1]:3456"))) is None
    assert g.host_problem(scope((b"host", b"[fd00::1]"))) is None
    assert g.host_problem(scope((b"host", b"[fd00::2]:3456"))) is not None


# --- Origin -----------------------------------------------------------------------------------------


def test_no_origin_is_fine() -> None:
    assert guard().origin_problem(scope()) is None


@pytest.mark.parametrize("origin", [b"http://localhost:3456", b"http://127.0.0.1:3456/", b"http://[::1]:3456",
                                    b"HTTP://LOCALHOST:3456"])
def test_dario_s_own_origin_passes(origin: bytes) -> None:
    assert guard().origin_problem(scope((b"origin", origin))) is None


@pytest.mark.parametrize("origin", [b"https://evil.example", b"http://localhost:9999", b"null",
                                    b"https://localhost:3456"])
def test_other_origins_are_refused(origin: bytes) -> None:
    problem = guard().origin_problem(scope((b"origin", origin)))
    assert problem is not None and "DARIO_ALLOWED_ORIGINS" in problem


def test_configured_origins_pass() -> None:
    g = guard(allowed_origins=("https://My.App/",))
    assert g.origin_problem(scope((b"origin", b"https://my.app"))) is None


def test_the_own_origin_follows_the_bound_port() -> None:
    port = [3456]
    g = Guard(listen_host="127.0.0.1", port_ref=lambda: port[0])
    port[0] = 40000  # an ephemeral port, learnt after binding
    assert g.origin_problem(scope((b"origin", b"http://localhost:40000"))) is None
    assert g.origin_problem(scope((b"origin", b"http://localhost:3456"))) is not None


# --- keys -------------------------------------------------------------------------------------------


def test_without_an_api_key_everyone_passes_and_client_keys_still_name_the_caller() -> None:
    g = guard(client_key_check=CLIENT_KEYS.get)
    assert g.authenticate(scope()) == (True, None)
    assert g.authenticate(scope((b"x-api-key", b"dk_aider_0123456789"))) == (True, "aider")
    assert g.authenticate(scope((b"x-api-key", b"some-anthropic-key"))) == (True, None)


@pytest.mark.parametrize("headers", [
    [(b"x-api-key", API_KEY.encode())],
    [(b"authorization", b"Bearer " + API_KEY.encode())],
    [(b"authorization", b"bearer  " + API_KEY.encode() + b" ")],
])
def test_the_api_key_is_accepted_either_way(headers: list[tuple[bytes, bytes]]) -> None:
    assert guard(api_key=API_KEY).authenticate(scope(*headers)) == (True, None)


@pytest.mark.parametrize("headers", [
    [], [(b"x-api-key", b"wrong")], [(b"authorization", b"Basic " + API_KEY.encode())],
    [(b"authorization", API_KEY.encode())], [(b"x-api-key", API_KEY.encode()[:-1])],
])
def test_a_wrong_or_missing_key_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    g = guard(api_key=API_KEY, client_key_check=CLIENT_KEYS.get)
    assert g.authenticate(scope(*headers)) == (False, None)


def test_x_api_key_wins_over_authorization() -> None:
    g = guard(api_key=API_KEY)
    assert g.authenticate(scope((b"x-api-key", b"wrong"), (b"authorization", b"Bearer " + API_KEY.encode()))) == (
        False, None)


def test_a_client_key_passes_the_api_key_gate_and_names_the_caller() -> None:
    g = guard(api_key=API_KEY, client_key_check=CLIENT_KEYS.get)
    assert g.authenticate(scope((b"authorization", b"Bearer dk_aider_0123456789"))) == (True, "aider")


# --- the peer gate's verdict ------------------------------------------------------------------------


class StubGate(PeerGate):
    """A gate whose kernel lookup is scripted: who owns the client's end of the connection."""

    def __init__(self, owner_uid: int) -> None:
        super().__init__(own_uid=1000, lookup=lambda client, server: owner_uid)


def test_no_gate_means_no_peer_problem() -> None:
    assert guard().peer_problem(scope(), None) is None


def test_the_own_user_passes_the_gate() -> None:
    assert guard(peer_gate=StubGate(1000)).peer_problem(scope(), None) is None


def test_root_passes_the_gate() -> None:
    assert guard(peer_gate=StubGate(0)).peer_problem(scope(), None) is None


def test_another_user_is_refused_with_what_to_do() -> None:
    problem = guard(peer_gate=StubGate(1001)).peer_problem(scope(), None)
    assert problem is not None
    assert "uid 1000" in problem and "DARIO_API_KEY" in problem and "dario-ctl keys create" in problem


def test_a_client_key_lets_another_user_through() -> None:
    gate = StubGate(1001)
    assert guard(peer_gate=gate).peer_problem(scope(), "aider") is None
    assert gate.lookups == 0  # a key decides; the kernel is not asked


def test_a_non_loopback_peer_is_refused_without_a_lookup() -> None:
    gate = StubGate(1000)
    assert guard(peer_gate=gate).peer_problem(scope(client=("192.0.2.7", 50000)), None) is not None
    assert gate.lookups == 0


def test_an_unknown_owner_is_refused() -> None:
    def lookup(client: tuple[str, int], server: tuple[str, int]) -> int:
        raise OSError("netlink unavailable")

    gate = PeerGate(own_uid=1000, lookup=lookup)
    assert guard(peer_gate=gate).peer_problem(scope(), None) is not None


def test_the_gate_is_only_on_without_an_api_key() -> None:
    assert PeerGate.for_settings(API_KEY) is None
