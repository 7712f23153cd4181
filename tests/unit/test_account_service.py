"""The account service raises domain errors; the control API answers them as it always has.

Driven in-process: a real `AccountService`, `Registry` (temporary file) and `Pool`, a scripted
key probe instead of the upstream, and the keyring functions replaced. Each case asserts the
status, error type and message the control API gave before the service existed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import trio
import trio.testing

from dario.daemon.accounts import errors, secrets
from dario.daemon.accounts import service as service_module
from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.accounts.registry import Registry
from dario.daemon.accounts.service import AccountService, KeyCheck
from dario.daemon.control.server import ACCOUNT_ERRORS, ControlApp
from dario.daemon.recording.metrics import Metrics
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import parse as parse_ratelimits
from dario.daemon.settings import from_args
from dario.daemon.views import StatusView

KEY = "sk-ant-api03-" + "k" * 40


class Keyring:
    """An in-memory stand-in for the OS keyring, recording what was stored."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}
        self.unavailable: errors.KeyringUnavailable | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(secrets, "check_keyring", self.check)
        monkeypatch.setattr(secrets, "set_secret", self.stored.__setitem__)
        monkeypatch.setattr(secrets, "get_secret", self.stored.get)
        monkeypatch.setattr(secrets, "delete_secret", lambda alias: self.stored.pop(alias, None))

    def check(self) -> None:
        if self.unavailable is not None:
            raise self.unavailable


def probe_answering(status: int, body: bytes = b"{}") -> Callable[[str, str, str], Any]:
    async def probe(kind: str, base_url: str, secret: str) -> KeyCheck:
        return KeyCheck(status, parse_ratelimits([]), body)
    return probe


async def probe_unreachable(kind: str, base_url: str, secret: str) -> KeyCheck:
    raise errors.UpstreamUnreachable("connection refused", "ConnectError")


def make_app(tmp_path: Path, probe: Callable[[str, str, str], Any]) -> tuple[ControlApp, AccountService]:
    pool = Pool()
    accounts = AccountService(Registry(tmp_path / "accounts.json"), pool, probe)
    view = StatusView(from_args([]), pool, http=cast(Any, None), analytics=None,
                      metrics=Metrics(lambda: [], lambda: 0), keyring_problem=lambda: accounts.keyring_problem)
    return ControlApp(accounts, view, ClientKeyStore(tmp_path / "keys.json")), accounts


async def call(app: ControlApp, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    raw = orjson.dumps(body) if body is not None else b""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(b"host", b"dario.sock"), (b"content-length", str(len(raw)).encode())]}
    await app(scope, receive, send)  # type: ignore[arg-type]
    status = sent[0]["status"]
    return status, orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def run(fn: Callable[[], Any], clock: trio.abc.Clock | None = None) -> Any:
    return trio.run(fn, clock=clock)


def login(alias: str = "main", secret: str = KEY, **extra: Any) -> dict[str, Any]:
    return {"alias": alias, "secret": secret, **extra}


@pytest.fixture
def keyring(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    kr = Keyring()
    kr.install(monkeypatch)
    return kr


def test_every_domain_error_has_one_answer() -> None:
    raised = {cls for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.AccountError) and cls is not errors.AccountError}
    assert raised == set(ACCOUNT_ERRORS)


@pytest.mark.parametrize(("body", "status", "type_", "message"), [
    (login(alias="bad name"), 400, "invalid_request", "invalid account name 'bad name'"),
    (login(secret="   "), 400, "invalid_request", "the API key is empty"),
    (login(kind="nope"), 400, "invalid_request", "unknown account kind 'nope'"),
    (login(base_url="http://example.com"), 400, "invalid_request", "refusing plain http:// for example.com"),
])
def test_bad_input_is_400_invalid_request(tmp_path: Path, keyring: Keyring, body: dict[str, Any], status: int,
                                          type_: str, message: str) -> None:
    app, _ = make_app(tmp_path, probe_answering(200))
    got_status, got = run(lambda: call(app, "POST", "/v1/accounts", body))
    assert (got_status, got["error"]["type"]) == (status, type_)
    assert got["error"]["message"].startswith(message)
    assert keyring.stored == {}


