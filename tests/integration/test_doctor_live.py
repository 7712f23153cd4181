"""`dario-ctl doctor` against a real dariod: all well, then each check broken once.

Each broken case looks for that check's verdict and its fix, and for exit status 1; warnings
alone (no tray display, autostart not enabled) leave the exit status 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.fakeupstream import FakeUpstream
from tests.support import ROOT, Dariod

pytestmark = pytest.mark.timeout(120)

ACCOUNT_KEY = "sk-ant-doctor-account"
HELLO = {"model": "claude-haiku-4-5-20251001", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def doctor(d: Dariod, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]], str]:
    """Exit status, the --json checks by name, and the text output."""
    full = {**d.env, "HOME": str(d.home), **(env or {})}
    base = [sys.executable, "-m", "dario.ctl.cli", "--socket", str(d.socket), "doctor"]
    j = subprocess.run([*base, "--json"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)
    text = subprocess.run(base, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)
    assert j.returncode == text.returncode, (j.stderr, text.stderr)
    checks = orjson.loads(j.stdout)
    return j.returncode, {c["name"]: c for c in checks}, text.stdout


@pytest.fixture
def healthy(dariod_factory: Callable[..., Dariod], upstream: Any) -> Dariod:
    d = dariod_factory()
    d.login("main", ACCOUNT_KEY, upstream.url)
    return d


def post_messages(d: Dariod) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=orjson.dumps(HELLO),
                     headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_all_well_is_exit_0_with_only_optional_warnings(healthy: Dariod) -> None:
    code, checks, text = doctor(healthy)
    for name in ("daemon", "control folder", "control socket", "keyring", "account main", "public port", "clock"):
        assert checks[name]["status"] == "ok", checks[name]
    upstream = [c for n, c in checks.items() if n.startswith("upstream ")]
    assert [c["status"] for c in upstream] == ["ok"]
    assert checks["autostart"]["status"] == "warn" and "dario-ctl autostart enable" in checks["autostart"]["hint"]
    assert checks["tray"]["status"] in ("ok", "warn")  # optional: no display here is a warning
    assert code == 0, text
    assert all(set(c) == {"name", "status", "verdict", "hint"} for c in checks.values())
    assert "[ok  ] daemon: dariod" in text


def test_daemon_stopped(healthy: Dariod) -> None:
    healthy.stop()
    code, checks, text = doctor(healthy)
    assert code == 1
    assert checks["daemon"]["status"] == "fail" and "not running" in checks["daemon"]["verdict"]
    assert "dariod" in checks["daemon"]["hint"]
    assert checks["accounts"]["status"] == "skip"
    # The hint names a command this shell can run: bare when PATH finds it, else its absolute path.
    from dario.daemon.commands import command

    assert f"fix: start it with: {command('dariod')}" in text


def test_control_folder_and_socket_open_to_others(healthy: Dariod) -> None:
    folder = healthy.socket.parent
    os.chmod(folder, 0o755)
    code, checks, _ = doctor(healthy)
    assert code == 1
    assert checks["control folder"]["status"] == "fail" and "0755" in checks["control folder"]["verdict"]
    assert checks["control folder"]["hint"] == f"chmod 700 '{folder}'"
    os.chmod(folder, 0o700)
    os.chmod(healthy.socket, 0o666)
    code, checks, _ = doctor(healthy)
    assert code == 1
    assert checks["control socket"]["status"] == "fail" and checks["control socket"]["hint"].startswith("chmod 600")


def test_keyring_locked(healthy: Dariod) -> None:
    code, checks, _ = doctor(healthy, {"PYTHON_KEYRING_BACKEND": "tests.keyring_backend.LockedKeyring"})
    assert code == 1
    assert checks["keyring"]["status"] == "fail" and "locked" in checks["keyring"]["verdict"]
    assert "unlock" in checks["keyring"]["hint"]


def test_account_whose_key_is_refused(healthy: Dariod, upstream: Any) -> None:
    upstream.script({"status": 401}, key=ACCOUNT_KEY)
    assert post_messages(healthy) >= 400
    code, checks, _ = doctor(healthy)
    assert code == 1
    assert checks["account main"]["status"] == "fail"
    assert checks["account main"]["hint"] == "dario-ctl login main"


def test_no_accounts(dariod: Dariod) -> None:
    code, checks, _ = doctor(dariod)
    assert code == 1
    assert checks["accounts"]["status"] == "fail" and checks["accounts"]["hint"] == "dario-ctl login"


def test_upstream_unreachable(dariod: Dariod) -> None:
    own = FakeUpstream().start()
    try:
        dariod.login("gone", ACCOUNT_KEY, own.url)
    finally:
        own.stop()
    code, checks, _ = doctor(dariod)
    assert code == 1
    check = checks[f"upstream {own.url}"]
    assert check["status"] == "fail" and "unreachable for gone" in check["verdict"]
    assert "proxy" in check["hint"]
    assert checks["clock"]["status"] == "warn"  # nothing to compare with: not a verdict on the clock


def test_clock_far_from_the_upstreams(healthy: Dariod, upstream: Any) -> None:
    upstream.set_clock(-300)  # the upstream says it is 5 minutes earlier: our clock runs ahead
    code, checks, _ = doctor(healthy)
    assert code == 1
    assert checks["clock"]["status"] == "fail" and " s ahead of " in checks["clock"]["verdict"]
    assert 295 <= int(checks["clock"]["verdict"].split(" s ahead")[0].split()[-1]) <= 305
    assert "time sync" in checks["clock"]["hint"]
    upstream.set_clock(20)
    code, checks, _ = doctor(healthy)
    assert checks["clock"]["status"] == "warn" and "behind" in checks["clock"]["verdict"]
    assert code == 0
