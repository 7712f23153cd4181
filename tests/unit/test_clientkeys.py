from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.recording.clients import client_family


def test_create_verify_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "client-keys.json"
    store = ClientKeyStore(path)
    assert store.list() == []
    key = store.create("aider")
    assert key.startswith("dario-") and len(key) > 40
    other = store.create("cursor.laptop_2")
    assert key != other

    assert store.verify(key) == "aider"
    assert store.verify(other) == "cursor.laptop_2"
    assert store.verify(key + "x") is None
    assert store.verify("sk-ant-whatever") is None
    assert store.verify("") is None

    listed = {k["name"]: k for k in store.list()}
    assert set(listed) == {"aider", "cursor.laptop_2"}
    assert set(listed["aider"]) == {"name", "created", "prefix", "last_used", "auto_cache"}
    assert listed["aider"]["prefix"] == key[:10]
    assert listed["aider"]["last_used"] is not None
    assert listed["cursor.laptop_2"]["created"] > 0

    store.revoke("aider")
    assert store.verify(key) is None
    assert store.verify(other) == "cursor.laptop_2"
    with pytest.raises(KeyError):
        store.revoke("aider")


def test_auto_cache_is_kept_per_key_and_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "client-keys.json"
    store = ClientKeyStore(path)
    store.create("agent", auto_cache=True)
    store.create("plain")
    assert (store.auto_cache("agent"), store.auto_cache("plain"), store.auto_cache("nobody")) == (True, False, False)
    reloaded = ClientKeyStore(path)
    assert {k["name"]: k["auto_cache"] for k in reloaded.list()} == {"agent": True, "plain": False}
    assert reloaded.auto_cache("agent") and not reloaded.auto_cache("plain")
    assert '"auto_cache"' in path.read_text() and path.read_text().count("auto_cache") == 1  # only where set


def test_file_holds_no_key_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "client-keys.json"
    store = ClientKeyStore(path)
    key = store.create("tool")
    data = path.read_bytes()
    assert key.encode() not in data
    assert key[6:].encode() not in data  # not even the random part
    assert b"tool" in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    reloaded = ClientKeyStore(path)
    assert reloaded.verify(key) == "tool"
    assert all(key not in str(v) for entry in reloaded.list() for v in entry.values())


def test_names_are_validated(tmp_path: Path) -> None:
    store = ClientKeyStore(tmp_path / "k.json")
    store.create("ok")
    with pytest.raises(ValueError, match="already exists"):
        store.create("ok")
    for bad in ("", "has space", "a/b", "x" * 65, "ünï"):
        with pytest.raises(ValueError):
            store.create(bad)
    assert [k["name"] for k in store.list()] == ["ok"]


def test_last_used_is_persisted_lazily(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    store = ClientKeyStore(path)
    key = store.create("t")
    before = path.read_bytes()
    assert not store.dirty
    assert store.verify(key) == "t"
    assert store.dirty
    assert path.read_bytes() == before  # verify() does no file I/O
    assert ClientKeyStore(path).list()[0]["last_used"] is None
    assert store.flush() is True
    assert store.flush() is False
    assert ClientKeyStore(path).list()[0]["last_used"] == store.list()[0]["last_used"]


def test_bad_file_is_value_error_without_content(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text('{"keys": "dario-SECRETSECRET"}')
    with pytest.raises(ValueError, match=r"k\.json") as info:
        ClientKeyStore(path)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("ua", "family"),
    [
        ("Anthropic/Python 0.40.0", "anthropic-python"),
        ("AsyncAnthropic/Python 0.40.0", "anthropic-python"),
        ("OpenAI/Python 1.54.0", "openai-python"),
        ("AsyncOpenAI/Python 1.54.0", "openai-python"),
        ("claude-cli/2.0.1 (external, cli)", "claude-cli"),
        ("curl/8.5.0", "curl"),
        ("python-httpx/0.27.0", "httpx"),
        ("litellm/1.50.0", "litellm"),
        ("Anthropic/JS 0.30.1", "anthropic-js"),
        ("OpenAI/JS 4.70.0", "openai-js"),
        ("aider/0.60 (OpenAI/Python 1.54)", "aider"),
        ("Mozilla/5.0 (X11; Linux x86_64)", "mozilla"),
        ("Go-http-client/1.1", "go-http-client"),
        ("  My Tool+Thing/3", "my"),
        ("Ünïcode-Tool/1", "ncode-tool"),
        ("x" * 80 + "/1", "x" * 32),
        ("///", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_client_family(ua: str | None, family: str) -> None:
    assert client_family(ua) == family
