"""A client key per tool, made on first use and kept in the OS keyring for the next run.

`dario-ctl run` and `dario-ctl env` need a key only when the daemon requires one
(DARIO_API_KEY). The daemon shows a new client key once and keeps only its hash, so the key
itself is stored in this user's keyring (service `dario-client-keys`, the key's name as user
name); the daemon's list of keys (name and prefix) tells whether a stored key is still valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dario.ctl.client import ControlClient

KEYRING_SERVICE = "dario-client-keys"


class KeyStoreError(Exception):
    """The keyring could not be read or written; the message never holds a key."""


class KeyStore(Protocol):
    def get(self, name: str) -> str | None: ...
    def set(self, name: str, key: str) -> None: ...


class KeyringStore:
    """The OS keyring, through the `keyring` package (imported only when a key is needed)."""

    def get(self, name: str) -> str | None:
        import keyring
        from keyring.errors import KeyringError

        try:
            return keyring.get_password(KEYRING_SERVICE, name)
        except (KeyringError, OSError) as exc:
            raise KeyStoreError(f"could not read the keyring ({type(exc).__name__}: {exc})") from None

    def set(self, name: str, key: str) -> None:
        import keyring
        from keyring.errors import KeyringError

        try:
            keyring.set_password(KEYRING_SERVICE, name, key)
        except (KeyringError, OSError) as exc:
            # Only the type: a backend's message might quote what it was given.
            raise KeyStoreError(f"could not write to the keyring ({type(exc).__name__})") from None


class KeyUnavailable(Exception):
    """There is a key by that name, but this user does not hold its secret."""


def _held(client: ControlClient, name: str, store: KeyStore) -> tuple[str | None, bool]:
    """(the stored key if the daemon still knows it, whether the daemon has a key by that name)."""
    stored = store.get(name)
    known = {k["name"]: k["prefix"] for k in client.keys()}
    if name in known and stored is not None and stored.startswith(known[name]):
        return stored, True
    return None, name in known


def key_for_tool(client: ControlClient, name: str, store: KeyStore) -> str:
    """The stored key for `name` if the daemon still knows it, else a new one, stored."""
    from dario.ctl.client import ControlAPIError

    key, exists = _held(client, name, store)
    if key is not None:
        return key
    if not exists:
        try:
            key = client.create_key(name)
        except ControlAPIError:
            # Two first runs of one tool at once: the other may have just made and stored it.
            key, exists = _held(client, name, store)
            if key is not None:
                return key
            if not exists:
                raise
        else:
            try:
                store.set(name, key)
            except KeyStoreError:
                # Unsaved, the key would block its name on the next run: take it back.
                client.revoke_key(name)
                raise
            return key
    raise KeyUnavailable(
        f"a client key named {name!r} exists but this user's keyring does not hold it "
        f"(it was created elsewhere): use another name with --name NAME, or revoke it "
        f"so that a new one is made: dario-ctl keys revoke {name}"
    )
