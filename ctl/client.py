"""A typed, synchronous client for dariod's control API over its Unix socket.

Used by `dario-ctl` and the tray's poller thread. Stdlib only (http.client over
AF_UNIX), so a CLI call costs no heavy imports.

Nothing is sent before the other end is known to be this user's dariod: the socket's folder
must be this user's own (when it is the default one) and the kernel must name this user as
the socket's peer (SO_PEERCRED / LOCAL_PEERCRED), as ssh-agent's clients and tmux do. Where
AF_UNIX is missing (or DARIO_CONTROL=tcp), the daemon listens on loopback TCP and leaves its
port and a token in a user-only file beside the socket; the client reads it from there.
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import orjson

from dario.daemon import paths, peercred
from dario.daemon.commands import command
from dario.daemon.control.api import CONTROL_HOST, AccountView, ClientKeyView, LoginResult, RefreshResult, Status


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


class UntrustedDaemon(PermissionError):
    """What answers on the control socket or port is not this user's: nothing is sent to it."""


def _trusted_uid(uid: int) -> bool:
    # root can read this user's keyring anyway; anyone else must be this user.
    return uid == os.getuid() or uid == 0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(CONTROL_HOST, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        if self._path.parent == paths.runtime_dir():
            paths.verify_private_dir(self._path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
            _verify_unix_peer(sock, self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _verify_unix_peer(sock: socket.socket, path: Path) -> None:
    try:
        uid = peercred.unix_peer_uid(sock)
    except (peercred.PeerUnknown, OSError) as exc:
        raise UntrustedDaemon(f"cannot tell who listens on {path} ({exc}); nothing was sent") from None
    if not _trusted_uid(uid):
        raise UntrustedDaemon(
            f"the process listening on {path} runs as uid {uid}, not as you (uid {os.getuid()}); nothing was "
            f"sent. Another local user may have planted it: remove {path} if you can, or point XDG_RUNTIME_DIR "
            "(or DARIO_SOCKET) at a folder of your own"
        )


class TcpEndpoint:
    """The TCP control API's address and token, read from the daemon's user-only file."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    @classmethod
    def read(cls, file: Path) -> TcpEndpoint:
        if file.parent == paths.runtime_dir():
            paths.verify_private_dir(file.parent)
        try:
            fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UntrustedDaemon(f"cannot open {file} safely ({exc}); it should be a file dariod wrote") from None
        with os.fdopen(fd, "rb") as handle:
            if hasattr(os, "getuid"):
                st = os.fstat(handle.fileno())
                if not _trusted_uid(st.st_uid) or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                    raise UntrustedDaemon(
                        f"{file} is not a private file of yours (uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):o}); nothing was sent. Remove it and restart dariod"
                    )
            data = handle.read(4096)
        try:
            parsed = orjson.loads(data)
            return cls(int(parsed["port"]), str(parsed["token"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UntrustedDaemon(f"{file} is not a dariod control file; remove it and restart dariod") from None


class _TcpHTTPConnection(http.client.HTTPConnection):
    def __init__(self, endpoint: TcpEndpoint, timeout: float) -> None:
        super().__init__("127.0.0.1", endpoint.port, timeout=timeout)

    def connect(self) -> None:
        super().connect()
        try:
            _verify_tcp_peer(self.sock)
        except BaseException:
            self.sock.close()
            raise


def _verify_tcp_peer(sock: socket.socket) -> None:
    """On Linux, the listener on the port must be this user's: a daemon that died leaves its file
    behind, and another local user could have taken the port since. The token goes nowhere else."""
    if not sys.platform.startswith("linux"):
        return  # no per-connection owner for TCP elsewhere; the file's privacy is what holds
    peer, own = sock.getpeername()[:2], sock.getsockname()[:2]
    try:
        uid = peercred.tcp_owner_uid(peer, own)
    except (peercred.PeerUnknown, OSError) as exc:
        raise UntrustedDaemon(f"cannot tell who listens on 127.0.0.1:{peer[1]} ({exc}); nothing was sent") from None
    if not _trusted_uid(uid):
        raise UntrustedDaemon(
            f"127.0.0.1:{peer[1]} belongs to uid {uid}, not to you (uid {os.getuid()}); nothing was sent. "
            "dariod is probably not running: start it again"
        )


class ControlClient:
    def __init__(self, socket_path: Path | None = None, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or paths.socket_path()
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------
    def _connection(self, timeout: float, headers: dict[str, str]) -> http.client.HTTPConnection:
        """The Unix socket, or the TCP fallback when forced, when AF_UNIX is missing, or when
        the daemon left only its TCP file (it was started with DARIO_CONTROL=tcp)."""
        endpoint_file = paths.control_endpoint_file(self.socket_path)
        use_tcp = paths.control_mode() == "tcp" or (
            not os.path.lexists(self.socket_path) and os.path.lexists(endpoint_file)
        )
        if not use_tcp:
            return _UnixHTTPConnection(self.socket_path, timeout)
        try:
            endpoint = TcpEndpoint.read(endpoint_file)
        except FileNotFoundError:
            raise DaemonNotRunning(endpoint_file) from None
        headers["Authorization"] = f"Bearer {endpoint.token}"
        return _TcpHTTPConnection(endpoint, timeout)

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        headers = {"Host": CONTROL_HOST, "Accept": "application/json"}
        conn = self._connection(timeout or self.timeout, headers)
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

    # -- typed calls -----------------------------------------------------------------
    def status(self) -> Status:
        return cast(Status, self.request("GET", "/v1/status"))

    def accounts(self) -> list[AccountView]:
        return cast(list[AccountView], self.request("GET", "/v1/accounts")["accounts"])

    def login(
        self, alias: str, secret: str, kind: str = "anthropic", base_url: str | None = None,
        limits: Mapping[str, int] | None = None, **fields: str | None,
    ) -> LoginResult:
        """Log in; `fields` are the kind's non-secret settings (region, project, credential, aws_profile,
        inference_profile); `limits` the declared limits (rpm, input_tpm, output_tpm). The answer may
        carry a warning beside the account."""
        body: dict[str, Any] = {"alias": alias, "secret": secret, "kind": kind, "base_url": base_url,
                                **{k: v for k, v in fields.items() if v is not None}}
        body.update(limits or {})
        # Validation makes an upstream call: allow it time.
        return cast(LoginResult, self.request("POST", "/v1/accounts", body, timeout=90))

    def logout(self, alias: str) -> None:
        self.request("DELETE", f"/v1/accounts/{quote(alias, safe='')}")

    def enable(self, alias: str) -> AccountView:
        return cast(AccountView, self.request("POST", f"/v1/accounts/{quote(alias, safe='')}/enable")["account"])

    def disable(self, alias: str) -> AccountView:
        return cast(AccountView, self.request("POST", f"/v1/accounts/{quote(alias, safe='')}/disable")["account"])

    def set_limits(self, alias: str, changes: Mapping[str, int | None], clear: bool = False) -> AccountView:
        """Change declared limits (a value None clears that one; `clear`: all of them first)."""
        body: dict[str, Any] = {**changes, "clear": True} if clear else dict(changes)
        return cast(AccountView, self.request("POST", f"/v1/accounts/{quote(alias, safe='')}/limits", body)["account"])

    def prefer(self, alias: str | None) -> str | None:
        return cast("str | None", self.request("POST", "/v1/prefer", {"alias": alias})["preferred"])

    def refresh(self, alias: str | None = None) -> list[RefreshResult]:
        return cast(list[RefreshResult], self.request("POST", "/v1/refresh", {"alias": alias}, timeout=120)["results"])

    def usage(self, window: str = "24h") -> dict[str, Any]:
        return cast(dict[str, Any], self.request("GET", "/v1/usage?" + urlencode({"window": window})))

    def keys(self) -> list[ClientKeyView]:
        return cast(list[ClientKeyView], self.request("GET", "/v1/keys")["keys"])

    def create_key(self, name: str, auto_cache: bool = False) -> str:
        body: dict[str, Any] = {"name": name, "auto_cache": True} if auto_cache else {"name": name}
        return cast(str, self.request("POST", "/v1/keys", body)["key"])

    def revoke_key(self, name: str) -> None:
        self.request("DELETE", f"/v1/keys/{quote(name, safe='')}")
