"""The pool's state: one record per account, and the operations that change what is shared.

`Pool` (pool.py) decides — it ranks accounts by headroom in its heap index, picks one, queues
requests when none can serve. Everything it decides *from* that more than one dariod would have
to agree on lives in a `PoolStore`: each account's rate-limit windows (limit, remaining, reset),
the reservations of requests in flight, cooldowns and exhaustion (block kind, reason, until,
since, consecutive failures), the needs-login verdict, and the preference and enabled flags.
Every change to that state goes through one of the store's operations; the pool never assigns
those fields itself. `MemoryStore` keeps it in this process, which is all one dariod needs.

The interface sits at the level of per-account records rather than behind every read, because
the pool's hot path (choose + release) reads a record's windows dozens of times per choice and
must stay in the microseconds. A store hands out `AccountState` records that the pool reads
directly; a shared store keeps them as a local mirror of the shared truth.

Team mode's `RedisStore` (redisstore.py, imported only with `--store`) is a `MemoryStore` used as
a local mirror of the shared truth in Redis; its docstring has the keys and scripts. What it adds
to this interface:

- Every operation here stays synchronous: it changes the mirror at once and queues the same change
  for Redis, where a writer task sends the queue as one pipeline of Lua scripts (a release and the
  windows observed with it share one round trip).
- The choice must be confirmed: `claim(acc, est, strict)` (async, one round trip) runs the
  `reserve` script, which re-checks the account against the shared state and holds the
  reservation there or refuses (another instance took the headroom, or learned of a block).
  `Pool.acquire` awaits it through `Pool.confirm` and chooses again, or queues, when refused;
  `unclaim` undoes the local reservation of a refused choice. `MemoryStore` has no `claim`: the
  pool never awaits anything for it, so its hot path is unchanged.
- Reservations are one aggregate per instance (not one field per request), tied to the instance's
  lease (a heartbeat key with a TTL): a crashed dariod's share is dropped by the next script that
  reads it; a live one rewrites its aggregate from its own exact count after an outage.
- Wake-ups: every script that changes an account publishes its new record; each instance applies
  it to the mirror and calls `Pool.refreshed`, which re-judges its wait queue.
- `health`: "ok" or "degraded" (Redis not answering: the mirror alone decides, as `MemoryStore`);
  `Pool.store_health` says "memory" for a store without it.
- Prompt-cache affinity: `affinity_put` also queues, for the writer's pipeline, one
  `SET dario:aff:<hex digest> <alias:fingerprint> PX <ttl ms>` per key and a publish of the
  entries, which every instance adds to its local `AffinityMap`. `affinity_get` and
  `affinity_counts` stay local and synchronous: affinity adds no round trip to a request.

Per-instance facts stay local and are never shared: the key itself (each instance reads its own
  OS keyring), keyring waits, the heap bookkeeping (uid, version, timer_due, last_chosen) and the
  request/error/latency counters shown in views.

May import: routing's siblings, exchange, control.api (the status vocabulary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, cast

from dario.daemon.control.api import AccountStatus
from dario.daemon.exchange import CacheKey, Estimate
from dario.daemon.routing.affinity import AffinityMap
from dario.daemon.routing.ratelimits import Window


class BlockKind(StrEnum):
    """Why an account is held back by time. The values are written to pool-state.json."""

    COOLING = "cooling"  # after 529/5xx/transport errors: a preference, ends by itself
    EXHAUSTED = "exhausted"  # after a 429 or a spend limit: held until the reset


class Status(StrEnum):
    """An account's standing; the values are the control API's `AccountStatus` literals."""

    OK = "ok"
    COOLING = "cooling"
    EXHAUSTED = "exhausted"
    NEEDS_LOGIN = "needs_login"
    DISABLED = "disabled"
    WAITING_FOR_KEYRING = "waiting_for_keyring"

    @property
    def wire(self) -> AccountStatus:
        """The plain string the control API and views carry (never the enum object)."""
        return cast("AccountStatus", self._value_)


# What time alone can change: a block that ends, or a window at zero that resets.
BLOCKED_BY_TIME = frozenset((Status.COOLING, Status.EXHAUSTED))

# Python 3.11 finds `Status.OK` through the enum's metaclass, about 0.1 µs a lookup, twenty times
# a module global; `status` and the pool's heap code read these several times per choice.
STATUS_OK, STATUS_COOLING, STATUS_EXHAUSTED = Status.OK, Status.COOLING, Status.EXHAUSTED
STATUS_NEEDS_LOGIN, STATUS_DISABLED, STATUS_WAITING = Status.NEEDS_LOGIN, Status.DISABLED, Status.WAITING_FOR_KEYRING
BLOCK_COOLING, BLOCK_EXHAUSTED = BlockKind.COOLING, BlockKind.EXHAUSTED


@dataclass(eq=False, slots=True)
class AccountState:
    """One account's record. Fields marked "shared" change only through a `PoolStore`."""

    alias: str
    kind: str
    base_url: str
    created: float
    secret: str | None = None  # held in memory only; never serialized
    enabled: bool = True  # shared
    needs_login: str | None = None  # shared; reason, when the upstream rejected the key
    # Why the key could not be read from the keyring yet (locked, not answering, failing). Never
    # persisted: a keyring problem is a passing state of this session, not a verdict on the key.
    keyring_wait: str | None = None
    # Why a config-file account's secret source gave no key (missing credential, unreadable file):
    # local to this instance, as another instance may read its own source fine. Never persisted.
    secret_problem: str | None = None
    managed_by: str | None = None  # "config" when the team config file defines the account
    block_kind: BlockKind | None = None  # shared
    block_reason: str | None = None  # shared
    block_until: float | None = None  # shared
    failures: int = 0  # shared; consecutive transient failures, for the growing cooldown
    # When the latest block (cooldown, exhaustion, rejected key) was set: only evidence from a
    # request sent after it may lift it. A success that was already in flight proves nothing.
    block_since: float | None = None  # shared
    windows: dict[str, Window] = field(default_factory=dict)  # shared
    in_flight: int = 0  # shared (reservations)
    reserved_input: int = 0  # shared (reservations)
    reserved_output: int = 0  # shared (reservations)
    requests: int = 0
    errors: int = 0
    latency_ms: float | None = None
    uid: int = 0  # stable tie-breaker in the heaps
    version: int = 0  # bumped on every change; heap entries of older versions are stale
    last_chosen: int = 0  # sequence of the last choice: least recently chosen wins ties (round robin)
    timer_due: float | None = None  # when this account's pending timer fires
    # A Bedrock or Vertex account's non-secret settings (region, project, credential type, inference
    # profile …), for views; which models the account offers depends on its region and profile.
    details: dict[str, str | None] = field(default_factory=dict)

    def _clear_block_if_over(self, now: float) -> None:
        # A block that has run out is gone, as a Redis key past its expiry would be.
        if self.block_until is not None and now >= self.block_until:
            self.block_kind = self.block_reason = self.block_until = None

    def status(self, now: float) -> Status:
        if not self.enabled:
            return STATUS_DISABLED
        if self.needs_login:
            return STATUS_NEEDS_LOGIN
        if self.secret is None:
            return STATUS_WAITING if self.keyring_wait else STATUS_NEEDS_LOGIN
        self._clear_block_if_over(now)
        kind = self.block_kind
        if kind is BLOCK_EXHAUSTED:
            return STATUS_EXHAUSTED
        if kind is BLOCK_COOLING:
            return STATUS_COOLING
        if self.zero_window_reset(now) is not None:
            return STATUS_EXHAUSTED
        return STATUS_OK

    def zero_window_reset(self, now: float) -> float | None:
        """If a known window is at zero and not yet reset, when it resets."""
        latest = None
        for w in self.windows.values():
            if w.remaining == 0 and w.reset is not None and now < w.reset:
                latest = w.reset if latest is None else max(latest, w.reset)
        return latest

    def _reserved(self, name: str) -> int:
        if name == "requests":
            return self.in_flight
        if name == "input-tokens":
            return self.reserved_input
        if name == "output-tokens":
            return self.reserved_output
        return self.reserved_input + self.reserved_output  # "tokens"

    def headroom(self, now: float) -> float | None:
        """Smallest remaining fraction over the known windows, less in-flight reservations."""
        best: float | None = None
        for name, w in self.windows.items():
            if not w.limit:
                continue
            remaining = w.remaining_at(now)
            if remaining is None:
                continue
            frac = max(0.0, (remaining - self._reserved(name)) / w.limit)
            if best is None or frac < best:
                best = frac
        return best

    def fits(self, est: Estimate, now: float) -> bool:
        """Whether the request's estimate fits every known window's remaining budget."""
        for name, w in self.windows.items():
            remaining = w.remaining_at(now)
            if remaining is None:
                continue
            if name == "requests":
                need = 1
            elif name == "input-tokens":
                need = est.input_tokens
            elif name == "output-tokens":
                need = est.output_tokens
            else:
                need = est.input_tokens + est.output_tokens
            if w.limit:
                # A request bigger than the whole window can only ever wait for a full one.
                need = min(need, w.limit)
            if remaining - self._reserved(name) < need:
                return False
        return True

    def request_room(self, now: float) -> bool:
        """Whether the requests window (if known) has room for one more after the reservations."""
        w = self.windows.get("requests")
        if w is None:
            return True
        remaining = w.remaining_at(now)
        return remaining is None or remaining - self.in_flight >= 1

    def next_free(self, now: float) -> float | None:
        """When this account can next serve, if it is blocked by time (not by login/disable)."""
        if not self.enabled or self.needs_login or self.secret is None:
            return None
        times = [t for t in (self.block_until, self.zero_window_reset(now)) if t is not None and t > now]
        return max(times) if times else None


