"""A file-backed keyring for test runs without a Secret Service.

Only for tests: `tests/run` uses the real Secret Service (gnome-keyring) instead. It lets a
`dariod` subprocess and its restart share secrets through a file in the test's temp folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = -10  # never chosen by auto-detection; only by PYTHON_KEYRING_BACKEND

    @property
    def _path(self) -> Path:
        return Path(os.environ["DARIO_TEST_KEYRING_FILE"])

    def _load(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._path.read_text()))
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, str]) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._path)

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError(username)
        self._save(data)


def _unlocked() -> bool:
    """Unlocked once the file DARIO_TEST_KEYRING_UNLOCK names exists; locked for good without one."""
    flag = os.environ.get("DARIO_TEST_KEYRING_UNLOCK")
    return flag is not None and Path(flag).exists()


class BlockingKeyring(FileKeyring):
    """A locked keyring with its unlock prompt open: every call blocks until the unlock file exists.

    That is how a Secret Service behaves when the login keyring is locked: the call waits for the
    user to answer the prompt, possibly for ever.
    """

    priority = -10

    def _wait_for_unlock(self) -> None:
        while not _unlocked():
            time.sleep(0.02)  # this stands in for a person answering a dialog; nothing to wait on

    def get_password(self, service: str, username: str) -> str | None:
        self._wait_for_unlock()
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self._wait_for_unlock()
        super().set_password(service, username, password)


class LockedKeyring(FileKeyring):
    """A keyring that refuses (KeyringLocked) until the unlock file exists, like a dismissed prompt."""

    priority = -10

    def get_password(self, service: str, username: str) -> str | None:
        if not _unlocked():
            raise KeyringLocked("Failed to unlock the collection!")
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        if not _unlocked():
            raise KeyringLocked("Failed to unlock the collection!")
        super().set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        if not _unlocked():
            raise KeyringLocked("Failed to unlock the collection!")
        super().delete_password(service, username)
