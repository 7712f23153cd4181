"""dariod's settings: command-line flags over `DARIO_*` environment over the team config file's
`[server]` table over defaults.

The file itself is read by `teamconfig` (which knows the accounts room); this module only takes
its already-checked values as a mapping of Settings field names, so it stays a shared module.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dario.daemon import __version__, dburl, paths

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3456
MAX_BODY_BYTES = 32 * 1024 * 1024  # the Anthropic API's own cap for Messages and count_tokens


class SettingsError(Exception):
    """A setting that cannot work; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    socket: Path = field(default_factory=paths.socket_path)
    verbose: bool = False
    api_key: str | None = None  # DARIO_API_KEY: required from clients when set
    force_model: str | None = None
    queue_timeout: float = 60.0  # how long a request waits when every account is exhausted
    grace_period: float = 10.0  # in-flight streams get this long on shutdown
    failover_deadline: float = 120.0  # total time one client request may spend failing over
    hold_message_start: float = 2.0  # hold message_start back this long waiting for content
    max_body: int = MAX_BODY_BYTES
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    upstream_read_timeout: float = 300.0
    upstream_connect_timeout: float = 10.0
    analytics_retention_days: float = 30.0
    max_upstream_connections: int = 10_000
    analytics: bool = True
    # Team mode: usage rows go to this PostgreSQL (the URL may hold a password: never shown, see dburl);
    # None keeps them in the SQLite file in the state folder.
    analytics_url: str | None = field(default=None, repr=False)
    http2_cleartext: bool = False  # serve h2c (prior knowledge, Upgrade: h2c); off: HTTP/1.1 only
    body_idle_timeout: float = 30.0  # a request body that sends nothing for this long is cut off
    body_deadline: float = 120.0  # and one that takes longer than this in all
    auto_cache: bool = False  # OpenAI dialect: add prompt-cache breakpoints for every client
    # DARIO_STORE: redis://HOST:6379/0 shares the pool state (team mode); may hold a password, never shown.
    store: str | None = field(default=None, repr=False)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def check(self) -> None:
        if not self.is_loopback and not self.api_key:
            raise SettingsError(
                f"refusing to listen on {self.host}: that address is reachable from other machines, and "
                "dario adds your real credentials to every request it forwards. Set DARIO_API_KEY (or api_key "
                "in the config file's [server] table) to a secret that clients must send, or listen on "
                "127.0.0.1 (the default)."
            )
        if self.store is not None and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"--store must be a Redis URL (redis://HOST:6379/0, rediss://…, unix:///path), "
                f"not {dburl.shown(self.store)!r}"
            )
        if self.store is not None and importlib.util.find_spec("redis") is None:
            raise SettingsError("--store needs redis-py, which is not installed: pip install 'dario[team]'")
        if not (0 <= self.port <= 65535):
            raise SettingsError(f"--port must be 0–65535, not {self.port}")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {value!r}") from None


def _env_list(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if not os.environ.get(name, "").strip():
        return default
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


def _analytics_url(value: str | None) -> str | None:
    if value is None:
        return None
    if dburl.is_postgres_url(value):
        if importlib.util.find_spec("psycopg") is None:
            raise SettingsError("PostgreSQL analytics need psycopg: pip install 'dario[team]'")
        return value
    raise SettingsError(
        f"--analytics / DARIO_ANALYTICS_URL must be a postgresql:// or postgres:// URL, not {dburl.shown(value)!r}; "
        "leave it unset to keep usage in SQLite"
    )


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "")
    return None if value == "" else value != "0"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dariod",
        description="dario: one local endpoint for Claude (Anthropic Messages + OpenAI Chat Completions), "
        "backed by a pool of your API keys held in the OS keyring.",
    )
    p.add_argument("--host", help=f"address to listen on (DARIO_HOST; default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"port to listen on, 0 for any (DARIO_PORT; default {DEFAULT_PORT})")
    p.add_argument("--socket", type=Path, help="control socket path (DARIO_SOCKET)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every request")
    p.add_argument("--model", dest="force_model", help="send every request to this model")
    p.add_argument(
        "--queue-timeout", type=float, help="seconds a request waits when all accounts are exhausted (default 60)"
    )
    p.add_argument("--grace-period", type=float, help="seconds in-flight streams get on shutdown (default 10)")
    p.add_argument("--no-analytics", action="store_true", help="do not record usage at all")
    p.add_argument("--analytics", metavar="URL", dest="analytics_url",
                   help="team mode: keep usage rows in this PostgreSQL, postgresql://user@host/db "
                   "(DARIO_ANALYTICS_URL; the password is best kept in PGPASSFILE); default: a SQLite file")
    p.add_argument("--http2-cleartext", action="store_true",
                   help="also serve HTTP/2 without TLS (h2c); off by default, as no client needs it")
    p.add_argument("--auto-cache", action="store_true",
                   help="OpenAI dialect: add prompt-cache breakpoints to every request (DARIO_AUTO_CACHE=1); "
                   "cache writes cost 1.25x input, reads 0.1x")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="team config file (DARIO_CONFIG): [server] settings and [[account]] tables whose "
                   "secrets come from systemd credentials, files or environment variables")
    p.add_argument("--check", action="store_true",
                   help="with --config: check the file, list every problem with its line, exit 2 on problems")
    p.add_argument("--store", help="share the pool state with other dariod instances through Redis: "
                   "redis://HOST:6379/0 (DARIO_STORE; team mode, needs pip install 'dario[team]')")
    p.add_argument("--version", action="version", version=f"dariod {__version__}")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def from_args(argv: list[str] | None = None) -> Settings:
    return from_namespace(parse_args(argv))