def test_rejected_key_is_400_key_rejected_and_nothing_is_stored(tmp_path: Path, keyring: Keyring) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "authentication_error",
                                                    "message": f"invalid x-api-key {KEY}"}})
    app, accounts = make_app(tmp_path, probe_answering(401, body))
    status, got = run(lambda: call(app, "POST", "/v1/accounts", login()))
    assert (status, got["error"]["type"]) == (400, "key_rejected")
    message = got["error"]["message"]
    assert message.startswith("https://api.anthropic.com rejected this key (401: invalid x-api-key ")
    assert "nothing was stored" in message and KEY not in message  # the echoed key is redacted
    assert keyring.stored == {} and accounts.registry.accounts == {}
    assert not (tmp_path / "accounts.json").exists()


def test_upstream_error_while_checking_is_502_upstream_error(tmp_path: Path, keyring: Keyring) -> None:
    app, _ = make_app(tmp_path, probe_answering(500, b'{"error": {"message": "overloaded"}}'))
    status, got = run(lambda: call(app, "POST", "/v1/accounts", login()))
    assert (status, got["error"]["type"]) == (502, "upstream_error")
    assert got["error"]["message"] == ("https://api.anthropic.com answered 500 (overloaded) while checking the key; "
                                       "nothing was stored")


def test_unreachable_upstream_is_502_upstream_unreachable(tmp_path: Path, keyring: Keyring) -> None:
    app, _ = make_app(tmp_path, probe_unreachable)
    status, got = run(lambda: call(app, "POST", "/v1/accounts", login()))
    assert (status, got["error"]["type"]) == (502, "upstream_unreachable")
    assert got["error"]["message"] == ("could not reach https://api.anthropic.com to check the key "
                                       "(connection refused); nothing was stored")


def test_no_keyring_is_503_keyring_unavailable_before_the_upstream_is_asked(tmp_path: Path,
                                                                           keyring: Keyring) -> None:
    asked: list[str] = []

    async def probe(kind: str, base_url: str, secret: str) -> KeyCheck:
        asked.append(base_url)
        return KeyCheck(200, parse_ratelimits([]), b"{}")

    keyring.unavailable = errors.KeyringUnavailable("no usable keyring backend was found. Install one.")
    app, _ = make_app(tmp_path, probe)
    status, got = run(lambda: call(app, "POST", "/v1/accounts", login()))
    assert (status, got["error"]) == (503, {"type": "keyring_unavailable",
                                            "message": "no usable keyring backend was found. Install one."})
    assert asked == []


def test_keyring_that_never_answers_is_503_after_the_control_bound(tmp_path: Path, keyring: Keyring,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(secrets, "check_keyring", lambda: release.wait(30))
    app, _ = make_app(tmp_path, probe_answering(200))

    async def main() -> tuple[int, Any, float]:
        start = trio.current_time()
        status, got = await call(app, "POST", "/v1/accounts", login())
        return status, got, trio.current_time() - start

    try:
        status, got, waited = run(main, trio.testing.MockClock(autojump_threshold=0))
    finally:
        release.set()
    assert (status, got["error"]["type"]) == (503, "keyring_unavailable")
    assert got["error"]["message"].startswith("the OS keyring has not answered for 20 s; it is probably locked")
    assert waited == pytest.approx(service_module.KEYRING_CONTROL_TIMEOUT)


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/v1/accounts/ghost"),
    ("POST", "/v1/accounts/ghost/enable"),
    ("POST", "/v1/accounts/ghost/disable"),
])
def test_unknown_account_is_404_not_found(tmp_path: Path, keyring: Keyring, method: str, path: str) -> None:
    app, _ = make_app(tmp_path, probe_answering(200))
    status, got = run(lambda: call(app, method, path))
    assert (status, got["error"]) == (404, {"type": "not_found",
                                            "message": "no account named 'ghost' (accounts: none yet)"})


