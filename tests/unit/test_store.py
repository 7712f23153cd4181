"""The pool's store: MemoryStore's operations, the pool going through them, and the wire values."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from dario.daemon import atomicfile
from dario.daemon.control.api import AccountStatus
from dario.daemon.exchange import Estimate
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot, Window
from dario.daemon.routing.store import AccountState, BlockKind, MemoryStore, Status

SHARED = ("enabled", "needs_login", "block_kind", "block_reason", "block_until", "block_since", "failures",
          "in_flight", "reserved_input", "reserved_output")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def shared_fields(acc: AccountState) -> tuple[Any, ...]:
    windows = tuple(sorted((n, w.limit, w.remaining, w.reset) for n, w in acc.windows.items()))
    return (*(getattr(acc, f) for f in SHARED), windows)


class GuardedStore(MemoryStore):
    """A MemoryStore that fails the test if anyone but the store changes a record's shared state.

    After each operation it remembers every record's shared fields; before the next one (and at
    the end) they must be as it left them. The one change allowed in between is a block running
    out (`status` forgets a block whose time has passed, as a key past its expiry would vanish).
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.calls: list[str] = []
        for name in ("add", "remove", "prefer", "set_enabled", "set_needs_login", "reserve", "release",
                     "observe_windows", "block", "clear_block", "count_failure", "recovered", "restore"):
            setattr(self, name, self._guard(name, getattr(super(), name)))

    def _guard(self, name: str, op: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.check()
            self.calls.append(name)
            result = op(*args, **kwargs)
            self.seen = {alias: shared_fields(acc) for alias, acc in self.accounts.items()}
            return result
        return guarded

    def check(self) -> None:
        for alias, acc in self.accounts.items():
            before = self.seen.get(alias)
            now = shared_fields(acc)
            if before is None or before == now:
                continue
            expired = before[SHARED.index("block_until")]
            lapsed = list(before)
            for f in ("block_kind", "block_reason", "block_until"):
                lapsed[SHARED.index(f)] = None
            assert expired is not None and expired <= self.clock.now and tuple(lapsed) == now, (
                f"{alias}: shared state changed outside the store: {before} -> {now}")


def test_status_values_are_the_control_api_literals() -> None:
    assert sorted(s.value for s in Status) == sorted(typing.get_args(AccountStatus))
    assert [k.value for k in BlockKind] == ["cooling", "exhausted"]
    for s in Status:
        assert type(s.wire) is str and s.wire == s.value


def test_memory_store_reserve_and_release_are_symmetric() -> None:
    store = MemoryStore()
    acc = store.add(AccountState("a", "anthropic", "https://example.invalid", 0.0))
    assert store.add(AccountState("a", "anthropic", "https://other.invalid", 1.0)) is acc  # first one stays
    est = Estimate(input_tokens=120, output_tokens=30)
    store.reserve(acc, est)
    store.reserve(acc, est)
    assert (acc.in_flight, acc.reserved_input, acc.reserved_output) == (2, 240, 60)
    store.release(acc, est)
    store.release(acc, est)
    assert (acc.in_flight, acc.reserved_input, acc.reserved_output) == (0, 0, 0)


def test_memory_store_blocks_failures_recovery_and_preference() -> None:
    store = MemoryStore()
    acc = store.add(AccountState("a", "anthropic", "https://example.invalid", 0.0, secret="k"))
    store.prefer("a")
    assert store.count_failure(acc) == 1 and store.count_failure(acc) == 2
    store.block(acc, BlockKind.COOLING, "overloaded", 50.0, since=10.0)
    assert acc.status(20.0) is Status.COOLING and acc.block_since == 10.0
    store.clear_block(acc)
    assert acc.block_kind is None and acc.failures == 2  # a cleared block keeps the failure count
    store.block(acc, BlockKind.EXHAUSTED, "429", 50.0, since=30.0)
    store.set_needs_login(acc, "upstream answered 401: bad key")
    assert acc.status(40.0) is Status.NEEDS_LOGIN
    store.recovered(acc)
    assert (acc.failures, acc.needs_login, acc.block_kind, acc.block_until) == (0, None, None, None)
    assert acc.status(40.0) is Status.OK
    store.observe_windows(acc, {"requests": Window(10, 0, 60.0)})
    assert acc.status(40.0) is Status.EXHAUSTED  # a window at zero until its reset
    store.remove("a")
    assert store.preferred is None and "a" not in store.accounts


def test_every_change_to_shared_state_goes_through_the_store() -> None:
    clock = Clock()
    store = GuardedStore(clock)
    pool = Pool(clock=clock, store=store)
    for alias in ("a", "b"):
        pool.upsert(alias, "anthropic", "https://example.invalid", 0.0, "secret-" + alias)
    a, b = pool.accounts["a"], pool.accounts["b"]
    reset = clock.now + 60
    pool.observe_headers(a, Snapshot({"requests": Window(100, 90, reset)}, None))
    pool.prefer("b")
    lease = pool.choose(Estimate(input_tokens=10, output_tokens=5))
    assert lease is not None and lease.account is b
    pool.observe_transient(b, "overloaded (529)", sent_at=lease.started)
    pool.release(lease)
    pool.observe_rate_limited(a, Snapshot({"requests": Window(100, 0, reset)}, 30.0), spend_limit=False, message="x")
    pool.observe_auth_failure(b, 401, "invalid x-api-key")
    pool.upsert("b", "anthropic", "https://example.invalid", 0.0, "secret-b2")
    clock.now += 61  # a's window and 429 have run out
    pool.observe_success(a, 12.0, sent_at=clock.now)
    pool.set_enabled("b", False)
    pool.clear_block("a")
    pool.import_state(orjson.loads(orjson.dumps(pool.export_state())))
    pool.views()
    pool.pool_view()
    store.check()
    assert {"reserve", "release", "block", "count_failure", "set_needs_login", "observe_windows", "recovered",
            "set_enabled", "clear_block", "prefer"} <= set(store.calls)


# pool-state.json as dariod writes it (orjson, indent 2, sorted keys): a format other versions read.
SAVED = b"""{
  "accounts": {
    "a": {
      "block_kind": "exhausted",
      "block_reason": "rate limited (429)",
      "block_until": 1000045.0,
      "failures": 0,
      "needs_login": null,
      "windows": {
        "requests": {
          "limit": 1000,
          "remaining": 0,
          "reset": 1000045.0
        }
      }
    },
    "b": {
      "block_kind": "cooling",
      "block_reason": "overloaded (529)",
      "block_until": 1000000.5,
      "failures": 1,
      "needs_login": null,
      "windows": {}
    },
    "c": {
      "block_kind": null,
      "block_reason": null,
      "block_until": null,
      "failures": 0,
      "needs_login": null,
      "windows": {}
    }
  },
  "saved_at": 1000000.0,
  "version": 1
}"""


def saved_pool(clock: Clock) -> Pool:
    pool = Pool(clock=clock)
    for alias in ("a", "b", "c"):
        pool.upsert(alias, "anthropic", "https://example.invalid", 0.0, "secret-" + alias)
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({"requests": Window(1000, 0, clock.now + 45)}, None),
                              spend_limit=False, message="x")
    pool.observe_transient(pool.accounts["b"], "overloaded (529)")
    return pool


