"""Everything one running dariod holds, and the operations both apps share.

The public app and the control app are two views on this one object: accounts (registry,
keyring, pool), analytics, metrics, client keys. Blocking work (keyring, SQLite, files)
goes to worker threads; state changes are persisted from one background task.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson
import trio

from dario.daemon import __version__, atomicfile, paths
from dario.daemon.accounts import registry as accounts
from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.commands import command
from dario.daemon.control.api import AccountView, RefreshResult, Status
from dario.daemon.exchange import Incoming, Outcome
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.clients import FamilyCache
from dario.daemon.recording.metrics import Metrics
from dario.daemon.recording.prices import PriceTable
from dario.daemon.redact import redact
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import parse as parse_ratelimits
from dario.daemon.settings import Settings
from dario.daemon.upstream import anthropic as upstream
from dario.daemon.upstream.errors import parse_error
from dario.daemon.upstream.httpclient import HttpClient, UpstreamError

log = logging.getLogger("dario.state")

KEYRING_CONTROL_TIMEOUT = 20.0  # login/logout: time to answer the unlock prompt the call may open (ctl waits 30 s+)


class ControlFailure(Exception):
    """A control-API operation that failed; status + type + message go to the caller."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


class DaemonState:
    def __init__(self, settings: Settings, http: HttpClient) -> None:
        self.settings = settings
        self.http = http
        self.started_at = time.time()
        self.requests_served = 0
        self.listen = f"http://{settings.host}:{settings.port}"
        self.registry = accounts.Registry(paths.accounts_file())
        self.pool = Pool()
        self.pool.on_change = self._mark_dirty
        self._dirty = trio.Event()
        self.families = FamilyCache()
        prices = _load_or_default(PriceTable.load, paths.prices_file(), PriceTable)
        self.analytics: AnalyticsStore | None = (
            AnalyticsStore(paths.analytics_db(), prices=prices, retention_days=settings.analytics_retention_days)
            if settings.analytics else None
        )
        self.metrics = Metrics(lambda: [dict(v) for v in self.pool.views()], lambda: self.pool.queue_depth)
        self.client_keys = ClientKeyStore(paths.keys_file())
        # The keyring, read by read_secrets_forever: why it cannot be read now (long, with the fix), and
        # the signals `refresh` uses to ask for a read and to wait for one to finish.
        self.keyring_problem: str | None = None
        self._keyring_kick = trio.Event()
        self._keyring_round_done = trio.Event()
        self._keyring_rounds_started = 0
        self._keyring_rounds_finished = 0
        self.keyring_first_read = trio.Event()  # set once the first read ended, however it ended

    # -- start-up ------------------------------------------------------------------------
    async def load(self) -> None:
        """Accounts from the registry, cooldowns from the state file; secrets come later.

        The keyring is read by `read_secrets_forever` once the daemon listens: a locked keyring
        holds a read until someone answers its unlock prompt, and that must not keep dariod silent.
        """
        self.registry.load()
        for acc in self.registry.accounts.values():
            self.pool.upsert(acc.alias, acc.kind, acc.base_url, acc.created, None, acc.enabled)
            self.pool.mark_keyring_wait(acc.alias, "reading the key from the OS keyring")
        self.pool.keyring_answer_expected = bool(self.registry.accounts)
        self.pool.preferred = self.registry.preferred
        try:
            self.pool.import_state(atomicfile.read_json(paths.pool_state_file(), {}))
        except ValueError:
            log.warning("ignoring unreadable %s", paths.pool_state_file())

    # -- secrets from the keyring ---------------------------------------------------------
    def _keyring_pending(self) -> list[str]:
        return [a.alias for a in self.pool.accounts.values() if a.secret is None and a.keyring_wait]

    async def read_secrets_forever(self) -> None:
        """Read the keys of waiting accounts; on failure retry with backoff, or at once on refresh.

        One read at a time: a second call to a locked Secret Service would open a second unlock
        prompt. A read that is overdue keeps running (its answer is still used) while the accounts
        say why they wait and requests get a short 503 instead of queueing.
        """
        backoff = accounts.KEYRING_RETRY_MIN
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
                    backoff = accounts.KEYRING_RETRY_MIN
                    await self._keyring_kick.wait()
                else:
                    with trio.move_on_after(backoff):
                        await self._keyring_kick.wait()
                    backoff = min(backoff * 2, accounts.KEYRING_RETRY_MAX)

    async def wait_first_read(self, grace: float) -> None:
        """Give the first keyring read a moment, so a daemon on an unlocked desktop starts with its keys."""
        with trio.move_on_after(grace):
            await self.keyring_first_read.wait()

    async def _read_round(self, reads: trio.Nursery, pending: list[str]) -> bool:
        call = _ThreadCall(lambda: {alias: accounts.get_secret(alias) for alias in pending})
        reads.start_soon(call.run)
        self.pool.set_keyring_answer_expected(True)
        with trio.move_on_after(accounts.KEYRING_TIMEOUT):
            await call.done.wait()
        if not call.done.is_set():
            self._keyring_failed(pending, accounts.keyring_overdue(accounts.KEYRING_TIMEOUT))
            self.pool.set_keyring_answer_expected(False)  # requests stop queueing for it
            await call.done.wait()
        self.pool.set_keyring_answer_expected(False)
        if isinstance(call.error, accounts.KeyringUnavailable):
            self._keyring_failed(pending, call.error)
            return False
        if call.error is not None:
            self._keyring_failed(pending, accounts.KeyringUnavailable(
                f"reading the keyring failed ({type(call.error).__name__})",
            ))
            return False
        if self.keyring_problem is not None:
            log.info("the OS keyring answered; keys read for %s", ", ".join(pending))
        self.keyring_problem = None
        for alias, secret in (call.result or {}).items():
            acc = self.pool.accounts.get(alias)
            if acc is not None and acc.secret is None:  # a login meanwhile brought a newer key
                self.pool.secret_loaded(alias, secret)
        return True

    def _keyring_failed(self, pending: list[str], exc: accounts.KeyringUnavailable) -> None:
        if str(exc) != self.keyring_problem:
            log.warning("%s", exc)  # once per distinct problem, not once per retry
        self.keyring_problem = str(exc)
        for alias in pending:
            if alias in self.pool.accounts and self.pool.accounts[alias].secret is None:
                self.pool.mark_keyring_wait(alias, exc.short + "; dario retries by itself")

    async def _reread_keyring(self, aliases: list[str]) -> None:
        """Ask for a keyring read of `aliases` now and wait (bounded) for it to finish."""
        for alias in aliases:
            if not self.pool.accounts[alias].keyring_wait:
                self.pool.mark_keyring_wait(alias, "reading the key from the OS keyring")
        target = self._keyring_rounds_started + 1
        self._keyring_kick.set()
        with trio.move_on_after(accounts.KEYRING_TIMEOUT + 1.0):
            while self._keyring_rounds_finished < target:
                await self._keyring_round_done.wait()

    def _mark_dirty(self) -> None:
        self._dirty.set()

    async def persist_forever(self) -> None:
        """Write pool state (cooldowns, windows) after changes, at most twice a second."""
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await trio.to_thread.run_sync(self.save_pool_state)
                if self.client_keys.dirty:
                    await trio.to_thread.run_sync(self.client_keys.flush)
                await trio.sleep(0.5)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.save_pool_state)
                await trio.to_thread.run_sync(self.client_keys.flush)

    def save_pool_state(self) -> None:
        try:
            atomicfile.write_json_atomic(paths.pool_state_file(), self.pool.export_state())
        except OSError as exc:
            log.warning("could not save pool state to %s: %s", paths.pool_state_file(), exc)

    # -- views ---------------------------------------------------------------------------
    def status(self) -> Status:
        now = time.time()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(now - self.started_at, 3),
            "listen": self.listen,
            "socket": str(self.settings.socket),
            "auth_required": self.settings.api_key is not None,
            "requests_served": self.requests_served,
            "pool": self.pool.pool_view(),
            "accounts": self.pool.views(),
            "keyring": self.keyring_problem,
        }

    def client_family(self, user_agent: bytes | None) -> str:
        return self.families.family(user_agent)

    def record(self, inc: Incoming, out: Outcome) -> None:
        rec = UsageRecord(
            ts=time.time(), client=inc.client, account=out.account, model=inc.model, dialect=inc.dialect,
            endpoint=inc.endpoint, streaming=inc.stream, status=out.status, error_type=out.error_type,
            input_tokens=out.usage.input_tokens, output_tokens=out.usage.output_tokens,
            cache_write_5m=out.usage.cache_write_5m, cache_write_1h=out.usage.cache_write_1h,
            cache_read=out.usage.cache_read, latency_ms=(time.perf_counter() - inc.t_start) * 1000.0,
            ttft_ms=out.ttft_ms, failovers=out.failovers, queue_wait_ms=out.queue_wait_ms,
        )
        if self.analytics is not None:
            self.analytics.record(rec)
        self.metrics.observe(rec)

    async def usage(self, window: str) -> dict[str, Any]:
        if self.analytics is None:
            raise ValueError("analytics are off (dariod --no-analytics)")
        pool_windows: dict[str, dict[str, dict[str, Any]]] = {
            v["alias"]: {name: dict(w) for name, w in v["windows"].items()} for v in self.pool.views()
        }
        await self.analytics.flush()  # so a caller sees the requests it just made
        analytics = self.analytics
        result: dict[str, Any] = await trio.to_thread.run_sync(
            lambda: analytics.query(window, pool_windows=pool_windows)
        )
        return result

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    # -- account operations (control API) ------------------------------------------------
    async def login(self, alias: str, secret: str, kind: str, base_url: str | None) -> AccountView:
        try:
            accounts.check_alias(alias)
            url = accounts.normalise_base_url(kind, base_url)
        except accounts.AccountError as exc:
            raise ControlFailure(400, "invalid_request", str(exc)) from None
        secret = secret.strip()
        if not secret:
            raise ControlFailure(400, "invalid_request", "the API key is empty")
        await _keyring_call(accounts.check_keyring)
        status, headers, body = await self._validate(url, secret)
        if status in (401, 403):
            raise ControlFailure(
                400, "key_rejected",
                f"{url} rejected this key ({status}: {_upstream_message(body, secret)}); nothing was stored. "
                "Check that it is an API key from the provider's console.",
            )
        # A 429 still proves the key is valid (the account is merely at its limit right now).
        if status >= 400 and status != 429:
            raise ControlFailure(
                502, "upstream_error",
                f"{url} answered {status} ({_upstream_message(body, secret)}) while checking the key; "
                "nothing was stored",
            )
        await _keyring_call(lambda: accounts.set_secret(alias, secret))
        acc = self.registry.upsert(alias, kind, url)
        await trio.to_thread.run_sync(self.registry.save)
        state = self.pool.upsert(alias, kind, url, acc.created, secret, acc.enabled)
        self.pool.clear_block(alias)
        snap = parse_ratelimits(headers)
        if status == 429:
            self.pool.observe_rate_limited(state, snap, spend_limit=parse_error(status, body).spend_limit,
                                          message=_upstream_message(body, secret))
        else:
            self.pool.observe_headers(state, snap)
        self.pool.notify()
        log.info("account %s logged in (%s, %s)", alias, kind, url)
        return self.pool.view(state)

    async def _validate(self, url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            return await upstream.validate_key(self.http, url, secret)
        except UpstreamError as exc:
            raise ControlFailure(
                502, "upstream_unreachable", f"could not reach {url} to check the key ({exc}); nothing was stored"
            ) from None

    def _require(self, alias: str) -> None:
        if alias not in self.registry.accounts:
            known = ", ".join(self.registry.accounts) or "none yet"
            raise ControlFailure(404, "not_found", f"no account named {alias!r} (accounts: {known})")

    async def logout(self, alias: str) -> None:
        self._require(alias)
        await _keyring_call(lambda: accounts.delete_secret(alias))
        self.registry.remove(alias)
        await trio.to_thread.run_sync(self.registry.save)
        self.pool.remove(alias)
        log.info("account %s removed", alias)

    async def set_enabled(self, alias: str, enabled: bool) -> AccountView:
        self._require(alias)
        self.registry.accounts[alias].enabled = enabled
        await trio.to_thread.run_sync(self.registry.save)
        self.pool.set_enabled(alias, enabled)
        return self.pool.view(self.pool.accounts[alias])

    async def prefer(self, alias: str | None) -> str | None:
        if alias is not None:
            self._require(alias)
        self.registry.preferred = alias
        await trio.to_thread.run_sync(self.registry.save)
        self.pool.prefer(alias)
        return alias

    async def refresh(self, alias: str | None) -> list[RefreshResult]:
        if alias is not None:
            self._require(alias)
        targets = [alias] if alias else list(self.pool.accounts)
        unread = [name for name in targets if self.pool.accounts[name].secret is None]
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
            status, headers, body = await upstream.validate_key(self.http, acc.base_url, acc.secret)
        except UpstreamError as exc:
            self.pool.observe_transient(acc, f"refresh failed: {type(exc).__name__}")
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": f"unreachable: {exc}"}
        snap = parse_ratelimits(headers)
        if status in (401, 403):
            self.pool.observe_auth_failure(acc, status, _upstream_message(body, acc.secret))
            return {"alias": alias, "ok": False, "status": "needs_login",
                    "message": f"key rejected ({status}); run: {command('dario-ctl')} login {alias}"}
        if status == 429:
            self.pool.observe_rate_limited(acc, snap, spend_limit=parse_error(status, body).spend_limit,
                                          message=_upstream_message(body, acc.secret))
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": "still rate limited"}
        if status >= 400:
            self.pool.observe_transient(acc, f"refresh answered {status}")
            view = self.pool.view(acc)
            return {"alias": alias, "ok": False, "status": view["status"], "message": f"upstream answered {status}"}
        # The key works: whatever blocked the account is re-judged from fresh headers alone.
        acc.needs_login = None
        self.pool.clear_block(alias)
        self.pool.observe_headers(acc, snap)
        view = self.pool.view(acc)
        return {"alias": alias, "ok": True, "status": view["status"], "message": "key valid; windows re-read"}

    async def fetch_upstream_models(self) -> list[dict[str, Any]] | None:
        """The upstream's model list, through any account that can serve right now."""
        from dario.daemon.exchange import Estimate

        lease = self.pool.choose(Estimate())
        if lease is None:
            return None
        try:
            acc = lease.account
            assert acc.secret is not None
            response = await upstream.send(self.http, acc.base_url, acc.secret, "GET", upstream.PATH_MODELS,
                                           b"limit=1000", [], b"", read_timeout=15)
            try:
                body = await response.read()
            finally:
                await response.aclose()
            if response.status != 200:
                return None
            data = orjson.loads(body).get("data")
            return data if isinstance(data, list) else None
        finally:
            self.pool.release(lease)


async def _keyring_call(fn: Any) -> None:
    """A keyring write for the control API: bounded, so a locked keyring answers 503, not silence.

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
        raise ControlFailure(503, "keyring_unavailable", str(accounts.keyring_overdue(KEYRING_CONTROL_TIMEOUT)))
    if isinstance(call.error, accounts.KeyringUnavailable):
        raise ControlFailure(503, "keyring_unavailable", str(call.error))
    if call.error is not None:
        raise call.error


class _ThreadCall:
    """One blocking call in a worker thread whose answer can be awaited by several waits in turn."""

    def __init__(self, fn: Any) -> None:
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


def _upstream_message(body: bytes, secret: str | None) -> str:
    try:
        parsed = orjson.loads(body)
        message = parsed["error"]["message"]
        if isinstance(message, str):
            return redact(message, (secret,))[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return "no message"


def _load_or_default(loader: Any, path: Any, cls: Any) -> Any:
    try:
        return loader(path)
    except ValueError as exc:
        log.warning("%s; using the built-in table", exc)
        return cls()
