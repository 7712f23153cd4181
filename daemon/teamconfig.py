"""The team config file, `dario.toml`: server settings and the accounts of a headless dariod.

Read with the standard library's `tomllib` (TOML 1.0, https://toml.io/en/v1.0.0) from
`--config FILE` or `DARIO_CONFIG`; without either, no file is read and the desktop default
(accounts in accounts.json, keys in the OS keyring) is unchanged.

    [server]                       # optional; flags and DARIO_* environment win over these
    host = "0.0.0.0"
    port = 3456
    api_key = { credential = "dario-api-key" }
    store = "redis://redis:6379/0"           # the shared pool state (as --store)
    analytics = "postgresql://pg/dario"      # or false to record nothing

    [[account]]
    alias = "team-a"
    kind = "anthropic"                       # default
    base_url = "https://api.anthropic.com"   # default per kind
    secret = { credential = "anthropic-team-a" }   # or { file = "/abs/path" }, { env = "VAR" }, { keyring = true }

    [[account]]
    alias = "aws-main"
    kind = "bedrock"
    region = "us-east-1"
    inference_profile = "us"                 # optional
    aws_profile = "dario"                    # by reference (botocore's chain); or secret = … holding AWS keys,
                                             # or credential = "api_key" + secret; or neither: the default chain

    [[account]]
    alias = "gcp-main"
    kind = "vertex"
    project = "my-proj"
    region = "us-east5"
    secret = { credential = "vertex-sa" }    # the service-account JSON; or adc = true (no secret)

A Bedrock or Vertex account's fields are judged by the rules `dario-ctl login` follows
(`accounts.kinds.field_problems`); `secret` may be left out exactly when the credential is a
reference (an AWS profile or botocore's default chain, Vertex ADC).

`load` returns a `TeamConfig` or raises `ConfigError` holding every problem found, each with the
line it is on, so `dariod --config FILE --check` can list them all at once. Secrets are never
read here and never printed: a `secret` written as a literal string is refused without echoing it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dario.daemon.accounts import kinds
from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.accounts.kinds import LoginFields
from dario.daemon.accounts.registry import check_alias, check_limits
from dario.daemon.accounts.sources import (
    CREDENTIALS_ENV,
    SOURCE_KINDS,
    CredentialSource,
    EnvSource,
    FileSource,
    SecretSource,
    SourceKind,
    source_for,
)
from dario.daemon.control.api import LIMIT_NAMES
from dario.daemon.redact import redact

CONFIG_ENV = "DARIO_CONFIG"

# [server] keys: name in the file -> (Settings field, type, what it is). Only settings dariod has.
_NUMBER = "a number of seconds"
SERVER_KEYS: dict[str, tuple[str, str, str]] = {
    "host": ("host", "str", "address to listen on"),
    "port": ("port", "port", "port to listen on"),
    "socket": ("socket", "path", "control socket path"),
    "verbose": ("verbose", "bool", "log every request"),
    "model": ("force_model", "str", "send every request to this model"),
    "queue_timeout": ("queue_timeout", "seconds", "seconds a request waits when all accounts are exhausted"),
    "grace_period": ("grace_period", "seconds", "seconds in-flight streams get on shutdown"),
    "upstream_timeout": ("upstream_read_timeout", "seconds", "upstream read timeout"),
    "hold_message_start": ("hold_message_start", "seconds", "hold message_start back this long"),
    "body_idle_timeout": ("body_idle_timeout", "seconds", "idle request body cut-off"),
    "body_deadline": ("body_deadline", "seconds", "whole request body deadline"),
    "allowed_hosts": ("allowed_hosts", "strlist", "extra Host names accepted"),
    "allowed_origins": ("allowed_origins", "strlist", "browser Origins accepted"),
    "http2_cleartext": ("http2_cleartext", "bool", "also serve h2c"),
    "auto_cache": ("auto_cache", "bool", "OpenAI dialect: automatic prompt-cache breakpoints"),
}
# Handled apart: a secret source, and the team-mode store URLs (strings kept for the stores to read).
SERVER_SPECIAL = ("api_key", "store", "analytics")
# Kind-specific account fields (Bedrock, Vertex), as `dario-ctl login` takes them (LoginFields).
KIND_FIELDS = ("region", "project", "inference_profile", "aws_profile", "credential")
ACCOUNT_KEYS = ("alias", "kind", "base_url", "enabled", "preferred", "secret", *KIND_FIELDS, "adc", *LIMIT_NAMES)

_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")  # a file name in $CREDENTIALS_DIRECTORY
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_LINE = re.compile(r"^(\s*(?:secret|api_key)\s*=\s*)[\"'].*$")


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """Where a secret comes from: the source kind and its credential name, path or variable."""

    kind: SourceKind
    value: str  # "" for keyring


@dataclass(frozen=True, slots=True)
class AccountEntry:
    alias: str
    kind: str
    base_url: str  # as the account is stored (a Vertex account's carries its project and region)
    secret: SecretSpec | None  # None: the credential is a reference (AWS profile or chain, Vertex ADC)
    enabled: bool = True
    preferred: bool = False
    # The kind fields as LoginFields takes them (region, project, credential, …); `credential` is
    # filled in when the file implies it (adc = true; a bedrock account with no secret and no profile).
    options: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, int | None] = field(default_factory=dict)  # declared rpm, input_tpm, output_tpm
    configured_base_url: str | None = None  # base_url as written (kinds.prepare takes this one)
    details: Mapping[str, str | None] = field(default_factory=dict)  # region, project, credential… for views


@dataclass(frozen=True, slots=True)
class ServerSection:
    settings: Mapping[str, Any] = field(default_factory=dict)  # Settings field name -> value
    api_key: SecretSpec | None = None
    store: str | None = None  # e.g. redis://…; kept for the shared pool store
    analytics_url: str | None = None  # e.g. postgresql://…; kept for the shared analytics store


@dataclass(frozen=True, slots=True)
class TeamConfig:
    path: Path
    server: ServerSection
    accounts: tuple[AccountEntry, ...]

    @property
    def preferred(self) -> str | None:
        return next((a.alias for a in self.accounts if a.preferred), None)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None  # 1-based; None when the whole file is concerned
    message: str


class ConfigError(Exception):
    """The file cannot be used; holds every problem found. `str(exc)` is the report for the operator."""

    def __init__(self, path: Path, problems: list[Problem], text: str = "") -> None:
        self.path = path
        self.problems = problems
        self.text = text
        super().__init__(self.report())

    def report(self) -> str:
        lines = self.text.splitlines()
        out: list[str] = []
        for p in self.problems:
            where = f"{self.path}:{p.line}" if p.line else str(self.path)
            out.append(f"{where}: {p.message}")
            if p.line and 0 < p.line <= len(lines):
                out.append(f"    {p.line:>4} | {_shown(lines[p.line - 1])}")
        count = len(self.problems)
        out.append(f"{count} problem{'s' if count != 1 else ''} in {self.path}")
        return "\n".join(out)


def config_path(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    """`--config FILE`, else `DARIO_CONFIG`, else None (no team config)."""
    if flag is not None:
        return flag
    value = env.get(CONFIG_ENV, "")
    return Path(value) if value else None


def load(path: Path) -> TeamConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [Problem(None, f"cannot read the config file ({exc.strerror or exc})")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, [Problem(None, "not UTF-8 text")]) from None
    return parse(text, path)


def parse(text: str, path: Path) -> TeamConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [_syntax_problem(exc)], text) from None
    reader = _Reader(_Locator(text))
    config = reader.read(data, path)
    if reader.problems:
        raise ConfigError(path, reader.problems, text)
    return config


# -- reading ------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, where: _Locator) -> None:
        self.where = where
        self.problems: list[Problem] = []

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(line, message))

    def read(self, data: dict[str, Any], path: Path) -> TeamConfig:
        for key in data:
            if key not in ("server", "account"):
                self.problem(self.where.top(key), f"unknown table or key {key!r}: use [server] and [[account]]")
        server = ServerSection()
        raw_server = data.get("server", {})
        if isinstance(raw_server, dict):
            server = self.server(raw_server)
        else:
            self.problem(self.where.top("server"), "server must be a table: [server]")
        accounts: list[AccountEntry] = []
        raw_accounts = data.get("account", [])
        if not isinstance(raw_accounts, list):
            self.problem(self.where.top("account"), "account must be an array of tables: [[account]]")
            raw_accounts = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw_accounts):
            entry = self.account(index, item)
            if entry is None:
                continue
            if entry.alias in seen:
                self.problem(self.where.key(("account", index), "alias"),
                             f"account {entry.alias!r} is defined twice "
                             f"(first in [[account]] #{seen[entry.alias] + 1})")
                continue
            seen[entry.alias] = index
            accounts.append(entry)
        preferred = [(i, a.alias) for i, a in enumerate(accounts) if a.preferred]
        for _, alias in preferred[1:]:
            self.problem(self.where.key(("account", seen[alias]), "preferred"),
                         f"only one account may be preferred; {preferred[0][1]!r} already is")
        return TeamConfig(path=path, server=server, accounts=tuple(accounts))

    def server(self, raw: dict[str, Any]) -> ServerSection:
        table = ("server", 0)
        settings: dict[str, Any] = {}
        api_key: SecretSpec | None = None
        store: str | None = None
        analytics_url: str | None = None
        for key, value in raw.items():
            line = self.where.key(table, key)
            if key == "api_key":
                api_key = self.secret(line, "[server] api_key", value, allow_keyring=False)
            elif key == "store":
                if isinstance(value, str) and value:
                    store = value
                else:
                    self.problem(line, "store must be a URL string such as \"redis://host:6379/0\"")
            elif key == "analytics":
                if value is False:
                    settings["analytics"] = False
                elif isinstance(value, str) and value:
                    analytics_url = value
                else:
                    self.problem(line, "analytics must be a URL string such as \"postgresql://host/dario\", "
                                       "or false to record nothing")
            elif key in SERVER_KEYS:
                name, kind, _ = SERVER_KEYS[key]
                checked = self.value(line, key, kind, value)
                if checked is not None:
                    settings[name] = checked
            else:
                self.problem(line, f"unknown [server] setting {key!r}; known: "
                                   f"{', '.join([*SERVER_KEYS, *SERVER_SPECIAL])}")
        return ServerSection(settings=settings, api_key=api_key, store=store, analytics_url=analytics_url)

    def value(self, line: int | None, key: str, kind: str, value: Any) -> Any:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            self.problem(line, f"{key} must be true or false")
        elif kind == "str":
            if isinstance(value, str) and value:
                return value
            self.problem(line, f"{key} must be a non-empty string")
        elif kind == "path":
            if isinstance(value, str) and value:
                return Path(value)
            self.problem(line, f"{key} must be a path string")
        elif kind == "port":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
                return value
            self.problem(line, f"{key} must be a port number 0–65535")
        elif kind == "seconds":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
            self.problem(line, f"{key} must be {_NUMBER} (0 or more)")
        elif kind == "strlist":
            if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
                return tuple(value)
            self.problem(line, f"{key} must be a list of strings")
        return None

    def account(self, index: int, raw: Any) -> AccountEntry | None:
        table = ("account", index)
        head = self.where.header(table)
        label = f"[[account]] #{index + 1}"
        if not isinstance(raw, dict):
            self.problem(head, f"{label} must be a table")
            return None
        before = len(self.problems)
        for key in raw:
            if key not in ACCOUNT_KEYS:
                self.problem(self.where.key(table, key),
                             f"{label}: unknown key {key!r}; known: {', '.join(ACCOUNT_KEYS)}")
        alias = raw.get("alias")
        if not isinstance(alias, str):
            self.problem(self.where.key(table, "alias") or head, f"{label}: alias (the account's name) is required")
            alias = None
        else:
            try:
                check_alias(alias)
            except InvalidAccount as exc:
                self.problem(self.where.key(table, "alias"), f"{label}: {exc}")
            label = f"{label} ({alias})"
        flags: dict[str, bool] = {}
        for key, default in (("enabled", True), ("preferred", False)):
            value = raw.get(key, default)
            if isinstance(value, bool):
                flags[key] = value
            else:
                self.problem(self.where.key(table, key), f"{label}: {key} must be true or false")
        kind, checked, options = self.kind_fields(table, head, label, raw)
        limits: dict[str, int | None] = {}
        for key in LIMIT_NAMES:
            if key in raw:
                try:
                    limits.update(check_limits({key: raw[key]}))
                except InvalidAccount as exc:  # its message names the flag; the file says the key
                    message = str(exc).replace("--" + key.replace("_", "-"), key)
                    self.problem(self.where.key(table, key), f"{label}: {message}")
        secret: SecretSpec | None = None
        needs_secret = checked.needs_secret if checked is not None else None  # None: unknown (bad fields)
        if "secret" not in raw:
            if needs_secret:
                self.problem(head, f"{label}: secret is required: {_secret_hint(kind)}")
        else:
            line = self.where.key(table, "secret")
            secret = self.secret(line, f"{label}: secret", raw["secret"], allow_keyring=True)
            if needs_secret is False:
                self.problem(line, f"{label}: secret is not used with {_reference(options)}; remove it")
        if len(self.problems) > before or alias is None or checked is None:
            return None
        return AccountEntry(alias=alias, kind=kind, base_url=checked.base_url, secret=secret,
                            enabled=flags["enabled"], preferred=flags["preferred"], options=options, limits=limits,
                            configured_base_url=raw.get("base_url"), details=checked.details)

    def kind_fields(self, table: tuple[str, int], head: int | None, label: str, raw: dict[str, Any]
                    ) -> tuple[str, kinds.Checked | None, dict[str, str]]:
        """kind, base_url and the kind fields, judged by the login's rules (`kinds.field_problems`)."""
        kind = raw.get("kind", "anthropic")
        base_url = raw.get("base_url")
        options: dict[str, str] = {}
        fine = True
        for key in KIND_FIELDS:
            if key in raw:
                if isinstance(raw[key], str) and raw[key]:
                    options[key] = raw[key]
                else:
                    self.problem(self.where.key(table, key), f"{label}: {key} must be a non-empty string")
                    fine = False
        if "adc" in raw:
            adc_line = self.where.key(table, "adc")
            if raw["adc"] is not True:
                self.problem(adc_line, f"{label}: write adc = true (or leave it out)")
                fine = False
            elif kind != "vertex":
                self.problem(adc_line, f"{label}: adc applies to vertex accounts")
                fine = False
            elif options.get("credential", "adc") != "adc" or "secret" in raw:
                self.problem(adc_line, f"{label}: adc = true uses application default credentials: "
                                       "it goes without credential and secret")
                fine = False
            else:
                options["credential"] = "adc"
        if not isinstance(kind, str) or (base_url is not None and not isinstance(base_url, str)):
            self.problem(self.where.key(table, "kind" if not isinstance(kind, str) else "base_url"),
                         f"{label}: kind and base_url must be strings")
            return "", None, options
        if kind == "bedrock" and not options.get("credential") and not options.get("aws_profile") \
                and "secret" not in raw:
            options["credential"] = "profile"  # no keys, no profile: botocore's default chain
        checked, found = kinds.field_problems(kind, base_url, LoginFields(**options))
        for problem in found:
            line = self.where.key(table, problem.field) if problem.field else None
            self.problem(line or head, f"{label}: {kinds.config_wording(str(problem))}")
        return kind, (checked if fine else None), options

    def secret(self, line: int | None, label: str, raw: Any, *, allow_keyring: bool) -> SecretSpec | None:
        allowed = SOURCE_KINDS if allow_keyring else tuple(k for k in SOURCE_KINDS if k != "keyring")
        choices = ", ".join(allowed)
        if isinstance(raw, str):
            # Never echo it: it may well be the key itself.
            self.problem(line, f"{label} must name where the secret comes from ({choices}), e.g. "
                               "{ credential = \"NAME\" }; a key written into this file is refused")
            return None
        if not isinstance(raw, dict) or len(raw) != 1:
            self.problem(line, f"{label} must name exactly one source: {{ {' | '.join(f'{k} = …' for k in allowed)} }}")
            return None
        (kind, value), = raw.items()
        if kind not in allowed:
            self.problem(line, f"{label}: unknown source {kind!r}; use one of: {choices}")
            return None
        if kind == "keyring":
            if value is not True:
                self.problem(line, f"{label}: write keyring = true")
                return None
            return SecretSpec("keyring", "")
        if not isinstance(value, str) or not value:
            self.problem(line, f"{label}: {kind} must be a non-empty string")
            return None
        if kind == "credential" and (not _CREDENTIAL_NAME.match(value) or value in (".", "..")):
            self.problem(line, f"{label}: {value!r} is not a credential name (a file name in "
                               "$CREDENTIALS_DIRECTORY: letters, digits, '.', '_', '-', '@'; no '/')")
            return None
        if kind == "file" and not Path(value).is_absolute():
            self.problem(line, f"{label}: file must be an absolute path, not {value!r}")
            return None
        if kind == "env" and not _ENV_NAME.match(value):
            self.problem(line, f"{label}: {value!r} is not an environment variable name")
            return None
        return SecretSpec(kind, value)


