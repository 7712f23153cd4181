"""Hints name commands the user's shell can run, even when the venv's bin folder is not on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dario.ctl import cli
from dario.daemon.commands import command
from tests.support import ROOT

BIN = Path(sys.executable).parent  # the venv's bin folder, where the install put dariod and dario-ctl


@pytest.fixture
def venv_not_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (BIN / "dariod").exists():
        pytest.skip("dario is not installed beside this interpreter")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN)
    monkeypatch.setenv("PATH", path or "/usr/bin:/bin")


def test_not_running_hint_names_the_absolute_dariod_path_when_path_lacks_it(
        venv_not_on_path: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    err = capsys.readouterr().err
    assert f"start it with: {shlex.quote(str(BIN / 'dariod'))}" in err
    assert f"{shlex.quote(str(BIN / 'dario-ctl'))} autostart enable" in err


def test_the_hinted_command_runs_from_a_shell_without_the_venv(venv_not_on_path: None, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dario.ctl.cli", "--socket", str(tmp_path / "none.sock"), "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    hinted = result.stderr.split("start it with: ", 1)[1].split("   ", 1)[0]
    ran = subprocess.run(shlex.split(hinted) + ["--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "dariod" in ran.stdout + ran.stderr


def test_bare_name_when_path_finds_this_install(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (BIN / "dariod").exists():
        pytest.skip("dario is not installed beside this interpreter")
    monkeypatch.setenv("PATH", str(BIN) + os.pathsep + "/usr/bin:/bin")
    assert command("dariod") == "dariod"


def test_account_hints_in_views_name_the_absolute_dario_ctl(venv_not_on_path: None) -> None:
    from rich.console import Console

    from dario.ctl import views

    console = Console(width=200, record=True)
    views.render_accounts([], console)
    assert f"{shlex.quote(str(BIN / 'dario-ctl'))} login" in console.export_text()
