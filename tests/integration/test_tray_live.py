"""The real dario-tray process in a real X server with a real system tray.

Xvfb + trayer (an XEMBED tray host). Two tests:
- pystray's xorg backend (no PyGObject) against a fake control socket that answers /v1/status:
  the icon docks with the colour of the daemon's health, follows a change of health, a click runs
  the default action (xorg has no menu: open the dashboard), and the tray says in one line that
  it has no menu.
- the backend the README's install gives (the tray extra brings PyGObject: appindicator, which
  falls back to a GtkStatusIcon without a StatusNotifier host) against a real dariod: xdotool
  opens the menu, prefers an account through it, and `dario-ctl accounts list --json` shows it;
  Quit through the menu, after a notification with no notification server, ends without a
  traceback.
Leaves screenshots in tests/artifacts/. Skipped where Xvfb or trayer are missing
(Debian: apt-get install xvfb trayer xdotool dbus).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dario.tray import icon as tray_icon
from tests.support import Dariod, stop_process, wait_until

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 only"),
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed (apt-get install xvfb)"),
    pytest.mark.skipif(shutil.which("trayer") is None, reason="no tray host: trayer not installed"),
    pytest.mark.timeout(60),
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"






def account(alias: str, status: str, headroom: float | None, until: float | None = None) -> dict[str, Any]:
    return {"alias": alias, "kind": "anthropic", "base_url": "https://api.anthropic.com", "created": 0.0,
            "enabled": True, "preferred": False, "status": status, "reason": None, "until": until,
            "headroom": headroom, "windows": {}, "in_flight": 0, "requests": 0, "errors": 0,
            "latency_ms": None}


def status_doc(*accounts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "test", "pid": os.getpid(), "started_at": 0.0, "uptime_s": 1.0,
            "listen": "http://127.0.0.1:3456", "socket": "", "auth_required": False, "requests_served": 0,
            "pool": {"health": "ok", "available": 1, "total": len(accounts), "earliest_reset": None,
                     "queue_depth": 0},
            "accounts": list(accounts)}


class FakeControl(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers GET /v1/status with whatever `status` holds at the time."""

    daemon_threads = True
    status: dict[str, Any]

    def get_request(self) -> Any:
        conn, _ = super().get_request()
        return conn, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) address


class StatusHandler(http.server.BaseHTTPRequestHandler):
    server: FakeControl

    def do_GET(self) -> None:
        body = json.dumps(self.server.status).encode()
        self.send_response(200 if self.path == "/v1/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def x_display() -> Iterator[str]:
    yield from run_x("320x120x24")


@pytest.fixture
def x_display_tall() -> Iterator[str]:
    yield from run_x("400x480x24")  # room for the whole menu below the tray


def run_x(screen: str) -> Iterator[str]:
    read_fd, write_fd = os.pipe()
    # -displayfd: Xvfb picks a free display number and writes it once it accepts connections.
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        stop_process(xvfb, 5)
        pytest.skip("Xvfb did not start")
    display = f":{number}"
    trayer = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "32",
         "--SetDockType", "true", "--transparent", "false"],
        env={**os.environ, "DISPLAY": display}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import Xlib.display

        conn = Xlib.display.Display(display)
        selection = conn.intern_atom("_NET_SYSTEM_TRAY_S0")
        wait_until(lambda: conn.get_selection_owner(selection) != 0, 10, "trayer to own the tray selection")
        conn.close()
        yield display
    finally:
        stop_process(trayer, 5)
        stop_process(xvfb, 5)


@pytest.fixture
def fake_control(tmp_path: Path) -> Iterator[tuple[FakeControl, Path]]:
    path = tmp_path / "ctl.sock"
    server = FakeControl(str(path), StatusHandler)
    server.status = status_doc(account("work", "ok", 0.83),
                               account("spare", "exhausted", None, time.time() + 600))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, path
    finally:
        server.shutdown()
        server.server_close()


