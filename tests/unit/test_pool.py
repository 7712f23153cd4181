from __future__ import annotations

import trio
import trio.testing

from dario.daemon.exchange import Estimate
from dario.daemon.routing import ratelimits
from dario.daemon.routing.pool import NoAccounts, Pool, PoolExhausted
from dario.daemon.routing.ratelimits import Snapshot, Window


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_pool(*aliases: str) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool(clock=clock)
    for a in aliases:
        pool.upsert(a, "anthropic", "https://example.invalid", 0.0, "secret-" + a)
    return pool, clock


def windows(clock: Clock, **remaining: int) -> Snapshot:
    ws = {}
    for name, rem in remaining.items():
        key = name.replace("_", "-")
        ws[key] = Window(limit=1000, remaining=rem, reset=clock.now + 60)
    return Snapshot(ws, None)


def test_most_headroom_wins() -> None:
    pool, clock = make_pool("a", "b", "c")
    pool.observe_headers(pool.accounts["a"], windows(clock, requests=100))
    pool.observe_headers(pool.accounts["b"], windows(clock, requests=900))
    pool.observe_headers(pool.accounts["c"], windows(clock, requests=500))
    lease = pool.choose(Estimate())
    assert lease is not None and lease.account.alias == "b"


def test_ties_rotate_round_robin_and_in_flight_breaks_ties() -> None:
    pool, _ = make_pool("a", "b")
    first = pool.choose(Estimate())
    second = pool.choose(Estimate())
    assert first and second and first.account.alias != second.account.alias  # fewer in flight wins
    pool.release(first)
    pool.release(second)
    seen = set()
    for _ in range(4):
        lease = pool.choose(Estimate())
        assert lease is not None
        seen.add(lease.account.alias)
        pool.release(lease)
    assert seen == {"a", "b"}


def test_preferred_account_is_used_while_it_can_serve() -> None:
    pool, clock = make_pool("a", "b")
    pool.observe_headers(pool.accounts["b"], windows(clock, requests=100))
    pool.prefer("b")
    lease = pool.choose(Estimate())
    assert lease and lease.account.alias == "b"
    pool.release(lease)
    pool.observe_rate_limited(pool.accounts["b"], Snapshot({}, 30.0), spend_limit=False, message="x")
    lease = pool.choose(Estimate())
    assert lease and lease.account.alias == "a"


def test_estimate_that_does_not_fit_goes_elsewhere() -> None:
    pool, clock = make_pool("a", "b")
    pool.observe_headers(pool.accounts["a"], windows(clock, output_tokens=900))
    pool.observe_headers(pool.accounts["b"], windows(clock, output_tokens=300))
    # a has more headroom, but a reservation on it leaves too little for the next request.
    l1 = pool.choose(Estimate(output_tokens=700))
    assert l1 and l1.account.alias == "a"
    l2 = pool.choose(Estimate(output_tokens=250))
    assert l2 and l2.account.alias == "b"


def test_429_exhausts_until_latest_reset_and_reset_restores() -> None:
    pool, clock = make_pool("a")
    acc = pool.accounts["a"]
    snap = ratelimits.Snapshot(
        {"requests": Window(50, 0, clock.now + 20), "output-tokens": Window(1000, 0, clock.now + 45)}, 5.0
    )
    pool.observe_rate_limited(acc, snap, spend_limit=False, message="slow down")
    assert acc.status(clock.now) == "exhausted"
    assert acc.block_until == clock.now + 45  # the latest reset wins over retry-after
    # A later 429 naming an earlier reset does not shorten it.
    pool.observe_rate_limited(acc, Snapshot({}, 1.0), spend_limit=False, message="x")
    assert acc.block_until == clock.now + 45
    clock.now += 46
    assert acc.status(clock.now) == "ok"
    assert acc.headroom(clock.now) == 1.0  # windows past their reset count as full


def test_transient_cooldown_grows_and_success_clears() -> None:
    pool, clock = make_pool("a")
    acc = pool.accounts["a"]
    pool.observe_transient(acc, "529")
    first = acc.block_until - clock.now  # type: ignore[operator]
    clock.now += first + 0.1
    pool.observe_transient(acc, "529")
    second = acc.block_until - clock.now  # type: ignore[operator]
    assert acc.status(clock.now) == "cooling"
    assert second > first
    pool.observe_success(acc, 10.0)
    assert acc.status(clock.now) == "ok" and acc.failures == 0


