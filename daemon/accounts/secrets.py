"""Account secrets in the OS keyring: service `dario`, one entry per alias.

Keyring calls block (D-Bus, and a locked Secret Service holds a call until its unlock prompt is
answered), so the daemon runs them in worker threads with the bounds below. Errors never carry
the secret: only the backend's class and message.
"""

from __future__ import annotations

from typing import Any

from dario.daemon.accounts.errors import KeyringUnavailable
from dario.daemon.commands import command

KEYRING_SERVICE = "dario"

# How long a keyring read may take before dario tells the user the keyring looks locked. An
# unlocked Secret Service answers in milliseconds; a locked one holds the call until its unlock
# prompt is answered, which may be never (nobody at the desktop yet).
KEYRING_TIMEOUT = 3.0
KEYRING_STARTUP_GRACE = 0.5  # dariod listens after the first read or this long, whichever comes first
KEYRING_RETRY_MIN = 2.0  # backoff between reads after the keyring failed, doubled up to the max
KEYRING_RETRY_MAX = 300.0  # a dismissed unlock prompt must not come back every minute


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
