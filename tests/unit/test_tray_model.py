"""The tray's model (health, tooltip, menu, settings) and app wiring, without a display."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from dario.ctl.client import ControlAPIError, DaemonNotRunning
from dario.ctl.views import human_duration
from dario.daemon.control.api import AccountStatus, AccountView, RefreshResult, Status
from dario.tray import app
from dario.tray.model import (
    MenuEntry,
    TrayHealth,
    account_state,
    health,
    menu_model,
    settings_text,
    tooltip,
)
from tests.support import wait_until

NOW = 1_700_000_000.0


def account(
    alias: str, status: AccountStatus = "ok", headroom: float | None = 0.83, *, preferred: bool = False,
    enabled: bool = True, until: float | None = None,
) -> AccountView:
    return {
        "alias": alias, "kind": "anthropic", "base_url": "https://api.anthropic.com", "created": NOW - 86400,
        "enabled": enabled, "preferred": preferred, "status": status,
        "reason": None if status == "ok" else status, "until": until, "headroom": headroom, "windows": {},
        "in_flight": 0, "requests": 0, "errors": 0, "latency_ms": None,
    }


def make_status(*accounts: AccountView, listen: str = "http://127.0.0.1:3456", auth: bool = False) -> Status:
    return {
        "version": "0.1.0", "pid": 4242, "started_at": NOW - 60, "uptime_s": 60.0, "listen": listen,
        "socket": "/run/user/1000/dario/ctl.sock", "auth_required": auth, "requests_served": 0,
        "pool": {"health": "ok", "available": len(accounts), "total": len(accounts), "earliest_reset": None,
                 "queue_depth": 0},
        "accounts": list(accounts),
    }


def actions(entries: list[MenuEntry]) -> list[str]:
    out = []
    for e in entries:
        if e.action:
            out.append(e.action)
        out.extend(c.action for c in e.children if c.action)
    return out


def radios(entries: list[MenuEntry]) -> dict[str, MenuEntry]:
    return {e.action or "": e for e in entries if e.kind == "radio"}


# -- health ----------------------------------------------------------------------------------
def test_health_covers_every_state() -> None:
    assert health(None) is TrayHealth.STOPPED
    assert health(make_status()) is TrayHealth.EMPTY
    assert health(make_status(account("work"), account("home", headroom=0.5))) is TrayHealth.HEALTHY
    assert health(make_status(account("work"), account("spare", "exhausted", until=NOW + 38))) \
        is TrayHealth.DEGRADED
    assert health(make_status(account("work"), account("old", "needs_login", None))) is TrayHealth.DEGRADED
    assert health(make_status(account("work", headroom=0.19))) is TrayHealth.DEGRADED
    down = make_status(account("a", "exhausted", until=NOW + 5), account("b", "cooling", until=NOW + 9))
    assert health(down) is TrayHealth.UNAVAILABLE
    assert health(make_status(account("old", "needs_login", None))) is TrayHealth.UNAVAILABLE


def test_health_ignores_disabled_accounts_and_unknown_headroom() -> None:
    # A disabled account is the user's choice, not trouble; unknown headroom is not low.
    assert health(make_status(account("work", headroom=None), account("off", "disabled", enabled=False))) \
        is TrayHealth.HEALTHY
    assert health(make_status(account("off", "disabled", enabled=False))) is TrayHealth.UNAVAILABLE


# -- words -------------------------------------------------------------------------------------
def test_tooltip_in_words() -> None:
    status = make_status(account("work", headroom=0.83), account("home", headroom=0.4),
                         account("spare", "exhausted", until=NOW + 38))
    assert tooltip(status, NOW) == "dario: 2 of 3 accounts ready · work 83%"
    assert tooltip(None, NOW) == "dario: daemon not running"
    assert "no accounts" in tooltip(make_status(), NOW)


def test_tooltip_names_the_preferred_account_and_the_next_reset() -> None:
    status = make_status(account("work", headroom=0.9), account("home", headroom=0.3, preferred=True))
    assert tooltip(status, NOW) == "dario: 2 of 2 accounts ready · home 30%"
    down = make_status(account("a", "exhausted", until=NOW + 38), account("b", "exhausted", until=NOW + 600))
    assert tooltip(down, NOW) == "dario: 0 of 2 accounts ready · next reset in 38 s"


def test_tooltip_fits_the_windows_limit() -> None:
    status = make_status(account("x" * 300))
    text = tooltip(status, NOW)
    assert len(text) <= 127
    assert text.endswith("…")


def test_account_state_counts_the_conversations_an_account_holds() -> None:
    held = dict(account("work", headroom=0.83), conversations=3)
    assert account_state(cast(AccountView, held), NOW) == "83% · ok · 3 conversations"
    one = dict(account("work", headroom=None), conversations=1)
    assert account_state(cast(AccountView, one), NOW) == "ok · 1 conversation"
    none = dict(account("work", headroom=0.12), conversations=0)
    assert account_state(cast(AccountView, none), NOW) == "12% · low"


def test_account_state_words() -> None:
    assert account_state(account("work", headroom=0.83), NOW) == "83% · ok"
    assert account_state(account("work", headroom=0.12), NOW) == "12% · low"
    assert account_state(account("spare", "exhausted", until=NOW + 38), NOW) == "exhausted, resets in 38 s"
    assert account_state(account("spare", "cooling", until=NOW + 125), NOW) == "cooling, retry in 3 min"
    # A weekly window's reset reads in days, as in dario-ctl, not "49 h 0 min".
    assert account_state(account("spare", "exhausted", until=NOW + 2 * 86_400 + 3600), NOW) == \
        "exhausted, resets in 2 d 1 h"
    assert account_state(account("old", "needs_login"), NOW) == "needs login"
    assert account_state(account("off", "disabled", enabled=False), NOW) == "disabled"


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1 s"), (38, "38 s"), (59.5, "1 min"), (61, "2 min"),
                                               (3600, "1 h"), (3 * 3600 + 300, "3 h 5 min")])
def test_durations_are_coarse_and_round_up(seconds: float, text: str) -> None:
    assert human_duration(seconds, coarse=True) == text


# -- menu --------------------------------------------------------------------------------------
def test_menu_for_a_healthy_pool() -> None:
    status = make_status(account("work", headroom=0.83), account("spare", "exhausted", until=NOW + 38))
    entries = menu_model(status, NOW)
    r = radios(entries)
    assert r["prefer:work"].label == "work — 83% · ok"
    assert r["prefer:spare"].label == "spare — exhausted, resets in 38 s"
    assert r["prefer:"].label == "Automatic" and r["prefer:"].checked
    assert not r["prefer:work"].checked
    assert actions(entries) == [
        "prefer:work", "prefer:spare", "prefer:", "refresh:", "refresh:work", "refresh:spare",
        "open-dashboard", "copy-settings", "quit",
    ]
    assert entries[0].kind == "info" and entries[0].label == "1 of 2 accounts ready · work 83%"
    assert all(e.enabled for e in entries if e.action)


def test_menu_names_where_bedrock_and_vertex_accounts_point() -> None:
    aws = account("aws", headroom=None)
    aws.update(kind="bedrock", region="eu-west-1")
    gcp = account("gcp", headroom=None)
    gcp.update(kind="vertex", region="us-east5", project="proj")
    r = radios(menu_model(make_status(account("work"), aws, gcp), NOW))
    assert r["prefer:aws"].label.startswith("aws (bedrock eu-west-1) — ")
    assert r["prefer:gcp"].label.startswith("gcp (vertex proj/us-east5) — ")
    assert r["prefer:work"].label == "work — 83% · ok"  # an Anthropic account: no room taken


def test_menu_checks_the_preferred_account_only() -> None:
    entries = menu_model(make_status(account("work"), account("home", preferred=True)), NOW)
    checked = [e.action for e in entries if e.checked]
    assert checked == ["prefer:home"]


def test_menu_when_stopped_offers_start_and_nothing_that_needs_the_daemon() -> None:
    entries = menu_model(None, NOW)
    by_action = {e.action: e for e in entries if e.action}
    assert "start-daemon" in by_action
    assert not by_action["open-dashboard"].enabled
    assert not by_action["copy-settings"].enabled
    assert not any(a.startswith(("prefer:", "refresh:")) for a in by_action)
    assert entries[-1].action == "quit"


def test_menu_without_accounts_has_no_account_entries_and_no_start() -> None:
    entries = menu_model(make_status(), NOW)
    assert actions(entries) == ["open-dashboard", "copy-settings", "quit"]


def test_menu_disables_preferring_a_disabled_account() -> None:
    entries = menu_model(make_status(account("work"), account("off", "disabled", enabled=False)), NOW)
    assert not radios(entries)["prefer:off"].enabled
    assert radios(entries)["prefer:work"].enabled


def test_settings_text_uses_the_listen_address() -> None:
    status = make_status(account("work"), listen="http://127.0.0.1:4000/")
    lines = settings_text(status, "linux").splitlines()
    assert "export ANTHROPIC_BASE_URL='http://127.0.0.1:4000'" in lines
    assert "export OPENAI_BASE_URL='http://127.0.0.1:4000/v1'" in lines
    assert "export ANTHROPIC_BASE_URL='http://127.0.0.1:3456'" in settings_text(make_status(), "linux").splitlines()
    assert "$env:OPENAI_BASE_URL = 'http://127.0.0.1:3456/v1'" in settings_text(make_status(), "win32").splitlines()
    assert "client key" in settings_text(make_status(auth=True), "linux")


def test_settings_text_is_what_dario_ctl_env_prints() -> None:
    from dario.ctl.toolenv import render, tool_env

    status = make_status(account("work"), listen="http://127.0.0.1:4000", auth=True)
    assert settings_text(status, "linux", key="dario-k") == render(tool_env("http://127.0.0.1:4000", "dario-k"), "sh")
    assert settings_text(make_status(), "win32") == render(tool_env("http://127.0.0.1:3456", None), "powershell")


# -- app: environment checks -------------------------------------------------------------------
def test_display_problem() -> None:
    assert app.display_problem("linux", {}) is not None
    assert app.display_problem("linux", {"DISPLAY": ":0"}) is None
    assert app.display_problem("linux", {"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert app.display_problem("darwin", {}) is None


def test_choose_backend_falls_back_when_appindicator_is_missing() -> None:
    def gi(*available: str) -> Any:
        return lambda namespace, version: namespace in available

    assert app.choose_backend("linux", {}, gi("Gtk", "AyatanaAppIndicator3")) == "appindicator"
    assert app.choose_backend("linux", {}, gi("Gtk")) == "gtk"
    assert app.choose_backend("linux", {}, gi()) == "xorg"
    assert app.choose_backend("linux", {"PYSTRAY_BACKEND": "gtk"}, gi()) is None
    assert app.choose_backend("darwin", {}, gi()) is None


def test_clipboard_prefers_wl_copy_on_wayland() -> None:
    assert app.clipboard_commands("linux", {"WAYLAND_DISPLAY": "w"})[0] == ["wl-copy"]
    assert app.clipboard_commands("linux", {"DISPLAY": ":0"})[0][0] == "xclip"
    assert app.clipboard_commands("darwin", {}) == [["pbcopy"]]


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the DISPLAY check is for X11/Wayland")
def test_headless_start_exits_1_with_one_line_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    done = subprocess.run([sys.executable, "-m", "dario.tray.app"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no graphical session" in lines[0]


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="X11 only")
def test_unreachable_display_exits_1_without_traceback() -> None:
    # DISPLAY set but nothing listening: python-xlib raises at `import pystray`, not ImportError.
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    env["DISPLAY"] = ":987"
    env["PYSTRAY_BACKEND"] = "xorg"
    done = subprocess.run([sys.executable, "-m", "dario.tray.app"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("dario-tray: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_and_version_work_without_a_display() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    for flag, expect in (("--version", "dario-tray 0.1.0"), ("--help", "usage: dario-tray")):
        done = subprocess.run([sys.executable, "-m", "dario.tray.app", flag], env=env, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert expect in done.stdout and done.stderr == ""
    done = subprocess.run([sys.executable, "-m", "dario.tray.app", "--bogus"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr


def test_menu_problem_names_the_fix() -> None:
    assert app.menu_problem(True, "linux", lambda n, v: False) is None
    line = app.menu_problem(False, "linux", lambda n, v: False)
    assert line is not None and "\n" not in line
    assert "has no menu" in line and "gir1.2-ayatanaappindicator3-0.1" in line and "pip install -e '.[tray]'" in line
    forced = app.menu_problem(False, "linux", lambda n, v: True)
    assert forced is not None and "PYSTRAY_BACKEND" in forced


def test_start_daemon_logs_to_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    fake_daemon = [sys.executable, "-c", "import sys; print('out line'); print('err line', file=sys.stderr)"]
    monkeypatch.setattr(app, "daemon_command", lambda: fake_daemon)
    app.start_daemon()
    app.start_daemon()  # appends: the reason for an earlier failed start stays readable
    log = tmp_path / "state" / "dario" / "dariod.log"
    assert app.daemon_log_path() == log
    wait_until(lambda: log.exists() and log.read_text().count("err line") == 2, 10, "the daemon's output in the log")
    assert log.read_text().count("out line") == 2
    assert log.stat().st_mode & 0o077 == 0


# -- app: actions ------------------------------------------------------------------------------
class FakeClient:
    def __init__(self, status: Status | None = None, refresh_results: list[RefreshResult] | None = None,
                 error: Exception | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self._status = status
        self._refresh = refresh_results or []
        self._error = error

    def status(self) -> Status:
        self.calls.append(("status", None))
        if self._status is None:
            raise DaemonNotRunning(Path("/nonexistent/ctl.sock"))
        return self._status

    def prefer(self, alias: str | None) -> str | None:
        self.calls.append(("prefer", alias))
        if self._error:
            raise self._error
        return alias

    def refresh(self, alias: str | None = None) -> list[RefreshResult]:
        self.calls.append(("refresh", alias))
        return self._refresh


class Recorder:
    def __init__(self, copy_ok: bool = True, window_ok: bool = True) -> None:
        self.events: list[tuple[str, object]] = []
        self.copy_ok = copy_ok
        self.window_ok = window_ok

    def copy(self, text: str) -> bool:
        self.events.append(("copy", text))
        return self.copy_ok

    def show(self, title: str, text: str) -> bool:
        self.events.append(("window", text))
        return self.window_ok

    def effects(self) -> app.Effects:
        return app.Effects(
            open_url=lambda url: self.events.append(("open", url)),
            copy_text=self.copy,
            show_text=self.show,
            start_daemon=lambda: self.events.append(("start", None)),
            notify=lambda msg: self.events.append(("notify", msg)),
            quit=lambda: self.events.append(("quit", None)),
        )


def test_dispatch_calls_the_right_client_methods() -> None:
    client, rec = FakeClient(), Recorder()
    status = make_status(account("work"))
    for action in ("prefer:work", "prefer:", "refresh:work", "refresh:"):
        app.dispatch(action, client, status, rec.effects())
    assert client.calls == [("prefer", "work"), ("prefer", None), ("refresh", "work"), ("refresh", None)]
    assert rec.events == []


def test_dispatch_local_effects() -> None:
    client, rec = FakeClient(), Recorder()
    status = make_status(account("work"), listen="http://127.0.0.1:4000")
    for action in ("open-dashboard", "copy-settings", "start-daemon", "quit"):
        app.dispatch(action, client, status, rec.effects())
    assert client.calls == []
    assert rec.events[0] == ("open", "http://127.0.0.1:4000/")
    assert rec.events[1] == ("copy", settings_text(status))
    assert rec.events[2][0] == "notify"
    assert rec.events[3] == ("start", None)
    assert rec.events[4][0] == "notify" and "dariod.log" in str(rec.events[4][1])
    assert rec.events[5:] == [("quit", None)]


def test_dispatch_shows_the_text_when_there_is_no_clipboard() -> None:
    # No clipboard tool: a window with the text (stderr is invisible when autostarted).
    rec = Recorder(copy_ok=False)
    app.dispatch("copy-settings", FakeClient(), make_status(), rec.effects())
    windows = [t for kind, t in rec.events if kind == "window"]
    assert len(windows) == 1 and "export OPENAI_API_KEY='dario'" in str(windows[0])
    notes = [m for kind, m in rec.events if kind == "notify"]
    assert len(notes) == 1 and "in a window" in str(notes[0])
    # No window either: the notification carries the text itself.
    rec = Recorder(copy_ok=False, window_ok=False)
    app.dispatch("copy-settings", FakeClient(), make_status(), rec.effects())
    notes = [m for kind, m in rec.events if kind == "notify"]
    assert len(notes) == 1 and "export OPENAI_BASE_URL='http://127.0.0.1:3456/v1'" in str(notes[0])


class ServerGone(Exception):
    """Stands in for GLib.Error "org.freedesktop.Notifications was not provided by any .service files"."""


class NoServerNotifier:
    def notify(self, title: str, message: str, icon: str | None) -> None:
        raise ServerGone("org.freedesktop.Notifications was not provided")

    def hide(self) -> None:
        raise ServerGone("org.freedesktop.Notifications was not provided")


def test_quit_ends_quietly_without_a_notification_server(pystray_dummy: Any) -> None:
    tray = make_app(pystray_dummy, FakeClient(make_status(account("work"))))
    icon = tray.icon
    icon._notifier = NoServerNotifier()
    app._guard_notifier(icon)
    icon._notifier.notify("dario", "hello", None)  # as pystray's idle callback would

    def run(setup: Any) -> None:
        # pystray's GtkIcon._run: the loop ends, then _finalize() closes the notification.
        icon.stopped = False
        tray.quit()
        icon._notifier.hide()

    icon.run = run
    tray.run()  # must not raise
    assert icon.stopped


def test_run_still_raises_errors_that_are_not_about_quitting(pystray_dummy: Any) -> None:
    tray = make_app(pystray_dummy, FakeClient(make_status(account("work"))))

    def run(setup: Any) -> None:
        raise ServerGone("broken before anyone quit")

    tray.icon.run = run
    with pytest.raises(ServerGone):
        tray.run()


def test_dispatch_turns_errors_into_notifications() -> None:
    rec = Recorder()
    failing = FakeClient(error=ControlAPIError(404, "not_found", "no account named nope"))
    app.dispatch("prefer:nope", failing, make_status(), rec.effects())
    assert rec.events == [("notify", "dariod refused: no account named nope")]
    rec2 = Recorder()
    results: list[RefreshResult] = [
        {"alias": "a", "ok": True, "status": "ok", "message": "fine"},
        {"alias": "b", "ok": False, "status": "needs_login", "message": "key revoked"},
    ]
    app.dispatch("refresh:", FakeClient(refresh_results=results), make_status(), rec2.effects())
    assert rec2.events == [("notify", "b: key revoked")]
    with pytest.raises(ValueError, match="unknown tray action"):
        app.dispatch("format-disk", FakeClient(), None, Recorder().effects())


# -- app: pystray wiring with a fake icon ------------------------------------------------------
class FakeIcon:
    HAS_NOTIFICATION = False

    def __init__(self, name: str, icon: Any = None, title: str = "", menu: Any = None) -> None:
        self.name, self.icon, self.title, self.menu = name, icon, title, menu
        self.menu_updates = 0
        self.stopped = False

    def update_menu(self) -> None:
        self.menu_updates += 1

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def pystray_dummy(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The dummy backend imports without a display; never call its run() (it blocks until stop()).
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    pystray = pytest.importorskip("pystray")

    return SimpleNamespace(Icon=FakeIcon, Menu=pystray.Menu, MenuItem=pystray.MenuItem)


def make_app(pystray: Any, client: FakeClient) -> app.TrayApp:
    return app.TrayApp(pystray, draw=lambda h: f"image:{h.value}", action_client=client)


def test_app_menu_items_and_click_queue(pystray_dummy: Any) -> None:
    client = FakeClient(make_status(account("work"), account("home", preferred=True)))
    tray = make_app(pystray_dummy, client)
    assert tray.icon.icon == "image:healthy"
    assert tray.icon.title == "dario: 2 of 2 accounts ready · home 83%"
    items = list(tray.icon.menu)
    by_text = {i.text: i for i in items}
    assert by_text["home — 83% · ok"].checked is True and by_text["home — 83% · ok"].radio
    assert by_text["work — 83% · ok"].checked is False
    assert by_text["Automatic"].checked is False
    assert by_text["Open dashboard"].default
    refresh_sub = by_text["Refresh"].submenu
    assert [i.text for i in refresh_sub] == ["work", "home"]
    by_text["work — 83% · ok"](tray.icon)
    list(refresh_sub)[1](tray.icon)
    assert [tray.actions.get_nowait(), tray.actions.get_nowait()] == ["prefer:work", "refresh:home"]
    tray.run_action("prefer:work")
    assert ("prefer", "work") in client.calls
    by_text["Quit"](tray.icon)
    assert tray.icon.stopped and tray.actions.get_nowait() is None


def test_app_apply_updates_icon_title_and_menu(pystray_dummy: Any) -> None:
    tray = make_app(pystray_dummy, FakeClient(None))
    assert tray.icon.icon == "image:stopped"
    assert "Start daemon" in [i.text for i in tray.icon.menu]
    tray.apply(make_status(account("work"), account("spare", "exhausted", until=NOW + 38)), NOW)
    assert tray.icon.icon == "image:degraded"
    assert tray.icon.title == "dario: 1 of 2 accounts ready · work 83%"
    assert tray.icon.menu_updates == 1
    texts = [i.text for i in tray.icon.menu]
    assert "Start daemon" not in texts and "spare — exhausted, resets in 38 s" in texts
    # Only a countdown moved: the title follows at once, the menu waits (rebuilding closes it).
    tray.apply(make_status(account("work"), account("spare", "exhausted", until=NOW + 38)), NOW + 2)
    assert tray.icon.menu_updates == 1
    # A real change (the account came back) rebuilds at once.
    tray.apply(make_status(account("work"), account("spare")), NOW + 4)
    assert tray.icon.menu_updates == 2 and tray.icon.icon == "image:healthy"


def test_team_store_degraded_shows_in_health_and_tooltip() -> None:
    # Team mode: Redis not answering is said in the tray, while the accounts themselves are fine.
    status = make_status(account("work"))
    assert health(status) is TrayHealth.HEALTHY
    status["store"] = "ok"
    assert health(status) is TrayHealth.HEALTHY and "store" not in tooltip(status, NOW)
    status["store"] = "degraded"
    assert health(status) is TrayHealth.DEGRADED
    assert tooltip(status, NOW).endswith("· store: degraded")
