"""Start dariod (and the tray) at login: systemd user unit + XDG autostart, LaunchAgents, HKCU Run.

`enable`, `disable` and `status` are idempotent and only write files (or, on Windows, registry
values) in the user's own profile. With `run=True` (what `dario-ctl autostart enable` passes unless
`--no-start`) they also start or stop the daemon now through the user's service manager, where one
runs; otherwise they print the command. `dario-ctl autostart enable|disable|status` prints `report.lines`.
`disable` removes only files that are as `enable` wrote them (it keeps a sha256 of each in
MANIFEST_NAME): a file the user has edited since stays, and the report says so.

Templates: the unit and desktop entry are embedded below as strings (packaging/ is not inside an
installed package, so it cannot be read at run time). The files in packaging/linux/ are rendered
from these same templates with /usr/bin paths for distributors; regenerate them with

    python -m dario.ctl.autostart render-packaging packaging/

and tests/unit/test_autostart.py fails if they drift.
"""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dario.daemon.atomicfile import write_bytes_atomic
from dario.daemon.commands import command as shell_command

SERVICE_NAME = "dario.service"
DESKTOP_NAME = "dario-tray.desktop"
DAEMON_LABEL = "dev.dario.daemon"
TRAY_LABEL = "dev.dario.tray"
WINDOWS_RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
WINDOWS_DAEMON_VALUE = "dario"
WINDOWS_TRAY_VALUE = "dario-tray"
UNDO_HINT = "to undo: dario-ctl autostart disable"
SYSTEMCTL_ENABLE = "systemctl --user daemon-reload && systemctl --user enable --now dario.service"
SYSTEMCTL_DISABLE = "systemctl --user disable --now dario.service"
SYSTEMCTL_ENABLE_ONLY = "systemctl --user daemon-reload && systemctl --user enable dario.service"
MANIFEST_NAME = "autostart-files.json"  # {path: sha256 of what enable() wrote}

SERVICE_TEMPLATE = """\
[Unit]
Description=dario: local gateway for Claude
# A crash loop should not hammer the keyring or upstreams: give up after 5 starts in a minute.
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=default.target
"""

# Optional, for distributors only (enable() does not install it): systemd socket activation. The
# socket listens on dario's public port and starts dario.service at the first connection, which
# waits in the backlog meanwhile; dariod serves on the passed socket (sd_listen_fds(3), fd 3).
SOCKET_TEMPLATE = """\
# Optional: start dariod at the first connection to its port (systemd socket activation).
# dariod takes the socket over (LISTEN_FDS, fd 3); its --host must match the address below.
[Unit]
Description=dario: local gateway for Claude (socket)

[Socket]
ListenStream=127.0.0.1:3456
NoDelay=true

[Install]
WantedBy=sockets.target
"""

DESKTOP_TEMPLATE = """\
[Desktop Entry]
Type=Application
Name=dario tray
Comment=Shows the health of the dario gateway
Exec={exec}
TryExec={try_exec}
Terminal=false
NoDisplay=true
X-GNOME-Autostart-enabled=true
"""


@dataclass
class AutostartReport:
    changed: bool  # whether this call changed (or, with dry_run, would change) anything
    files: list[Path] = field(default_factory=list)  # the files this platform's autostart consists of
    lines: list[str] = field(default_factory=list)  # what was done, how to activate it, how to undo it
    enabled: bool = False  # whether the daemon's autostart entry is in place after the call


# -- commands ------------------------------------------------------------------------------
def _which(name: str) -> str | None:
    found = shutil.which(name)
    return os.path.abspath(found) if found else None


def daemon_command() -> list[str]:
    """An absolute command line that starts dariod: the installed script, else this interpreter."""
    found = _which("dariod")
    return [found] if found else [sys.executable, "-m", "dario.daemon.main"]


def tray_command() -> list[str]:
    found = _which("dario-tray")
    return [found] if found else [sys.executable, "-m", "dario.tray.app"]


# -- quoting -------------------------------------------------------------------------------
def _systemd_arg(arg: str) -> str:
    # systemd expands % specifiers and $VARS in ExecStart; double them to keep them literal.
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\n\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_exec(argv: Sequence[str]) -> str:
    return " ".join(_systemd_arg(a) for a in argv)


_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def _desktop_arg(arg: str) -> str:
    # Desktop Entry spec, "The Exec key": quote args with reserved characters, escape inside the
    # quotes, double % (field codes); then the whole value gets the string-level escaping of \.
    if arg and not any(c in _DESKTOP_RESERVED for c in arg):
        quoted = arg
    else:
        quoted = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    return quoted.replace("%", "%%")


