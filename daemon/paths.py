"""Where dario keeps things: XDG folders on Linux, the platform's own elsewhere.

Light on purpose: `dario-ctl` and the tray import this to find the control socket.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
from pathlib import Path

APP = "dario"


def _xdg(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    # The XDG spec says relative paths are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return default


def config_dir() -> Path:
    """Account metadata, preferences, the model alias table, client keys (hashed)."""
    if sys.platform == "linux" or "XDG_CONFIG_HOME" in os.environ:
        return _xdg("XDG_CONFIG_HOME", Path.home() / ".config") / APP
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def state_dir() -> Path:
    """Pool state (cooldowns that survive a restart), the analytics database, logs."""
    if sys.platform == "linux" or "XDG_STATE_HOME" in os.environ:
        return _xdg("XDG_STATE_HOME", Path.home() / ".local" / "state") / APP
    import platformdirs

    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def runtime_dir() -> Path:
    """The control socket's folder.

    `$XDG_RUNTIME_DIR/dario`; without XDG_RUNTIME_DIR (macOS, minimal containers, cron),
    `$TMPDIR/dario-<uid>`, as tmux does: short enough for the 104/108-byte socket path limit.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / APP
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"{APP}-{uid}"


def socket_path() -> Path:
    """`DARIO_SOCKET`, else `<runtime_dir>/ctl.sock`."""
    override = os.environ.get("DARIO_SOCKET")
    if override:
        return Path(override)
    return runtime_dir() / "ctl.sock"


def control_mode() -> str:
    """"unix" (the socket), or "tcp": loopback TCP plus a token file, where AF_UNIX is missing
    (CPython on Windows) or when `DARIO_CONTROL=tcp` asks for it."""
    if os.environ.get("DARIO_CONTROL", "").lower() == "tcp" or not hasattr(socket, "AF_UNIX"):
        return "tcp"
    return "unix"


def control_endpoint_file(socket_file: Path) -> Path:
    """Where a TCP control API's port and token are written: beside the socket it stands in for."""
    return socket_file.with_name("control-tcp.json")


def accounts_file() -> Path:
    return config_dir() / "accounts.json"


def keys_file() -> Path:
    return config_dir() / "client-keys.json"


def models_file() -> Path:
    return config_dir() / "models.json"


def prices_file() -> Path:
    return config_dir() / "prices.json"


def pool_state_file() -> Path:
    return state_dir() / "pool-state.json"


def analytics_db() -> Path:
    return state_dir() / "usage.sqlite3"


class UnsafeFolder(PermissionError):
    """A folder dario would keep its socket or token in belongs to someone else, or is open to them."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"refusing to use {path}: {problem}. {fix}")
        self.path = path


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) 0700, or make sure the one that is there is this user's own.

    In a shared /tmp another local user can create `dario-<uid>` first, or plant a symlink
    there; like tmux and ssh-agent, dario checks with lstat and refuses such a folder rather
    than follow it. A folder that is this user's own but open to others is closed (0700).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    if not hasattr(os, "getuid"):
        return path  # Windows: no uid or mode bits; the per-user temp folder's ACL keeps others out
    fd = _open_own_dir(path)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def verify_private_dir(path: Path) -> None:
    """Raise UnsafeFolder unless `path` is a real folder, this user's own, with no group/other bits.

    For the processes that use the folder without creating it (dario-ctl, the tray): they must
    not trust a folder someone else made. A missing folder is fine here (nothing to talk to).
    """
    if not hasattr(os, "getuid"):
        return  # Windows: the per-user temp/profile folders are private by their ACLs.
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    _check_own_dir(path, st)
    if st.st_mode & 0o077:
        raise UnsafeFolder(path, f"it is open to other users (mode {stat.S_IMODE(st.st_mode):o})",
                           f"Stop dariod, then: chmod 700 {path}")


def _open_own_dir(path: Path) -> int:
    """Open `path` without following a symlink and check, on the open folder, who owns it."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        _check_own_dir(path, os.lstat(path))  # says what is wrong, if it can
        raise
    try:
        _check_own_dir(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own_dir(path: Path, st: os.stat_result) -> None:
    fix = ("Another local user may have planted it: have it removed, or point XDG_RUNTIME_DIR (or DARIO_SOCKET) "
           "at a folder of your own")
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFolder(path, "it is a symbolic link", fix)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(path, "it is not a folder", fix)
    if st.st_uid != os.getuid():
        raise UnsafeFolder(path, f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})", fix)
