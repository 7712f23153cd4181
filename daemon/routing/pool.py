"""The pool: per-account state, headroom, choice, cooldowns and the wait queue.

Every upstream answer (errors included) feeds `observe`; every request takes a `Lease`
from `acquire` and gives it back with `release`. State that must survive a restart
(cooldowns, exhaustion, needs-login, last seen windows) is exported by `export_state`
and restored by `import_state`; the daemon persists it.

Accounts whose answers carry no rate-limit headers (Bedrock, Vertex) get windows dario keeps
itself — limits the user declared, or estimates learned from throttling (`localwindows.py`) —
fed in through the same store operation as header windows, so every decision below is unchanged.

A request names its model: accounts whose kind, region or inference profile do not offer it
(the model table, upstream/modelids.py) are never chosen for it, and when no account offers it
`acquire` raises `ModelNotOffered` at once instead of queueing. Accounts are grouped by
(kind, region, profile), one ready heap per group, and each model's verdict (which groups offer
it) is remembered until the membership changes, so the choice never walks accounts it must skip.

The decisions are made here; the state they are made from lives in a `PoolStore`
(store.py): in memory, or shared by several daemons through Redis (redisstore.py, team mode),
where each choice is confirmed by the store's `claim` before the request goes out (`confirm`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import trio

from dario.daemon.commands import command
from dario.daemon.control.api import AccountView, PoolView
from dario.daemon.exchange import CacheKeys, Estimate, Usage
from dario.daemon.redact import redact
from dario.daemon.routing.localwindows import LocalWindows, Sent
from dario.daemon.routing.ratelimits import WINDOWS, Snapshot, Window
from dario.daemon.routing.store import (
    BLOCKED_BY_TIME,
    STATUS_COOLING,
    STATUS_OK,
    AccountState,
    BlockKind,
    MemoryStore,
    PoolStore,
    Status,
)
from dario.daemon.upstream import bedrock, vertex
from dario.daemon.upstream.modelids import BEDROCK, VERTEX, ModelIds

__all__ = ["AccountState", "BlockKind", "Lease", "ModelNotOffered", "NoAccounts", "Pool", "PoolExhausted",
           "SharedClaim", "Status"]

COOLDOWN_BASE = 0.5  # first 529/5xx cooldown, doubled on each repeat (failover already spares the request)
# A cooldown only orders the choice: when no account is "ok", the cooling one whose cooldown
# ends first serves at once (Envoy's panic routing), so overload is passed through, not held.
COOLDOWN_MAX = 60.0
DEFAULT_429_COOLDOWN = 30.0  # a 429 that names no reset at all
SPEND_LIMIT_RECHECK = 3600.0  # a spend-limited account is tried again after this long
AUTH_REJECTED_PREFIX = "upstream answered"  # starts needs_login when the upstream refused the key
# Prompt-cache affinity: the account holding a request's cached prefix keeps it unless its headroom
# is below this share of the normal choice's, or below the floor (see `_cache_owner`).
AFFINITY_HEADROOM_RATIO = 0.5
AFFINITY_HEADROOM_FLOOR = 0.05
# Models whose "which accounts lack it" verdict is remembered; client-chosen names are unbounded.
MODEL_VERDICTS_MAX = 512


@dataclass(eq=False, slots=True)
class Lease:
    account: AccountState
    estimate: Estimate
    started: float
    seq: int = 0  # order in which leases were granted
    released: bool = False
    local: Sent | None = None  # the request in its account's local windows (accounts without headers)
    fitted: bool = True  # the estimate fitted the account's windows when it was chosen
    claimed: bool = False  # a shared store holds it too (`Pool.confirm`)


# An entry of the ready heap, smallest first: (-headroom, in_flight, last_chosen, uid, version,
# account); uid is unique, so comparison never reaches the account. A plain tuple unpacked by name,
# not a NamedTuple: building a NamedTuple takes about 0.3 µs in Python 3.11, and two are pushed
# per choose + release (measured: 11 % slower over the whole choice).
_Ready = tuple[float, int, int, int, int, AccountState]
# Accounts that offer the same models: (kind, region, inference-profile prefix). Each group has its
# own ready heap, so a request for a model some groups lack never looks at their accounts.
_Group = tuple[str, str | None, str | None]


class _Verdict(NamedTuple):
    """Which accounts can serve one model: the heaps of the groups offering it, the aliases lacking it."""

    heaps: tuple[list[_Ready], ...]
    lacking: frozenset[str]


class _Cooling(NamedTuple):
    """An entry of the cooling heap: the cooldown that ends first sorts first."""

    until: float
    uid: int
    version: int
    account: AccountState


class _Timer(NamedTuple):
    due: float
    uid: int
    account: AccountState


class SharedClaim(Protocol):
    """A shared store's confirmation of a local choice: held in the shared state too, or refused."""

    async def __call__(self, acc: AccountState, est: Estimate, strict: bool) -> bool: ...


class NoAccounts(Exception):
    """The pool has no account that could ever serve (none, all disabled or needing login)."""


class ModelNotOffered(NoAccounts):
    """No account of the pool offers the requested model (its kind or region does not).

    `checked`: each kind (with region/profile) that was asked, for the client's error message.
    """

    def __init__(self, model: str, checked: list[str]) -> None:
        super().__init__(model)
        self.model = model
        self.checked = checked


class PoolExhausted(Exception):
    """Every usable account stayed blocked past the queue deadline.

    `rate_limited`: at least one of them was exhausted (a 429 or a window at zero); False when
    they were only cooling after overloads or outages, so the client is not told "rate limited".
    """

    def __init__(self, retry_after: float | None, detail: str, *, rate_limited: bool = True) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.detail = detail
        self.rate_limited = rate_limited