def _secret_hint(kind: str) -> str:
    """What to write when an account's `secret` is missing."""
    if kind == "bedrock":
        return ("AWS keys or a Bedrock API key, e.g. secret = { credential = \"NAME\" }; for credentials by "
                "reference leave out credential and use aws_profile (or nothing: botocore's default chain)")
    if kind == "vertex":
        return ("the service-account JSON, e.g. secret = { credential = \"NAME\" }; or adc = true for "
                "application default credentials")
    return "where the key comes from, e.g. secret = { credential = \"NAME\" }"


def _reference(options: Mapping[str, str]) -> str:
    return kinds.describe_reference(LoginFields(**options))


# -- line numbers -------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*[.=]")


class _Locator:
    """Where tables and keys are in the text (tomllib gives values, not positions)."""

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int], dict[str, int]] = {}
        self.top_keys: dict[str, int] = {}
        counts: dict[str, int] = {}
        current: tuple[str, int] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                name = header.group(2).strip()
                index = counts.get(name, 0) if header.group(1) == "[[" else 0
                counts[name] = index + 1
                current = (name, index)
                self.headers.setdefault(current, number)
                self.top_keys.setdefault(name.split(".")[0], number)
                continue
            key = _KEY.match(line)
            if key:
                if current is None:
                    self.top_keys.setdefault(key.group(1), number)
                else:
                    self.keys.setdefault(current, {}).setdefault(key.group(1), number)

    def header(self, table: tuple[str, int]) -> int | None:
        return self.headers.get(table)

    def key(self, table: tuple[str, int], key: str) -> int | None:
        return self.keys.get(table, {}).get(key)

    def top(self, key: str) -> int | None:
        return self.top_keys.get(key)


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    line = int(found.group(1)) if found else None
    return Problem(line, f"not valid TOML: {message}")