def desktop_exec(argv: Sequence[str]) -> str:
    return " ".join(_desktop_arg(a) for a in argv).replace("\\", "\\\\")


def render_service(daemon: Sequence[str]) -> str:
    return SERVICE_TEMPLATE.format(exec_start=systemd_exec(daemon))


def render_desktop(tray: Sequence[str]) -> str:
    # TryExec: the session skips the entry if the program is gone (package removed, venv deleted).
    return DESKTOP_TEMPLATE.format(exec=desktop_exec(tray), try_exec=desktop_exec(tray[:1]))


def render_plist(label: str, argv: Sequence[str], interactive: bool) -> bytes:
    body: dict[str, object] = {"Label": label, "ProgramArguments": list(argv), "RunAtLoad": True}
    if interactive:
        # UI belongs in the user's graphical session only, with foreground scheduling.
        body["LimitLoadToSessionType"] = "Aqua"
        body["ProcessType"] = "Interactive"
    else:
        # Relaunch after a crash, but a clean exit (the user stopped it) stays stopped.
        body["KeepAlive"] = {"SuccessfulExit": False}
    return plistlib.dumps(body, fmt=plistlib.FMT_XML, sort_keys=True)


# -- platforms -----------------------------------------------------------------------------
def _kind(platform: str | None) -> str:
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return "darwin"
    if platform in ("win32", "cygwin"):
        return "win32"
    return "linux"  # Linux and the BSDs: XDG autostart, systemd where it exists


def _config_home(home: Path | None, environ: Mapping[str, str] | None) -> Path:
    # An explicit home means "this is the user's home": the caller's own XDG_CONFIG_HOME must not
    # leak in (tests would write into the real profile). Pass environ to honour one anyway.
    if environ is None:
        environ = os.environ if home is None else {}
    base = home if home is not None else Path.home()
    value = environ.get("XDG_CONFIG_HOME")
    if value and os.path.isabs(value):  # the XDG spec says to ignore relative values
        return Path(value)
    return base / ".config"


def _effective_environ(home: Path | None, environ: Mapping[str, str] | None) -> Mapping[str, str] | None:
    # No explicit home: this is the user's own session, whose XDG_CONFIG_HOME counts (XDG Base
    # Directory spec). The public functions pass `home` on to helpers, so decide it here, once.
    if environ is None and home is None:
        return os.environ
    return environ


def user_manager_running(kind: str, environ: Mapping[str, str]) -> bool:
    """Whether a per-user service manager runs here that can start dariod now."""
    if kind == "darwin":
        return shutil.which("launchctl") is not None
    if shutil.which("systemctl") is None or not hasattr(os, "getuid"):
        return False
    # systemd --user listens on $XDG_RUNTIME_DIR/systemd/private (systemd(1), "--user"); without it
    # `systemctl --user` has nothing to talk to (containers, non-systemd distributions, ssh sessions
    # without a login manager).
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return (Path(runtime) / "systemd" / "private").exists()


def daemon_running() -> bool:
    """Whether a dariod answers on the control socket now (say, one started by hand)."""
    import socket

    from dario.daemon.paths import socket_path

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(socket_path()))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _manifest_path(kind: str, home: Path, environ: Mapping[str, str] | None) -> Path:
    if kind == "linux":
        return _config_home(home, environ) / "dario" / MANIFEST_NAME
    return home / "Library" / "Application Support" / "dario" / MANIFEST_NAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(path: Path) -> dict[str, str]:
    try:
        loaded = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _record_written(manifest: Path, desired: Mapping[Path, bytes]) -> None:
    recorded = _read_manifest(manifest)
    recorded.update({str(path): _sha256(data) for path, data in desired.items()})
    write_bytes_atomic(manifest, json.dumps(recorded, indent=1, sort_keys=True).encode() + b"\n", mode=0o600)


def _as_written(path: Path, current: bytes, desired: bytes | None, recorded: Mapping[str, str]) -> bool:
    """Whether `current` is what enable() wrote (now, or when it ran): safe to remove."""
    return current == desired or _sha256(current) == recorded.get(str(path))