def spots(image: Any, colour: tuple[int, ...]) -> list[tuple[int, int]]:
    """Where the screen shows `colour` (within 3 per channel: the host scales the icon)."""
    pixels = image.convert("RGB").load()
    return [
        (x, y) for y in range(image.height) for x in range(image.width)
        if all(abs(a - b) <= 3 for a, b in zip(pixels[x, y], colour[:3], strict=True))
    ]


def test_tray_docks_shows_health_and_runs_the_default_action(
    x_display: str, fake_control: tuple[FakeControl, Path], tmp_path: Path
) -> None:
    from PIL import ImageGrab, features

    if not features.check("xcb"):
        pytest.skip("this Pillow has no XCB support for screenshots")
    server, socket_path = fake_control
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    env.update(DISPLAY=x_display, DARIO_SOCKET=str(socket_path), PYSTRAY_BACKEND="xorg",
               BROWSER=f"{sys.executable} {browser} %s")
    log = (tmp_path / "tray.log").open("w")
    tray = subprocess.Popen([sys.executable, "-m", "dario.tray.app"], env=env, stdout=log, stderr=log)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        def shot_with(colour: tuple[int, ...]) -> Any:
            assert tray.poll() is None, (tmp_path / "tray.log").read_text()
            image = ImageGrab.grab(xdisplay=x_display)
            image.save(ARTIFACTS / "tray-live-latest.png")  # what the screen showed if a wait fails
            return image if len(spots(image, colour)) > 20 else None

        # Degraded (one account exhausted): the icon docks in the tray, amber.
        shot = wait_until(lambda: shot_with(tray_icon.AMBER), 20, "an amber icon in the tray")
        shot.save(ARTIFACTS / "tray-live-degraded.png")
        assert spots(shot, tray_icon.GREEN) == []

        # The daemon's health changes: the poller picks it up and the icon turns green.
        server.status = status_doc(account("work", "ok", 0.83), account("spare", "ok", 0.5))
        shot = wait_until(lambda: shot_with(tray_icon.GREEN), 10, "the icon to turn green")
        shot.save(ARTIFACTS / "tray-live-healthy.png")

        # xorg has no menu: a click runs the default item, "Open dashboard".
        green = spots(shot, tray_icon.GREEN)
        x, y = green[len(green) // 2]
        import Xlib.display
        from Xlib import X
        from Xlib.ext import xtest

        conn = Xlib.display.Display(x_display)
        xtest.fake_input(conn, X.MotionNotify, x=x, y=y)
        xtest.fake_input(conn, X.ButtonPress, 1)
        xtest.fake_input(conn, X.ButtonRelease, 1)
        conn.sync()
        conn.close()
        url = wait_until(lambda: opened.exists() and opened.read_text(), 10, "the dashboard to be opened")
        assert url == "http://127.0.0.1:3456/"
    finally:
        stop_process(tray, 5)
        log.close()
    output = (tmp_path / "tray.log").read_text()
    assert "Traceback" not in output
    # xorg has no menu: the user is told so, with the fix, in one line.
    no_menu = [line for line in output.splitlines() if "has no menu" in line]
    assert len(no_menu) == 1 and "PYSTRAY_BACKEND" in no_menu[0]


def xdotool(display: str, *args: str) -> str:
    done = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True,
                          text=True, timeout=10, check=True)
    return done.stdout