class PoolStore(Protocol):
    """Where the pool's shared state lives. Each method is one atomic operation."""

    @property
    def accounts(self) -> Mapping[str, AccountState]:
        """Every account's record, by alias (a shared store: its local mirror)."""
        ...

    @property
    def preferred(self) -> str | None: ...

    def add(self, record: AccountState) -> AccountState:
        """Register `record`, or return the one already stored under its alias."""
        ...

    def remove(self, alias: str) -> None:
        """Forget the account, the preference for it, and the prompt-cache prefixes it owns."""
        ...

    def prefer(self, alias: str | None) -> None: ...

    def set_enabled(self, acc: AccountState, enabled: bool) -> None: ...

    def set_needs_login(self, acc: AccountState, reason: str | None, *, since: float | None = None) -> None:
        """The upstream's verdict on the key (None: accepted again); `since` starts a block."""
        ...

    def reserve(self, acc: AccountState, est: Estimate) -> None:
        """A request goes to `acc`: hold one request and its estimated tokens in every window."""
        ...

    def release(self, acc: AccountState, est: Estimate) -> None:
        """The request is over: give back what `reserve` held."""
        ...

    def observe_windows(self, acc: AccountState, windows: Mapping[str, Window]) -> None:
        """Fresh rate-limit windows from an upstream answer replace the ones known."""
        ...

    def forget_windows(self, acc: AccountState, names: Sequence[str]) -> None:
        """Drop windows that no longer apply (a declared limit cleared, headers took over)."""
        ...

    def block(self, acc: AccountState, kind: BlockKind, reason: str | None, until: float,
              *, since: float | None) -> None:
        """Hold the account back until `until`; `since` is when the evidence arrived."""
        ...

    def clear_block(self, acc: AccountState, *, forget_failures: bool = False) -> None: ...

    def count_failure(self, acc: AccountState) -> int:
        """One more consecutive transient failure; returns the count."""
        ...

    def recovered(self, acc: AccountState) -> None:
        """A request sent after the latest block succeeded: no failures, no block, key accepted."""
        ...

    def restore(self, acc: AccountState, *, failures: int) -> None:
        """Failures counted before a restart (the block itself is restored with `block`)."""
        ...

    def affinity_get(self, lookup: Sequence[bytes], now: float) -> tuple[str, bytes] | None:
        """The account holding the longest live prefix in `lookup` (longest first), and its digest."""
        ...

    def affinity_put(self, keys: Sequence[CacheKey], alias: str, now: float) -> None:
        """`alias` served these prefixes: it owns each for the key's TTL from `now`."""
        ...

    def affinity_counts(self, now: float) -> Mapping[str, int]:
        """Live remembered prefixes per alias."""
        ...


