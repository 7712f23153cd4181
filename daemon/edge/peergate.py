"""Other local users: on Linux, without DARIO_API_KEY, only dario's own user spends its keys.

Any local account can connect to 127.0.0.1:3456. With no key to tell callers apart, the
kernel's socket table does: the client's end of a loopback connection is on this machine, and
its owner uid is one netlink question away (see peercred). The answer is asked once per
connection and kept only as long as that connection lives.

macOS and Windows offer no unprivileged way to learn who owns another process's TCP socket;
there the gate is off and DARIO_API_KEY / client keys are the way to keep other users out.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import weakref
from collections.abc import Callable

import trio

from dario.daemon import peercred
from dario.daemon.asgi import HTTPScope

Address = tuple[str, int]
Lookup = Callable[[Address, Address], int]

REFUSAL = (
    "this dario serves only the user it runs as (uid {uid}); other local users are refused. "
    "To share it, set DARIO_API_KEY for dariod and give others that key, or a client key from "
    "`dario-ctl keys create NAME`, sent as x-api-key or Authorization: Bearer"
)


class PeerGate:
    def __init__(self, own_uid: int, lookup: Lookup = peercred.tcp_owner_uid) -> None:
        self.own_uid = own_uid
        self._lookup = lookup
        self.lookups = 0
        # Keyed on the connection's own nursery in hypercorn (the parent of every request task on
        # that connection), so an entry dies with its connection: a later connection that reuses
        # the same address pair — possibly another user's — is looked up afresh.
        self._by_connection: weakref.WeakKeyDictionary[object, tuple[tuple[object, object], bool]] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def for_settings(cls, api_key: str | None) -> PeerGate | None:
        """On for Linux without DARIO_API_KEY; with a key, keys decide, as before."""
        if api_key is not None or not sys.platform.startswith("linux"):
            return None
        return cls(os.getuid())

    @property
    def refusal(self) -> str:
        return REFUSAL.format(uid=self.own_uid)

    def allows(self, scope: HTTPScope) -> bool:
        pair = (scope.get("client"), scope.get("server"))
        connection = _connection_of_current_request()
        if connection is not None:
            cached = self._by_connection.get(connection)
            if cached is not None and cached[0] == pair:
                return cached[1]
        allowed = self._check(scope)
        if connection is not None:
            self._by_connection[connection] = (pair, allowed)
        return allowed

    def _check(self, scope: HTTPScope) -> bool:
        client, server = scope.get("client"), scope.get("server")
        if not client or not server or server[1] is None:
            return False  # e.g. a Unix socket bind: no address to ask about
        try:
            if not ipaddress.ip_address(client[0]).is_loopback:
                return False
            self.lookups += 1
            uid = self._lookup((client[0], int(client[1])), (server[0], int(server[1])))
        except (peercred.PeerUnknown, OSError, ValueError):
            return False  # unknown is not "ours"
        return uid == self.own_uid or uid == 0


def _connection_of_current_request() -> object | None:
    try:
        return trio.lowlevel.current_task().parent_nursery
    except RuntimeError:
        return None
