"""The account registry: metadata in a small JSON file, secrets in the OS keyring.

The file (under the XDG config folder) holds alias, kind, base URL, created, enabled and
which account is preferred. The secret of each account lives only in the keyring
(service `dario`, one entry per alias). Keyring calls block (D-Bus), so the daemon runs
them in a worker thread.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dario.daemon import atomicfile
from dario.daemon.commands import command
from dario.daemon.control.api import ACCOUNT_KINDS
from dario.daemon.settings import is_loopback_host

KEYRING_SERVICE = "dario"
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_BASE_URLS = {"anthropic": "https://api.anthropic.com"}


class AccountError(ValueError):
    """Bad input for an account; the message says what is wrong and what to do."""


# How long a keyring read may take before dario tells the user the keyring looks locked. An
# unlocked Secret Service answers in milliseconds; a locked one holds the call until its unlock
# prompt is answered, which may be never (nobody at the desktop yet).
KEYRING_TIMEOUT = 3.0
KEYRING_STARTUP_GRACE = 0.5  # dariod listens after the first read or this long, whichever comes first
KEYRING_RETRY_MIN = 2.0  # backoff between reads after the keyring failed, doubled up to the max
KEYRING_RETRY_MAX = 300.0  # a dismissed unlock prompt must not come back every minute


class KeyringUnavailable(Exception):
    """No usable keyring backend; the message names the fix, `short` says what went wrong."""

    def __init__(self, message: str, short: str | None = None) -> None:
        super().__init__(message)
        self.short = short or message


@dataclass(slots=True)
class Account:
    alias: str
    kind: str
    base_url: str
    created: float
    enabled: bool = True


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise AccountError(
            f"invalid account name {alias!r}: use 1–64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return alias


def normalise_base_url(kind: str, base_url: str | None) -> str:
    if kind not in ACCOUNT_KINDS:
        raise AccountError(f"unknown account kind {kind!r}; choose one of: {', '.join(ACCOUNT_KINDS)}")
    if not base_url:
        if kind not in DEFAULT_BASE_URLS:
            raise AccountError(f"an {kind} account needs --base-url (the endpoint's https:// address)")
        return DEFAULT_BASE_URLS[kind]
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AccountError(f"--base-url must be an http(s) URL like https://api.example.com, not {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise AccountError("--base-url must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise AccountError(
            f"refusing plain http:// for {parts.hostname}: the API key would cross the network unencrypted; use https://"
        )
    path = parts.path.rstrip("/")
    # dario appends the fixed API paths itself; accept a base that already ends in /v1.
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


class Registry:
    """Account metadata and the preferred alias, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accounts: dict[str, Account] = {}
        self.preferred: str | None = None

    def load(self) -> Registry:
        try:
            data: Any = atomicfile.read_json(self.path, {})
        except ValueError as exc:
            raise AccountError(
                f"{self.path} is not valid JSON ({exc}); fix or move it aside, then log in again"
            ) from None
        for item in data.get("accounts", []):
            try:
                acc = Account(
                    alias=str(item["alias"]),
                    kind=str(item.get("kind", "anthropic")),
                    base_url=str(item["base_url"]),
                    created=float(item.get("created", 0.0)),
                    enabled=bool(item.get("enabled", True)),
                )
            except (KeyError, TypeError, ValueError):
                continue  # one broken entry must not take the others down
            self.accounts[acc.alias] = acc
        preferred = data.get("preferred")
        self.preferred = preferred if preferred in self.accounts else None
        return self

    def save(self) -> None:
        atomicfile.write_json_atomic(
            self.path,
            {"accounts": [asdict(a) for a in self.accounts.values()], "preferred": self.preferred},
        )

    def upsert(self, alias: str, kind: str, base_url: str) -> Account:
        existing = self.accounts.get(alias)
        acc = Account(alias=alias, kind=kind, base_url=base_url, created=existing.created if existing else time.time())
        if existing:
            acc.enabled = existing.enabled
        self.accounts[alias] = acc
        return acc

    def remove(self, alias: str) -> None:
        del self.accounts[alias]
        if self.preferred == alias:
            self.preferred = None


# -- secrets --------------------------------------------------------------------------

def _fix() -> str:
    return (
        "dario keeps API keys only in the OS keyring. Install and unlock one: on Linux, gnome-keyring or "
        "KWallet (in a headless session: `dbus-run-session -- sh -c 'echo -n pass | gnome-keyring-daemon "
        f"--unlock --components=secrets; {command('dariod')}'`); or choose a backend with PYTHON_KEYRING_BACKEND "
        "(e.g. keyrings.cryptfile.cryptfile.CryptFileKeyring after `pip install keyrings.cryptfile`)."
    )


def _keyring() -> Any:
    import keyring
    import keyring.backends.fail
    import keyring.errors

    backend = keyring.get_keyring()
    if isinstance(backend, keyring.backends.fail.Keyring):
        raise KeyringUnavailable(f"no usable keyring backend was found. {_fix()}", "no usable OS keyring was found")
    return keyring


def _wrap(exc: Exception) -> KeyringUnavailable:
    # The backend's own message never contains the secret; keep only its class and text.
    what = f"the keyring refused ({type(exc).__name__}: {exc})"
    return KeyringUnavailable(f"{what}. {_fix()}", what[:200])


def keyring_overdue(seconds: float) -> KeyringUnavailable:
    """The keyring has not answered: most often a locked login keyring with its prompt still open."""
    what = f"the OS keyring has not answered for {seconds:g} s; it is probably locked"
    return KeyringUnavailable(
        f"{what}. Unlock it (log in to the desktop, or answer the unlock prompt); dario reads the keys "
        "as soon as it answers, no restart needed. If no keyring is running at all: " + _fix(),
        what,
    )


def get_secret(alias: str) -> str | None:
    kr = _keyring()
    try:
        value: str | None = kr.get_password(KEYRING_SERVICE, alias)
    except Exception as exc:
        raise _wrap(exc) from None
    return value


def set_secret(alias: str, secret: str) -> None:
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, alias, secret)
    except Exception as exc:
        raise _wrap(exc) from None


def delete_secret(alias: str) -> None:
    kr = _keyring()
    import keyring.errors

    try:
        kr.delete_password(KEYRING_SERVICE, alias)
    except keyring.errors.PasswordDeleteError:
        pass
    except Exception as exc:
        raise _wrap(exc) from None


def check_keyring() -> None:
    """Fail fast, before asking the upstream anything, when no keyring can hold a secret."""
    _keyring()