def test_auth_failure_needs_login_and_is_not_chosen() -> None:
    pool, _ = make_pool("a", "b")
    pool.observe_auth_failure(pool.accounts["a"], 401, "invalid x-api-key")
    for _ in range(3):
        lease = pool.choose(Estimate())
        assert lease and lease.account.alias == "b"
        pool.release(lease)
    assert pool.view(pool.accounts["a"])["status"] == "needs_login"


def test_disabled_and_excluded_accounts_are_skipped() -> None:
    pool, _ = make_pool("a", "b")
    pool.set_enabled("a", False)
    lease = pool.choose(Estimate())
    assert lease and lease.account.alias == "b"
    assert pool.choose(Estimate(), exclude=["b"]) is None


def test_state_survives_export_import() -> None:
    pool, clock = make_pool("a")
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 120.0), spend_limit=False, message="x")
    saved = pool.export_state()
    fresh, _ = make_pool("a")
    fresh.clock = clock
    fresh.import_state(saved)
    assert fresh.accounts["a"].status(clock.now) == "exhausted"
    assert "secret" not in str(saved)


def test_pool_headers_sum_servable_accounts() -> None:
    pool, clock = make_pool("a", "b")
    pool.observe_headers(pool.accounts["a"], windows(clock, requests=100))
    pool.observe_headers(pool.accounts["b"], windows(clock, requests=300))
    headers = dict(pool.pool_headers())
    assert headers[b"anthropic-ratelimit-requests-limit"] == b"2000"
    assert headers[b"anthropic-ratelimit-requests-remaining"] == b"400"


def test_queue_waits_for_earliest_reset_in_fifo_order() -> None:
    async def main() -> None:
        pool, clock = make_pool("a")
        pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 10.0), spend_limit=False, message="x")
        granted: dict[int, int] = {}

        async def client(n: int) -> None:
            lease, waited = await pool.acquire(Estimate(), [], trio.current_time() + 60)
            granted[n] = lease.seq
            assert waited > 0
            pool.release(lease)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(client, n)
                await trio.testing.wait_all_tasks_blocked()
            assert pool.queue_depth == 3
            clock.now += 11  # the reset passes; the head wakes on its own timer
        assert sorted(granted, key=granted.__getitem__) == [0, 1, 2]  # granted in arrival order

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_queue_deadline_gives_retry_after_and_a_hangup_leaves_the_queue() -> None:
    async def main() -> None:
        pool, _ = make_pool("a")
        pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 300.0), spend_limit=False, message="x")
        try:
            await pool.acquire(Estimate(), [], trio.current_time() + 5)
        except PoolExhausted as exc:
            assert exc.retry_after is not None and 290 < exc.retry_after <= 300
            assert "a: exhausted" in exc.detail
        else:
            raise AssertionError("expected PoolExhausted")
        with trio.move_on_after(1):
            await pool.acquire(Estimate(), [], trio.current_time() + 60)
        assert pool.queue_depth == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_accounts_raises_at_once() -> None:
    async def main() -> None:
        pool, _ = make_pool("a")
        pool.observe_auth_failure(pool.accounts["a"], 401, "bad")
        try:
            await pool.acquire(Estimate(), [], trio.current_time() + 60)
        except NoAccounts:
            return
        raise AssertionError("expected NoAccounts")

    trio.run(main)


def test_a_window_at_zero_blocks_until_its_reset_then_the_account_returns_by_itself() -> None:
    pool, clock = make_pool("a", "b")
    pool.observe_headers(pool.accounts["a"], Snapshot({"requests": Window(1000, 0, clock.now + 30)}, None))
    pool.observe_headers(pool.accounts["b"], windows(clock, requests=10))
    for _ in range(3):
        lease = pool.choose(Estimate())
        assert lease and lease.account.alias == "b"
        pool.release(lease)
    clock.now += 31  # no event at all: the reset alone brings a back, now with the most headroom
    lease = pool.choose(Estimate())
    assert lease and lease.account.alias == "a"


