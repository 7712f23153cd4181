"""Where an account's secret comes from on a server: a systemd credential, a file, an environment
variable, or the OS keyring.

A desktop account keeps its key in the OS keyring (`accounts.secrets`), written by `dario-ctl
login`. An account defined in the team config file (`dario.toml`) names one source instead, and
dario reads the secret from it at start-up and on `dario-ctl refresh`; it never writes it anywhere.

- `credential`: `$CREDENTIALS_DIRECTORY/NAME`, the folder systemd fills from `LoadCredential=` /
  `SetCredential=` (https://systemd.io/CREDENTIALS/); only the service can read it.
- `file`: a file that must not be readable by group or others (as OpenSSH refuses a private key).
- `env`: an environment variable (compose `environment:`, a Kubernetes secret as env).
- `keyring`: the OS keyring entry `dario`/ALIAS, read like a desktop account's.

A read that fails raises `SecretUnavailable`, whose message names the source and the fix, never
the value. Reads are blocking file calls: the service runs them in worker threads.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from dario.daemon.accounts import secrets

SourceKind = Literal["credential", "file", "env", "keyring"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("credential", "file", "env", "keyring")
MAX_SECRET_BYTES = 64 * 1024  # an API key, or a service-account JSON (about 2.4 kB)
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretUnavailable(Exception):
    """The source cannot give the secret now; `str(exc)` names the source and what to do, never the value."""


class SecretSource(Protocol):
    """One place a secret is read from."""

    @property
    def kind(self) -> SourceKind: ...

    def describe(self) -> str:
        """The source in words, for messages and `--check` (never the value)."""
        ...

    def read(self) -> str:
        """The secret, stripped; raises SecretUnavailable."""
        ...


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`."""

    name: str
    kind: SourceKind = "credential"

    def describe(self) -> str:
        return f"systemd credential {self.name!r}"

    def path(self) -> Path | None:
        folder = os.environ.get(CREDENTIALS_ENV)
        return Path(folder) / self.name if folder else None

    def read(self) -> str:
        path = self.path()
        if path is None:
            raise SecretUnavailable(
                f"{self.describe()}: ${CREDENTIALS_ENV} is not set, so dariod was not started by systemd with "
                f"credentials; add `LoadCredential={self.name}:/path/to/secret` to the unit (or start dariod "
                f"with {CREDENTIALS_ENV} pointing at a folder that holds a file named {self.name})"
            )
        return _read_file(path, self.describe(), f"add `LoadCredential={self.name}:/path/to/secret` to the unit")


@dataclass(frozen=True, slots=True)
class FileSource:
    """A file of mode 0600 or 0400 (no group or other access)."""

    path: Path
    kind: SourceKind = "file"

    def describe(self) -> str:
        return f"secret file {self.path}"

    def read(self) -> str:
        problem = self.mode_problem()
        if problem:
            raise SecretUnavailable(problem)
        return _read_file(self.path, self.describe(), "create it with the key as its only content")

    def mode_problem(self) -> str | None:
        """Why the file's permissions are refused, with the chmod that fixes them; None when fine or absent."""
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            return (f"{self.describe()} is readable by others (mode {stat.S_IMODE(mode):04o}); refusing to use it. "
                    f"Run: chmod 600 {self.path}")
        return None


@dataclass(frozen=True, slots=True)
class EnvSource:
    """An environment variable of dariod's process."""

    var: str
    kind: SourceKind = "env"

    def describe(self) -> str:
        return f"environment variable {self.var}"

    def read(self) -> str:
        value = os.environ.get(self.var, "").strip()
        if not value:
            raise SecretUnavailable(
                f"{self.describe()} is not set or empty; set it in dariod's environment "
                "(the unit's Environment=/EnvironmentFile=, compose environment:)"
            )
        return value


@dataclass(frozen=True, slots=True)
class KeyringSource:
    """The OS keyring entry service `dario`, user ALIAS (as `dario-ctl login` would write it)."""

    alias: str
    kind: SourceKind = "keyring"

    def describe(self) -> str:
        return f"OS keyring entry {secrets.KEYRING_SERVICE}/{self.alias}"

    def read(self) -> str:
        value = secrets.get_secret(self.alias)  # raises KeyringUnavailable when no keyring answers
        if not value or not value.strip():
            raise SecretUnavailable(
                f"{self.describe()} holds no key; store one with "
                f"`keyring set {secrets.KEYRING_SERVICE} {self.alias}` as the user dariod runs as"
            )
        return value.strip()


def source_for(kind: SourceKind, value: str, alias: str) -> SecretSource:
    """The source a config entry names (`value` is the credential name, path or variable)."""
    if kind == "credential":
        return CredentialSource(value)
    if kind == "file":
        return FileSource(Path(value))
    if kind == "env":
        return EnvSource(value)
    return KeyringSource(alias)


def _read_file(path: Path, what: str, fix: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise SecretUnavailable(f"{what}: {path} does not exist; {fix}") from None
    except PermissionError:
        raise SecretUnavailable(f"{what}: {path} is not readable by dariod's user; fix its owner or mode") from None
    except OSError as exc:
        raise SecretUnavailable(f"{what}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretUnavailable(f"{what}: {path} is larger than {MAX_SECRET_BYTES // 1024} KiB; is it the right file?")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretUnavailable(f"{what}: {path} is not UTF-8 text") from None
    if not value:
        raise SecretUnavailable(f"{what}: {path} is empty; {fix}")
    return value
