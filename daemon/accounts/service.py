"""The account service: log in, log out, enable, prefer, refresh, and reading keys from the keyring.

Accounts come from two places: the registry (made with `dario-ctl login`, keys in the OS keyring)
and, on a server, the team config file (`ManagedAccount`: each names its secret source, and
login/logout refuse them; `refresh` re-reads the source). What a source gives is turned into the
stored form by `kinds.prepare`, as a login's input is: a Bedrock account's AWS keys become the
adapter's document, and one whose credential is a reference (an AWS profile, Vertex ADC) has no
source at all.

It changes three things together (the registry file, the OS keyring and the pool) and raises
only the domain errors of `accounts.errors`; the control server turns them into HTTP answers.
The pool and the upstream's key check come in as interfaces (`AccountPool`, `KeyProbe`), so this
room imports nothing of the request path but the adapters' account-document helpers, through
`accounts.kinds` (what a Bedrock or Vertex login stores is defined by its adapter). Blocking work
(keyring, files) runs in worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import trio

from dario.daemon.accounts import kinds, secrets
from dario.daemon.accounts.errors import (
    AccountNotFound,
    InvalidAccount,
    KeyRejected,
    KeyringUnavailable,
    ManagedByConfig,
    UpstreamRefused,
    UpstreamUnreachable,
)
from dario.daemon.accounts.kinds import LoginFields
from dario.daemon.accounts.registry import Registry, check_alias, check_limits
from dario.daemon.accounts.sources import KeyringSource, SecretSource, SecretUnavailable
from dario.daemon.commands import command
from dario.daemon.control.api import ACCOUNT_KINDS, AccountView, LoginResult, RefreshResult
from dario.daemon.redact import redact

log = logging.getLogger("dario.accounts")

ANTHROPIC_KINDS = ("anthropic", "anthropic-compatible")
KEYRING_CONTROL_TIMEOUT = 20.0  # login/logout: time to answer the unlock prompt the call may open (ctl waits 30 s+)


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The upstream's answer to a key check: its status, rate-limit snapshot and body."""

    status: int
    ratelimits: Any  # the pool's rate-limit snapshot, read from the answer's headers
    body: bytes
    spend_limit: bool = False  # a 429 that is the organisation's spend limit (the upstream's one rule)
    message: str | None = None  # the error's message, redacted of every secret value (None: read `body`)
    error_type: str | None = None  # the error type the provider named (e.g. AccessDeniedException)
    checked: str | None = None  # what was checked, in words (e.g. "Amazon Bedrock CountTokens on …")
    # An error that still proves the credential (e.g. the one model checked is not enabled): the
    # account is stored and the user told this.
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class ManagedAccount:
    """An account the team config file defines: its metadata and where its secret comes from."""

    alias: str
    kind: str
    base_url: str
    source: SecretSource | None  # None: the credential is a reference (AWS profile or chain, Vertex ADC)
    config_file: str  # the file that defines it, for messages
    enabled: bool = True
    preferred: bool = False
    options: dict[str, str] = field(default_factory=dict)  # kind fields as LoginFields takes them (region, …)
    limits: dict[str, int | None] = field(default_factory=dict)  # declared limits (rpm, input_tpm, output_tpm)
    configured_base_url: str | None = None  # base_url as the file gives it (None: the kind's default)
    details: dict[str, str | None] = field(default_factory=dict)  # region, project, credential…: shown by views

    @property
    def fields(self) -> LoginFields:
        return LoginFields(**self.options)

    def origin(self) -> str:
        """Where its credential comes from, in words (never the value)."""
        return self.source.describe() if self.source is not None else kinds.describe_reference(self.fields)

    @property
    def reads_keyring(self) -> bool:
        return self.source is not None and self.source.kind == "keyring"

    def stored(self, secret: str) -> str:
        """What the pool keeps for what the source gave (raises InvalidAccount, never quoting it)."""
        return kinds.prepare(self.kind, secret, self.configured_base_url, self.fields).secret


# Sends a cheap authenticated request with (kind, base_url, secret); raises UpstreamUnreachable.
KeyProbe = Callable[[str, str, str], Awaitable[KeyCheck]]