def from_namespace(args: argparse.Namespace, file: Mapping[str, Any] | None = None,
                   file_api_key: str | None = None) -> Settings:
    """Flags over environment over `file` (the config file's [server] values, by field name) over defaults.

    `file_api_key` is the [server] api_key read from its source; DARIO_API_KEY wins over it.
    """
    env = os.environ
    f = dict(file or {})
    defaults = Settings(socket=Path())
    port_env = env.get("DARIO_PORT")
    try:
        port = (args.port if args.port is not None else int(port_env) if port_env
                else int(f.get("port", DEFAULT_PORT)))
    except ValueError:
        raise SettingsError(f"DARIO_PORT must be a port number, not {port_env!r}") from None

    def seconds(flag: float | None, name: str, field_name: str) -> float:
        if flag is not None:
            return flag
        return _env_float(name, float(f.get(field_name, getattr(defaults, field_name))))

    def switch(flag: bool, name: str, field_name: str) -> bool:
        from_env = _env_flag(name)
        return flag or (from_env if from_env is not None else bool(f.get(field_name, False)))

    settings = Settings(
        host=args.host or env.get("DARIO_HOST") or f.get("host") or DEFAULT_HOST,
        port=port,
        socket=args.socket or (paths.socket_path() if env.get("DARIO_SOCKET") else None)
        or f.get("socket") or paths.socket_path(),
        verbose=switch(args.verbose, "DARIO_VERBOSE", "verbose"),
        api_key=env.get("DARIO_API_KEY") or file_api_key or None,
        force_model=args.force_model or env.get("DARIO_MODEL") or f.get("force_model") or None,
        queue_timeout=seconds(args.queue_timeout, "DARIO_QUEUE_TIMEOUT", "queue_timeout"),
        grace_period=seconds(args.grace_period, "DARIO_GRACE_PERIOD", "grace_period"),
        allowed_hosts=_env_list("DARIO_ALLOWED_HOSTS", tuple(f.get("allowed_hosts", ()))),
        allowed_origins=_env_list("DARIO_ALLOWED_ORIGINS", tuple(f.get("allowed_origins", ()))),
        upstream_read_timeout=seconds(None, "DARIO_UPSTREAM_TIMEOUT", "upstream_read_timeout"),
        hold_message_start=seconds(None, "DARIO_HOLD_MESSAGE_START", "hold_message_start"),
        analytics=not args.no_analytics and bool(f.get("analytics", True)),
        analytics_url=_analytics_url(args.analytics_url or env.get("DARIO_ANALYTICS_URL") or f.get("analytics_url")
                                     or None),
        http2_cleartext=args.http2_cleartext or bool(f.get("http2_cleartext", False)),
        body_idle_timeout=seconds(None, "DARIO_BODY_IDLE_TIMEOUT", "body_idle_timeout"),
        body_deadline=seconds(None, "DARIO_BODY_DEADLINE", "body_deadline"),
        auto_cache=switch(args.auto_cache, "DARIO_AUTO_CACHE", "auto_cache"),
        store=args.store or env.get("DARIO_STORE") or f.get("store") or None,
    )
    settings.check()
    return settings
