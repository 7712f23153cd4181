"""dario-ctl: argument parsing, exit codes, and what reaches stdout/stderr.

A small HTTP server on a Unix socket stands in for dariod, answering canned JSON, so the real
ControlClient transport is exercised end to end.
"""

from __future__ import annotations

import io
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from dario.ctl import cli
from dario.ctl.client import START_HINT

SECRET = "sk-ant-api03-DO-NOT-PRINT-ME-1234567890"

ACCOUNT: dict[str, Any] = {
    "alias": "work",
    "kind": "anthropic",
    "base_url": "https://api.anthropic.com",
    "created": 1_700_000_000.0,
    "enabled": True,
    "preferred": True,
    "status": "ok",
    "reason": None,
    "until": None,
    "headroom": 0.83,
    "windows": {
        "requests": {"limit": 50, "remaining": 49, "reset": None},
        "output-tokens": {"limit": 200_000, "remaining": 190_000, "reset": None},
    },
    "in_flight": 1,
    "requests": 12,
    "errors": 0,
    "latency_ms": 420.0,
}

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "pid": 4242,
    "started_at": 1_700_000_000.0,
    "uptime_s": 11_520.0,
    "listen": "http://127.0.0.1:3456",
    "socket": "/run/user/1000/dario/ctl.sock",
    "auth_required": False,
    "requests_served": 1234,
    "pool": {"health": "ok", "available": 1, "total": 1, "earliest_reset": None, "queue_depth": 0},
    "accounts": [ACCOUNT],
}

Route = tuple[int, Any]