def _shown(line: str) -> str:
    """A line of the file as a problem report shows it: a literal secret is hidden, and anything
    shaped like an Anthropic key on any line (say, one a syntax error stopped the parser at)."""
    return redact(_SECRET_LINE.sub(r"\1<hidden>", line))


# -- dariod --config FILE --check --------------------------------------------------------------


def check(path: Path) -> tuple[str, int]:
    """The report `dariod --config FILE --check` prints, and its exit code (0 fine, 2 problems).

    Beyond the file itself it looks at each secret source without reading a secret: a secret file
    that others can read is a problem (dariod would refuse it); a source that is absent here (no
    $CREDENTIALS_DIRECTORY on a CI machine, say) is only noted.
    """
    try:
        config = load(path)
    except ConfigError as exc:
        return exc.report(), 2
    problems: list[Problem] = []
    notes: list[str] = []
    text = path.read_text(encoding="utf-8")
    where = _Locator(text)
    specs: list[tuple[str, SecretSpec, int | None]] = [
        (a.alias, a.secret, where.key(("account", i), "secret")) for i, a in enumerate(config.accounts)
        if a.secret is not None
    ]
    if config.server.api_key is not None:
        specs.append(("[server] api_key", config.server.api_key, where.key(("server", 0), "api_key")))
    for label, spec, line in specs:
        source = source_for(spec.kind, spec.value, label)
        if isinstance(source, FileSource) and source.mode_problem():
            problems.append(Problem(line, f"{label}: {source.mode_problem()}"))
            continue
        notes.append(f"  {label}: {source.describe()}: {_availability(source)}")
    for a in config.accounts:
        if a.secret is None:
            notes.append(f"  {a.alias}: {_reference(a.options)}: by reference, nothing to read")
    if problems:
        return ConfigError(path, problems, text).report(), 2
    count = len(config.accounts)
    head = f"{path}: OK ({count} account{'s' if count != 1 else ''}"
    head += f", preferred {config.preferred})" if config.preferred else ")"
    return "\n".join([head, *notes]), 0


def _availability(source: SecretSource) -> str:
    """Whether a source looks usable here, without reading the secret."""
    if isinstance(source, CredentialSource):
        found = source.path()
        if found is None:
            return f"not checked (${CREDENTIALS_ENV} is not set here)"
        return "present" if found.is_file() else f"missing here ({found})"
    if isinstance(source, FileSource):
        return "present" if source.path.is_file() else "missing here"
    if isinstance(source, EnvSource):
        return "set" if os.environ.get(source.var) else "not set here"
    return "read from the OS keyring at start-up"