class PoolAccount(Protocol):
    """One account as the pool holds it, as far as the service reads it."""

    alias: str
    kind: str
    base_url: str
    secret: str | None
    keyring_wait: str | None
    needs_login: str | None


class AccountPool(Protocol):
    """The pool's operations the account service uses (the in-memory pool, or a shared one)."""

    keyring_answer_expected: bool
    preferred: str | None

    @property
    def accounts(self) -> Mapping[str, PoolAccount]: ...
    def upsert(self, alias: str, kind: str, base_url: str, created: float, secret: str | None,
               enabled: bool = True, details: Mapping[str, str | None] | None = None) -> Any: ...
    def remove(self, alias: str) -> None: ...
    def set_enabled(self, alias: str, enabled: bool) -> None: ...
    def prefer(self, alias: str | None) -> None: ...
    def secret_loaded(self, alias: str, secret: str | None) -> None: ...
    def mark_keyring_wait(self, alias: str, reason: str) -> None: ...
    def set_keyring_answer_expected(self, expected: bool) -> None: ...
    def secret_unavailable(self, alias: str, reason: str) -> None: ...
    def set_managed(self, alias: str, managed_by: str | None) -> None: ...
    def clear_block(self, alias: str) -> None: ...
    def set_declared_limits(self, alias: str, limits: Mapping[str, int | None], *,
                            forget_estimates: bool = False) -> None: ...
    def notify(self) -> None: ...
    def observe_headers(self, acc: Any, snap: Any, sent_at: float | None = None) -> None: ...
    def observe_rate_limited(self, acc: Any, snap: Any, *, spend_limit: bool, message: str) -> None: ...
    def observe_transient(self, acc: Any, reason: str, sent_at: float | None = None) -> None: ...
    def observe_auth_failure(self, acc: Any, status: int, message: str) -> None: ...
    def view(self, acc: Any, now: float | None = None) -> AccountView: ...