def _desired(kind: str, home: Path, environ: Mapping[str, str] | None, tray: bool) -> dict[Path, bytes]:
    if kind == "linux":
        config = _config_home(home, environ)
        files = {config / "systemd" / "user" / SERVICE_NAME: render_service(daemon_command()).encode()}
        if tray:
            files[config / "autostart" / DESKTOP_NAME] = render_desktop(tray_command()).encode()
        return files
    agents = home / "Library" / "LaunchAgents"
    files = {agents / f"{DAEMON_LABEL}.plist": render_plist(DAEMON_LABEL, daemon_command(), False)}
    if tray:
        files[agents / f"{TRAY_LABEL}.plist"] = render_plist(TRAY_LABEL, tray_command(), True)
    return files


def _wants_link(home: Path, environ: Mapping[str, str] | None) -> Path:
    # Where `systemctl --user enable` puts its symlink (WantedBy=default.target).
    return _config_home(home, environ) / "systemd" / "user" / "default.target.wants" / SERVICE_NAME


def _write(path: Path, data: bytes) -> None:
    # 0644: launchd refuses group/world-writable agents, and it is the norm for units too.
    write_bytes_atomic(path, data, mode=0o644)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _pretty(path: Path, home: Path) -> str:
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def _run(command: str, lines: list[str]) -> bool:
    lines.append(f"running: {command}")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    if output:
        lines.extend("  " + line for line in output.splitlines())
    if done.returncode != 0:
        lines.append(f"  (exit status {done.returncode})")
    return done.returncode == 0


def _launchctl_domain(for_shell: bool) -> str:
    if for_shell or not hasattr(os, "getuid"):
        return "gui/$(id -u)"
    return f"gui/{os.getuid()}"


# -- public API ----------------------------------------------------------------------------
def enable(
    home: Path | None = None,
    platform: str | None = None,
    dry_run: bool = False,
    *,
    run: bool = False,
    tray: bool = True,
    environ: Mapping[str, str] | None = None,
) -> AutostartReport:
    """Install the login entries for dariod (and dario-tray unless tray=False)."""
    kind = _kind(platform)
    if kind == "win32":
        return _windows_enable(dry_run, tray)
    environ = _effective_environ(home, environ)
    base = home if home is not None else Path.home()
    desired = _desired(kind, base, environ, tray)
    lines: list[str] = []
    changed = False
    for path, data in desired.items():
        if _read(path) == data:
            lines.append(f"unchanged: {_pretty(path, base)}")
            continue
        changed = True
        lines.append(f"{'would write' if dry_run else 'wrote'}: {_pretty(path, base)}")
        if not dry_run:
            _write(path, data)
    if not dry_run:
        _record_written(_manifest_path(kind, base, environ), desired)
    files = list(desired)
    if kind == "linux":
        activate = [SYSTEMCTL_ENABLE]
        tray_note = "dario-tray starts at your next graphical login"
    else:
        activate = [
            f"launchctl bootstrap {_launchctl_domain(True)} {shlex.quote(str(p))}" for p in files
        ]
        tray_note = "dario-tray starts at your next login"
    manager = run and not dry_run and user_manager_running(kind, environ or {})
    # A second dariod would fail on the first one's lock, and Restart=on-failure / KeepAlive would
    # retry it in a loop: when one already runs, register the entries but start nothing now.
    running = manager and daemon_running()
    if dry_run:
        lines.append("dry run: nothing was written")
    elif running:
        lines.append("dariod is already running (started outside the service manager), so it was not "
                     "started again; the service manager starts it from your next login")
        if kind == "linux":
            _run(SYSTEMCTL_ENABLE_ONLY, lines)
    elif manager and kind == "linux":
        _run(SYSTEMCTL_ENABLE, lines)
    elif manager:
        domain = _launchctl_domain(False)
        for path in files:
            # bootstrap fails on an agent that is already loaded: unload it first, quietly.
            subprocess.run(["launchctl", "bootout", f"{domain}/{path.stem}"], capture_output=True,
                           check=False)
            _run(f"launchctl bootstrap {domain} {shlex.quote(str(path))}", lines)
    elif run:
        lines.append("no user service manager runs here (systemd --user), so nothing was started; "
                     "start the daemon yourself with: " + shlex.join(daemon_command()))
    else:
        lines.append("to start it now and at every login: " + " ; ".join(activate))
    if tray and not dry_run:
        lines.append(tray_note)
    lines.append(UNDO_HINT)
    # With dry_run nothing changed, so this is the state before (and after) the call.
    enabled = files[0].exists()
    return AutostartReport(changed=changed, files=files, lines=lines, enabled=enabled)


