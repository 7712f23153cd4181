"""Secret sources: systemd credentials, files (mode checked), environment variables, the keyring;
and the account service with config-file accounts (login/logout refused, refresh re-reads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from dario.daemon.accounts import errors, secrets
from dario.daemon.accounts.registry import Registry
from dario.daemon.accounts.service import AccountService, ManagedAccount
from dario.daemon.accounts.sources import (
    CredentialSource,
    EnvSource,
    FileSource,
    KeyringSource,
    SecretUnavailable,
    source_for,
)
from dario.daemon.routing.pool import Pool
from tests.unit.test_account_service import probe_answering

KEY = "sk-ant-api03-" + "s" * 40


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_credential_reads_the_file_systemd_provides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    write(tmp_path / "anthropic-a", KEY + "\n", 0o400)
    assert CredentialSource("anthropic-a").read() == KEY


def test_credential_without_credentials_directory_says_how_to_provide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretUnavailable) as info:
        CredentialSource("anthropic-a").read()
    assert "systemd credential 'anthropic-a'" in str(info.value)
    assert "LoadCredential=anthropic-a:" in str(info.value)


def test_missing_and_empty_credentials_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(SecretUnavailable, match=r"anthropic-b does not exist"):
        CredentialSource("anthropic-b").read()
    write(tmp_path / "anthropic-b", "\n")
    with pytest.raises(SecretUnavailable, match=r"anthropic-b is empty"):
        CredentialSource("anthropic-b").read()
    write(tmp_path / "anthropic-b", "x" * (70 * 1024))
    with pytest.raises(SecretUnavailable, match=r"larger than 64 KiB"):
        CredentialSource("anthropic-b").read()
    (tmp_path / "anthropic-b").write_bytes(b"\xff\xfe")
    with pytest.raises(SecretUnavailable, match=r"not UTF-8"):
        CredentialSource("anthropic-b").read()


def test_a_file_source_reads_a_private_file_and_keeps_multiline_json(tmp_path: Path) -> None:
    service_account = '{\n  "type": "service_account",\n  "private_key": "-----BEGIN..."\n}\n'
    path = write(tmp_path / "vertex.json", service_account)
    assert FileSource(path).read() == service_account.strip()


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_a_file_others_can_use_is_refused_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "key", KEY, mode)
    with pytest.raises(SecretUnavailable) as info:
        FileSource(path).read()
    message = str(info.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert KEY not in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "key", KEY, 0o000)
    with pytest.raises(SecretUnavailable, match="not readable by dariod's user"):
        FileSource(path).read()


def test_env_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", f"  {KEY}\n")
    assert EnvSource("TEAM_KEY").read() == KEY
    monkeypatch.setenv("TEAM_KEY", "")
    with pytest.raises(SecretUnavailable, match="environment variable TEAM_KEY is not set or empty"):
        EnvSource("TEAM_KEY").read()


def test_keyring_source_reads_the_dario_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {"team": KEY}
    monkeypatch.setattr(secrets, "get_secret", stored.get)
    assert KeyringSource("team").read() == KEY
    with pytest.raises(SecretUnavailable, match="keyring set dario other"):
        KeyringSource("other").read()


def test_source_for_maps_each_kind() -> None:
    assert source_for("credential", "n", "a") == CredentialSource("n")
    assert source_for("file", "/k", "a") == FileSource(Path("/k"))
    assert source_for("env", "V", "a") == EnvSource("V")
    assert source_for("keyring", "", "a") == KeyringSource("a")


# -- the account service with config accounts ---------------------------------------------------


def managed_service(tmp_path: Path, source_path: Path) -> tuple[AccountService, Pool]:
    pool = Pool()
    managed = ManagedAccount(alias="team", kind="anthropic", base_url="https://api.anthropic.com",
                             source=FileSource(source_path), config_file="/etc/dario/dario.toml")
    service = AccountService(Registry(tmp_path / "accounts.json"), pool, probe_answering(200), [managed])
    service.load()
    return service, pool


def test_config_account_loads_its_secret_and_refuses_login_and_logout(tmp_path: Path) -> None:
    service, pool = managed_service(tmp_path, write(tmp_path / "key", KEY))
    assert pool.accounts["team"].secret == KEY
    view = pool.view(pool.accounts["team"])
    assert view["status"] == "ok" and view["managed_by"] == "config"

    async def attempts() -> None:
        with pytest.raises(errors.ManagedByConfig, match=r"defined in the config file /etc/dario/dario.toml"):
            await service.login("team", "sk-ant-other", "anthropic", None)
        with pytest.raises(errors.ManagedByConfig, match=r"refresh team"):
            await service.logout("team")

    trio.run(attempts)
    assert pool.accounts["team"].secret == KEY
    assert not (tmp_path / "accounts.json").exists()  # nothing of it goes to the registry


def test_missing_source_needs_login_and_refresh_reads_it_again(tmp_path: Path) -> None:
    path = tmp_path / "key"
    service, pool = managed_service(tmp_path, path)
    view = pool.view(pool.accounts["team"])
    assert view["status"] == "needs_login"
    assert view["reason"] is not None and f"secret file {path}" in view["reason"] and "refresh team" in view["reason"]

    write(path, KEY)
    results = trio.run(service.refresh, "team")
    assert results[0]["ok"] is True
    assert pool.accounts["team"].secret == KEY and pool.view(pool.accounts["team"])["reason"] is None

    path.unlink()
    results = trio.run(service.refresh, "team")
    assert results[0]["ok"] is False and results[0]["status"] == "needs_login"
    assert pool.accounts["team"].secret is None


def test_a_desktop_account_of_the_same_name_gives_way_to_the_file(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "accounts.json")
    registry.upsert("team", "anthropic", "https://api.anthropic.com")
    registry.save()
    _service, pool = managed_service(tmp_path, write(tmp_path / "key", KEY))
    assert pool.accounts["team"].managed_by == "config"
    assert pool.accounts["team"].keyring_wait is None  # not waiting on a keyring read


def test_a_rejected_key_of_a_config_account_is_judged_afresh_after_a_restart(tmp_path: Path) -> None:
    rejected = {"version": 1, "accounts": {"team": {"needs_login": "upstream answered 401: invalid x-api-key"}}}
    _service, pool = managed_service(tmp_path, write(tmp_path / "key", KEY))
    pool.import_state(rejected)
    assert pool.view(pool.accounts["team"])["status"] == "ok"  # the source may hold a rotated key now
    pool.set_managed("team", None)  # the same saved verdict holds for a desktop account
    pool.import_state(rejected)
    assert pool.view(pool.accounts["team"])["status"] == "needs_login"