class MemoryStore:
    """The pool's state in this process's memory: what a single dariod uses."""

    def __init__(self) -> None:
        # Plain attributes, not properties: the pool reads both on every choice.
        self.accounts: dict[str, AccountState] = {}
        self.preferred: str | None = None
        self.affinity = AffinityMap()

    def add(self, record: AccountState) -> AccountState:
        return self.accounts.setdefault(record.alias, record)

    def remove(self, alias: str) -> None:
        self.accounts.pop(alias, None)
        if self.preferred == alias:
            self.preferred = None
        # A new account under the same name may be another organisation: it holds none of these.
        self.affinity.forget(alias)

    def prefer(self, alias: str | None) -> None:
        self.preferred = alias

    def set_enabled(self, acc: AccountState, enabled: bool) -> None:
        acc.enabled = enabled

    def set_needs_login(self, acc: AccountState, reason: str | None, *, since: float | None = None) -> None:
        acc.needs_login = reason
        if since is not None:
            acc.block_since = since

    def reserve(self, acc: AccountState, est: Estimate) -> None:
        acc.in_flight += 1
        acc.reserved_input += est.input_tokens
        acc.reserved_output += est.output_tokens

    def release(self, acc: AccountState, est: Estimate) -> None:
        acc.in_flight -= 1
        acc.reserved_input -= est.input_tokens
        acc.reserved_output -= est.output_tokens

    def observe_windows(self, acc: AccountState, windows: Mapping[str, Window]) -> None:
        acc.windows.update(windows)

    def forget_windows(self, acc: AccountState, names: Sequence[str]) -> None:
        for name in names:
            acc.windows.pop(name, None)

    def block(self, acc: AccountState, kind: BlockKind, reason: str | None, until: float,
              *, since: float | None) -> None:
        acc.block_kind, acc.block_reason, acc.block_until = kind, reason, until
        if since is not None:
            acc.block_since = since

    def clear_block(self, acc: AccountState, *, forget_failures: bool = False) -> None:
        acc.block_kind = acc.block_reason = acc.block_until = None
        if forget_failures:
            acc.failures = 0

    def count_failure(self, acc: AccountState) -> int:
        acc.failures += 1
        return acc.failures

    def recovered(self, acc: AccountState) -> None:
        acc.failures = 0
        acc.needs_login = None
        acc.block_kind = acc.block_reason = acc.block_until = None

    def restore(self, acc: AccountState, *, failures: int) -> None:
        acc.failures = failures

    def affinity_get(self, lookup: Sequence[bytes], now: float) -> tuple[str, bytes] | None:
        return self.affinity.get(lookup, now)

    def affinity_put(self, keys: Sequence[CacheKey], alias: str, now: float) -> None:
        self.affinity.put(keys, alias, now)

    def affinity_counts(self, now: float) -> Mapping[str, int]:
        self.affinity.expire(now)
        return self.affinity.counts