def disable(
    home: Path | None = None,
    platform: str | None = None,
    dry_run: bool = False,
    *,
    run: bool = False,
    environ: Mapping[str, str] | None = None,
) -> AutostartReport:
    """Remove every login entry enable() may have made (daemon and tray)."""
    kind = _kind(platform)
    if kind == "win32":
        return _windows_disable(dry_run)
    environ = _effective_environ(home, environ)
    base = home if home is not None else Path.home()
    desired = _desired(kind, base, environ, tray=True)
    files = list(desired)
    manifest = _manifest_path(kind, base, environ)
    recorded = _read_manifest(manifest)
    lines: list[str] = []
    run = run and user_manager_running(kind, environ or {})
    if run and not dry_run:
        if kind == "linux":
            _run(SYSTEMCTL_DISABLE, lines)
        else:
            for path in files:
                _run(f"launchctl bootout {_launchctl_domain(False)}/{path.stem}", lines)
    targets = list(files)
    if kind == "linux":
        # What `systemctl --user enable` left; removing it is exactly what `disable` would do,
        # and a dangling link would otherwise outlive the unit file.
        targets.append(_wants_link(base, environ))
    changed = False
    kept: list[Path] = []
    for path in targets:
        if not (path.exists() or path.is_symlink()):
            continue
        current = None if path.is_symlink() else _read(path)
        if current is not None and not _as_written(path, current, desired.get(path), recorded):
            kept.append(path)
            lines.append(f"kept: {_pretty(path, base)} (edited since dario-ctl autostart enable wrote it; "
                         "delete it yourself if you no longer want it)")
            continue
        changed = True
        lines.append(f"{'would remove' if dry_run else 'removed'}: {_pretty(path, base)}")
        if not dry_run:
            path.unlink()
    if not kept and manifest.exists() and not dry_run:
        manifest.unlink()
    if not changed and not kept:
        lines.append("nothing to remove: autostart is not enabled")
    if dry_run:
        lines.append("dry run: nothing was removed")
    elif run and kind == "linux":
        _run("systemctl --user daemon-reload", lines)
    elif changed and not run:
        # Removing the files does not stop what is running now: say how.
        if kind == "linux":
            lines.append("to stop the running daemon: systemctl --user stop dario.service ; "
                         "systemctl --user daemon-reload")
        else:
            lines.append("to stop the running agents: " + " ; ".join(
                f"launchctl bootout {_launchctl_domain(True)}/{p.stem}" for p in files))
    enabled = files[0].exists()
    return AutostartReport(changed=changed, files=files, lines=lines, enabled=enabled)


def status(
    home: Path | None = None,
    platform: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> AutostartReport:
    """Say which entries exist and whether they match what enable() would write now."""
    kind = _kind(platform)
    if kind == "win32":
        return _windows_status()
    environ = _effective_environ(home, environ)
    base = home if home is not None else Path.home()
    desired = _desired(kind, base, environ, tray=True)
    lines: list[str] = []
    stale = False
    for path, data in desired.items():
        current = _read(path)
        if current is None:
            state = "missing"
        elif current == data:
            state = "installed"
        else:
            stale = True
            state = "installed, differs from what enable would write now"
        lines.append(f"{_pretty(path, base)}: {state}")
    files = list(desired)
    verdict, enabled = _verdict(kind, files[0].exists(), _wants_link(base, environ).is_symlink(), stale)
    lines.append(verdict)
    return AutostartReport(changed=False, files=files, lines=lines, enabled=enabled)


def _verdict(kind: str, written: bool, linked: bool, stale: bool) -> tuple[str, bool]:
    """The one line `status` ends with, and whether dariod starts at login."""
    if not written:
        return f"autostart is disabled (run: {shell_command('dario-ctl')} autostart enable)", False
    if kind == "linux" and not linked:
        # The unit file alone starts nothing: systemd needs the default.target.wants link.
        return ("autostart is not active: the unit is written but not enabled in systemd "
                f"(run: {shell_command('dario-ctl')} autostart enable, or: {SYSTEMCTL_ENABLE})"), False
    if stale:
        return ("autostart is enabled, with entries from another install "
                f"(run: {shell_command('dario-ctl')} autostart enable)"), True
    return "autostart is enabled", True


# -- Windows: HKCU\...\Run (no admin rights needed) -------------------------------------------
class _Registry(Protocol):
    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...


class _WinregRun:
    """The current user's Run key through stdlib winreg (imported only on Windows)."""

    def _key(self, write: bool) -> Any:
        if sys.platform != "win32":  # also tells mypy that the rest is Windows-only
            raise OSError("the Windows registry exists only on Windows")
        import winreg

        access = winreg.KEY_READ | (winreg.KEY_SET_VALUE if write else 0)
        return winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, WINDOWS_RUN_KEY, 0, access)

    def get(self, name: str) -> str | None:
        with self._key(False) as key:
            try:
                value, _ = _winreg().QueryValueEx(key, name)
            except FileNotFoundError:
                return None
        return str(value)

    def set(self, name: str, value: str) -> None:
        winreg = _winreg()
        with self._key(True) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)

    def delete(self, name: str) -> None:
        with self._key(True) as key:
            _winreg().DeleteValue(key, name)


