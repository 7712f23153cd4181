"""dario-tray: a tray icon that shows the pool's health and offers a few actions.

Threads (pystray's rules, https://pystray.readthedocs.io/en/latest/usage.html):
- main thread: `icon.run()`, the toolkit's loop; macOS requires it there.
- poller: reads `/v1/status` every POLL_INTERVAL seconds (at once after an action), recomputes
  the model and pushes icon, title and menu to the icon.
- worker: runs the menu's actions one at a time, so a slow refresh never freezes the menu.
The tray is only a client of the control API; it never imports the daemon's server side.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dario.ctl.autostart import daemon_command
from dario.ctl.client import ControlAPIError, ControlClient, DaemonNotRunning
from dario.ctl.views import printable
from dario.daemon import __version__
from dario.daemon.control.api import RefreshResult, Status
from dario.daemon.paths import ensure_private_dir, state_dir
from dario.tray.model import MenuEntry, TrayHealth, health, menu_model, settings_text, tooltip

log = logging.getLogger("dario.tray")

POLL_INTERVAL = 2.0
POLL_TIMEOUT = 5.0  # a hung daemon must not freeze the poller for the client's default 30 s
# Rebuilding a menu closes it on some hosts (pystray#59): when only numbers in labels moved
# (countdowns, percentages), rebuild at most this often; anything else rebuilds at once.
NUMBERS_ONLY_REBUILD_S = 15.0


class TrayClient(Protocol):
    """The part of ControlClient the tray uses; tests pass a fake."""

    def status(self) -> Status: ...
    def prefer(self, alias: str | None) -> str | None: ...
    def refresh(self, alias: str | None = None) -> list[RefreshResult]: ...


@dataclass
class Effects:
    """Side effects of actions that do not go through the control API."""

    open_url: Callable[[str], object]
    copy_text: Callable[[str], bool]
    show_text: Callable[[str, str], bool]  # (title, text): a window the user can copy from
    start_daemon: Callable[[], object]
    notify: Callable[[str], None]
    quit: Callable[[], None]


# -- environment ---------------------------------------------------------------------------
def display_problem(platform: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Why no tray can be shown here, in one line; None if it is worth trying."""
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    if platform in ("darwin", "win32"):
        return None
    if not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        return (
            "dario-tray: no graphical session (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "start it from a desktop session, or use dario-ctl status"
        )
    return None


def _gi_has(namespace: str, version: str) -> bool:
    try:
        import gi

        gi.require_version(namespace, version)
    except (ImportError, ValueError):
        return False
    return True


def choose_backend(
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    gi_has: Callable[[str, str], bool] = _gi_has,
) -> str | None:
    """The PYSTRAY_BACKEND to set, or None to leave pystray's choice (or the user's) alone.

    pystray's own probe stops at the first backend whose import fails with anything but
    ImportError, and the appindicator module raises ValueError when GTK is present without an
    AppIndicator typelib, so on such systems it never reaches gtk or xorg. Probe ourselves.
    """
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    if environ.get("PYSTRAY_BACKEND") or platform in ("darwin", "win32"):
        return None
    if gi_has("Gtk", "3.0"):
        if gi_has("AyatanaAppIndicator3", "0.1") or gi_has("AppIndicator3", "0.1"):
            return "appindicator"
        return "gtk"
    return "xorg"


# Debian/Ubuntu names; the README lists Fedora's and Arch's.
MENU_PACKAGES_APT = "libgirepository1.0-dev libcairo2-dev gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1"


def menu_problem(
    has_menu: bool, platform: str | None = None, gi_has: Callable[[str, str], bool] = _gi_has
) -> str | None:
    """One line with the fix when the backend pystray loaded has no menu; None if it has one."""
    platform = sys.platform if platform is None else platform
    if has_menu:
        return None
    if platform.startswith("linux") and not gi_has("Gtk", "3.0"):
        why = "PyGObject or GTK 3 is missing"
        fix = (f"install them (Debian/Ubuntu: sudo apt-get install {MENU_PACKAGES_APT}), then reinstall "
               "the tray extra: pip install -e '.[tray]' (see the README's Tray and autostart section)")
    else:
        why = "PYSTRAY_BACKEND chose it" if os.environ.get("PYSTRAY_BACKEND") else "no menu backend loaded"
        fix = "unset PYSTRAY_BACKEND or set it to appindicator or gtk"
    return (f"dario-tray: this tray backend has no menu ({why}); a click opens the dashboard, nothing else; "
            f"to get the menu, {fix}")


