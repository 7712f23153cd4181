"""Which client key a tool gets: the stored one while the daemon knows it, else a new one, stored."""

from __future__ import annotations

from typing import Any

import pytest

from dario.ctl.client import ControlAPIError
from dario.ctl.toolkeys import KeyStoreError, KeyUnavailable, key_for_tool


class FakeDaemon:
    def __init__(self) -> None:
        self.keys_by_name: dict[str, str] = {}
        self.created = 0
        self.before_create: Any = None  # runs first in create_key: another process racing us

    def keys(self) -> list[dict[str, Any]]:
        return [{"name": n, "prefix": k[:10], "created": 0.0, "last_used": None} for n, k in self.keys_by_name.items()]

    def create_key(self, name: str) -> str:
        if self.before_create:
            self.before_create()
        if name in self.keys_by_name:
            raise ControlAPIError(400, "invalid_request_error", f"a client key named {name!r} already exists")
        self.created += 1
        key = f"dario-{self.created:04d}" + "x" * 39
        self.keys_by_name[name] = key
        return key

    def revoke_key(self, name: str) -> None:
        del self.keys_by_name[name]


class Store:
    def __init__(self, fail_set: bool = False) -> None:
        self.data: dict[str, str] = {}
        self.fail_set = fail_set

    def get(self, name: str) -> str | None:
        return self.data.get(name)

    def set(self, name: str, key: str) -> None:
        if self.fail_set:
            raise KeyStoreError("could not write to the keyring (KeyringLocked)")
        self.data[name] = key


def test_made_once_then_reused() -> None:
    daemon, store = FakeDaemon(), Store()
    first = key_for_tool(daemon, "aider", store)  # type: ignore[arg-type]
    assert key_for_tool(daemon, "aider", store) == first  # type: ignore[arg-type]
    assert daemon.created == 1 and store.data == {"aider": first}


def test_revoked_key_is_replaced() -> None:
    daemon, store = FakeDaemon(), Store()
    first = key_for_tool(daemon, "aider", store)  # type: ignore[arg-type]
    daemon.revoke_key("aider")
    second = key_for_tool(daemon, "aider", store)  # type: ignore[arg-type]
    assert second != first and store.data["aider"] == second


def test_a_key_made_elsewhere_is_not_taken_over() -> None:
    daemon, store = FakeDaemon(), Store()
    daemon.create_key("claude")
    with pytest.raises(KeyUnavailable, match="dario-ctl keys revoke claude"):
        key_for_tool(daemon, "claude", store)  # type: ignore[arg-type]
    assert "claude" in daemon.keys_by_name  # left alone: some other tool may use it


def test_a_key_that_cannot_be_stored_is_revoked_again() -> None:
    daemon = FakeDaemon()
    with pytest.raises(KeyStoreError):
        key_for_tool(daemon, "aider", Store(fail_set=True))  # type: ignore[arg-type]
    assert daemon.keys_by_name == {}


def test_two_first_runs_at_once_share_the_key() -> None:
    daemon, store = FakeDaemon(), Store()

    def other_run_wins() -> None:
        daemon.before_create = None
        store.data["aider"] = daemon.create_key("aider")

    daemon.before_create = other_run_wins
    key = key_for_tool(daemon, "aider", store)  # type: ignore[arg-type]
    assert key == store.data["aider"] and daemon.created == 1