class AccountService:
    def __init__(self, registry: Registry, pool: AccountPool, probe: KeyProbe,
                 managed: list[ManagedAccount] | None = None) -> None:
        self.registry = registry
        self.pool = pool
        self.probe = probe
        self.managed: dict[str, ManagedAccount] = {m.alias: m for m in managed or ()}
        # The keyring, read by read_secrets_forever: why it cannot be read now (long, with the fix), and
        # the signals `refresh` uses to ask for a read and to wait for one to finish.
        self.keyring_problem: str | None = None
        self._keyring_kick = trio.Event()
        self._keyring_round_done = trio.Event()
        self._keyring_rounds_started = 0
        self._keyring_rounds_finished = 0
        self.keyring_first_read = trio.Event()  # set once the first read ended, however it ended

    # -- start-up ------------------------------------------------------------------------
    def load(self) -> None:
        """Accounts from the registry into the pool; their secrets come later.

        The keyring is read by `read_secrets_forever` once the daemon listens: a locked keyring
        holds a read until someone answers its unlock prompt, and that must not keep dariod silent.
        """
        self.registry.load()
        for acc in self.registry.accounts.values():
            if acc.alias in self.managed:
                log.warning("account %s is defined in %s and in %s; using the config file's",
                            acc.alias, self.managed[acc.alias].config_file, self.registry.path)
                continue
            self.pool.upsert(acc.alias, acc.kind, acc.base_url, acc.created, None, acc.enabled, acc.details())
            if any(v is not None for v in acc.limits().values()):
                self.pool.set_declared_limits(acc.alias, acc.limits())
            self.pool.mark_keyring_wait(acc.alias, "reading the key from the OS keyring")
        for m in self.managed.values():
            self.pool.upsert(m.alias, m.kind, m.base_url, 0.0, None, m.enabled, m.details or None)
            self.pool.set_managed(m.alias, "config")
            if any(v is not None for v in m.limits.values()):
                self.pool.set_declared_limits(m.alias, m.limits)
            if m.reads_keyring:
                self.pool.mark_keyring_wait(m.alias, "reading the key from the OS keyring")
            else:
                self._read_source(m)
        self.pool.keyring_answer_expected = bool(self._keyring_pending())
        preferred = next((m.alias for m in self.managed.values() if m.preferred), None)
        self.pool.preferred = preferred or (
            self.registry.preferred if self.registry.preferred in self.pool.accounts else None)

    # -- secrets from a config file's sources ----------------------------------------------
    def _read_source(self, m: ManagedAccount) -> None:
        """Read a config account's secret from its source into the pool (blocking; start-up only)."""
        self._apply_source(m, _read_source(m.source))

    async def _reread_source(self, m: ManagedAccount) -> None:
        self._apply_source(m, await trio.to_thread.run_sync(_read_source, m.source))

    def _apply_source(self, m: ManagedAccount, outcome: tuple[str | None, str | None]) -> None:
        secret, problem = outcome
        if secret is None:
            self._source_failed(m, problem or "no key")
            return
        try:
            stored = m.stored(secret)
        except InvalidAccount as exc:  # kinds' messages never quote the secret
            self._source_failed(m, f"{m.origin()} does not hold a usable credential: "
                                   f"{kinds.config_wording(str(exc))}")
            return
        if self.pool.accounts.get(m.alias) is not None:
            self.pool.secret_loaded(m.alias, stored)

    def _source_failed(self, m: ManagedAccount, problem: str) -> None:
        reason = f"{problem}; then run: {command('dario-ctl')} refresh {m.alias}"  # `problem` names the source
        log.warning("account %s: %s", m.alias, problem)
        self.pool.secret_unavailable(m.alias, reason)

    # -- secrets from the keyring ---------------------------------------------------------
    def _keyring_pending(self) -> list[str]:
        return [a.alias for a in self.pool.accounts.values() if a.secret is None and a.keyring_wait]

    async def read_secrets_forever(self) -> None:
        """Read the keys of waiting accounts; on failure retry with backoff, or at once on refresh.

        One read at a time: a second call to a locked Secret Service would open a second unlock
        prompt. A read that is overdue keeps running (its answer is still used) while the accounts
        say why they wait and requests get a short 503 instead of queueing.
        """
        backoff = secrets.KEYRING_RETRY_MIN
        async with trio.open_nursery() as reads:
            while True:
                self._keyring_kick = trio.Event()
                self._keyring_rounds_started += 1
                pending = self._keyring_pending()
                ok = await self._read_round(reads, pending) if pending else True
                self._keyring_rounds_finished += 1
                self.keyring_first_read.set()
                self._keyring_round_done.set()
                self._keyring_round_done = trio.Event()
                if ok:
                    backoff = secrets.KEYRING_RETRY_MIN
                    await self._keyring_kick.wait()
                else:
                    with trio.move_on_after(backoff):
                        await self._keyring_kick.wait()
                    backoff = min(backoff * 2, secrets.KEYRING_RETRY_MAX)

    async def wait_first_read(self, grace: float) -> None:
        """Give the first keyring read a moment, so a daemon on an unlocked desktop starts with its keys."""
        with trio.move_on_after(grace):
            await self.keyring_first_read.wait()

    async def _read_round(self, reads: trio.Nursery, pending: list[str]) -> bool:
        call = _ThreadCall(lambda: {alias: secrets.get_secret(alias) for alias in pending})
        reads.start_soon(call.run)
        self.pool.set_keyring_answer_expected(True)
        with trio.move_on_after(secrets.KEYRING_TIMEOUT):
            await call.done.wait()
        if not call.done.is_set():
            self._keyring_failed(pending, secrets.keyring_overdue(secrets.KEYRING_TIMEOUT))
            self.pool.set_keyring_answer_expected(False)  # requests stop queueing for it
            await call.done.wait()
        self.pool.set_keyring_answer_expected(False)
        if isinstance(call.error, KeyringUnavailable):
            self._keyring_failed(pending, call.error)
            return False
        if call.error is not None:
            self._keyring_failed(pending, KeyringUnavailable(
                f"reading the keyring failed ({type(call.error).__name__})",
            ))
            return False
        if self.keyring_problem is not None:
            log.info("the OS keyring answered; keys read for %s", ", ".join(pending))
        self.keyring_problem = None
        for alias, secret in (call.result or {}).items():
            acc = self.pool.accounts.get(alias)
            if acc is not None and acc.secret is None:  # a login meanwhile brought a newer key
                managed = self.managed.get(alias)
                if managed is not None and secret:
                    self._apply_source(managed, (secret, None))
                    continue
                self.pool.secret_loaded(alias, secret)
                if managed is not None and not secret:
                    self._source_failed(managed, f"{KeyringSource(alias).describe()} holds no key; store one with "
                                                 f"`keyring set {secrets.KEYRING_SERVICE} {alias}`")
        return True

    def _keyring_failed(self, pending: list[str], exc: KeyringUnavailable) -> None:
        if str(exc) != self.keyring_problem:
            log.warning("%s", exc)  # once per distinct problem, not once per retry
        self.keyring_problem = str(exc)
        for alias in pending:
            acc = self.pool.accounts.get(alias)
            if acc is not None and acc.secret is None:
                self.pool.mark_keyring_wait(alias, exc.short + "; dario retries by itself")

    async def _reread_keyring(self, aliases: list[str]) -> None:
        """Ask for a keyring read of `aliases` now and wait (bounded) for it to finish."""
        for alias in aliases:
            if not self.pool.accounts[alias].keyring_wait:
                self.pool.mark_keyring_wait(alias, "reading the key from the OS keyring")
        target = self._keyring_rounds_started + 1
        self._keyring_kick.set()
        with trio.move_on_after(secrets.KEYRING_TIMEOUT + 1.0):
            while self._keyring_rounds_finished < target:
                await self._keyring_round_done.wait()

    # -- account operations ----------------------------------------------------------------
    async def login(self, alias: str, secret: str, kind: str, base_url: str | None,
                    fields: LoginFields | None = None, limits: Mapping[str, object] | None = None) -> AccountView:
        return (await self.login_account(alias, secret, kind, base_url, fields, limits))["account"]

    async def login_account(self, alias: str, secret: str, kind: str, base_url: str | None,
                            fields: LoginFields | None = None,
                            limits: Mapping[str, object] | None = None) -> LoginResult:
        """Check the credential with the kind's key check, then store it; a rejected one stores nothing.

        `limits`: declared limits (rpm, input_tpm, output_tpm) to set with the account.
        """
        check_alias(alias)
        self._refuse_managed(alias, "login")
        if kind not in ACCOUNT_KINDS:
            raise InvalidAccount(f"unknown account kind {kind!r}; choose one of: {', '.join(ACCOUNT_KINDS)}")
        declared = check_limits(dict(limits or {}))
        prepared = kinds.prepare(kind, secret, base_url, fields or LoginFields())
        url, secret = prepared.base_url, prepared.secret
        await _keyring_call(secrets.check_keyring)
        try:
            check = await self.probe(kind, url, secret)
        except UpstreamUnreachable as exc:
            raise UpstreamUnreachable(
                f"could not reach {url} to check the key ({exc}); nothing was stored", exc.cause,
            ) from None
        status = check.status
        message = _check_message(check, secret)
        what = check.checked or url
        if status in (401, 403) and check.warning is None:
            if kind in ANTHROPIC_KINDS:
                raise KeyRejected(
                    f"{url} rejected this key ({status}: {message}); nothing was stored. "
                    "Check that it is an API key from the provider's console.",
                )
            named = f"{status} {check.error_type}" if check.error_type else str(status)
            raise KeyRejected(f"{what} rejected this credential ({named}: {message}); nothing was stored.")
        # A 429 still proves the key is valid (the account is merely at its limit right now).
        if status >= 400 and status != 429 and check.warning is None:
            raise UpstreamRefused(
                f"{what if kind not in ANTHROPIC_KINDS else url} answered {status} ({message}) while checking "
                "the key; nothing was stored",
            )
        await _keyring_call(lambda: secrets.set_secret(alias, secret))
        acc = self.registry.upsert(alias, kind, url, prepared.details)
        if declared:
            acc.set_limits({**acc.limits(), **declared})
        await trio.to_thread.run_sync(self.registry.save)
        state = self.pool.upsert(alias, kind, url, acc.created, secret, acc.enabled, acc.details())
        self.pool.set_declared_limits(alias, acc.limits())
        self.pool.clear_block(alias)
        if status == 429:
            self.pool.observe_rate_limited(state, check.ratelimits, spend_limit=check.spend_limit, message=message)
        else:
            self.pool.observe_headers(state, check.ratelimits)
        self.pool.notify()
        log.info("account %s logged in (%s, %s)", alias, kind, url)
        result: LoginResult = {"account": self.pool.view(state)}
        if check.warning is not None:
            log.warning("account %s: %s", alias, check.warning)
            result["warning"] = check.warning
        return result

    def _require(self, alias: str) -> None:
        if alias not in self.registry.accounts and alias not in self.managed:
            known = ", ".join(self.pool.accounts) or "none yet"
            raise AccountNotFound(f"no account named {alias!r} (accounts: {known})")

    def _refuse_managed(self, alias: str, what: str) -> None:
        m = self.managed.get(alias)
        if m is None:
            return
        change = ("change the secret at its source" if what == "login"
                  else "remove its [[account]] table from the file and restart dariod")
        raise ManagedByConfig(
            f"account {alias!r} is defined in the config file {m.config_file}, so {what} cannot change it: "
            f"{change} (its credential comes from {m.origin()}); "
            f"after changing the secret, run: {command('dario-ctl')} refresh {alias}"
        )

    async def logout(self, alias: str) -> None:
        self._refuse_managed(alias, "logout")
        self._require(alias)
        await _keyring_call(lambda: secrets.delete_secret(alias))
        self.registry.remove(alias)
        await trio.to_thread.run_sync(self.registry.save)
        self.pool.remove(alias)
        log.info("account %s removed", alias)

    async def set_enabled(self, alias: str, enabled: bool) -> AccountView:
        self._require(alias)
        if alias in self.registry.accounts and alias not in self.managed:
            self.registry.accounts[alias].enabled = enabled
            await trio.to_thread.run_sync(self.registry.save)
        # A config account: until dariod restarts, when the file's `enabled` holds again.
        self.pool.set_enabled(alias, enabled)
        return self.pool.view(self.pool.accounts[alias])

    async def set_limits(self, alias: str, changes: Mapping[str, object], *, clear: bool = False) -> AccountView:
        """Change the declared limits (a value None clears that one; `clear`: all first); applied at once."""
        self._require(alias)
        checked = check_limits(dict(changes))
        acc = self.registry.accounts.get(alias)
        if acc is None:  # a config account: the change holds until restart; the file decides then
            shown = self.pool.view(self.pool.accounts[alias]).get("limits")
            base: dict[str, int | None] = {} if clear or shown is None else {
                "rpm": shown["rpm"], "input_tpm": shown["input_tpm"], "output_tpm": shown["output_tpm"]}
            declared: dict[str, int | None] = {**base, **checked}
        else:
            acc.set_limits({**({} if clear else acc.limits()), **checked})
            await trio.to_thread.run_sync(self.registry.save)
            declared = acc.limits()
        self.pool.set_declared_limits(alias, declared, forget_estimates=clear)
        log.info("account %s: declared limits %s", alias,
                 ", ".join(f"{k}={v}" for k, v in declared.items() if v is not None) or "none")
        return self.pool.view(self.pool.accounts[alias])

    async def prefer(self, alias: str | None) -> str | None:
        if alias is not None:
            self._require(alias)
        # A config account is preferred until dariod restarts; the file's `preferred` decides then.
        self.registry.preferred = alias if alias in self.registry.accounts else None
        await trio.to_thread.run_sync(self.registry.save)
        self.pool.prefer(alias)
        return alias

    async def refresh(self, alias: str | None) -> list[RefreshResult]:
        if alias is not None:
            self._require(alias)
        targets = [alias] if alias else list(self.pool.accounts)
        for name in targets:  # a config account's source may hold a new (rotated) key: read it again
            m = self.managed.get(name)
            if m is not None and not m.reads_keyring:
                await self._reread_source(m)
        unread = [name for name in targets if self.pool.accounts[name].secret is None
                  and not (name in self.managed and not self.managed[name].reads_keyring)]
        if unread:
            await self._reread_keyring(unread)
        results: list[RefreshResult] = []
        for name in targets:
            results.append(await self._refresh_one(name))
        self.pool.notify()
        return results

    async def _refresh_one(self, alias: str) -> RefreshResult:
        acc = self.pool.accounts.get(alias)
        if acc is None:  # logged out while the keyring was read
            return {"alias": alias, "ok": False, "status": "needs_login", "message": "removed"}
        if acc.secret is None:
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": view["reason"] or ""}
        try:
            check = await self.probe(acc.kind, acc.base_url, acc.secret)
        except UpstreamUnreachable as exc:
            self.pool.observe_transient(acc, f"refresh failed: {exc.cause}")
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": f"unreachable: {exc}"}
        status = check.status
        message = _check_message(check, acc.secret)
        if check.warning is not None:
            status = 200  # the credential works; what the check could not do is said below
        if status in (401, 403):
            self.pool.observe_auth_failure(acc, status, message)
            fix = (f"fix the credential in {self.managed[alias].origin()}, then run: "
                   f"{command('dario-ctl')} refresh {alias}" if alias in self.managed
                   else f"run: {command('dario-ctl')} login {alias}")
            return {"alias": alias, "ok": False, "status": "needs_login", "message": f"key rejected ({status}); {fix}"}
        if status == 429:
            self.pool.observe_rate_limited(acc, check.ratelimits, spend_limit=check.spend_limit, message=message)
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": "still rate limited"}
        if status >= 400:
            self.pool.observe_transient(acc, f"refresh answered {status}")
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": f"upstream answered {status}"}
        # The key works: whatever blocked the account is re-judged from fresh headers alone.
        acc.needs_login = None
        self.pool.clear_block(alias)
        self.pool.observe_headers(acc, check.ratelimits)
        view = self.pool.view(acc)
        said = f"credential valid; {check.warning}" if check.warning else "key valid; windows re-read"
        return {"alias": alias, "ok": True, "status": view["status"], "message": said[:300]}