def _winreg() -> Any:
    import importlib

    return importlib.import_module("winreg")


def _registry() -> _Registry:
    return _WinregRun()


def _windows_daemon_command() -> list[str]:
    # pythonw.exe: the daemon must not pop up a console window at every login.
    pythonw = Path(sys.executable).with_name("pythonw.exe")
    if pythonw.exists():
        return [str(pythonw), "-m", "dario.daemon.main"]
    return daemon_command()


def _windows_entries(tray: bool) -> dict[str, str]:
    entries = {WINDOWS_DAEMON_VALUE: subprocess.list2cmdline(_windows_daemon_command())}
    if tray:  # dario-tray is a gui-script: no console window
        entries[WINDOWS_TRAY_VALUE] = subprocess.list2cmdline(tray_command())
    return entries


def _windows_enable(dry_run: bool, tray: bool) -> AutostartReport:
    registry = _registry()
    lines: list[str] = []
    changed = False
    for name, command in _windows_entries(tray).items():
        where = f"HKCU\\{WINDOWS_RUN_KEY}\\{name}"
        if registry.get(name) == command:
            lines.append(f"unchanged: {where}")
            continue
        changed = True
        lines.append(f"{'would set' if dry_run else 'set'}: {where} = {command}")
        if not dry_run:
            registry.set(name, command)
    lines.append("it starts at your next login")
    lines.append(UNDO_HINT)
    enabled = registry.get(WINDOWS_DAEMON_VALUE) is not None
    return AutostartReport(changed=changed, files=[], lines=lines, enabled=enabled)


def _windows_disable(dry_run: bool) -> AutostartReport:
    registry = _registry()
    lines: list[str] = []
    changed = False
    for name in (WINDOWS_DAEMON_VALUE, WINDOWS_TRAY_VALUE):
        if registry.get(name) is None:
            continue
        changed = True
        lines.append(f"{'would remove' if dry_run else 'removed'}: HKCU\\{WINDOWS_RUN_KEY}\\{name}")
        if not dry_run:
            registry.delete(name)
    if not changed:
        lines.append("nothing to remove: autostart is not enabled")
    enabled = registry.get(WINDOWS_DAEMON_VALUE) is not None
    return AutostartReport(changed=changed, files=[], lines=lines, enabled=enabled)


def _windows_status() -> AutostartReport:
    registry = _registry()
    lines = []
    for name in (WINDOWS_DAEMON_VALUE, WINDOWS_TRAY_VALUE):
        value = registry.get(name)
        lines.append(f"HKCU\\{WINDOWS_RUN_KEY}\\{name}: {value if value is not None else 'missing'}")
    enabled = registry.get(WINDOWS_DAEMON_VALUE) is not None
    hint = f"disabled (run: {shell_command('dario-ctl')} autostart enable)"
    lines.append("autostart is " + ("enabled" if enabled else hint))
    return AutostartReport(changed=False, files=[], lines=lines, enabled=enabled)


# -- packaging/ ----------------------------------------------------------------------------
PACKAGING_DAEMON = ["/usr/bin/dariod"]
PACKAGING_TRAY = ["/usr/bin/dario-tray"]


def packaging_files() -> dict[str, str]:
    """packaging/ paths and contents for distributors (system-wide, /usr/bin paths)."""
    return {
        "linux/dario.service": render_service(PACKAGING_DAEMON),
        "linux/dario.socket": SOCKET_TEMPLATE,
        "linux/dario-tray.desktop": render_desktop(PACKAGING_TRAY),
    }


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "render-packaging":
        print("usage: python -m dario.ctl.autostart render-packaging DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    for rel, text in packaging_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