# -- effects -------------------------------------------------------------------------------
def clipboard_commands(
    platform: str | None = None, environ: Mapping[str, str] | None = None
) -> list[list[str]]:
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    if platform == "darwin":
        return [["pbcopy"]]
    if platform == "win32":
        return [["clip"]]
    commands = [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    if environ.get("WAYLAND_DISPLAY"):
        commands.insert(0, ["wl-copy"])
    return commands


def copy_to_clipboard(text: str) -> bool:
    """Copy with the first clipboard tool found; False if there is none or it failed."""
    for command in clipboard_commands():
        exe = shutil.which(command[0])
        if exe is None:
            continue
        try:
            # Output to DEVNULL: xclip and wl-copy stay behind to serve the selection, and a pipe
            # held open by them would make run() wait for ever.
            done = subprocess.run([exe, *command[1:]], input=text.encode(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return True
    return False


def show_text_window(title: str, text: str) -> bool:
    """Show `text` in a window of its own (dario.tray.textwindow); False if it could not start."""
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dario.tray.textwindow", title],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    except OSError as exc:
        log.debug("text window failed: %r", exc)
        return False
    # Feed it and reap it when the user closes it, without holding up the worker thread.
    threading.Thread(target=proc.communicate, args=(text.encode(),), name="dario-tray-window",
                     daemon=True).start()
    return True


DAEMON_LOG_NAME = "dariod.log"


def daemon_log_path() -> Path:
    """Where a daemon started from the tray writes its output: dario's state folder."""
    return state_dir() / DAEMON_LOG_NAME


def start_daemon() -> None:
    # The output goes to a file in the state folder: a daemon that fails at start-up must leave
    # its reason somewhere the user can read (the tray has no terminal).
    path = daemon_log_path()
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # A session of its own: the daemon must outlive the tray and not get the tray's signals.
        subprocess.Popen(daemon_command(), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=fd, stderr=fd)
    finally:
        os.close(fd)


def fetch_status(client: TrayClient) -> Status | None:
    """The daemon's status, or None when nothing (sane) answers."""
    try:
        return client.status()
    except (DaemonNotRunning, ControlAPIError, OSError, ValueError, http.client.HTTPException) as exc:
        log.debug("status failed: %r", exc)
        return None


# -- actions -------------------------------------------------------------------------------
def _settings_key(client: TrayClient, status: Status | None) -> str | None:
    """The client key `dario-ctl env` uses (same name, same keyring entry), if dariod wants one."""
    if status is None or not status["auth_required"] or not isinstance(client, ControlClient):
        return None
    from dario.ctl.env import DEFAULT_NAME
    from dario.ctl.toolkeys import KeyringStore, KeyStoreError, KeyUnavailable, key_for_tool

    try:
        return key_for_tool(client, DEFAULT_NAME, KeyringStore())
    except (KeyStoreError, KeyUnavailable) as exc:
        log.info("no client key for the copied settings: %s", exc)
        return None


def dispatch(action: str, client: TrayClient, status: Status | None, effects: Effects) -> None:
    """Carry out one menu action id ("prefer:work", "refresh:", "open-dashboard", ...)."""
    verb, _, arg = action.partition(":")
    try:
        if verb == "prefer":
            client.prefer(arg or None)  # "prefer:" = automatic
        elif verb == "refresh":
            failed = [r for r in client.refresh(arg or None) if not r["ok"]]
            if failed:
                effects.notify("; ".join(f"{r['alias']}: {r['message']}" for r in failed))
        elif action == "open-dashboard":
            if status is None:
                effects.notify("dariod is not running")
            else:
                effects.open_url(status["listen"].rstrip("/") + "/")
        elif action == "copy-settings":
            text = settings_text(status, key=_settings_key(client, status))
            if effects.copy_text(text):
                effects.notify("Copied the settings for tools to the clipboard")
            elif effects.show_text("dario: settings for tools", text):
                effects.notify("No clipboard tool found (wl-copy, xclip, xsel): the settings are in a window")
            else:
                effects.notify("No clipboard tool found (wl-copy, xclip, xsel); the settings are:\n" + text)
        elif action == "start-daemon":
            effects.start_daemon()
            effects.notify(f"Starting dariod; its log: {daemon_log_path()}")
        elif action == "quit":
            effects.quit()
        else:
            raise ValueError(f"unknown tray action {action!r}")
    except DaemonNotRunning:
        effects.notify("dariod is not running; choose Start daemon")
    except ControlAPIError as exc:
        effects.notify(f"dariod refused: {exc.message}")
    except OSError as exc:
        effects.notify(f"{action} failed: {exc}")


# -- the app -------------------------------------------------------------------------------
def _shape(entries: Sequence[MenuEntry]) -> tuple[object, ...]:
    return tuple(
        (re.sub(r"\d+", "#", e.label), e.kind, e.checked, e.enabled, e.action, _shape(e.children))
        for e in entries
    )


class TrayApp:
    def __init__(
        self,
        pystray: Any,
        draw: Callable[[TrayHealth], Any],
        action_client: TrayClient,
        poll_client: TrayClient | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._pystray = pystray
        self._draw = draw
        self._action_client = action_client
        self._poll_client = poll_client or action_client
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.actions: queue.Queue[str | None] = queue.Queue()
        self.effects = Effects(
            open_url=webbrowser.open,
            copy_text=copy_to_clipboard,
            show_text=show_text_window,
            start_daemon=start_daemon,
            notify=self.notify,
            quit=self.quit,
        )
        self._status = fetch_status(self._poll_client)
        now = time.time()
        self._health = health(self._status)
        self._entries = tuple(menu_model(self._status, now))
        self._menu_built = time.monotonic()
        self.icon = pystray.Icon(
            "dario",
            icon=draw(self._health),
            title=tooltip(self._status, now),
            menu=pystray.Menu(self._menu_items),
        )

    # -- menu ------------------------------------------------------------------------------
    def _menu_items(self) -> list[Any]:
        # Called by pystray on the UI thread whenever it (re)builds the menu.
        with self._lock:
            entries = self._entries
            running = self._status is not None
        default = "open-dashboard" if running else "start-daemon"
        return [self._item(e, default) for e in entries]

    def _item(self, entry: MenuEntry, default: str) -> Any:
        pystray = self._pystray
        if entry.kind == "separator":
            return pystray.Menu.SEPARATOR
        if entry.kind == "info":
            return pystray.MenuItem(entry.label, None, enabled=False)
        if entry.kind == "submenu":
            children = [self._item(c, default) for c in entry.children]
            return pystray.MenuItem(entry.label, pystray.Menu(*children), enabled=entry.enabled)
        checked = entry.checked
        return pystray.MenuItem(
            entry.label,
            self._handler(entry.action or ""),
            checked=(lambda _item: checked) if entry.kind == "radio" else None,
            radio=entry.kind == "radio",
            # The xorg backend has no menu: a click runs the default item instead.
            default=entry.action == default,
            enabled=entry.enabled,
        )

    def _handler(self, action: str) -> Callable[[Any, Any], None]:
        def on_click(icon: Any, item: Any) -> None:
            if action == "quit":
                self.quit()  # on the UI thread, where stopping the loop belongs
            else:
                self.actions.put(action)

        return on_click

    # -- state -----------------------------------------------------------------------------
    def apply(self, status: Status | None, now: float | None = None) -> None:
        """Show `status`: icon if the health changed, title, and the menu when it changed."""
        now = time.time() if now is None else now
        entries = tuple(menu_model(status, now))
        title = tooltip(status, now)
        new_health = health(status)
        with self._lock:
            self._status = status
            rebuild = entries != self._entries and (
                _shape(entries) != _shape(self._entries)
                or time.monotonic() - self._menu_built >= NUMBERS_ONLY_REBUILD_S
            )
            if rebuild:
                self._entries = entries
                self._menu_built = time.monotonic()
            redraw = new_health is not self._health
            self._health = new_health
        if redraw:
            image = self._draw(new_health)
            self._on_ui(lambda: setattr(self.icon, "icon", image))
        if title != self.icon.title:
            self._on_ui(lambda: setattr(self.icon, "title", title))
        if rebuild:
            self._on_ui(self.icon.update_menu)

    @property
    def status(self) -> Status | None:
        with self._lock:
            return self._status

    def _on_ui(self, fn: Callable[[], None]) -> None:
        # GTK/appindicator setters already go through GLib.idle_add, xorg locks, win32 talks to
        # the shell; AppKit alone must be touched on the main thread.
        if sys.platform == "darwin":
            try:
                from Foundation import NSOperationQueue

                NSOperationQueue.mainQueue().addOperationWithBlock_(fn)
                return
            except ImportError:
                pass
        fn()

    def notify(self, message: str) -> None:
        # Messages quote the daemon (account names, upstream errors): no control characters.
        message = printable(message, keep_newlines=True)
        print(f"dario-tray: {message}", file=sys.stderr)
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            def show() -> None:
                try:
                    self.icon.notify(message, "dario")
                except Exception as exc:  # no notification daemon: the stderr line has to do
                    log.debug("notification failed: %r", exc)

            self._on_ui(show)

    # -- threads ---------------------------------------------------------------------------
    def poll_once(self) -> None:
        self.apply(fetch_status(self._poll_client))

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.poll_once()
            except Exception:  # e.g. a newer daemon's status shape: log it, keep the icon alive
                log.exception("could not show the daemon's status")
            self._wake.wait(self._interval)

    def run_action(self, action: str) -> None:
        dispatch(action, self._action_client, self.status, self.effects)
        self._wake.set()  # show the outcome now rather than at the next tick

    def _work_loop(self) -> None:
        while True:
            action = self.actions.get()
            if action is None:
                return
            try:
                self.run_action(action)
            except Exception:
                log.exception("tray action %s failed", action)

    def _setup(self, icon: Any) -> None:
        # pystray runs this in a thread once the icon exists, and joins it on stop(): return quickly.
        _xorg_fixes(icon)
        _guard_notifier(icon)
        icon.visible = True
        threading.Thread(target=self._poll_loop, name="dario-tray-poller", daemon=True).start()
        threading.Thread(target=self._work_loop, name="dario-tray-worker", daemon=True).start()

    def run(self) -> None:
        try:
            self.icon.run(setup=self._setup)
        except Exception as exc:
            # pystray's gtk backends close the last notification after their loop ends; with no
            # notification server that raises. Quitting must still end quietly.
            if not self._stopping.is_set():
                raise
            log.debug("error while the tray stopped: %r", exc)

    def quit(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.actions.put(None)
        self.icon.stop()


class _QuietNotifier:
    """pystray's D-Bus notifier, minus its errors when no notification server runs.

    pystray 0.19.5's gtk and appindicator backends call org.freedesktop.Notifications
    synchronously (Notify on notify(), CloseNotification when the loop ends); without a server
    (or with one that went away) each call raises GLib.Error, from a GLib idle callback or from
    icon.run() at Quit. Those failures only mean "no popup": log them at debug level.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def notify(self, title: str, message: str, icon: str | None) -> None:
        try:
            self._inner.notify(title, message, icon)
        except Exception as exc:
            log.debug("notification failed: %r", exc)

    def hide(self) -> None:
        try:
            self._inner.hide()
        except Exception as exc:
            log.debug("closing the notification failed: %r", exc)


def _guard_notifier(icon: Any) -> None:
    notifier = getattr(icon, "_notifier", None)
    if notifier is not None and not isinstance(notifier, _QuietNotifier):
        icon._notifier = _QuietNotifier(notifier)


def _xorg_fixes(icon: Any) -> None:
    """Two fixes for pystray 0.19.5's xorg backend (used where PyGObject is missing).

    - Its icon window never selects ButtonPress, so its only interaction, the default action on
      click, never fires (pystray#151): add the event to the window's mask.
    - It asks the tray host to dock the icon on every icon change, and twice when it is shown;
      a host may embed the window again and drop the old embedding, leaving the icon undocked
      at the root (seen with trayer). Ask only while not docked: pystray forgets the host when
      the host's window is destroyed, so a restarted panel still gets a request.
    """
    window = getattr(icon, "_window", None)
    display = getattr(icon, "_display", None)
    dock = getattr(icon, "_dock_window", None)
    if type(icon).__module__ != "pystray._xorg" or window is None or display is None or dock is None:
        return
    try:
        from Xlib import X

        window.change_attributes(event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask)
        display.flush()
    except Exception as exc:  # a future pystray may differ: clicks stay broken, the icon still works
        log.debug("could not enable clicks on the xorg icon: %r", exc)

    def dock_once() -> None:
        if getattr(icon, "_systray_manager", None) is None:
            dock()

    icon._dock_window = dock_once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dario-tray",
        description="A tray icon for dariod: the pool's health at a glance, a menu to prefer an account, "
                    "refresh, open the dashboard, copy the settings for tools.",
        epilog="Needs a graphical session with a tray (on GNOME: the AppIndicator extension). "
               "Exit codes: 0 quit, 1 cannot show a tray, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"dario-tray {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything touches the display: --help and --version must work over ssh too.
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="dario-tray: %(message)s")
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    backend = choose_backend()
    if backend:
        os.environ["PYSTRAY_BACKEND"] = backend
    try:
        # Lazily: on a headless Linux box `import pystray` raises Xlib.error.DisplayNameError
        # (not ImportError), and the daemon and CLI must never pay for GUI imports.
        import pystray

        from dario.tray.icon import draw_icon
    except ImportError as exc:
        if exc.name in ("pystray", "PIL"):
            print(f"dario-tray: {exc.name} is not installed; install it with: pip install 'dario[tray]'",
                  file=sys.stderr)
        else:
            print(f"dario-tray: no usable tray backend ({exc})", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"dario-tray: cannot open the display or tray ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    no_menu = menu_problem(bool(getattr(pystray.Icon, "HAS_MENU", True)))
    if no_menu:
        print(no_menu, file=sys.stderr)
    try:
        app = TrayApp(
            pystray,
            draw_icon,
            action_client=ControlClient(),
            poll_client=ControlClient(timeout=POLL_TIMEOUT),
        )
    except Exception as exc:  # the backend loaded but could not create its icon (no host, no display)
        print(f"dario-tray: cannot create the tray icon ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    try:
        app.run()
    except KeyboardInterrupt:
        app.quit()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