class FakeDaemon:
    """Canned answers per (method, path); records every request it was sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[tuple[str, str, Any]] = []

    def on(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.routes[(method, path)] = (status, body)

    def bodies(self, method: str, path: str) -> list[Any]:
        return [b for m, p, b in self.requests if (m, p) == (method, path)]


def _handler(daemon: FakeDaemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            daemon.requests.append((self.command, self.path, json.loads(raw) if raw else None))
            status, body = daemon.routes.get(
                (self.command, self.path),
                (404, {"error": {"type": "not_found", "message": f"no route {self.command} {self.path}"}}),
            )
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean (and AF_UNIX has no client address to log)

    return Handler


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~104-108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="dario-t-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(short_dir / "ctl.sock")
    server = socketserver.UnixStreamServer(str(fake.path), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_env_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARIO_SOCKET", raising=False)


def run(daemon: FakeDaemon | None, *argv: str) -> int:
    prefix = ["--socket", str(daemon.path)] if daemon else []
    return cli.main([*prefix, *argv])


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str, tty: bool = False) -> None:
    stream = io.StringIO(text)
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", stream)


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], {"command": "status", "json": False, "socket": None}),
        (["status", "--json"], {"json": True}),
        (["--socket", "/x.sock", "status"], {"socket": "/x.sock"}),
        (["status", "--socket", "/y.sock"], {"socket": "/y.sock"}),
        (["login"], {"alias": "default", "kind": "anthropic", "base_url": None}),
        (
            ["login", "lab", "--kind", "anthropic-compatible", "--base-url", "https://gw.example/v1"],
            {"alias": "lab", "kind": "anthropic-compatible", "base_url": "https://gw.example/v1"},
        ),
        (["logout", "work"], {"command": "logout", "alias": "work"}),
        (["accounts", "list"], {"accounts_command": "list", "json": False}),
        (["accounts", "list", "--json"], {"accounts_command": "list", "json": True}),
        (["accounts", "remove", "work"], {"accounts_command": "remove", "alias": "work"}),
        (["accounts", "prefer", "work"], {"accounts_command": "prefer", "alias": "work", "none": False}),
        (["accounts", "prefer", "--none"], {"accounts_command": "prefer", "alias": None, "none": True}),
        (["accounts", "enable", "work"], {"accounts_command": "enable", "alias": "work"}),
        (["accounts", "disable", "work"], {"accounts_command": "disable", "alias": "work"}),
        (["refresh"], {"command": "refresh", "alias": None}),
        (["refresh", "work"], {"alias": "work"}),
        (["usage"], {"window": "24h", "json": False}),
        (["usage", "--window", "7d", "--json"], {"window": "7d", "json": True}),
        (["usage", "--window", "1h"], {"window": "1h"}),
        (["keys", "create", "cursor"], {"keys_command": "create", "name": "cursor", "json": False}),
        (["keys", "create", "cursor", "--json"], {"json": True}),
        (["keys", "list", "--json"], {"keys_command": "list", "json": True}),
        (["keys", "revoke", "cursor"], {"keys_command": "revoke", "name": "cursor"}),
        (["autostart", "enable"], {"action": "enable", "dry_run": False}),
        (["autostart", "disable", "--dry-run"], {"action": "disable", "dry_run": True}),
        (["autostart", "status"], {"action": "status"}),
    ],
)
def test_parses(argv: list[str], expected: dict[str, Any]) -> None:
    args = cli.build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert callable(args.func)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["accounts"],
        ["accounts", "prefer"],
        ["accounts", "prefer", "work", "--none"],
        ["accounts", "remove"],
        ["logout"],
        ["login", "--kind", "openai"],
        ["usage", "--window", "2h"],
        ["keys"],
        ["keys", "create"],
        ["autostart"],
        ["autostart", "restart"],
        ["status", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from dario.daemon import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dario-ctl {__version__}"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("status", "login", "logout", "accounts", "refresh", "usage", "keys", "autostart"):
        assert command in out


# -- exit 3: nothing listening ---------------------------------------------------------


def test_not_running_missing_socket(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(short_dir / "none.sock"), "status"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert "not running" in err
    assert START_HINT in err
    assert "Traceback" not in err


def test_not_running_stale_socket(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A socket file left behind by a dead daemon: connect() is refused.
    path = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert cli.main(["--socket", str(path), "accounts", "list"]) == 3
    assert "not running" in capsys.readouterr().err


def test_dario_socket_env_is_used(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DARIO_SOCKET", str(short_dir / "env.sock"))
    assert cli.main(["status"]) == 3
    assert str(short_dir / "env.sock") in capsys.readouterr().err


def test_env_socket_reaches_daemon(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("GET", "/v1/status", STATUS)
    monkeypatch.setenv("DARIO_SOCKET", str(daemon.path))
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_subprocess_not_running_no_traceback(short_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dario.ctl.cli", "--socket", str(short_dir / "x.sock"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DARIO_SOCKET": ""},
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "not running" in proc.stderr and "Traceback" not in proc.stderr


# -- status ----------------------------------------------------------------------------


def test_status_json_is_exactly_the_daemon_answer(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("GET", "/v1/status", STATUS)
    assert run(daemon, "status", "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == STATUS
    assert out.startswith("{\n  ")  # indented
    assert err == ""


def test_status_human(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("GET", "/v1/status", STATUS)
    assert run(daemon, "status") == 0
    out = capsys.readouterr().out
    assert "work" in out and "83%" in out and "3 h 12 min" in out


def test_status_empty_pool_hints_login(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    empty = {
        **STATUS,
        "accounts": [],
        "pool": {**STATUS["pool"], "health": "empty", "available": 0, "total": 0},
    }
    daemon.on("GET", "/v1/status", empty)
    assert run(daemon, "status") == 0
    assert "dario-ctl login" in capsys.readouterr().out


def test_api_error_exit_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("GET", "/v1/status", {"error": {"type": "internal", "message": "pool is on fire"}}, status=500)
    assert run(daemon, "status") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "error: pool is on fire"


# -- login / logout --------------------------------------------------------------------


def test_login_reads_stdin_and_never_prints_secret(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("POST", "/v1/accounts", {"account": ACCOUNT}, status=201)
    _stdin(monkeypatch, SECRET + "\n")
    assert run(daemon, "login", "work") == 0
    out, err = capsys.readouterr()
    assert "Logged in as work (anthropic, https://api.anthropic.com)" in out
    assert SECRET not in out and SECRET not in err
    assert daemon.bodies("POST", "/v1/accounts") == [
        {"alias": "work", "secret": SECRET, "kind": "anthropic", "base_url": None}
    ]


def test_login_defaults_alias_and_passes_kind(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {**ACCOUNT, "alias": "default", "kind": "anthropic-compatible", "base_url": "https://gw.example"}
    daemon.on("POST", "/v1/accounts", {"account": answer}, status=201)
    _stdin(monkeypatch, f"  {SECRET}  \r\n")
    argv = ["login", "--kind", "anthropic-compatible", "--base-url", "https://gw.example"]
    assert run(daemon, *argv) == 0
    (body,) = daemon.bodies("POST", "/v1/accounts")
    assert body == {
        "alias": "default",
        "secret": SECRET,
        "kind": "anthropic-compatible",
        "base_url": "https://gw.example",
    }
    assert "Logged in as default (anthropic-compatible, https://gw.example)" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "\n", "   \n"])
def test_login_empty_secret_is_usage_error(
    text: str, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, text)
    assert run(daemon, "login", "work") == 2
    assert "no API key" in capsys.readouterr().err
    assert daemon.requests == []


def test_login_tty_uses_getpass(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("GET", "/v1/status", STATUS)
    daemon.on("POST", "/v1/accounts", {"account": ACCOUNT}, status=201)
    _stdin(monkeypatch, "must not be read")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return SECRET

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert run(daemon, "login", "work") == 0
    assert prompts and "work" in prompts[0]
    assert daemon.bodies("POST", "/v1/accounts")[0]["secret"] == SECRET
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_login_of_a_config_account_is_refused_before_the_prompt(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("GET", "/v1/status", {**STATUS, "accounts": [{**ACCOUNT, "managed_by": "config"}]})
    _stdin(monkeypatch, "must not be read")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("prompted for a key"))
    assert run(daemon, "login", "work") == 1
    assert daemon.bodies("POST", "/v1/accounts") == []
    err = capsys.readouterr().err
    assert "defined in dariod's config file" in err and "refresh work" in err


def test_login_tty_checks_daemon_before_prompting(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, "", tty=True)

    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("prompted although the daemon is not running")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    assert cli.main(["--socket", str(short_dir / "none.sock"), "login"]) == 3


def test_login_failure_scrubs_secret(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"error": {"type": "invalid_key", "message": f"upstream rejected key {SECRET}"}}
    daemon.on("POST", "/v1/accounts", error, status=400)
    _stdin(monkeypatch, SECRET)
    assert run(daemon, "login", "work") == 1
    out, err = capsys.readouterr()
    assert err.startswith("error: upstream rejected key")
    assert SECRET not in out + err


def test_login_interrupted_exit_130(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.on("GET", "/v1/status", STATUS)
    _stdin(monkeypatch, "", tty=True)

    def interrupt(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("getpass.getpass", interrupt)
    assert run(daemon, "login") == 130
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.strip() == ""


@pytest.mark.parametrize("argv", [["logout", "work"], ["accounts", "remove", "work"]])
def test_logout(argv: list[str], daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("DELETE", "/v1/accounts/work", {"removed": "work"})
    assert run(daemon, *argv) == 0
    assert "work" in capsys.readouterr().out
    assert [(m, p) for m, p, _ in daemon.requests] == [("DELETE", "/v1/accounts/work")]


def test_logout_unknown_exit_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on(
        "DELETE", "/v1/accounts/nope", {"error": {"type": "not_found", "message": "no account nope"}}, 404
    )
    assert run(daemon, "logout", "nope") == 1
    assert capsys.readouterr().err.strip() == "error: no account nope"


# -- accounts --------------------------------------------------------------------------


def test_accounts_list_json(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"accounts": [ACCOUNT, {**ACCOUNT, "alias": "home", "preferred": False}]}
    daemon.on("GET", "/v1/accounts", body)
    assert run(daemon, "accounts", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == body


def test_accounts_list_human(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("GET", "/v1/accounts", {"accounts": [ACCOUNT]})
    assert run(daemon, "accounts", "list") == 0
    out = capsys.readouterr().out
    assert "work" in out and "★" in out and "83%" in out


def test_accounts_prefer(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("POST", "/v1/prefer", {"preferred": "work"})
    assert run(daemon, "accounts", "prefer", "work") == 0
    assert "work" in capsys.readouterr().out
    daemon.on("POST", "/v1/prefer", {"preferred": None})
    assert run(daemon, "accounts", "prefer", "--none") == 0
    assert "No preferred account" in capsys.readouterr().out
    assert daemon.bodies("POST", "/v1/prefer") == [{"alias": "work"}, {"alias": None}]


@pytest.mark.parametrize("action", ["enable", "disable"])
def test_accounts_enable_disable(action: str, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    status = "ok" if action == "enable" else "disabled"
    daemon.on("POST", f"/v1/accounts/work/{action}", {"account": {**ACCOUNT, "status": status}})
    assert run(daemon, "accounts", action, "work") == 0
    assert f"{action.capitalize()}d work" in capsys.readouterr().out


def test_alias_is_url_quoted(daemon: FakeDaemon) -> None:
    daemon.on("POST", "/v1/accounts/a%2Fb/enable", {"account": {**ACCOUNT, "alias": "a/b"}})
    assert run(daemon, "accounts", "enable", "a/b") == 0


# -- refresh ---------------------------------------------------------------------------


def test_refresh_all_ok(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    results = [
        {"alias": "work", "ok": True, "status": "ok", "message": "limits updated"},
        {"alias": "home", "ok": True, "status": "cooling", "message": "429, retry in 38 s"},
    ]
    daemon.on("POST", "/v1/refresh", {"results": results})
    assert run(daemon, "refresh") == 0
    lines = capsys.readouterr().out.splitlines()[2:]  # under the header and its rule
    assert len(lines) == 2
    assert lines[0].split()[:3] == ["work", "ok", "ok"] and "limits updated" in lines[0]
    assert lines[1].split()[:3] == ["home", "ok", "cooling"]
    assert daemon.bodies("POST", "/v1/refresh") == [{"alias": None}]


def test_refresh_failure_exit_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    results = [{"alias": "work", "ok": False, "status": "needs_login", "message": "401 invalid x-api-key"}]
    daemon.on("POST", "/v1/refresh", {"results": results})
    assert run(daemon, "refresh", "work") == 1
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[:3] == ["work", "failed", "needs_login"]
    assert daemon.bodies("POST", "/v1/refresh") == [{"alias": "work"}]


# -- usage -----------------------------------------------------------------------------

USAGE = {"window": "7d", "requests": 10, "by_account": [{"alias": "work", "input_tokens": 1200}]}


def test_usage_json(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("GET", "/v1/usage?window=7d", USAGE)
    assert run(daemon, "usage", "--window", "7d", "--json") == 0
    assert json.loads(capsys.readouterr().out) == USAGE


def test_usage_renders_with_usage_view(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # usage_view is written separately: stand in a module so the lazy import finds it.
    seen: list[tuple[Any, Any]] = []
    fake = types.ModuleType("dario.ctl.usage_view")
    fake.render_usage = lambda usage, console: seen.append((usage, console))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dario.ctl.usage_view", fake)
    daemon.on("GET", "/v1/usage?window=24h", USAGE)
    assert run(daemon, "usage") == 0
    assert len(seen) == 1 and seen[0][0] == USAGE
    assert hasattr(seen[0][1], "print")


# -- keys ------------------------------------------------------------------------------


def test_keys_create_shows_key_once(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    key = "dario-ck-0123456789abcdef0123456789abcdef"
    daemon.on("POST", "/v1/keys", {"name": "cursor", "key": key}, status=201)
    assert run(daemon, "keys", "create", "cursor") == 0
    out = capsys.readouterr().out
    assert key in out.splitlines()  # on a line of its own, unwrapped, for copying
    assert "not shown again" in out
    assert daemon.bodies("POST", "/v1/keys") == [{"name": "cursor"}]


def test_keys_create_json(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"name": "cursor", "key": "dario-ck-xyz"}
    daemon.on("POST", "/v1/keys", body, status=201)
    assert run(daemon, "keys", "create", "cursor", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {**body, "auto_cache": False}


def test_keys_create_auto_cache(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("POST", "/v1/keys", {"name": "agent", "key": "dario-ck-xyz", "auto_cache": True}, status=201)
    assert run(daemon, "keys", "create", "agent", "--auto-cache", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"name": "agent", "key": "dario-ck-xyz", "auto_cache": True}
    assert daemon.bodies("POST", "/v1/keys") == [{"name": "agent", "auto_cache": True}]


def test_keys_list(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    body = {
        "keys": [{"name": "cursor", "created": 1_700_000_000.0, "prefix": "dario-ck-01", "last_used": None}]
    }
    daemon.on("GET", "/v1/keys", body)
    assert run(daemon, "keys", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == body
    assert run(daemon, "keys", "list") == 0
    out = capsys.readouterr().out
    assert "cursor" in out and "dario-ck-01" in out and "never" in out


def test_keys_revoke(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("DELETE", "/v1/keys/cursor", {"revoked": "cursor"})
    assert run(daemon, "keys", "revoke", "cursor") == 0
    assert "cursor" in capsys.readouterr().out
    assert run(daemon, "keys", "revoke", "missing") == 1
    assert capsys.readouterr().err.startswith("error: ")


# -- autostart -------------------------------------------------------------------------


class _Report:
    def __init__(self, changed: bool, enabled: bool, lines: list[str]) -> None:
        self.changed, self.enabled, self.lines = changed, enabled, lines
        self.files: list[Path] = []


@pytest.fixture
def fake_autostart(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    mod = types.ModuleType("dario.ctl.autostart")

    def make(name: str, enabled: bool) -> Any:
        def fn(**kwargs: Any) -> _Report:
            calls.append((name, kwargs))
            return _Report(True, enabled, [f"{name}: wrote ~/.config/systemd/user/dariod.service"])

        return fn

    mod.enable = make("enable", True)  # type: ignore[attr-defined]
    mod.disable = make("disable", False)  # type: ignore[attr-defined]
    mod.status = make("status", True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dario.ctl.autostart", mod)
    import dario.ctl

    monkeypatch.setattr(dario.ctl, "autostart", mod, raising=False)
    return calls


@pytest.mark.parametrize("action", ["enable", "disable", "status"])
def test_autostart(
    action: str, fake_autostart: list[tuple[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    # No daemon needed: autostart is local.
    assert cli.main(["autostart", action, "--dry-run"]) == 0
    assert fake_autostart == [(action, {} if action == "status" else {"dry_run": True, "run": True})]
    assert f"{action}: wrote" in capsys.readouterr().out


def test_autostart_no_start_and_json(
    fake_autostart: list[tuple[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["autostart", "enable", "--no-start"]) == 0
    assert fake_autostart == [("enable", {"dry_run": False, "run": False})]
    capsys.readouterr()
    assert cli.main(["autostart", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "enabled": True, "changed": True, "files": [], "lines": ["status: wrote ~/.config/systemd/user/dariod.service"]}


def test_autostart_oserror_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = types.ModuleType("dario.ctl.autostart")

    def fail(**kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", "/home/u/.config/systemd/user")

    mod.enable = mod.disable = mod.status = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dario.ctl.autostart", mod)
    import dario.ctl

    monkeypatch.setattr(dario.ctl, "autostart", mod, raising=False)
    assert cli.main(["autostart", "enable"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: autostart enable failed") and "Traceback" not in err


# -- unexpected transport failures -----------------------------------------------------


def test_keyboard_interrupt_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dario.ctl.client import ControlClient

    def interrupted(self: ControlClient) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(ControlClient, "status", interrupted)
    assert cli.main(["status"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_timeout_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from dario.ctl.client import ControlClient

    def slow(self: ControlClient) -> Any:
        raise TimeoutError("timed out")

    monkeypatch.setattr(ControlClient, "status", slow)
    assert cli.main(["--socket", "/tmp/x.sock", "status"]) == 1
    assert "did not answer in time" in capsys.readouterr().err


def test_non_json_answer_exit_1(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.on("GET", "/v1/status", b"<html>502 Bad Gateway</html>")
    assert run(daemon, "status") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: could not talk to dariod") and "Traceback" not in err


def test_autostart_real_module_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real module, pointed at an empty home: a dry run reports and writes nothing.
    pytest.importorskip("dario.ctl.autostart")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    assert cli.main(["autostart", "enable", "--dry-run"]) == 0
    assert cli.main(["autostart", "status"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "autostart is disabled" in out
    assert list(tmp_path.iterdir()) == []


def test_usage_real_view(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("dario.ctl.usage_view")
    daemon.on("GET", "/v1/usage?window=1h", {"window": "1h", "totals": {"requests": 0}})
    assert run(daemon, "usage", "--window", "1h") == 0
    assert "1h" in capsys.readouterr().out


def test_broken_pipe_is_quiet(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # `dario-ctl status --json | head -1`: the reader left; no traceback, exit non-zero.
    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    daemon.on("GET", "/v1/status", STATUS)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert run(daemon, "status", "--json") == 1
