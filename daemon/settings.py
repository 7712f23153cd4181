"""dariod's settings: command-line flags over `DARIO_*` environment over defaults."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from dario.daemon import __version__, paths

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
    http2_cleartext: bool = False  # serve h2c (prior knowledge, Upgrade: h2c); off: HTTP/1.1 only
    body_idle_timeout: float = 30.0  # a request body that sends nothing for this long is cut off
    body_deadline: float = 120.0  # and one that takes longer than this in all
    auto_cache: bool = False  # OpenAI dialect: add prompt-cache breakpoints for every client
    store: str | None = None  # DARIO_STORE: redis://HOST:6379/0 shares the pool state (team mode)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def check(self) -> None:
        if not self.is_loopback and not self.api_key:
            raise SettingsError(
                f"refusing to listen on {self.host}: that address is reachable from other machines, and "
                "dario adds your real credentials to every request it forwards. Set DARIO_API_KEY to a "
                "secret that clients must send, or listen on 127.0.0.1 (the default)."
            )
        if self.store is not None and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"--store must be a Redis URL (redis://HOST:6379/0, rediss://…, unix:///path), not {self.store!r}"
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


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


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
    p.add_argument("--no-analytics", action="store_true", help="do not record usage in SQLite")
    p.add_argument("--http2-cleartext", action="store_true",
                   help="also serve HTTP/2 without TLS (h2c); off by default, as no client needs it")
    p.add_argument("--auto-cache", action="store_true",
                   help="OpenAI dialect: add prompt-cache breakpoints to every request (DARIO_AUTO_CACHE=1); "
                   "cache writes cost 1.25x input, reads 0.1x")
    p.add_argument("--store", help="share the pool state with other dariod instances through Redis: "
                   "redis://HOST:6379/0 (DARIO_STORE; team mode, needs pip install 'dario[team]')")
    p.add_argument("--version", action="version", version=f"dariod {__version__}")
    return p


def from_args(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    env = os.environ
    port_env = env.get("DARIO_PORT")
    try:
        port = args.port if args.port is not None else int(port_env) if port_env else DEFAULT_PORT
    except ValueError:
        raise SettingsError(f"DARIO_PORT must be a port number, not {port_env!r}") from None
    settings = Settings(
        host=args.host or env.get("DARIO_HOST") or DEFAULT_HOST,
        port=port,
        socket=args.socket or paths.socket_path(),
        verbose=args.verbose or env.get("DARIO_VERBOSE", "") not in ("", "0"),
        api_key=env.get("DARIO_API_KEY") or None,
        force_model=args.force_model or env.get("DARIO_MODEL") or None,
        queue_timeout=args.queue_timeout
        if args.queue_timeout is not None
        else _env_float("DARIO_QUEUE_TIMEOUT", 60.0),
        grace_period=args.grace_period
        if args.grace_period is not None
        else _env_float("DARIO_GRACE_PERIOD", 10.0),
        allowed_hosts=_env_list("DARIO_ALLOWED_HOSTS"),
        allowed_origins=_env_list("DARIO_ALLOWED_ORIGINS"),
        upstream_read_timeout=_env_float("DARIO_UPSTREAM_TIMEOUT", 300.0),
        hold_message_start=_env_float("DARIO_HOLD_MESSAGE_START", 2.0),
        analytics=not args.no_analytics,
        http2_cleartext=args.http2_cleartext,
        body_idle_timeout=_env_float("DARIO_BODY_IDLE_TIMEOUT", 30.0),
        body_deadline=_env_float("DARIO_BODY_DEADLINE", 120.0),
        auto_cache=args.auto_cache or env.get("DARIO_AUTO_CACHE", "") not in ("", "0"),
        store=args.store or env.get("DARIO_STORE") or None,
    )
    settings.check()
    return settings
