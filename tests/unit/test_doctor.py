"""doctor's checks one by one, with the daemon's status and the environment given by the test."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dario.ctl import doctor
from dario.ctl.client import ControlClient
from dario.ctl.doctor import Check, Context


class StubContext(Context):
    """A Context whose daemon status is given, not asked for."""

    def __init__(self, status: Any, tmp: Path) -> None:
        super().__init__(ControlClient(tmp / "ctl.sock"), home=tmp, environ={})
        self._given = status

    def status(self) -> Any:
        return self._given

    def status_problem(self) -> str:
        return "" if self._given else "dariod is not running"


def account(alias: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"alias": alias, "status": status, "reason": None, "until": None,
            "base_url": "http://127.0.0.1:9", **extra}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_hanging_check_fails_alone_and_in_time(tmp_path: Path) -> None:
    release = threading.Event()

    def hangs(ctx: Context) -> list[Check]:
        release.wait(30)
        return [Check("hangs", "ok", "late")]

    def fine(ctx: Context) -> list[Check]:
        return [Check("fine", "ok", "fine")]

    def raises(ctx: Context) -> list[Check]:
        raise RuntimeError("boom")

    try:
        out = doctor.run_checks(StubContext(None, tmp_path), (("hangs", hangs), ("fine", fine), ("raises", raises)),
                                timeout=0.5)
    finally:
        release.set()
    assert [(c.name, c.status) for c in out] == [("hangs", "fail"), ("fine", "ok"), ("raises", "fail")]
    assert "no verdict within 0.5 s" in out[0].verdict
    assert "RuntimeError: boom" in out[2].verdict
    assert doctor.broken(out)


def test_warnings_alone_are_not_broken() -> None:
    checks = [Check("a", "ok", "x"), Check("tray", "warn", "absent", "pip install"), Check("b", "skip", "-")]
    assert not doctor.broken(checks)
    text = doctor.render(checks)
    assert "[warn] tray: absent\n       fix: pip install" in text and text.endswith("0 broken, 1 warning\n")


@pytest.mark.parametrize(("state", "extra", "verdict", "hint"), [
    ("ok", {}, "ok", ""),
    ("needs_login", {"reason": "upstream answered 401"}, "fail", "dario-ctl login main"),
    ("waiting_for_keyring", {}, "fail", doctor.UNLOCK_HINT),
    ("disabled", {}, "warn", "dario-ctl accounts enable main"),
    ("cooling", {"until": 2_000_000_000.0}, "warn", "it comes back on its own; add accounts to spread load"),
])
def test_account_verdicts(tmp_path: Path, state: str, extra: dict[str, Any], verdict: str, hint: str) -> None:
    [check] = doctor.check_accounts(StubContext({"accounts": [account("main", state, **extra)]}, tmp_path))
    assert (check.name, check.status, check.hint) == ("account main", verdict, hint)


def test_public_port_that_does_not_answer(tmp_path: Path) -> None:
    port = closed_port()
    [check] = doctor.check_public_port(StubContext({"listen": f"http://0.0.0.0:{port}"}, tmp_path))
    assert check.status == "fail"
    assert f"http://127.0.0.1:{port}/health does not answer" in check.verdict  # the wildcard, as a client sees it
    assert "restart dariod" in check.hint


@pytest.mark.parametrize(("report", "status", "words"), [
    (("menus", "appindicator"), "ok", "appindicator backend, with menus"),
    (("no-menus", "xorg"), "warn", "xorg backend, which has no menus"),
    (("missing", "No module named 'pystray'"), "warn", "not installed"),
    (("error", 'Xlib.error.DisplayNameError: Bad display name ""'), "warn", "no tray backend"),
])
def test_tray_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, report: tuple[str, str], status: str,
                      words: str) -> None:
    monkeypatch.setattr(doctor, "tray_backend_report", lambda: report)
    [check] = doctor.check_tray(StubContext(None, tmp_path))
    assert check.status == status and words in check.verdict


def test_tray_backend_report_is_what_pystray_picks() -> None:
    outcome, detail = doctor.tray_backend_report()
    assert outcome in ("menus", "no-menus", "missing", "error") and detail


def test_autostart_absent_is_a_warning(tmp_path: Path) -> None:
    [check] = doctor.check_autostart(StubContext(None, tmp_path))
    assert check.status == "warn" and check.hint.startswith("dario-ctl autostart enable")


def test_control_files_of_another_kind(tmp_path: Path) -> None:
    ctx = StubContext(None, tmp_path)
    ctx.client.socket_path = tmp_path / "run" / "ctl.sock"
    (tmp_path / "run").write_text("not a folder")
    [check] = doctor.check_control_files(ctx)
    assert check.status == "fail" and "is not a folder" in check.verdict


@pytest.mark.skipif(sys.platform != "linux", reason="systemd user units")
def test_autostart_installed_then_enabled(tmp_path: Path) -> None:
    from dario.ctl import autostart

    for path, data in autostart._desired("linux", tmp_path, {}, tray=True).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    [check] = doctor.check_autostart(StubContext(None, tmp_path))
    assert check.status == "warn" and "not active" in check.verdict
    assert check.hint == autostart.SYSTEMCTL_ENABLE
    wants = autostart._wants_link(tmp_path, {})
    wants.parent.mkdir(parents=True)
    wants.symlink_to(tmp_path / ".config" / "systemd" / "user" / autostart.SERVICE_NAME)
    [check] = doctor.check_autostart(StubContext(None, tmp_path))
    assert (check.status, check.verdict) == ("ok", "installed and enabled")


@pytest.mark.parametrize(("status", "expected"), [
    ({}, [("pool state", "ok", "in memory (this dariod alone)"), ("usage", "skip", "not recorded (--no-analytics)")]),
    ({"store": "ok", "analytics": {"store": "postgresql", "where": "postgresql://team:***@db/usage", "ok": True,
                                   "pending": 0, "written": 5, "dropped": 0, "problem": None}},
     [("pool state", "ok", "shared through Redis"), ("usage", "ok", "postgresql: postgresql://team:***@db/usage")]),
    ({"store": "degraded", "analytics": {"store": "postgresql", "where": "postgresql://db/usage", "ok": False,
                                         "pending": 1200, "written": 5, "dropped": 7,
                                         "problem": "usage analytics database postgresql://db/usage is unusable"}},
     [("pool state", "warn", None), ("usage", "warn", "usage analytics database postgresql://db/usage is unusable "
                                                       "(1,200 rows waiting; 7 rows dropped)")]),
])
def test_stores_say_where_state_and_usage_live_and_whether_they_work(
        tmp_path: Path, status: dict[str, Any], expected: list[tuple[str, str, str | None]]) -> None:
    checks = doctor.check_stores(StubContext(status, tmp_path))
    assert [(c.name, c.status) for c in checks] == [(name, verdict) for name, verdict, _ in expected]
    for check, (_, _, words) in zip(checks, expected, strict=True):
        assert words is None or check.verdict == words
    assert "redis-server" in checks[0].hint if checks[0].status == "warn" else True
