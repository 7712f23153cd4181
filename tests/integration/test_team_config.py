"""Team mode on a server: a real dariod started with `--config dario.toml` and systemd-style
credentials (`CREDENTIALS_DIRECTORY`), with no keyring at all, serving against the fake upstream."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_pool import ask, post
from tests.support import ROOT, Dariod

KEY_A = "sk-ant-team-credential-AAAA1111"
KEY_A2 = "sk-ant-team-credential-rotated-A2A2"
KEY_B = "sk-ant-team-env-BBBB2222"
KEY_C = "sk-ant-team-file-CCCC3333"
KEY_K = "sk-ant-team-keyring-KKKK4444"
API_KEY = "dario-client-key-ZZZZ9999"
NO_KEYRING = "keyring.backends.fail.Keyring"
SECRETS = (KEY_A, KEY_A2, KEY_B, KEY_C, KEY_K, API_KEY)


def write_secret(path: Path, value: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(value + "\n")
    os.chmod(path, mode)


def team_dariod(dariod_factory: Callable[..., Dariod], config: str, *, env: dict[str, str] | None = None,
                start: bool = True) -> Dariod:
    d = dariod_factory(start=False)
    creds = d.home / "credentials"
    creds.mkdir(mode=0o700)
    path = d.home / "dario.toml"
    path.write_text(config.replace("@HOME@", str(d.home)))
    d.args = ["--config", str(path)]
    d.env.update(PYTHON_KEYRING_BACKEND=NO_KEYRING, CREDENTIALS_DIRECTORY=str(creds))
    d.env.update(env or {})
    return d.start() if start else d


def accounts(d: Dariod) -> dict[str, Any]:
    return {a["alias"]: a for a in d.ctl_json("status")["accounts"]}


def keys_seen(upstream: Any) -> list[str]:
    return [r.get("key") for r in upstream.requests() if r.get("path") == "/v1/messages"]


def three_accounts(url: str) -> str:
    return f"""
[server]
queue_timeout = 3

[[account]]
alias = "team-a"
kind = "anthropic-compatible"
base_url = "{url}"
secret = {{ credential = "anthropic-team-a" }}
preferred = true

[[account]]
alias = "team-b"
kind = "anthropic-compatible"
base_url = "{url}"
secret = {{ env = "TEAM_B_KEY" }}