def test_prefer_and_refresh_name_the_known_accounts(tmp_path: Path, keyring: Keyring) -> None:
    app, _ = make_app(tmp_path, probe_answering(200))

    async def main() -> list[tuple[int, Any]]:
        return [await call(app, "POST", "/v1/accounts", login("main")),
                await call(app, "POST", "/v1/prefer", {"alias": "other"}),
                await call(app, "POST", "/v1/refresh", {"alias": "other"})]

    (created, account), *missing = run(main)
    assert created == 201 and account["account"]["alias"] == "main"
    for status, got in missing:
        assert (status, got["error"]) == (404, {"type": "not_found",
                                                "message": "no account named 'other' (accounts: main)"})


def test_login_stores_the_key_and_a_429_still_counts_as_valid(tmp_path: Path, keyring: Keyring) -> None:
    app, accounts = make_app(tmp_path, probe_answering(429, b'{"error": {"message": "slow down"}}'))
    status, got = run(lambda: call(app, "POST", "/v1/accounts", login()))
    assert status == 201 and got["account"]["alias"] == "main"
    assert keyring.stored == {"main": KEY}
    assert list(accounts.registry.accounts) == ["main"]
    assert accounts.pool.accounts["main"].secret == KEY


def test_service_raises_domain_errors_not_http(tmp_path: Path, keyring: Keyring) -> None:
    _, accounts = make_app(tmp_path, probe_answering(403))
    with pytest.raises(errors.KeyRejected):
        run(lambda: accounts.login("main", KEY, "anthropic", None))
    with pytest.raises(errors.AccountNotFound):
        run(lambda: accounts.logout("main"))


def registered(tmp_path: Path, *aliases: str) -> Registry:
    registry = Registry(tmp_path / "accounts.json")
    for alias in aliases:
        registry.upsert(alias, "anthropic", "https://api.anthropic.com")
    registry.save()
    return registry


def test_a_locked_keyring_is_said_after_the_bound_and_its_late_answer_still_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unlocked = threading.Event()

    def get_secret(alias: str) -> str | None:  # a locked Secret Service: holds the call until unlocked
        unlocked.wait(30)
        return KEY

    monkeypatch.setattr(secrets, "get_secret", get_secret)
    pool = Pool()
    accounts = AccountService(registered(tmp_path, "main"), pool, probe_answering(200))
    accounts.load()
    assert pool.view(pool.accounts["main"])["status"] == "waiting_for_keyring"
    assert pool.keyring_answer_expected  # requests queue briefly for the first read

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accounts.read_secrets_forever)
            await trio.sleep(secrets.KEYRING_TIMEOUT + 0.5)  # virtual time: the read is now overdue
            view = pool.view(pool.accounts["main"])
            assert view["status"] == "waiting_for_keyring"
            assert view["reason"] == ("the OS keyring has not answered for 3 s; it is probably locked; "
                                      "dario retries by itself")
            assert accounts.keyring_problem is not None and "Unlock it" in accounts.keyring_problem
            assert not pool.keyring_answer_expected  # requests now get a short 503 instead of queueing
            assert not accounts.keyring_first_read.is_set()
            unlocked.set()
            await accounts.keyring_first_read.wait()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        unlocked.set()
    assert pool.accounts["main"].secret == KEY
    assert accounts.keyring_problem is None
    assert pool.view(pool.accounts["main"])["status"] == "ok"


def test_refresh_rereads_a_key_the_keyring_could_not_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Exception | str] = [errors.KeyringUnavailable("the keyring refused (DBusError: no)"), KEY]
    reads: list[str] = []

    def get_secret(alias: str) -> str | None:
        reads.append(alias)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(secrets, "get_secret", get_secret)
    pool = Pool()
    accounts = AccountService(registered(tmp_path, "main"), pool, probe_answering(200))
    accounts.load()

    async def main() -> list[Any]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accounts.read_secrets_forever)
            await accounts.keyring_first_read.wait()
            assert pool.view(pool.accounts["main"])["reason"] == ("the keyring refused (DBusError: no); "
                                                                  "dario retries by itself")
            results = await accounts.refresh("main")  # asks for a read now, not after the backoff
            nursery.cancel_scope.cancel()
        return results

    results = trio.run(main, clock=trio.testing.MockClock())  # a clock that never moves: no backoff ran out
    assert reads == ["main", "main"]
    assert results == [{"alias": "main", "ok": True, "status": "ok", "message": "key valid; windows re-read"}]
    assert pool.accounts["main"].secret == KEY