def test_round_robin_over_many_equal_accounts_and_best_of_a_hundred() -> None:
    pool, clock = make_pool(*[f"n{i}" for i in range(100)])
    seen = []
    for _ in range(100):
        lease = pool.choose(Estimate())
        assert lease is not None
        seen.append(lease.account.alias)
        pool.release(lease)
    assert len(set(seen)) == 100  # every equal account got its turn
    for i in range(100):
        pool.observe_headers(pool.accounts[f"n{i}"], windows(clock, requests=10 * (i + 1)))
    lease = pool.choose(Estimate())
    assert lease and lease.account.alias == "n99"
    assert sum(map(len, pool._ready.values())) <= 4 * 100 + 64  # the index does not grow without bound


def test_a_waiter_for_another_account_does_not_hold_back_one_a_free_account_can_serve() -> None:
    async def main() -> None:
        pool, _ = make_pool("a", "b")
        pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 60.0), spend_limit=False, message="x")
        served: list[str] = []

        async def head() -> None:  # has tried b already, so only a (exhausted) can serve it
            await pool.acquire(Estimate(), ["b"], trio.current_time() + 30)

        async def newcomer() -> None:
            lease, waited = await pool.acquire(Estimate(), [], trio.current_time() + 30)
            served.append(lease.account.alias)
            assert waited == 0

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.queue_depth == 1
            await newcomer()
            nursery.cancel_scope.cancel()
        assert served == ["b"]
        assert pool.accounts["a"].in_flight == 0  # the cancelled waiter left nothing reserved

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_failures_of_requests_already_in_flight_are_one_incident() -> None:
    pool, clock = make_pool("a")
    acc = pool.accounts["a"]
    leases = [pool.choose(Estimate()) for _ in range(10)]  # ten requests in flight together
    clock.now += 0.01
    for lease in leases:
        assert lease is not None
        pool.observe_transient(acc, "529", lease.started)
        pool.release(lease)
    assert acc.failures == 1
    assert acc.block_until is not None and acc.block_until - clock.now <= 1.0  # the first step, not 2**9 s
    # A success sent before the cooldown does not lift it; one sent after it does.
    pool.observe_success(acc, 5.0, leases[0].started)  # type: ignore[union-attr]
    assert acc.status(clock.now) == "cooling"
    clock.now += 1.1
    fresh = pool.choose(Estimate())
    assert fresh is not None
    pool.observe_success(acc, 5.0, fresh.started)
    assert acc.failures == 0 and acc.status(clock.now) == "ok"


def test_keyring_trouble_saved_by_older_versions_does_not_keep_a_good_key_dead() -> None:
    pool, _ = make_pool("a", "b")
    lecture = "the keyring refused (KeyringLocked: locked). dario keeps API keys only in the OS keyring."
    pool.import_state({"accounts": {
        "a": {"needs_login": lecture},
        "b": {"needs_login": "upstream answered 401: invalid x-api-key"},
    }})
    assert pool.view(pool.accounts["a"])["status"] == "ok"
    assert pool.view(pool.accounts["b"])["status"] == "needs_login"


def test_waiting_for_keyring_is_its_own_status_and_is_never_saved() -> None:
    pool = Pool()
    pool.upsert("a", "anthropic", "https://example.invalid", 0.0, None)
    pool.mark_keyring_wait("a", "the OS keyring has not answered for 3 s; it is probably locked")
    view = pool.view(pool.accounts["a"])
    assert view["status"] == "waiting_for_keyring" and "locked" in (view["reason"] or "")
    assert pool.pool_view()["health"] == "waiting_for_keyring"
    assert pool.export_state()["accounts"]["a"]["needs_login"] is None
    assert "keyring" in pool.describe_unservable()
    pool.secret_loaded("a", "sk-from-keyring")
    assert pool.view(pool.accounts["a"])["status"] == "ok"