[[account]]
alias = "team-c"
kind = "anthropic-compatible"
base_url = "{url}"
secret = {{ file = "@HOME@/secrets/team-c" }}
"""


@pytest.fixture
def team(dariod_factory: Callable[..., Dariod], upstream: Any) -> Dariod:
    d = team_dariod(dariod_factory, three_accounts(upstream.url), env={"TEAM_B_KEY": KEY_B}, start=False)
    write_secret(d.home / "credentials" / "anthropic-team-a", KEY_A, 0o400)
    write_secret(d.home / "secrets" / "team-c", KEY_C)
    return d.start()


def test_config_accounts_serve_with_no_keyring(team: Dariod, upstream: Any) -> None:
    status = team.ctl_json("status")
    assert status.get("keyring") is None  # no account needs the keyring, so none was asked
    by_alias = {a["alias"]: a for a in status["accounts"]}
    assert set(by_alias) == {"team-a", "team-b", "team-c"}
    assert {a["status"] for a in by_alias.values()} == {"ok"}, by_alias
    assert all(a["managed_by"] == "config" for a in by_alias.values())
    assert by_alias["team-a"]["preferred"] is True

    code, headers, _ = post(team.url, ask("hello from a server"))
    assert code == 200
    assert headers["x-dario-account"] == "team-a"
    assert keys_seen(upstream) == [KEY_A]  # the credential's content, stripped of its newline

    # The other two sources work too: with team-a disabled (in memory), the pool uses them.
    team.ctl("accounts", "disable", "team-a")
    served = {post(team.url, ask(f"spread {i}"))[1]["x-dario-account"] for i in range(6)}
    assert served == {"team-b", "team-c"}
    assert set(keys_seen(upstream)) == {KEY_A, KEY_B, KEY_C}


def test_login_and_logout_of_a_config_account_are_refused(team: Dariod, upstream: Any) -> None:
    config = str(team.home / "dario.toml")
    login = team.ctl("login", "team-a", "--kind", "anthropic-compatible", "--base-url", upstream.url,
                     input="sk-ant-other-key\n")
    assert login.returncode == 1
    assert "defined in the config file" in login.stderr and config in login.stderr
    assert "refresh team-a" in login.stderr
    logout = team.ctl("logout", "team-a")
    assert logout.returncode == 1
    assert "defined in the config file" in logout.stderr and config in logout.stderr
    assert accounts(team)["team-a"]["status"] == "ok"  # nothing changed
    listing = team.ctl("accounts", "list")
    assert listing.returncode == 0
    assert "(config)" in listing.stdout


def test_missing_credential_needs_login_naming_the_source_and_refresh_rereads_it(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    config = f"""
[[account]]
alias = "late"
kind = "anthropic-compatible"
base_url = "{upstream.url}"
secret = {{ credential = "anthropic-late" }}
"""
    d = team_dariod(dariod_factory, config)
    late = accounts(d)["late"]
    assert late["status"] == "needs_login"
    assert "systemd credential 'anthropic-late'" in late["reason"]
    assert "does not exist" in late["reason"] and "refresh late" in late["reason"]
    assert "login" not in late["reason"]
    listing = d.ctl("accounts", "list")
    assert "refresh late" in listing.stdout and "ctl login" not in listing.stdout

    # The operator provides the credential (systemd would, on restart); refresh reads it.
    write_secret(d.home / "credentials" / "anthropic-late", KEY_A)
    result = d.ctl_json("refresh", "late")
    assert result["results"][0]["ok"] is True, result
    assert accounts(d)["late"]["status"] == "ok"
    assert post(d.url, ask("now it works"))[0] == 200

    # A rotated key: refresh reads the source again and the next request carries the new key.
    write_secret(d.home / "credentials" / "anthropic-late", KEY_A2)
    assert d.ctl_json("refresh", "late")["results"][0]["ok"] is True
    upstream.clear()
    assert post(d.url, ask("after rotation"))[0] == 200
    assert keys_seen(upstream) == [KEY_A2]


def test_secret_file_readable_by_others_is_refused_with_the_chmod_fix(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    config = f"""
[[account]]
alias = "loose"
kind = "anthropic-compatible"
base_url = "{upstream.url}"
secret = {{ file = "@HOME@/loose-key" }}
"""
    d = team_dariod(dariod_factory, config, start=False)
    write_secret(d.home / "loose-key", KEY_C, 0o644)
    d.start()
    loose = accounts(d)["loose"]
    assert loose["status"] == "needs_login"
    assert f"chmod 600 {d.home / 'loose-key'}" in loose["reason"]
    assert KEY_C not in json.dumps(loose)
    code, _, _ = post(d.url, ask("refused"))
    assert code != 200 and not upstream.requests()


def test_keyring_source_reads_the_os_keyring(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    config = f"""
[[account]]
alias = "kr"
kind = "anthropic-compatible"
base_url = "{upstream.url}"
secret = {{ keyring = true }}
"""
    d = team_dariod(dariod_factory, config, start=False)
    store = d.home / "keyring.json"
    store.write_text(json.dumps({"dario\0kr": KEY_K}))
    d.env.update(PYTHON_KEYRING_BACKEND="tests.keyring_backend.FileKeyring", DARIO_TEST_KEYRING_FILE=str(store))
    d.start()
    assert post(d.url, ask("from the keyring"))[0] == 200
    assert keys_seen(upstream) == [KEY_K]


def test_api_key_from_a_credential_guards_the_public_port(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    config = f"""
[server]
api_key = {{ credential = "dario-api-key" }}

