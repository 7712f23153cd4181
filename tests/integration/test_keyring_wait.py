"""A locked, failing or late keyring: dariod serves at once and its accounts come back by themselves."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.integration.test_pool import ask, post
from tests.support import Dariod, wait_until

KEY = "sk-ant-keyring-wait"


def file_keyring(home: Path, backend: str = "FileKeyring") -> dict[str, str]:
    """The test keyring, named explicitly so the logging-in daemon and the next one share it."""
    return {
        "PYTHON_KEYRING_BACKEND": f"tests.keyring_backend.{backend}",
        "DARIO_TEST_KEYRING_FILE": str(home / "keyring.json"),
        "DARIO_TEST_KEYRING_UNLOCK": str(home / "unlocked"),
    }


def logged_in_home(dariod_factory: Callable[..., Dariod], upstream: Any) -> Path:
    first = dariod_factory(start=False)
    first.env.update(file_keyring(first.home))
    first.start()
    first.login("work", KEY, upstream.url)
    assert first.stop() == 0
    return first.home


def health(d: Dariod) -> dict[str, Any]:
    with urllib.request.urlopen(d.url + "/health", timeout=5) as resp:
        result: dict[str, Any] = orjson.loads(resp.read())
        return result


def work(d: Dariod) -> dict[str, Any]:
    account: dict[str, Any] = d.ctl_json("status")["accounts"][0]
    return account


def saved_needs_login(home: Path) -> object:
    path = home / "state" / "dario" / "pool-state.json"
    if not path.exists():
        return None
    return orjson.loads(path.read_bytes())["accounts"].get("work", {}).get("needs_login")


def test_locked_keyring_serves_at_once_and_recovers_when_unlocked(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    home = logged_in_home(dariod_factory, upstream)
    d = dariod_factory(home=home, env=file_keyring(home, "BlockingKeyring"), start=False)
    t0 = time.monotonic()
    d.start(timeout=10)
    assert health(d)["status"] == "ok"
    to_health = time.monotonic() - t0
    print(f"locked keyring: process start to /health answering: {to_health:.2f} s")
    assert to_health < 5

    t1 = time.monotonic()
    status = d.ctl_json("status")
    assert time.monotonic() - t1 < 5
    assert status["accounts"][0]["status"] == "waiting_for_keyring"
    # After the read is overdue the account says why, and the status explains the fix once.
    overdue = wait_until(lambda: (s := d.ctl_json("status"))["keyring"] and s, 15, "the keyring to be overdue")
    assert overdue["pool"]["health"] == "waiting_for_keyring"
    assert "locked" in overdue["accounts"][0]["reason"]
    assert "Unlock it" in overdue["keyring"]

    # A request meanwhile: a short 503 in the Anthropic shape, the keyring named once, no lecture.
    t2 = time.monotonic()
    code, headers, body = post(d.url, ask("while locked"))
    assert time.monotonic() - t2 < 3
    assert code == 503 and headers.get("retry-after") == "5"
    error = orjson.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    message = error["error"]["message"]
    assert message.count("keyring") == 1 and "work" in message, message
    assert "PYTHON_KEYRING_BACKEND" not in message and len(message) < 200, message

    # The user unlocks: the account serves by itself, no refresh and no restart.
    (home / "unlocked").touch()
    wait_until(lambda: work(d)["status"] == "ok", 15, "the account to come back")
    assert d.ctl_json("status")["keyring"] is None
    code, headers, _ = post(d.url, ask("after unlock"))
    assert code == 200 and headers["x-dario-account"] == "work"
    assert d.stop() == 0
    assert saved_needs_login(home) is None
    assert "dario keeps API keys only in the OS keyring" in d.stderr()


def test_refusing_keyring_is_retried_on_refresh_and_never_saved_as_needs_login(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    home = logged_in_home(dariod_factory, upstream)
    d = dariod_factory(home=home, env=file_keyring(home, "LockedKeyring"))
    account = wait_until(lambda: (a := work(d))["reason"] and "KeyringLocked" in a["reason"] and a, 15,
                         "the refusal to show")
    assert account["status"] == "waiting_for_keyring"
    assert "dario keeps API keys" not in account["reason"]
    d.ctl("refresh")
    d.ctl("refresh")
    assert saved_needs_login(home) is None

    (home / "unlocked").touch()
    result = d.ctl_json("refresh", "work")
    assert result["results"][0]["status"] == "ok", result
    assert work(d)["status"] == "ok"
    code, _, _ = post(d.url, ask("after refresh"))
    assert code == 200
    assert d.stop() == 0
    assert saved_needs_login(home) is None
    # The explanation is logged once, not once per retry.
    assert d.stderr().count("dario keeps API keys only in the OS keyring") == 1, d.stderr()


def test_login_into_a_locked_keyring_answers_503_in_bounded_time(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(start=False)
    d.env.update(file_keyring(d.home, "BlockingKeyring"))
    d.start()
    t0 = time.monotonic()
    result = d.ctl("login", "work", "--kind", "anthropic-compatible", "--base-url", upstream.url, input=KEY + "\n")
    took = time.monotonic() - t0
    assert result.returncode == 1, result
    assert "has not answered" in result.stderr and "Unlock it" in result.stderr, result.stderr
    assert took < 28  # the daemon's bound (20 s), well inside dario-ctl's own wait
    assert health(d)["status"] == "ok"
    assert d.ctl_json("status")["accounts"] == []
