"""Autostart entries written into a temporary home, for Linux, macOS and (with a fake registry) Windows."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dario.ctl import autostart

REPO = Path(__file__).resolve().parents[2]
FAKE_DAEMON = ["/opt/dario tools/bin/dariod"]  # a space on purpose: quoting must hold
FAKE_TRAY = ["/opt/dario tools/bin/dario-tray", "--flag=50%"]


@pytest.fixture
def fake_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autostart, "daemon_command", lambda: list(FAKE_DAEMON))
    monkeypatch.setattr(autostart, "tray_command", lambda: list(FAKE_TRAY))


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record instead of running: enable/disable must not call systemctl/launchctl unless run=True."""
    calls: list[Any] = []

    def fake_run(args: Any, *a: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(autostart.subprocess, "run", fake_run)
    return calls


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def read_desktop(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path)
    return dict(parser["Desktop Entry"])


# -- Linux ---------------------------------------------------------------------------------
def test_linux_enable_writes_unit_and_desktop_entry(tmp_path: Path, fake_commands: None,
                                                    no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="linux")
    service = tmp_path / ".config/systemd/user/dario.service"
    desktop = tmp_path / ".config/autostart/dario-tray.desktop"
    assert report.changed and report.enabled
    assert report.files == [service, desktop]
    unit = service.read_text()
    assert 'ExecStart="/opt/dario tools/bin/dariod"\n' in unit
    assert "Restart=on-failure\n" in unit and "WantedBy=default.target\n" in unit
    entry = read_desktop(desktop)
    assert entry["Type"] == "Application"
    assert entry["NoDisplay"] == "true"
    assert entry["X-GNOME-Autostart-enabled"] == "true"
    assert entry["Exec"] == '"/opt/dario tools/bin/dario-tray" --flag=50%%'
    assert entry["TryExec"] == '"/opt/dario tools/bin/dario-tray"'
    assert oct(service.stat().st_mode & 0o777) == "0o644"
    assert autostart.SYSTEMCTL_ENABLE in "\n".join(report.lines)
    assert report.lines[-1] == "to undo: dario-ctl autostart disable"
    assert no_subprocess == []  # printed, not run


def test_linux_enable_is_idempotent(tmp_path: Path, fake_commands: None, no_subprocess: list[Any]) -> None:
    first = autostart.enable(home=tmp_path, platform="linux")
    mtimes = [p.stat().st_mtime_ns for p in first.files]
    second = autostart.enable(home=tmp_path, platform="linux")
    assert first.changed and not second.changed
    assert second.enabled
    assert [p.stat().st_mtime_ns for p in second.files] == mtimes
    assert sum(line.startswith("unchanged:") for line in second.lines) == 2


def test_linux_enable_rewrites_a_stale_entry(tmp_path: Path, fake_commands: None,
                                             no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="linux")
    report.files[0].write_text("[Service]\nExecStart=/old/venv/bin/dariod\n")
    assert "differs" in "\n".join(autostart.status(home=tmp_path, platform="linux").lines)
    again = autostart.enable(home=tmp_path, platform="linux")
    assert again.changed
    assert "/opt/dario tools/bin/dariod" in report.files[0].read_text()


def test_linux_enable_then_disable_leaves_nothing(tmp_path: Path, fake_commands: None,
                                                  no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="linux")
    # What `systemctl --user enable` would have added.
    wants = tmp_path / ".config/systemd/user/default.target.wants"
    wants.mkdir()
    (wants / "dario.service").symlink_to(report.files[0])
    assert autostart.status(home=tmp_path, platform="linux").lines[-1] == "autostart is enabled"
    off = autostart.disable(home=tmp_path, platform="linux")
    assert off.changed and not off.enabled
    assert all_files(tmp_path) == []
    again = autostart.disable(home=tmp_path, platform="linux")
    assert not again.changed
    assert no_subprocess == []


def verdicts(report: autostart.AutostartReport) -> list[str]:
    return [line for line in report.lines if line.startswith("autostart is")]


def test_linux_status_gives_one_verdict(tmp_path: Path, fake_commands: None, no_subprocess: list[Any]) -> None:
    before = autostart.status(home=tmp_path, platform="linux")
    assert not before.enabled and not before.changed
    assert "missing" in before.lines[0]
    from dario.daemon.commands import command

    assert verdicts(before) == [f"autostart is disabled (run: {command('dario-ctl')} autostart enable)"]
    # Files written, systemd never told (--no-start, or no user manager): nothing starts at login.
    autostart.enable(home=tmp_path, platform="linux")
    after = autostart.status(home=tmp_path, platform="linux")
    assert not after.enabled
    assert after.lines[0].endswith(": installed") and after.lines[1].endswith(": installed")
    assert len(verdicts(after)) == 1 and after.lines[-1] == verdicts(after)[0]
    assert verdicts(after)[0].startswith("autostart is not active") and autostart.SYSTEMCTL_ENABLE in after.lines[-1]
    assert not any("enabled" in line for line in after.lines[:-1])
    # What `systemctl --user enable` adds: now it is enabled, and says only that.
    wants = tmp_path / ".config/systemd/user/default.target.wants"
    wants.mkdir()
    (wants / "dario.service").symlink_to(after.files[0])
    on = autostart.status(home=tmp_path, platform="linux")
    assert on.enabled and verdicts(on) == ["autostart is enabled"]
    after.files[0].write_text("[Service]\nExecStart=/old/venv/bin/dariod\n")
    stale = autostart.status(home=tmp_path, platform="linux")
    assert stale.enabled and len(verdicts(stale)) == 1 and "another install" in stale.lines[-1]


def test_dry_run_writes_nothing(tmp_path: Path, fake_commands: None, no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="linux", dry_run=True)
    assert report.changed and not report.enabled
    assert all_files(tmp_path) == []
    assert any(line.startswith("would write:") for line in report.lines)
    autostart.enable(home=tmp_path, platform="linux")
    off = autostart.disable(home=tmp_path, platform="linux", dry_run=True)
    assert off.changed and off.enabled
    assert len(all_files(tmp_path)) == 3  # the two entries and the manifest of what enable wrote
    mac = autostart.enable(home=tmp_path / "mac", platform="darwin", dry_run=True)
    assert mac.changed and not (tmp_path / "mac").exists()


def test_xdg_config_home_is_honoured(tmp_path: Path, fake_commands: None, no_subprocess: list[Any]) -> None:
    config = tmp_path / "elsewhere"
    report = autostart.enable(home=tmp_path, platform="linux", environ={"XDG_CONFIG_HOME": str(config)})
    assert report.files[0] == config / "systemd/user/dario.service"
    assert report.files[0].exists()
    # A relative value is invalid per the XDG spec and is ignored.
    relative = autostart.status(home=tmp_path, platform="linux", environ={"XDG_CONFIG_HOME": "rel"})
    assert relative.files[0] == tmp_path / ".config/systemd/user/dario.service"


@pytest.fixture(autouse=True)
def no_running_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own dariod must not change what these tests see.
    monkeypatch.setattr(autostart, "daemon_running", lambda: False, raising=False)


def test_run_true_runs_the_activation_command(tmp_path: Path, fake_commands: None, no_subprocess: list[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autostart, "user_manager_running", lambda kind, environ: True)
    report = autostart.enable(home=tmp_path, platform="linux", run=True)
    assert no_subprocess == [autostart.SYSTEMCTL_ENABLE]
    assert f"running: {autostart.SYSTEMCTL_ENABLE}" in report.lines
    no_subprocess.clear()
    autostart.disable(home=tmp_path, platform="linux", run=True)
    assert no_subprocess == [autostart.SYSTEMCTL_DISABLE, "systemctl --user daemon-reload"]


def test_enable_does_not_start_a_second_daemon(tmp_path: Path, fake_commands: None, no_subprocess: list[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's first command runs dariod in the foreground; enabling autostart then must not
    # start a second one that fails on the lock and is restarted in a loop.
    monkeypatch.setattr(autostart, "user_manager_running", lambda kind, environ: True)
    monkeypatch.setattr(autostart, "daemon_running", lambda: True)
    report = autostart.enable(home=tmp_path, platform="linux", run=True)
    assert no_subprocess == [autostart.SYSTEMCTL_ENABLE_ONLY]
    assert any("already running" in line for line in report.lines)
    mac = autostart.enable(home=tmp_path / "mac", platform="darwin", run=True)
    assert no_subprocess == [autostart.SYSTEMCTL_ENABLE_ONLY]  # no bootstrap: RunAtLoad would start it
    assert any("already running" in line for line in mac.lines)


def test_daemon_running_probes_the_control_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.undo()  # the real probe, not the autouse stand-in
    path = tmp_path / "ctl.sock"
    monkeypatch.setenv("DARIO_SOCKET", str(path))
    assert not autostart.daemon_running()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        assert autostart.daemon_running()
    finally:
        server.close()


def test_run_without_a_user_manager_starts_nothing_and_says_so(
    tmp_path: Path, fake_commands: None, no_subprocess: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autostart, "user_manager_running", lambda kind, environ: False)
    report = autostart.enable(home=tmp_path, platform="linux", run=True)
    assert no_subprocess == []
    assert any("no user service manager" in line and "/opt/dario tools/bin/dariod" in line for line in report.lines)
    autostart.disable(home=tmp_path, platform="linux", run=True)
    assert no_subprocess == []


def test_user_manager_running_looks_for_the_systemd_user_socket(tmp_path: Path) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl not installed")
    assert not autostart.user_manager_running("linux", {"XDG_RUNTIME_DIR": str(tmp_path)})
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd" / "private").touch()
    assert autostart.user_manager_running("linux", {"XDG_RUNTIME_DIR": str(tmp_path)})


def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def test_cli_enable_honours_xdg_config_home_and_starts_the_daemon(
    tmp_path: Path, fake_commands: None, no_subprocess: list[Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dario.ctl import cli

    config = cli_env(tmp_path, monkeypatch)
    monkeypatch.setattr(autostart, "user_manager_running", lambda kind, environ: True)
    assert cli.main(["autostart", "enable"]) == 0
    assert (config / "systemd/user/dario.service").exists()
    assert (config / "autostart/dario-tray.desktop").exists()
    assert not (tmp_path / "home" / ".config").exists()
    assert no_subprocess == [autostart.SYSTEMCTL_ENABLE]  # started now, not only at the next login
    assert "running: systemctl --user" in capsys.readouterr().out
    no_subprocess.clear()
    assert cli.main(["autostart", "disable"]) == 0
    assert not (config / "systemd/user/dario.service").exists()
    assert no_subprocess[0] == autostart.SYSTEMCTL_DISABLE


def test_cli_enable_no_start_only_writes_files(
    tmp_path: Path, fake_commands: None, no_subprocess: list[Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dario.ctl import cli

    config = cli_env(tmp_path, monkeypatch)
    monkeypatch.setattr(autostart, "user_manager_running", lambda kind, environ: True)
    assert cli.main(["autostart", "enable", "--no-start"]) == 0
    assert (config / "systemd/user/dario.service").exists()
    assert no_subprocess == []
    assert autostart.SYSTEMCTL_ENABLE in capsys.readouterr().out  # told how to start it
    assert cli.main(["autostart", "status"]) == 0
    out = capsys.readouterr().out
    assert out.count("autostart is") == 1 and "autostart is not active" in out


def test_disable_keeps_files_the_user_edited(tmp_path: Path, fake_commands: None,
                                             no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="linux")
    service, desktop = report.files
    edited = service.read_text().replace("RestartSec=2", "RestartSec=30\nEnvironment=DARIO_PORT=4000")
    service.write_text(edited)
    off = autostart.disable(home=tmp_path, platform="linux")
    assert service.read_text() == edited  # the user's work survives
    assert not desktop.exists()  # untouched since enable: removed
    kept = [line for line in off.lines if line.startswith("kept:")]
    assert len(kept) == 1 and "dario.service" in kept[0] and "edited" in kept[0]
    # A file written by an older dario (different path inside) is still ours: removed.
    autostart.enable(home=tmp_path, platform="linux")
    desktop.write_text(desktop.read_text())  # same bytes: not an edit
    autostart.disable(home=tmp_path, platform="linux")
    assert not desktop.exists()


def test_disable_removes_what_an_earlier_enable_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     no_subprocess: list[Any]) -> None:
    # enable ran from another venv: the bytes differ from what this install would write, but the
    # manifest shows they are exactly what enable wrote then.
    monkeypatch.setattr(autostart, "daemon_command", lambda: ["/old/venv/bin/dariod"])
    monkeypatch.setattr(autostart, "tray_command", lambda: ["/old/venv/bin/dario-tray"])
    report = autostart.enable(home=tmp_path, platform="linux")
    monkeypatch.setattr(autostart, "daemon_command", lambda: ["/new/venv/bin/dariod"])
    monkeypatch.setattr(autostart, "tray_command", lambda: ["/new/venv/bin/dario-tray"])
    off = autostart.disable(home=tmp_path, platform="linux")
    assert not any(line.startswith("kept:") for line in off.lines)
    assert not any(p.exists() for p in report.files)
    assert all_files(tmp_path) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_generated_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # Real commands: verify also checks that ExecStart's program exists and is executable.
    report = autostart.enable(home=tmp_path, platform="linux")
    done = subprocess.run(["systemd-analyze", "verify", str(report.files[0])], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "dario.service" not in done.stderr, done.stderr


def test_real_commands_are_absolute() -> None:
    for command in (autostart.daemon_command(), autostart.tray_command()):
        assert os.path.isabs(command[0]) and os.access(command[0], os.X_OK)


# -- macOS ---------------------------------------------------------------------------------
def test_darwin_launch_agents(tmp_path: Path, fake_commands: None, no_subprocess: list[Any]) -> None:
    report = autostart.enable(home=tmp_path, platform="darwin")
    agents = tmp_path / "Library/LaunchAgents"
    assert report.files == [agents / "dev.dario.daemon.plist", agents / "dev.dario.tray.plist"]
    daemon = plistlib.loads(report.files[0].read_bytes())
    tray = plistlib.loads(report.files[1].read_bytes())
    assert daemon == {"Label": "dev.dario.daemon", "ProgramArguments": FAKE_DAEMON, "RunAtLoad": True,
                      "KeepAlive": {"SuccessfulExit": False}}
    assert tray["Label"] == "dev.dario.tray" and tray["ProgramArguments"] == FAKE_TRAY
    assert tray["LimitLoadToSessionType"] == "Aqua" and tray["ProcessType"] == "Interactive"
    assert "KeepAlive" not in tray  # Quit must stay quit
    assert oct(report.files[0].stat().st_mode & 0o777) == "0o644"
    text = "\n".join(report.lines)
    assert "launchctl bootstrap gui/$(id -u) " in text and "dario-ctl autostart disable" in text
    assert not autostart.enable(home=tmp_path, platform="darwin").changed
    assert autostart.status(home=tmp_path, platform="darwin").enabled
    off = autostart.disable(home=tmp_path, platform="darwin")
    assert off.changed and "launchctl bootout gui/$(id -u)/dev.dario.daemon" in "\n".join(off.lines)
    assert all_files(tmp_path) == []
    assert no_subprocess == []


# -- Windows (logic only: a dict stands in for HKCU\...\Run) ---------------------------------
class FakeRegistry:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def delete(self, name: str) -> None:
        del self.values[name]


def test_windows_run_values(monkeypatch: pytest.MonkeyPatch, fake_commands: None) -> None:
    registry = FakeRegistry()
    monkeypatch.setattr(autostart, "_registry", lambda: registry)
    dry = autostart.enable(platform="win32", dry_run=True)
    assert dry.changed and registry.values == {}
    report = autostart.enable(platform="win32")
    assert report.changed and report.enabled and report.files == []
    assert registry.values["dario-tray"] == '"/opt/dario tools/bin/dario-tray" --flag=50%'
    assert set(registry.values) == {"dario", "dario-tray"}
    assert not autostart.enable(platform="win32").changed
    assert autostart.status(platform="win32").enabled
    off = autostart.disable(platform="win32")
    assert off.changed and not off.enabled and registry.values == {}


# -- quoting and packaging/ -------------------------------------------------------------------
def test_systemd_quoting() -> None:
    assert autostart.systemd_exec(["/usr/bin/dariod"]) == "/usr/bin/dariod"
    assert autostart.systemd_exec(["/a b/python", "-m", "x"]) == '"/a b/python" -m x'
    assert autostart.systemd_exec(["/p/100%", "$HOME"]) == "/p/100%% $$HOME"
    assert autostart.systemd_exec(['/q"uote']) == '"/q\\"uote"'


def test_desktop_quoting() -> None:
    assert autostart.desktop_exec(["/usr/bin/dario-tray"]) == "/usr/bin/dario-tray"
    assert autostart.desktop_exec(["/a b/py", "-m", "dario.tray.app"]) == '"/a b/py" -m dario.tray.app'
    # "$" escaped inside the quotes, then every backslash doubled at the string level.
    assert autostart.desktop_exec(["/x$y"]) == '"/x\\\\$y"'


def test_packaging_copies_match_the_embedded_templates() -> None:
    for rel, text in autostart.packaging_files().items():
        path = REPO / "packaging" / rel
        assert path.read_text() == text, (
            f"{path} differs from ctl/autostart.py; "
            "run: python -m dario.ctl.autostart render-packaging packaging/"
        )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_packaged_socket_unit_verifies() -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(REPO / "packaging/linux/dario.socket")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_explicit_home_ignores_the_callers_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_commands: None, no_subprocess: list[Any]
) -> None:
    # Otherwise a test (or a --home option) would write into the real profile.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "real-profile"))
    report = autostart.enable(home=tmp_path / "home", platform="linux")
    assert report.files[0].is_relative_to(tmp_path / "home")
    assert not (tmp_path / "real-profile").exists()
