"""Local client keys: per-tool keys accepted instead of DARIO_API_KEY.

Only a SHA-256 of each key is kept (in memory and on disk); the key itself is shown
once, by `create`. Keys carry 256 bits of randomness, so an unsalted fast hash is
enough: there is nothing to brute-force, and a dict lookup keeps `verify` O(1).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import orjson

from dario.daemon.atomicfile import write_json_atomic

KEY_PREFIX = "dario-"
PREFIX_LEN = 10  # "dario-" + 4 characters: enough to tell keys apart, useless to guess one
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FILE_VERSION = 1


class _Entry(TypedDict):
    name: str
    created: float
    prefix: str
    sha256: str
    last_used: float | None
    auto_cache: NotRequired[bool]  # written only when set, so older files and dariods read the same


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class ClientKeyStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()  # create/revoke may run in a worker thread while verify runs in trio
        self._by_name: dict[str, _Entry] = {}
        self._by_hash: dict[str, _Entry] = {}
        self._dirty = False
        self._load()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dirty(self) -> bool:
        """True when last_used times changed since the file was last written."""
        return self._dirty

    def _load(self) -> None:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ValueError(f"cannot read client keys file {self._path}: {exc.strerror}") from None
        try:
            doc = orjson.loads(data)
            raw = doc["keys"]
            if not isinstance(raw, list):
                raise TypeError
            for item in raw:
                entry = _Entry(
                    name=str(item["name"]),
                    created=float(item["created"]),
                    prefix=str(item["prefix"]),
                    sha256=str(item["sha256"]),
                    last_used=None if item.get("last_used") is None else float(item["last_used"]),
                )
                if item.get("auto_cache") is True:
                    entry["auto_cache"] = True
                self._by_name[entry["name"]] = entry
                self._by_hash[entry["sha256"]] = entry
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # No exception chaining: the parser's message could quote file content.
            raise ValueError(
                f"client keys file {self._path} is not valid; fix or remove it "
                "(removing it revokes every client key)"
            ) from None
        # A file copied around may have lost its mode; it holds hashes only, but keep it private.
        try:
            if os.stat(self._path).st_mode & 0o077:
                os.chmod(self._path, 0o600)
        except OSError:
            pass

    def _save_locked(self) -> None:
        doc: dict[str, Any] = {
            "version": _FILE_VERSION,
            "keys": sorted(self._by_name.values(), key=lambda e: e["name"]),
        }
        write_json_atomic(self._path, doc, mode=0o600)
        self._dirty = False

    def create(self, name: str, auto_cache: bool = False) -> str:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError("client key name must be 1-64 characters of A-Z a-z 0-9 . _ -")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        entry = _Entry(
            name=name,
            created=time.time(),
            prefix=key[:PREFIX_LEN],
            sha256=_digest(key),
            last_used=None,
        )
        if auto_cache:
            entry["auto_cache"] = True
        with self._lock:
            if name in self._by_name:
                raise ValueError(f"a client key named {name!r} already exists")
            self._by_name[name] = entry
            self._by_hash[entry["sha256"]] = entry
            try:
                self._save_locked()
            except BaseException:
                # The caller never sees the key, so it must not stay valid either.
                del self._by_name[name]
                del self._by_hash[entry["sha256"]]
                raise
        return key

    def revoke(self, name: str) -> None:
        with self._lock:
            entry = self._by_name.pop(name)  # KeyError for an unknown name, as documented
            del self._by_hash[entry["sha256"]]
            try:
                self._save_locked()
            except BaseException:
                self._by_name[name] = entry
                self._by_hash[entry["sha256"]] = entry
                raise

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = sorted(self._by_name.values(), key=lambda e: e["name"])
            return [
                {
                    "name": e["name"],
                    "created": e["created"],
                    "prefix": e["prefix"],
                    "last_used": e["last_used"],
                    "auto_cache": e.get("auto_cache", False),
                }
                for e in entries
            ]

    def auto_cache(self, name: str) -> bool:
        """Whether the key named `name` asked for automatic prompt-cache breakpoints (OpenAI dialect)."""
        entry = self._by_name.get(name)
        return entry is not None and entry.get("auto_cache", False)

    def verify(self, key: str) -> str | None:
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
            return None
        entry = self._by_hash.get(_digest(key))
        if entry is None:
            return None
        # In memory only: the request path must not write files. `flush()` persists it.
        entry["last_used"] = time.time()
        self._dirty = True
        return entry["name"]

    def flush(self) -> bool:
        """Persist last_used times if they changed. Blocking I/O: call from a worker thread.

        Returns True if the file was written.
        """
        with self._lock:
            if not self._dirty:
                return False
            self._save_locked()
            return True
