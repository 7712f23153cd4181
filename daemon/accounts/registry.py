"""The account registry: account metadata in a small JSON file.

The file (under the XDG config folder) holds alias, kind, base URL, created, enabled, the
limits the user declared (requests, input and output tokens per minute; not secret), the
non-secret details of Bedrock and Vertex accounts (region, project, credential type, AWS profile
name, inference-profile prefix) and which account is preferred. The secret of each account lives only in the OS keyring
(`accounts.secrets`), never here.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dario.daemon import atomicfile
from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.control.api import ACCOUNT_KINDS, LIMIT_MAX, LIMIT_NAMES
from dario.daemon.settings import is_loopback_host

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_BASE_URLS = {"anthropic": "https://api.anthropic.com"}


@dataclass(slots=True)
class Account:
    alias: str
    kind: str
    base_url: str
    created: float
    enabled: bool = True
    # Declared limits per minute (dario-ctl limits); None: not declared.
    rpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    region: str | None = None
    project: str | None = None
    credential: str | None = None
    aws_profile: str | None = None
    inference_profile: str | None = None

    def limits(self) -> dict[str, int | None]:
        return {"rpm": self.rpm, "input_tpm": self.input_tpm, "output_tpm": self.output_tpm}

    def set_limits(self, limits: dict[str, int | None]) -> None:
        self.rpm, self.input_tpm, self.output_tpm = (limits.get(n) for n in LIMIT_NAMES)

    def details(self) -> dict[str, str | None]:
        """The kind's non-secret settings, for views."""
        return {name: getattr(self, name) for name in DETAIL_FIELDS if getattr(self, name) is not None}


DETAIL_FIELDS = ("region", "project", "credential", "aws_profile", "inference_profile")


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def check_limits(values: dict[str, object]) -> dict[str, int | None]:
    """Declared limits as given (rpm, input_tpm, output_tpm; None clears one), checked."""
    out: dict[str, int | None] = {}
    for name, value in values.items():
        if name not in LIMIT_NAMES:
            raise InvalidAccount(f"unknown limit {name!r}; the limits are: {', '.join(LIMIT_NAMES)}")
        flag = "--" + name.replace("_", "-")
        if value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMIT_MAX:
            raise InvalidAccount(
                f"{flag} must be a whole number from 1 to {LIMIT_MAX:,} per minute, not {value!r}"
            )
        out[name] = value
    return out


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise InvalidAccount(
            f"invalid account name {alias!r}: use 1–64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return alias


def normalise_base_url(kind: str, base_url: str | None) -> str:
    if kind not in ACCOUNT_KINDS:
        raise InvalidAccount(f"unknown account kind {kind!r}; choose one of: {', '.join(ACCOUNT_KINDS)}")
    if not base_url:
        if kind not in DEFAULT_BASE_URLS:
            raise InvalidAccount(f"an {kind} account needs --base-url (the endpoint's https:// address)")
        return DEFAULT_BASE_URLS[kind]
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidAccount(f"--base-url must be an http(s) URL like https://api.example.com, not {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidAccount("--base-url must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InvalidAccount(
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
            raise InvalidAccount(
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
                for name in DETAIL_FIELDS:
                    setattr(acc, name, _opt_str(item.get(name)))
                acc.set_limits(_saved_limits(item))
            except (KeyError, TypeError, ValueError):
                continue  # one broken entry must not take the others down
            self.accounts[acc.alias] = acc
        preferred = data.get("preferred")
        self.preferred = preferred if preferred in self.accounts else None
        return self

    def save(self) -> None:
        atomicfile.write_json_atomic(
            self.path,
            {"accounts": [{k: v for k, v in asdict(a).items() if v is not None} for a in self.accounts.values()],
             "preferred": self.preferred},
        )

    def upsert(self, alias: str, kind: str, base_url: str, details: dict[str, str | None] | None = None) -> Account:
        existing = self.accounts.get(alias)
        acc = Account(alias=alias, kind=kind, base_url=base_url, created=existing.created if existing else time.time())
        for name, value in (details or {}).items():
            if name in DETAIL_FIELDS:
                setattr(acc, name, value)
        if existing:
            acc.enabled = existing.enabled
            acc.set_limits(existing.limits())
        self.accounts[alias] = acc
        return acc

    def remove(self, alias: str) -> None:
        del self.accounts[alias]
        if self.preferred == alias:
            self.preferred = None


def _saved_limits(item: dict[str, Any]) -> dict[str, int | None]:
    """Declared limits from the file; one that is not a valid limit is dropped, not fatal."""
    out: dict[str, int | None] = {}
    for name in LIMIT_NAMES:
        try:
            out.update(check_limits({name: item.get(name)}))
        except InvalidAccount:
            out[name] = None
    return out