def _read_source(source: SecretSource | None) -> tuple[str | None, str | None]:
    """(secret, None) or (None, why not): a blocking read, safe to run in a worker thread.

    No source (a credential by reference): ("", None), the empty secret `kinds.prepare` expects then.
    """
    if source is None:
        return "", None
    try:
        return source.read(), None
    except (SecretUnavailable, KeyringUnavailable) as exc:
        return None, str(exc)


async def _keyring_call(fn: Callable[[], object]) -> None:
    """A keyring write for the control API: bounded, so a locked keyring answers at once, not silence.

    The bound is long enough to answer an unlock prompt that the call itself may open.
    """
    call = _ThreadCall(fn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        with trio.move_on_after(KEYRING_CONTROL_TIMEOUT):
            await call.done.wait()
        answered = call.done.is_set()  # before the cancel below marks an abandoned call done too
        nursery.cancel_scope.cancel()
    if not answered:
        raise secrets.keyring_overdue(KEYRING_CONTROL_TIMEOUT)
    if call.error is not None:
        raise call.error


class _ThreadCall:
    """One blocking call in a worker thread whose answer can be awaited by several waits in turn."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            # abandon_on_cancel: at shutdown a read stuck behind an unlock prompt is left behind
            # (trio's worker threads are daemon threads) instead of holding the exit.
            self.result = await trio.to_thread.run_sync(self.fn, abandon_on_cancel=True)
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()


def _check_message(check: KeyCheck, secret: str | None) -> str:
    if check.message is not None:
        return redact(check.message, (secret,))[:200]  # the probe redacted every secret value already
    return _upstream_message(check.body, secret)


def _upstream_message(body: bytes, secret: str | None) -> str:
    try:
        parsed = orjson.loads(body)
        message = parsed["error"]["message"]
        if isinstance(message, str):
            return redact(message, (secret,))[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return "no message"