def menu_window_count(display: str) -> int:
    # A popped-up GtkMenu is a toplevel named after the program, mapped while open (the docked
    # icon is named after its tooltip).
    done = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "^dario-tray$"],
                          env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=10)
    return len(done.stdout.split())


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool not installed (apt-get install xdotool)")
@pytest.mark.skipif(shutil.which("dbus-run-session") is None, reason="dbus-run-session not installed")
def test_tray_menu_prefers_an_account(
    x_display_tall: str, dariod_factory: Callable[..., Dariod], upstream: Any, tmp_path: Path
) -> None:
    from PIL import ImageGrab

    x_display = x_display_tall
    # The installed entry point, as the README's install makes it (and as the menu's window is named).
    program = Path(sys.executable).with_name("dario-tray")
    if not program.exists():
        pytest.skip("dario-tray is not installed next to this interpreter (pip install -e '.[tray]')")
    d = dariod_factory()
    d.login("work", "sk-ant-tray-work", upstream.url)
    d.login("spare", "sk-ant-tray-spare", upstream.url)
    assert [a["preferred"] for a in d.ctl_json("accounts", "list")["accounts"]] == [False, False]
    env = {k: v for k, v in d.env.items() if k not in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    # No clipboard tool on PATH: "Copy settings" must fall back to its window and a notification.
    env.update(DISPLAY=x_display, DARIO_SOCKET=str(d.socket), PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin")
    log_path = tmp_path / "tray.log"
    log = log_path.open("w")
    # A session bus of its own, without a notification server, as on a bare window manager.
    tray = subprocess.Popen(["dbus-run-session", "--", str(program)], env=env,
                            stdout=log, stderr=log)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        def icon_spot() -> tuple[int, int] | None:
            assert tray.poll() is None, log_path.read_text()
            image = ImageGrab.grab(xdisplay=x_display)
            image.save(ARTIFACTS / "tray-menu-latest.png")
            left = image.width - 160  # trayer sits at the top right: look only there
            found = spots(image.crop((left, 0, image.width, 40)), tray_icon.GREEN)
            return (left + found[len(found) // 2][0], found[len(found) // 2][1]) if len(found) > 20 else None

        x, y = wait_until(icon_spot, 30, "a green icon in the tray")
        assert "has no menu" not in log_path.read_text()

        def open_menu() -> None:
            xdotool(x_display, "mousemove", str(x), str(y), "click", "3")
            wait_until(lambda: menu_window_count(x_display) > 0, 10, "the tray menu to open")

        # Menu: header, separator, work, spare, Automatic, ...; Down selects the first sensitive item.
        open_menu()
        ImageGrab.grab(xdisplay=x_display).save(ARTIFACTS / "tray-menu-open.png")
        xdotool(x_display, "key", "--delay", "100", "Down", "Down", "Return")

        def preferred() -> list[str]:
            return [a["alias"] for a in d.ctl_json("accounts", "list")["accounts"] if a["preferred"]]

        assert wait_until(lambda: preferred() == ["spare"] and preferred(), 10, "spare to be preferred") == ["spare"]

        # Copy settings (last but two; Up from nothing selects the last item): no clipboard tool,
        # so a window shows the text, and a notification (no server here) says so.
        wait_until(lambda: menu_window_count(x_display) == 0, 10, "the menu to close")
        open_menu()
        xdotool(x_display, "key", "--delay", "100", "Up", "Up", "Return")
        found = wait_until(lambda: subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "dario: settings for tools"],
            env={**os.environ, "DISPLAY": x_display}, capture_output=True, text=True).stdout.split(),
            20, "the settings window")
        window_pid = int(xdotool(x_display, "getwindowpid", found[0]).strip())
        ImageGrab.grab(xdisplay=x_display).save(ARTIFACTS / "tray-settings-window.png")
        # Without a window manager it covers the tray: close it (its own process) before going on.
        os.kill(window_pid, 15)
        wait_until(lambda: not subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "dario: settings for tools"],
            env={**os.environ, "DISPLAY": x_display}, capture_output=True, text=True).stdout.split(),
            10, "the settings window to close")
        window_pid = 0

        # Quit through the menu: the process ends by itself, cleanly.
        wait_until(lambda: menu_window_count(x_display) == 0, 10, "the menu to close")
        open_menu()
        xdotool(x_display, "key", "--delay", "100", "Up", "Return")
        assert tray.wait(15) == 0, log_path.read_text()
    finally:
        stop_process(tray, 5)
        log.close()
        if locals().get("window_pid"):
            os.kill(window_pid, 15)
    output = log_path.read_text()
    assert "Traceback" not in output, output
