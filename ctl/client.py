"""A typed, synchronous client for dariod's control API over its Unix socket.

Used by `dario-ctl` and the tray's poller thread. Stdlib only (http.client over
AF_UNIX), so a CLI call costs no heavy imports.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import orjson

from dario.daemon import paths
from dario.daemon.commands import command
from dario.daemon.controlapi import (
    CONTROL_HOST,
    AccountView,
    ClientKeyView,
    RefreshResult,
    Status,
)


def start_hint() -> str:
    return f"start it with: {command('dariod')}   (or at login: {command('dario-ctl')} autostart enable)"


START_HINT = start_hint()


class DaemonNotRunning(Exception):
    """No daemon answers on the socket."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(f"dariod is not running (no answer on {socket_path}); {start_hint()}")
        self.socket_path = socket_path


class ControlAPIError(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(CONTROL_HOST, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, socket_path: Path | None = None, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or paths.socket_path()
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        headers = {"Host": CONTROL_HOST, "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.request(method, path, body=payload, headers=headers)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonNotRunning(self.socket_path) from exc
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        parsed: Any = orjson.loads(data) if data else None
        if response.status >= 400:
            err = (parsed or {}).get("error", {}) if isinstance(parsed, dict) else {}
            raise ControlAPIError(
                response.status,
                str(err.get("type", "error")),
                str(err.get("message", f"HTTP {response.status}")),
            )
        return parsed

    def is_running(self) -> bool:
        try:
            self.status()
        except (DaemonNotRunning, OSError):
            return False
        return True

    # -- typed calls -----------------------------------------------------------------
    def status(self) -> Status:
        return cast(Status, self.request("GET", "/v1/status"))

    def accounts(self) -> list[AccountView]:
        return cast(list[AccountView], self.request("GET", "/v1/accounts")["accounts"])

    def login(
        self, alias: str, secret: str, kind: str = "anthropic", base_url: str | None = None
    ) -> AccountView:
        body = {"alias": alias, "secret": secret, "kind": kind, "base_url": base_url}
        # Validation makes an upstream call: allow it time.
        return cast(AccountView, self.request("POST", "/v1/accounts", body, timeout=90)["account"])

    def logout(self, alias: str) -> None:
        self.request("DELETE", f"/v1/accounts/{quote(alias, safe='')}")

    def enable(self, alias: str) -> AccountView:
        return cast(AccountView, self.request("POST", f"/v1/accounts/{quote(alias, safe='')}/enable")["account"])

    def disable(self, alias: str) -> AccountView:
        return cast(AccountView, self.request("POST", f"/v1/accounts/{quote(alias, safe='')}/disable")["account"])

    def prefer(self, alias: str | None) -> str | None:
        return cast("str | None", self.request("POST", "/v1/prefer", {"alias": alias})["preferred"])

    def refresh(self, alias: str | None = None) -> list[RefreshResult]:
        return cast(list[RefreshResult], self.request("POST", "/v1/refresh", {"alias": alias}, timeout=120)["results"])

    def usage(self, window: str = "24h") -> dict[str, Any]:
        return cast(dict[str, Any], self.request("GET", "/v1/usage?" + urlencode({"window": window})))

    def keys(self) -> list[ClientKeyView]:
        return cast(list[ClientKeyView], self.request("GET", "/v1/keys")["keys"])

    def create_key(self, name: str) -> str:
        return cast(str, self.request("POST", "/v1/keys", {"name": name})["key"])

    def revoke_key(self, name: str) -> None:
        self.request("DELETE", f"/v1/keys/{quote(name, safe='')}")