def test_pool_health_is_degraded_while_accounts_only_cool() -> None:
    # A cooling account still serves when none is ready, so the pool is not out of service.
    pool, _ = make_pool("a", "b")
    pool.observe_transient(pool.accounts["a"], "529")
    pool.observe_transient(pool.accounts["b"], "529")
    assert pool.pool_view()["health"] == "degraded"
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 30.0), spend_limit=False, message="x")
    assert pool.pool_view()["health"] == "degraded"  # b still cools, so it still serves
    pool.observe_rate_limited(pool.accounts["b"], Snapshot({}, 30.0), spend_limit=False, message="x")
    assert pool.pool_view()["health"] == "exhausted"  # only a reset brings either back


def test_pool_health_names_needs_login_rather_than_exhausted() -> None:
    pool, _ = make_pool("a")
    pool.observe_auth_failure(pool.accounts["a"], 401, "invalid x-api-key")
    assert pool.pool_view()["health"] == "needs_login"


def test_queued_request_gets_no_accounts_once_the_keyring_is_overdue() -> None:
    async def main() -> None:
        pool = Pool()
        pool.upsert("a", "anthropic", "https://example.invalid", 0.0, None)
        pool.mark_keyring_wait("a", "reading the key from the OS keyring")
        pool.set_keyring_answer_expected(True)
        outcome: list[str] = []

        async def request() -> None:
            try:
                await pool.acquire(Estimate(), (), trio.current_time() + 100)
            except NoAccounts:
                outcome.append("no accounts")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.queue_depth == 1
            pool.set_keyring_answer_expected(False)
        assert outcome == ["no accounts"]

    trio.run(main)


def test_a_lone_cooling_account_still_serves_at_once_after_repeated_overloads() -> None:
    pool, clock = make_pool("a")
    acc = pool.accounts["a"]
    for _ in range(7):  # six 529s in a row used to leave the seventh request queued for 16 s
        lease = pool.choose(Estimate())
        assert lease is not None and lease.account is acc
        clock.now += 0.01
        pool.observe_transient(acc, "upstream 529", lease.started)
        pool.release(lease)
        assert acc.status(clock.now) == "cooling"
    assert acc.failures == 7
    # It was tried in this attempt already: not again (the relay passes the 529 through).
    assert pool.choose(Estimate(), exclude=["a"]) is None


def test_when_none_is_ready_the_cooldown_that_ends_first_serves_and_429s_still_hold() -> None:
    pool, clock = make_pool("a", "b", "c", "d")
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 120.0), spend_limit=False, message="x")
    for alias, times in (("b", 3), ("c", 1), ("d", 2)):
        for _ in range(times):
            clock.now += 0.01
            pool.observe_transient(pool.accounts[alias], "upstream 529")
    # Only d has a window at zero: it waits for its reset like a 429.
    pool.observe_headers(pool.accounts["d"], Snapshot({"requests": Window(10, 0, clock.now + 30)}, None))
    assert {a.alias: a.status(clock.now) for a in pool.accounts.values()} == {
        "a": "exhausted", "b": "cooling", "c": "cooling", "d": "cooling"}
    first = pool.choose(Estimate())
    assert first is not None and first.account.alias == "c"  # its cooldown (0.5 s) ends first
    second = pool.choose(Estimate(), exclude=["c"])
    assert second is not None and second.account.alias == "b"
    assert pool.choose(Estimate(), exclude=["b", "c"]) is None  # never the exhausted a, nor d
    assert pool.any_exhausted(["b", "c"]) and not pool.any_exhausted(["a", "d"])


def test_a_waiter_is_handed_a_cooling_account_and_the_deadline_says_why() -> None:
    async def main() -> None:
        pool, _ = make_pool("a", "b")
        pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 60.0), spend_limit=False, message="x")
        pool.observe_rate_limited(pool.accounts["b"], Snapshot({}, 60.0), spend_limit=False, message="x")
        got: list[str] = []

        async def waiter() -> None:
            lease, _ = await pool.acquire(Estimate(), (), trio.current_time() + 30)
            got.append(lease.account.alias)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.queue_depth == 1
            pool.clear_block("b")
            pool.observe_transient(pool.accounts["b"], "upstream 503")  # cooling, not rate limited
        assert got == ["b"]
        try:
            await pool.acquire(Estimate(), ["b"], trio.current_time() + 1)
        except PoolExhausted as exc:
            assert exc.rate_limited
        else:
            raise AssertionError("expected PoolExhausted")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