[[account]]
alias = "guarded"
kind = "anthropic-compatible"
base_url = "{upstream.url}"
secret = {{ credential = "anthropic-guarded" }}
"""
    d = team_dariod(dariod_factory, config, start=False)
    write_secret(d.home / "credentials" / "dario-api-key", API_KEY)
    write_secret(d.home / "credentials" / "anthropic-guarded", KEY_A)
    d.start()
    assert d.ctl_json("status")["auth_required"] is True
    assert post(d.url, ask("no key"))[0] == 401  # post() sends x-api-key: x
    req = urllib.request.Request(
        d.url + "/v1/messages", data=orjson.dumps(ask("with key")), method="POST",
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": API_KEY},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_missing_api_key_credential_stops_dariod_saying_which(dariod_factory: Callable[..., Dariod]) -> None:
    d = team_dariod(dariod_factory, '[server]\napi_key = { credential = "dario-api-key" }\n', start=False)
    with pytest.raises(RuntimeError, match="did not start"):
        d.start(timeout=10)
    assert d.proc is not None and d.proc.returncode == 2
    assert "api_key" in d.stderr() and "systemd credential 'dario-api-key'" in d.stderr()


def test_the_secrets_appear_nowhere(team: Dariod, upstream: Any) -> None:
    post(team.url, ask("a request to leave traces"))
    team.ctl("refresh")
    team.ctl("login", "team-a", "--kind", "anthropic-compatible", "--base-url", upstream.url, input=KEY_A2 + "\n")
    seen: list[str] = [team.ctl("status", "--json").stdout, team.ctl("accounts", "list", "--json").stdout,
                       team.ctl("status").stdout]
    for path in ("/health", "/accounts", "/metrics", "/analytics"):
        try:
            with urllib.request.urlopen(team.url + path, timeout=10) as resp:
                seen.append(resp.read().decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            seen.append(exc.read().decode(errors="replace"))
    assert team.stop() == 0
    seen += [team.stderr(), "\n".join(team.stdout_lines)]
    for text in seen:
        for secret in SECRETS:
            assert secret not in text
    # Every file dariod wrote (its XDG folders, the runtime dir), as bytes: SQLite pages included.
    secret_files = {team.home / "credentials", team.home / "secrets"}
    for path in team.home.rglob("*"):
        if path.is_file() and not any(p in path.parents for p in secret_files):
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret[:12]}… found in {path}"


def test_check_reports_problems_with_lines_and_passes_the_example(tmp_path: Path) -> None:
    import subprocess
    import sys

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DARIO_", "CREDENTIALS_"))}
        return subprocess.run([sys.executable, "-m", "dario.daemon.main", "--config", str(path), "--check"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    example = check(ROOT / "packaging" / "server" / "dario.toml.example")
    assert example.returncode == 0, example.stderr
    assert "OK (" in example.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "x"\n\n[[account]]\nalias = "a"\nsecret = "sk-ant-literal-LLLL"\n')
    result = check(bad)
    assert result.returncode == 2
    assert f"{bad}:2: port must be a port number" in result.stderr
    assert f"{bad}:6: [[account]] #1 (a): secret must name where the secret comes from" in result.stderr
    assert "sk-ant-literal-LLLL" not in result.stderr + result.stdout
    assert "2 problems" in result.stderr


def test_declared_limits_come_from_the_file_and_dario_ctl_limits_changes_them_until_restart(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    config = f"""
[[account]]
alias = "team-a"
kind = "anthropic-compatible"
base_url = "{upstream.url}"
secret = {{ env = "TEAM_A_KEY" }}
rpm = 2
output_tpm = 9000
"""
    d = team_dariod(dariod_factory, config, env={"TEAM_A_KEY": KEY_A})
    assert accounts(d)["team-a"]["limits"] == {"rpm": 2, "input_tpm": None, "output_tpm": 9000}
    changed = d.ctl_json("limits", "team-a", "--rpm", "5")
    assert changed["account"]["limits"] == {"rpm": 5, "input_tpm": None, "output_tpm": 9000}
    assert accounts(d)["team-a"]["limits"]["rpm"] == 5
    # The file is the account's record: nothing about it is written to accounts.json.
    assert not any("team-a" in p.read_text() for p in d.home.rglob("accounts.json"))
