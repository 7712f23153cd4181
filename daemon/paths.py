"""Where dario keeps things: XDG folders on Linux, the platform's own elsewhere.

Light on purpose: `dario-ctl` and the tray import this to find the control socket.
"""

from __future__ import annotations

import os
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


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: it may hold a socket or state."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