class Pool:
    def __init__(self, *, clock: Callable[[], float] = time.time, store: PoolStore | None = None) -> None:
        self.store: PoolStore = MemoryStore() if store is None else store
        # The store's own mapping, read directly on the hot path (a shared store keeps it as a mirror).
        self.accounts = self.store.accounts
        self.clock = clock
        self._seq = itertools.count(1)
        self._uids = itertools.count(1)
        # Ready heaps by group (see _Group); with only Anthropic accounts there is one.
        self._ready: dict[_Group, list[_Ready]] = {}
        self._group: dict[str, _Group] = {}  # alias → its group
        self._heap_of: dict[str, list[_Ready]] = {}  # alias → its group's ready heap (one lookup in _touch)
        # Cooling accounts by when their cooldown ends: the panic choice when none is ready.
        self._cooling: list[_Cooling] = []
        self._timers: list[_Timer] = []
        self._queue: deque[_Waiter] = deque()
        self._dispatching = False
        self._pool_headers: list[tuple[bytes, bytes]] = []
        self._pool_headers_at: float | None = None
        self.on_change: Callable[[], None] | None = None  # persistence hook
        # A shared store (team mode) must confirm each local choice with one awaited round trip.
        self._claim: SharedClaim | None = getattr(self.store, "claim", None)
        if self._claim is not None:
            self.store.on_refresh = self.refreshed  # type: ignore[attr-defined]
        # While a keyring read is under way and not yet overdue, requests for accounts waiting on it
        # queue (a read at start-up takes milliseconds); once it is overdue they get a 503 at once.
        self.keyring_answer_expected = False
        # Windows dario keeps itself for accounts whose answers carry no rate-limit headers.
        self.local = LocalWindows()
        # Which accounts can serve which model: the model table, and per model the verdict (which
        # groups' heaps to choose from; which aliases lack it, excluded like tried accounts).
        self.model_ids = ModelIds()
        self._verdicts: dict[str, _Verdict] = {}
        self._all_heaps: tuple[list[_Ready], ...] = ()
        self.membership = 0  # bumped when an account is added, removed, re-targeted, enabled or disabled

    @property
    def preferred(self) -> str | None:
        return self.store.preferred

    @preferred.setter
    def preferred(self, alias: str | None) -> None:
        """Restored from the registry at start-up, before anything is routed: no checks, no events."""
        self.store.prefer(alias)

    # -- membership --------------------------------------------------------------------
    def upsert(self, alias: str, kind: str, base_url: str, created: float, secret: str | None,
               enabled: bool = True, details: Mapping[str, str | None] | None = None) -> AccountState:
        acc = self.accounts.get(alias)
        if acc is None:
            acc = self.store.add(AccountState(alias, kind, base_url, created, uid=next(self._uids)))
        acc.kind, acc.base_url, acc.created = kind, base_url, created
        acc.details = dict(details or {})
        if acc.enabled != enabled:
            self.store.set_enabled(acc, enabled)
        if secret is not None:
            acc.secret = secret
            if acc.needs_login is not None:
                self.store.set_needs_login(acc, None)
        self._regroup(acc)  # after the secret: a Bedrock account's target may be read from it
        self._changed(acc)
        return acc

    def remove(self, alias: str) -> None:
        self.store.remove(alias)
        self.local.forget(alias)
        self._group.pop(alias, None)
        self._heap_of.pop(alias, None)
        self._verdicts.clear()
        self.membership += 1
        self._changed()

    def set_declared_limits(self, alias: str, limits: Mapping[str, int | None], *,
                            forget_estimates: bool = False) -> None:
        """The user's limits for `alias` (rpm, input_tpm, output_tpm; None: none), applied at once.

        `forget_estimates`: also drop what was learned from throttling (`dario-ctl limits --clear`).
        """
        acc = self.accounts[alias]
        if forget_estimates:
            self.local.forget_estimates(alias)
        self.local.declare(alias, limits, self.clock())
        self._refresh_local(acc)
        self._changed(acc)

    def _refresh_local(self, acc: AccountState, now: float | None = None) -> None:
        """Put the account's local windows (declared or estimated) in the pool, through the store."""
        track = self.local.tracks.get(acc.alias)
        if track is None:
            return
        windows = self.local.windows(acc.alias, self.clock() if now is None else now)
        gone = [name for name in track.applied if name not in windows]
        if gone:
            self.store.forget_windows(acc, gone)
        if windows:
            self.store.observe_windows(acc, windows)
        track.applied = frozenset(windows)

    def set_enabled(self, alias: str, enabled: bool) -> None:
        acc = self.accounts[alias]
        self.store.set_enabled(acc, enabled)
        self.membership += 1
        self._changed(acc)

    def prefer(self, alias: str | None) -> None:
        if alias is not None and alias not in self.accounts:
            raise KeyError(alias)
        self.store.prefer(alias)
        self._changed()

    def secret_loaded(self, alias: str, secret: str | None) -> None:
        """The keyring answered for `alias`: its key, or None when it holds none."""
        acc = self.accounts[alias]
        acc.secret = secret
        acc.keyring_wait = None
        acc.secret_problem = None
        if acc.kind == BEDROCK:
            self._regroup(acc)  # its region and profile may live in the secret document
        self._changed(acc)

    def secret_unavailable(self, alias: str, reason: str) -> None:
        """A config account's secret source gave no key: needs_login here, with `reason` (names the source)."""
        acc = self.accounts[alias]
        acc.secret = None
        acc.keyring_wait = None
        acc.secret_problem = reason
        self._changed(acc)

    def set_managed(self, alias: str, managed_by: str | None) -> None:
        """Mark who manages the account: "config" for one the team config file defines."""
        self.accounts[alias].managed_by = managed_by

    def mark_keyring_wait(self, alias: str, reason: str) -> None:
        acc = self.accounts[alias]
        acc.keyring_wait = reason
        self._changed(acc)

    def set_keyring_answer_expected(self, expected: bool) -> None:
        self.keyring_answer_expected = expected
        if not expected:
            self.wake_waiters()  # let queued requests re-judge: they may have nothing left to wait for

    @property
    def shared(self) -> bool:
        """Whether the state is shared with other dariod instances (choices need `claim`)."""
        return self._claim is not None

    @property
    def store_health(self) -> str:
        """"memory" (this process only), or a shared store's "ok" / "degraded"."""
        return str(getattr(self.store, "health", "memory"))

    def refreshed(self, acc: AccountState) -> None:
        """A shared store replaced `acc`'s record with the shared one: re-index it, re-judge the queue."""
        if self.accounts.get(acc.alias) is acc:
            self._touch(acc)
        self._dispatch()
        if self._queue and acc.next_free(self.clock()) is not None:
            # Blocked until a time now: waiters that slept for an event recompute when to look again.
            self.wake_waiters()

    def wake_waiters(self) -> None:
        for waiter in self._queue:
            waiter.event.set()

    def clear_block(self, alias: str) -> None:
        """A key check just succeeded (login, refresh): lift the block and start a fresh local minute.

        Header windows are re-read from the check's answer; an account without them has only dario's
        own count, so a refresh gives it a new minute (its learned estimates stay).
        """
        acc = self.accounts[alias]
        self.store.clear_block(acc, forget_failures=True)
        if alias in self.local.tracks:
            self.local.new_minute(alias)
            self._refresh_local(acc)
        self._changed(acc)

    # -- models ------------------------------------------------------------------------
    def set_model_ids(self, ids: ModelIds) -> None:
        """The model table (built-ins plus models.json) that says which kind offers which model."""
        self.model_ids = ids
        self._verdicts.clear()

    def _regroup(self, acc: AccountState) -> None:
        """An account was added or its kind or target changed: file it under its group."""
        group: _Group = (acc.kind, *_target(acc))
        if group not in self._ready:
            self._ready[group] = []
            self._all_heaps = tuple(self._ready.values())
        self._group[acc.alias] = group
        self._heap_of[acc.alias] = self._ready[group]
        self._verdicts.clear()
        self.membership += 1

    def _verdict(self, model: str) -> _Verdict:
        """Which groups offer `model`; computed once per model and membership (bounded)."""
        hit = self._verdicts.get(model)
        if hit is None:
            if len(self._verdicts) >= MODEL_VERDICTS_MAX:
                self._verdicts.clear()
            offers = self.model_ids.offers
            offering = {group for group in self._ready if offers(model, *group)}
            hit = _Verdict(
                tuple(heap for group, heap in self._ready.items() if group in offering),
                frozenset(alias for alias, group in self._group.items() if group not in offering),
            )
            self._verdicts[model] = hit
        return hit

    def lacking(self, model: str) -> frozenset[str]:
        """Aliases of the accounts that cannot serve `model`."""
        return self._verdict(model).lacking

    def offering(self, model: str | None) -> frozenset[str]:
        """`lacking(model)` if no account offers it at all raises ModelNotOffered; else the lacking set."""
        if model is None:
            return frozenset()
        lacking = self.lacking(model)
        if lacking and len(lacking) >= len(self.accounts):
            raise ModelNotOffered(model, sorted({_describe_target(acc) for acc in self.accounts.values()}))
        return lacking

    def targets(self) -> list[tuple[str, str | None, str | None]]:
        """(kind, region, profile prefix) of each enabled account, for the model listing."""
        return [(acc.kind, *_target(acc)) for acc in self.accounts.values() if acc.enabled]

    # -- the index -----------------------------------------------------------------------
    # Accounts that can serve sit in a max-heap by (headroom, fewer in flight, least recently
    # chosen). Every change to an account bumps its version and pushes a fresh entry; entries of
    # older versions are dropped when they surface. Accounts blocked by time (cooldown, a window
    # at zero, a window about to reset) wait in a timer heap and are re-judged when it fires.
    # So one choice costs O(log n), not a scan of every account.

    def _touch(self, acc: AccountState) -> None:
        acc.version += 1
        now = self.clock()
        status = acc.status(now)
        if status is STATUS_OK:
            h = acc.headroom(now)
            key = -round(1.0 if h is None else h, 2)
            heap = self._heap_of[acc.alias]
            heapq.heappush(heap, (key, acc.in_flight, acc.last_chosen, acc.uid, acc.version, acc))
            if len(heap) > 4 * len(self.accounts) + 64:
                self._compact()
        elif status is STATUS_COOLING and acc.block_until is not None and _panic_eligible(acc, now):
            heapq.heappush(self._cooling, _Cooling(acc.block_until, acc.uid, acc.version, acc))
            if len(self._cooling) > 4 * len(self.accounts) + 64:
                self._compact()
        # One timer per account, for the next moment its standing changes by itself: a cooldown
        # ends, or a window resets (headroom jumps back up).
        due = acc.next_free(now) if status in BLOCKED_BY_TIME else None
        for w in acc.windows.values():
            if w.reset is not None and w.reset > now and (due is None or w.reset < due):
                due = w.reset
        if due is not None and due != acc.timer_due:
            acc.timer_due = due
            heapq.heappush(self._timers, _Timer(due, acc.uid, acc))

    def _compact(self) -> None:
        """Drop stale entries (kept only the current one per account)."""
        for heap in self._ready.values():
            # In place: verdicts hold on to the heap lists.
            heap[:] = [entry for entry in heap if self._current(entry[4], entry[5])]
            heapq.heapify(heap)
        self._cooling = [e for e in self._cooling if self._current(e.version, e.account)]
        heapq.heapify(self._cooling)

    def _current(self, version: int, acc: AccountState) -> bool:
        """Whether a heap entry made at `version` still speaks for `acc` (not changed since, not removed)."""
        return version == acc.version and self.accounts.get(acc.alias) is acc

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0].due <= now:
            due, _, acc = heapq.heappop(timers)
            if acc.timer_due == due and self.accounts.get(acc.alias) is acc:
                acc.timer_due = None
                if acc.alias in self.local.tracks:
                    self._refresh_local(acc, now)  # a local window reset, or an estimate due to rise
                self._touch(acc)

    # -- choice ------------------------------------------------------------------------
    def choose(self, est: Estimate, exclude: Iterable[str] = (), affinity: CacheKeys | None = None,
               model: str | None = None) -> Lease | None:
        """Pick an account now, or None if none can serve this request right now.

        `affinity`: the request's prompt-cache prefixes; the account that holds the longest of
        them is preferred over the normal choice while it can serve (`_cache_owner`).
        `model`: accounts whose kind or region does not offer it are never chosen.
        """
        now = self.clock()
        self._run_timers(now)
        excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
        heaps = self._all_heaps
        if model is not None:
            heaps, lacking = self._verdicts.get(model) or self._verdict(model)
            if lacking:  # still needed for the preferred account, the cache owner, the panic choice
                excluded = lacking if not excluded else lacking.union(excluded)
        chosen: AccountState | None = None
        fitted = True  # the estimate fits the chosen account's windows (else a shared store judges it)
        preferred = self.store.preferred
        pref = self.accounts.get(preferred) if preferred is not None else None
        if pref is not None and pref.alias not in excluded and pref.status(now) is STATUS_OK and pref.fits(est, now):
            chosen = pref
        else:
            if len(heaps) == 1:  # one group (the usual pool): no comparison across heaps
                best, spare = self._best_ready(heaps[0], excluded, est, now)
            else:
                best = spare = None
                for heap in heaps:
                    found, unfit = self._best_ready(heap, excluded, est, now)
                    if found is not None and (best is None or found < best):
                        best = found
                    if unfit is not None and (spare is None or unfit < spare):
                        spare = unfit
            chosen = None if best is None else best[5]
            fallback = None if spare is None else spare[5]
            ready_fit = chosen is not None  # "ok" and the estimate fits: no need to judge it again
            if chosen is None:
                # Nothing fits the estimate but some can serve: better to try than to queue on a guess.
                if pref is not None and pref.alias not in excluded and pref.status(now) is STATUS_OK and (
                        self._claim is None or pref.request_room(now)):
                    chosen = pref
                else:
                    chosen = fallback
            if chosen is None:
                chosen = self._panic_choice(excluded, now)
            picked = chosen
            if affinity is not None:
                chosen = self._cache_owner(affinity, chosen, ready_fit, excluded, est, now)
            if chosen is None:
                return None
            fitted = ready_fit or chosen is not picked  # the cache owner is taken only when it fits
        self.store.reserve(chosen, est)
        chosen.last_chosen = next(self._seq)
        sent = None
        track = self.local.tracks.get(chosen.alias)
        if track is not None:
            opened = track.start
            sent = self.local.sent(chosen.alias, est.input_tokens, est.output_tokens, now)
            if track.start != opened:  # a new minute began: its reset is new (the reservation is the pool's)
                self._refresh_local(chosen, now)
        self._touch(chosen)
        return Lease(chosen, est, now, chosen.last_chosen, local=sent, fitted=fitted)

    def _best_ready(self, heap: list[_Ready], excluded: set[str] | frozenset[str], est: Estimate,
                    now: float) -> tuple[_Ready | None, _Ready | None]:
        """The best entry of one group's heap that can serve and fits the estimate, and the best
        one that can serve but does not fit (the fallback); stale entries are dropped on the way."""
        set_aside: list[_Ready] = []
        found: _Ready | None = None
        unfit: _Ready | None = None
        while heap:
            entry = heap[0]
            acc = entry[5]
            if entry[4] != acc.version or self.accounts.get(acc.alias) is not acc:
                heapq.heappop(heap)  # stale
                continue
            if acc.status(now) is not STATUS_OK:
                heapq.heappop(heap)
                self._touch(acc)  # re-judged: goes to the timers
                continue
            if acc.alias in excluded or not acc.fits(est, now):
                if unfit is None and acc.alias not in excluded and (self._claim is None or acc.request_room(now)):
                    unfit = entry
                set_aside.append(heapq.heappop(heap))
                continue
            found = entry
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return found, unfit

    def _cache_owner(self, affinity: CacheKeys, chosen: AccountState | None, chosen_fits: bool,
                     excluded: set[str] | frozenset[str], est: Estimate, now: float) -> AccountState | None:
        """The account holding the request's longest cached prefix, if it should serve instead of `chosen`.

        A cache miss costs the prefix's input at 1.25× (the write) instead of 0.1× (the read): on a
        long agent context that is about 12× the input cost of the turn, and a slower first token
        (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#pricing). So a
        moderate headroom imbalance is worth tolerating: the owner keeps the conversation while it
        is "ok", the estimate fits, and its headroom is at least half the normal choice's and not
        below 5 % (unless the normal choice is that low too) — a nearly spent account would soon
        answer 429 and move the conversation anyway, after a failed attempt. Otherwise the normal
        choice serves, and becomes the owner. Never a reason to wait: this only swaps one account
        that can serve now for another. One map lookup and a few reads: O(1) next to the heap.
        """
        hit = self.store.affinity_get(affinity.lookup, now)
        if hit is None:
            return chosen
        owner = self.accounts.get(hit[0])
        if owner is None or owner is chosen or owner.alias in excluded:
            return chosen
        if owner.status(now) is not STATUS_OK or not owner.fits(est, now):
            return chosen
        if chosen is None or not chosen_fits:
            return owner  # the normal choice was a guess (nothing fitting, or cooling): the owner can serve
        h_owner, h_best = owner.headroom(now), chosen.headroom(now)
        owner_room = 1.0 if h_owner is None else h_owner
        best_room = 1.0 if h_best is None else h_best
        if owner_room >= best_room * AFFINITY_HEADROOM_RATIO and owner_room >= min(AFFINITY_HEADROOM_FLOOR, best_room):
            return owner
        return chosen

    def remember_cache(self, alias: str, affinity: CacheKeys) -> None:
        """`alias` served a request with these breakpoints: it now holds (or refreshed) their prefixes."""
        if affinity.written:
            self.store.affinity_put(affinity.written, alias, self.clock())

    def conversations(self) -> dict[str, int]:
        """Live remembered prompt-cache prefixes per account (one or more per conversation)."""
        counts = self.store.affinity_counts(self.clock())
        return {alias: counts.get(alias, 0) for alias in self.accounts}

    def _panic_choice(self, excluded: set[str] | frozenset[str], now: float) -> AccountState | None:
        """No account is ready: the cooling one whose cooldown ends first, if any.

        A cooldown after 529/5xx/transport errors is a guess that the account is unwell, not a
        limit the upstream set; holding requests for it would turn a brief overload into long
        waits. Like Envoy's panic threshold, route anyway and let the upstream answer. Accounts
        exhausted by a 429, or with a window at zero, never take part.
        """
        heap = self._cooling
        set_aside: list[_Cooling] = []
        chosen: AccountState | None = None
        while heap:
            entry = heap[0]
            acc = entry.account
            if entry.version != acc.version or self.accounts.get(acc.alias) is not acc:
                heapq.heappop(heap)  # stale
                continue
            if not _panic_eligible(acc, now):
                heapq.heappop(heap)
                self._touch(acc)  # re-judged: ready, exhausted or back in this heap
                continue
            if acc.alias in excluded or (self._claim is not None and not acc.request_room(now)):
                set_aside.append(heapq.heappop(heap))
                continue
            chosen = acc
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return chosen

    def release(self, lease: Lease, used: Usage | None = None) -> None:
        """The request is over. `used`: what it really took, when the upstream said (for local windows)."""
        if lease.released:
            return
        lease.released = True
        acc = lease.account
        if self._claim is not None and not lease.claimed:
            self.store.unclaim(acc, lease.estimate)  # type: ignore[attr-defined]  # never held in the shared store
        else:
            self.store.release(acc, lease.estimate)
        if lease.local is not None:
            tokens = None if used is None else (
                used.input_tokens + used.cache_write_5m + used.cache_write_1h, used.output_tokens)
            self.local.finished(acc.alias, lease.local, tokens, self.clock())
            if self.accounts.get(acc.alias) is acc:
                self._refresh_local(acc)
        if self.accounts.get(acc.alias) is acc:
            self._touch(acc)
        self._dispatch()

    def servable(self, exclude: Iterable[str] = ()) -> bool:
        """Whether any not-excluded account could serve, now or after a wait."""
        now = self.clock()
        excluded = set(exclude)
        waiting_ok = self.keyring_answer_expected
        return any(
            acc.alias not in excluded and (
                (status := acc.status(now)) is STATUS_OK or status in BLOCKED_BY_TIME
                or (waiting_ok and status is Status.WAITING_FOR_KEYRING)
            )
            for acc in self.accounts.values()
        )

    def earliest_free(self, exclude: Iterable[str] = ()) -> float | None:
        now = self.clock()
        excluded = set(exclude)
        times = [
            t for acc in self.accounts.values() if acc.alias not in excluded
            for t in [acc.next_free(now)] if t is not None
        ]
        return min(times) if times else None

    async def acquire(self, est: Estimate, exclude: Iterable[str], deadline: float,
                      affinity: CacheKeys | None = None, model: str | None = None) -> tuple[Lease, float]:
        """Choose an account, waiting for the earliest reset when none can serve.

        Waiters are served first-in first-out, each by the accounts it may use: one waiting
        for an account it has not tried yet never holds back one that a free account can serve.
        `deadline` is on trio's clock. Returns the lease and the seconds spent queued.
        Raises NoAccounts when nothing could ever serve (ModelNotOffered when no account offers
        `model`, at once), PoolExhausted at the deadline.

        With a shared store each local choice is confirmed by `claim` (one round trip); a refused
        one (another instance took the headroom) updated the local picture, and the request
        chooses again — at the head of the queue if it has to wait, keeping its place.
        """
        excluded = frozenset(exclude) | self.offering(model)
        claim = self._claim
        if claim is None:
            return await self._acquire_local(est, excluded, deadline, affinity, False)
        waited = 0.0
        refusals = 0
        while True:
            lease, w = await self._acquire_local(est, excluded, deadline, affinity, refusals > 0)
            waited += w
            if await self.confirm(lease):
                return lease, waited
            refusals += 1
            if trio.current_time() >= deadline:
                now = self.clock()
                free = self.earliest_free(excluded)
                raise PoolExhausted(max(1.0, free - now) if free is not None else None, self.describe_resets(now),
                                    rate_limited=self.any_exhausted(excluded))
            if refusals >= 3:
                # The local picture keeps disagreeing with Redis (it changes under us): back off a little.
                await trio.sleep(min(0.1, 0.01 * refusals))

    async def confirm(self, lease: Lease) -> bool:
        """A shared store holds `lease` too (True), or refused it and the lease is dropped (False)."""
        claim = self._claim
        if claim is None:
            return True
        acc = lease.account
        try:
            held = await claim(acc, lease.estimate, lease.fitted)
        except BaseException:
            self.release(lease)
            raise
        if held:
            lease.claimed = True
        else:
            lease.released = True  # the store has undone the local reservation
            if self.accounts.get(acc.alias) is acc:
                self._touch(acc)
            self._dispatch()
        return held

    async def _acquire_local(self, est: Estimate, excluded: frozenset[str], deadline: float,
                             affinity: CacheKeys | None, front: bool) -> tuple[Lease, float]:
        self._dispatch()  # earlier arrivals first
        lease = self.choose(est, excluded, affinity)
        if lease is not None:
            return lease, 0.0
        if not self.servable(excluded):
            raise NoAccounts()
        waiter = _Waiter(est, excluded, affinity)
        if front:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        started = trio.current_time()
        try:
            while waiter.lease is None and trio.current_time() < deadline:
                if not self.servable(excluded):
                    raise NoAccounts()
                # Sleep until something changes (dispatch sets the event) or the earliest reset.
                wake_at = deadline
                free = self.earliest_free(excluded)
                if free is not None:
                    wake_at = min(deadline, trio.current_time() + max(0.0, free - self.clock()) + 0.01)
                with trio.move_on_at(wake_at):
                    await waiter.event.wait()
                if waiter.lease is None:
                    waiter.event = trio.Event()  # woken to re-judge (wake_waiters), not granted
                    self._dispatch()  # a reset may have passed with no other event
        except BaseException:
            if waiter.lease is not None:  # granted, but the request is gone (hang-up, cancel)
                self.release(waiter.lease)
                waiter.lease = None
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
        if waiter.lease is not None:
            return waiter.lease, trio.current_time() - started
        free = self.earliest_free(excluded)
        now = self.clock()
        retry_after = max(1.0, free - now) if free is not None else None
        raise PoolExhausted(retry_after, self.describe_resets(now), rate_limited=self.any_exhausted(excluded))

    def any_exhausted(self, exclude: Iterable[str] = ()) -> bool:
        """Whether a not-excluded account is held back by a rate limit (429 or a window at zero)."""
        now = self.clock()
        excluded = set(exclude)
        return any(
            acc.alias not in excluded and acc.status(now) is not Status.DISABLED and not acc.needs_login
            and (acc.block_kind is BlockKind.EXHAUSTED or acc.zero_window_reset(now) is not None)
            for acc in self.accounts.values()
        )

    def _dispatch(self) -> None:
        """Hand accounts that can serve to waiting requests, in arrival order."""
        if not self._queue or self._dispatching:
            return
        self._dispatching = True
        try:
            for waiter in list(self._queue):
                lease = self.choose(waiter.est, waiter.excluded, waiter.affinity)
                if lease is None:
                    if not self._cooling and not any(self._all_heaps):
                        break  # no account can serve anyone right now
                    continue
                waiter.lease = lease
                self._queue.remove(waiter)
                waiter.event.set()
        finally:
            self._dispatching = False

    def notify(self) -> None:
        """Something changed outside observe/release (login, enable, refresh): let the queue retry."""
        self._dispatch()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def describe_unservable(self, model: str | None = None) -> str:
        """Why no account can serve, short: accounts waiting for the keyring share one sentence."""
        views = self.views()
        lacking = self.lacking(model) if model is not None else frozenset()
        waiting = [v["alias"] for v in views if v["status"] == "waiting_for_keyring"]
        others = [
            f"{v['alias']}: does not offer {model}" if v["alias"] in lacking
            else f"{v['alias']}: {v['status']}" + (f" ({v['reason']})" if v["reason"] else "")
            for v in views if v["status"] != "waiting_for_keyring"
        ]
        parts = []
        if waiting:
            parts.append(
                f"dario is waiting for the OS keyring to be unlocked to read the key of {', '.join(waiting)}; "
                "unlock it and retry (dario-ctl status says more)"
            )
        if others:
            parts.append("no dario account can serve this request: " + "; ".join(others))
        return ". ".join(parts)

    def describe_resets(self, now: float) -> str:
        parts = []
        for acc in self.accounts.values():
            status = acc.status(now)
            free = acc.next_free(now)
            if free is not None:
                parts.append(f"{acc.alias}: {status}, resets in {max(0, round(free - now))} s")
            else:
                parts.append(f"{acc.alias}: {status}")
        return "; ".join(parts)

    # -- outcomes ----------------------------------------------------------------------
    def _is_stale(self, acc: AccountState, sent_at: float | None) -> bool:
        return sent_at is not None and acc.block_since is not None and sent_at < acc.block_since

    def observe_headers(self, acc: AccountState, snap: Snapshot, sent_at: float | None = None,
                        status: int | None = None) -> None:
        """Fresh rate-limit windows. `sent_at`: when the request they answer was sent (None: now).

        An answer with no rate-limit headers at all (`status` below 500: gateways' errors often
        carry none) marks the account as one whose windows dario keeps itself (localwindows.py).
        """
        if status is None or status < 500:
            self.local.saw_answer(acc.alias, bool(snap.windows))
        if self._is_stale(acc, sent_at):
            return  # older than what blocked the account: it would overwrite newer news
        if snap.windows:
            track = self.local.tracks.get(acc.alias)
            if track is not None and track.applied and not track.active:
                self.store.forget_windows(acc, [n for n in track.applied if n not in snap.windows])
                track.applied = frozenset()
            self.store.observe_windows(acc, snap.windows)
        else:
            self._refresh_local(acc)
        # Fresh headers showing room again are evidence of recovery.
        if acc.block_kind is BlockKind.EXHAUSTED and snap.windows and acc.zero_window_reset(self.clock()) is None \
                and all((w.remaining or 0) > 0 for w in snap.windows.values()):
            self.store.clear_block(acc)
        self._touch(acc)
        self._dispatch()

    def observe_success(self, acc: AccountState, latency_ms: float | None, sent_at: float | None = None) -> None:
        acc.requests += 1
        if latency_ms is not None:
            acc.latency_ms = latency_ms if acc.latency_ms is None else acc.latency_ms * 0.8 + latency_ms * 0.2
        if self._is_stale(acc, sent_at):
            self._dispatch()
            return
        blocked = acc.block_kind is not None
        self.store.recovered(acc)
        if blocked:
            self._changed(acc)
        else:
            self._dispatch()

    def observe_rate_limited(self, acc: AccountState, snap: Snapshot, *, spend_limit: bool, message: str) -> None:
        now = self.clock()
        acc.errors += 1
        self.store.observe_windows(acc, snap.windows)
        if spend_limit:
            until = now + SPEND_LIMIT_RECHECK
            reason = redact(f"spend limit reached: {message}", (acc.secret,))[:200]
        else:
            candidates = [t for t in (
                now + snap.retry_after if snap.retry_after is not None else None,
                snap.latest_exhausted_reset(),
            ) if t is not None]
            if not snap.windows and self.local.is_headerless(acc.alias):
                # No headers to say which limit or when: learn a lower estimate (AIMD) and, unless
                # Retry-After said otherwise, hold the account until its local minute resets.
                hold = self.local.throttled(acc.alias, now)
                if not candidates:
                    candidates.append(hold)
                self._refresh_local(acc, now)
            until = max(candidates) if candidates else now + DEFAULT_429_COOLDOWN
            reason = "rate limited (429)"
        # The latest reset wins: a new 429 never shortens a longer exhaustion.
        if acc.block_kind is BlockKind.EXHAUSTED and acc.block_until and acc.block_until > until:
            until = acc.block_until
        self.store.block(acc, BlockKind.EXHAUSTED, reason, until, since=now)
        self._changed(acc)

    def observe_transient(self, acc: AccountState, reason: str, sent_at: float | None = None) -> None:
        """529, 5xx, connect and read errors: a short cooldown that grows with repeats.

        A failure of a request sent before the current cooldown began is part of the same incident
        (many requests in flight fail together): it neither grows nor extends the cooldown.
        """
        now = self.clock()
        acc.errors += 1
        if self._is_stale(acc, sent_at) and acc.block_kind is not None:
            return
        failures = self.store.count_failure(acc)
        seconds = min(COOLDOWN_MAX, COOLDOWN_BASE * 2 ** (failures - 1))
        if acc.block_kind is not BlockKind.EXHAUSTED:
            self.store.block(acc, BlockKind.COOLING, redact(reason, (acc.secret,))[:200], now + seconds, since=now)
        self._changed(acc)

    def observe_auth_failure(self, acc: AccountState, status: int, message: str) -> None:
        acc.errors += 1
        reason = redact(f"{AUTH_REJECTED_PREFIX} {status}: {message}", (acc.secret,))[:200]
        self.store.set_needs_login(acc, reason, since=self.clock())
        self._changed(acc)

    def _changed(self, acc: AccountState | None = None) -> None:
        if acc is not None and self.accounts.get(acc.alias) is acc:
            self._touch(acc)
        if self.on_change is not None:
            self.on_change()
        self._dispatch()

    # -- views -------------------------------------------------------------------------
    def view(self, acc: AccountState, now: float | None = None,
             conversations: Mapping[str, int] | None = None) -> AccountView:
        now = self.clock() if now is None else now
        if conversations is None:
            conversations = self.store.affinity_counts(now)
        status = acc.status(now)
        reason: str | None = None
        until: float | None = None
        if status is Status.NEEDS_LOGIN:
            reason = (acc.needs_login or acc.secret_problem
                      or f"no key in the keyring; run: {command('dario-ctl')} login {acc.alias}")
        elif status is Status.WAITING_FOR_KEYRING:
            reason = acc.keyring_wait
        elif status in BLOCKED_BY_TIME:
            reason = acc.block_reason or "a rate-limit window is at zero"
            until = acc.next_free(now)
        elif status is Status.DISABLED:
            reason = f"disabled; run: {command('dario-ctl')} accounts enable {acc.alias}"
        if acc.alias in self.local.tracks:
            self._refresh_local(acc, now)  # an estimate may have risen since the last request
        sources = self.local.sources(acc.alias)
        windows = {
            name: {
                "limit": w.limit,
                "remaining": w.remaining_at(now),
                "reset": w.reset if (w.reset is None or w.reset > now) else None,
                "source": sources.get(name, "headers"),
            }
            for name, w in acc.windows.items()
        }
        headroom = acc.headroom(now)
        view: AccountView = {
            "alias": acc.alias,
            "kind": acc.kind,
            "base_url": acc.base_url,
            "created": acc.created,
            "enabled": acc.enabled,
            "preferred": self.preferred == acc.alias,
            "status": status.wire,
            "reason": reason,
            "until": until,
            "headroom": None if headroom is None else round(headroom, 4),
            "windows": windows,  # type: ignore[typeddict-item]
            "in_flight": acc.in_flight,
            "requests": acc.requests,
            "errors": acc.errors,
            "latency_ms": None if acc.latency_ms is None else round(acc.latency_ms, 2),
            "conversations": conversations.get(acc.alias, 0),
            "managed_by": acc.managed_by,
            "limits": self.local.declared(acc.alias),
        }
        for name, value in acc.details.items():  # a Bedrock or Vertex account's region, project …
            view[name] = value  # type: ignore[literal-required]
        return view

    def views(self) -> list[AccountView]:
        now = self.clock()
        counts = self.store.affinity_counts(now)
        return [self.view(acc, now, counts) for acc in self.accounts.values()]

    def pool_view(self) -> PoolView:
        now = self.clock()
        statuses = [acc.status(now) for acc in self.accounts.values()]
        usable = [s for s in statuses if s is not Status.DISABLED]
        available = sum(1 for s in statuses if s is Status.OK)
        if not usable:
            health = "empty"
        elif available == len(usable):
            health = "ok"
        elif available or Status.COOLING in usable:
            # A cooling account still serves when none is ready (the one whose cooldown ends
            # first takes the request at once), so the pool is degraded, not out of service.
            health = "degraded"
        elif any(s in BLOCKED_BY_TIME for s in usable):
            health = "exhausted"
        elif Status.WAITING_FOR_KEYRING in usable:
            health = "waiting_for_keyring"
        else:
            health = "needs_login"
        return {
            "health": health,  # type: ignore[typeddict-item]
            "available": available,
            "total": len(self.accounts),
            "earliest_reset": self.earliest_free(),
            "queue_depth": len(self._queue),
        }

    def pool_headers(self) -> list[tuple[bytes, bytes]]:
        """Pool-level `anthropic-ratelimit-*` headers: the sum over accounts that can serve.

        Recomputed at most every 0.2 s, so the cost per response stays flat with many accounts.
        """
        now = self.clock()
        if self._pool_headers_at is not None and 0 <= now - self._pool_headers_at < 0.2:
            return self._pool_headers
        self._pool_headers_at = now
        self._pool_headers = self._compute_pool_headers(now)
        return self._pool_headers

    def _compute_pool_headers(self, now: float) -> list[tuple[bytes, bytes]]:
        totals: dict[str, list[int]] = {}
        resets: dict[str, float] = {}
        for acc in self.accounts.values():
            if acc.status(now) is not Status.OK:
                continue
            for name, w in acc.windows.items():
                remaining = w.remaining_at(now)
                if w.limit is None or remaining is None:
                    continue
                t = totals.setdefault(name, [0, 0])
                t[0] += w.limit
                t[1] += remaining
                if w.reset is not None and w.reset > now:
                    resets[name] = min(resets.get(name, w.reset), w.reset)
        out: list[tuple[bytes, bytes]] = []
        for name in WINDOWS:
            if name in totals:
                prefix = b"anthropic-ratelimit-" + name.encode()
                out.append((prefix + b"-limit", str(totals[name][0]).encode()))
                out.append((prefix + b"-remaining", str(totals[name][1]).encode()))
                if name in resets:
                    out.append((prefix + b"-reset", _rfc3339(resets[name]).encode()))
        return out

    # -- persistence -------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for acc in self.accounts.values():
            local = self.local.sources(acc.alias)  # rebuilt from "local" on restore, not saved as windows
            out[acc.alias] = {
                "block_kind": None if acc.block_kind is None else acc.block_kind.value,
                "block_reason": _clean(acc.block_reason, acc),
                "block_until": acc.block_until,
                "failures": acc.failures,
                "needs_login": _clean(acc.needs_login, acc),
                "windows": {name: w.as_dict() for name, w in acc.windows.items() if name not in local},
            }
            saved = self.local.export(acc.alias)
            if saved is not None:
                out[acc.alias]["local"] = saved
        return {"version": 1, "saved_at": self.clock(), "accounts": out}

    def import_state(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        now = self.clock()
        for alias, item in (data.get("accounts") or {}).items():
            acc = self.accounts.get(alias)
            if acc is None or not isinstance(item, dict):
                continue
            until = item.get("block_until")
            kind = _block_kind(item.get("block_kind"))
            if isinstance(until, (int, float)) and until > now and kind is not None:
                self.store.block(acc, kind, _clean(item.get("block_reason"), acc), float(until), since=None)
                self.store.restore(acc, failures=int(item.get("failures") or 0))
            # Only a key the upstream rejected stays rejected across a restart. Older versions also
            # saved keyring trouble here, which would keep a good key dead: that is dropped.
            # A config-file account is exempt: its source may hold a new key now (a restart is how
            # systemd hands a service a rotated credential), so the key is judged afresh.
            needs_login = item.get("needs_login")
            if (isinstance(needs_login, str) and needs_login.startswith(AUTH_REJECTED_PREFIX)
                    and acc.managed_by is None):
                self.store.set_needs_login(acc, _clean(needs_login, acc))
            self.store.observe_windows(acc, {
                name: Window(w.get("limit"), w.get("remaining"), w.get("reset"))
                for name, w in (item.get("windows") or {}).items() if name in WINDOWS and isinstance(w, dict)
            })
            if "local" in item:
                self.local.restore(alias, item["local"], now)
                self._refresh_local(acc, now)
            self._touch(acc)


def _target(acc: AccountState) -> tuple[str | None, str | None]:
    """(region, profile prefix) of an account: its details (the registry's), else what its base URL
    or (Bedrock) its secret document says. Read only when a verdict is made."""
    region, prefix = acc.details.get("region"), acc.details.get("inference_profile")
    if acc.kind == BEDROCK:
        if (region is None or prefix is None) and acc.secret:
            try:
                doc = bedrock.parse_target(acc.secret)
                region, prefix = region or doc.region, prefix or doc.profile_prefix
            except ValueError:
                pass
        region = region or bedrock.region_from_url(acc.base_url)
    elif acc.kind == VERTEX and region is None:
        try:
            region = vertex.parse_base_url(acc.base_url)[2]
        except ValueError:
            pass
    return region, prefix


def _describe_target(acc: AccountState) -> str:
    region, prefix = _target(acc)
    where = ", ".join(p for p in (region and f"region {region}", prefix and f"profile {prefix}") if p)
    return f"{acc.kind} ({where})" if where else acc.kind


def _panic_eligible(acc: AccountState, now: float) -> bool:
    """Cooling after overloads or outages only: not exhausted, no window at zero."""
    return acc.status(now) is STATUS_COOLING and acc.zero_window_reset(now) is None


def _block_kind(saved: object) -> BlockKind | None:
    """A block kind read back from disk; one this version does not know restores no block."""
    try:
        return BlockKind(saved) if isinstance(saved, str) else None
    except ValueError:
        return None


@dataclass(eq=False, slots=True)
class _Waiter:
    est: Estimate
    excluded: frozenset[str]
    affinity: CacheKeys | None = None
    event: trio.Event = field(default_factory=trio.Event)
    lease: Lease | None = None


def _clean(text: object, acc: AccountState) -> str | None:
    # Redacted again on the way to and from disk: a file written by an older dariod, or by
    # hand, must not bring a key back into views.
    return redact(text, (acc.secret,)) if isinstance(text, str) else None


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