def test_pool_state_file_keeps_its_format_and_reads_back(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "pool-state.json"
    atomicfile.write_json_atomic(path, saved_pool(clock).export_state())
    assert path.read_bytes() == SAVED
    restored = Pool(clock=clock)
    for alias in ("a", "b", "c"):
        restored.upsert(alias, "anthropic", "https://example.invalid", 0.0, "secret-" + alias)
    restored.import_state(atomicfile.read_json(path, {}))
    a, b = restored.accounts["a"], restored.accounts["b"]
    assert a.block_kind is BlockKind.EXHAUSTED and a.block_until == clock.now + 45
    assert b.block_kind is BlockKind.COOLING and b.failures == 1
    assert [v["status"] for v in restored.views()] == ["exhausted", "cooling", "ok"]
    atomicfile.write_json_atomic(path, restored.export_state())
    assert path.read_bytes() == SAVED  # read and written again: byte for byte the same


@pytest.mark.parametrize("kind", ["frozen", 3, None])
def test_a_saved_block_of_unknown_kind_restores_no_block(kind: object) -> None:
    clock = Clock()
    pool = Pool(clock=clock)
    pool.upsert("a", "anthropic", "https://example.invalid", 0.0, "secret-a")
    pool.import_state({"accounts": {"a": {"block_kind": kind, "block_until": clock.now + 600, "failures": 4}}})
    acc = pool.accounts["a"]
    assert (acc.block_kind, acc.block_until, acc.failures) == (None, None, 0)
    assert acc.status(clock.now) is Status.OK and pool.earliest_free() is None


def test_views_carry_plain_strings_not_enum_members() -> None:
    clock = Clock()
    pool = saved_pool(clock)
    for view in pool.views():
        assert type(view["status"]) is str
    assert orjson.dumps([v["status"] for v in pool.views()]) == b'["exhausted","cooling","ok"]'


def test_a_window_is_back_to_its_limit_once_its_reset_has_passed() -> None:
    assert Window(10, 0, 50.0).remaining_at(49.9) == 0
    assert Window(10, 0, 50.0).remaining_at(50.0) == 10
    assert Window(None, 3, 50.0).remaining_at(60.0) == 3  # no limit known: nothing to restore to
    assert Window(10, 4, None).remaining_at(1e12) == 4
