"""Local rate-limit windows: declared limits, counting per minute, AIMD estimates, persistence."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.accounts.registry import Registry, check_limits
from dario.daemon.exchange import Estimate, Usage
from dario.daemon.routing.localwindows import DECREASE, FLOORS, MINUTE, LocalWindows
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot, Window

T0 = 1_000_000.0
NO_HEADERS = Snapshot({}, None)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_pool(*aliases: str) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool(clock=clock)
    for a in aliases:
        pool.upsert(a, "anthropic-compatible", "https://example.invalid", 0.0, "secret-" + a)
    return pool, clock


def headerless(pool: Pool, *aliases: str) -> None:
    for a in aliases:
        pool.observe_headers(pool.accounts[a], NO_HEADERS, status=200)


def window(pool: Pool, alias: str, name: str = "requests") -> dict[str, Any]:
    view = pool.view(pool.accounts[alias])
    return dict(view["windows"][name])


def serve(pool: Pool, est: Estimate | None = None, used: Usage | None = None) -> str:
    lease = pool.choose(est or Estimate())
    assert lease is not None
    pool.release(lease, used or Usage())
    return lease.account.alias


# -- the tracker alone ---------------------------------------------------------------------------


def test_a_declared_window_counts_the_minute_and_resets() -> None:
    local = LocalWindows()
    local.declare("a", {"rpm": 3}, T0)
    assert local.windows("a", T0)["requests"] == Window(3, 3, None)  # idle: no reset yet
    entry = local.sent("a", 10, 5, T0 + 1)
    assert entry is not None
    local.finished("a", entry, (10, 5), T0 + 2)
    windows = local.windows("a", T0 + 2)
    assert windows == {"requests": Window(3, 2, T0 + 1 + MINUTE)}
    # The minute is over: a fresh window, nothing used.
    assert local.windows("a", T0 + 1 + MINUTE)["requests"] == Window(3, 3, None)


def test_a_request_counts_in_the_minute_it_was_sent_in() -> None:
    local = LocalWindows()
    local.declare("a", {"rpm": 5}, T0)
    late = local.sent("a", 0, 0, T0 + 59)
    assert late is not None
    first_reset = local.windows("a", T0 + 59)["requests"].reset
    # It ends after its window has reset: the new window does not carry it.
    local.sent("a", 0, 0, T0 + 59 + MINUTE - 1)  # opens nothing new yet (same window)
    local.finished("a", late, (0, 0), T0 + 59 + MINUTE + 1)
    assert first_reset == T0 + 59 + MINUTE
    assert local.windows("a", T0 + 59 + MINUTE + 1)["requests"].remaining == 5


def test_no_declared_limit_and_no_throttle_means_no_window() -> None:
    pool, _ = make_pool("a")
    headerless(pool, "a")
    serve(pool)
    assert pool.view(pool.accounts["a"])["windows"] == {}
    assert pool.view(pool.accounts["a"])["headroom"] is None


# -- through the pool ------------------------------------------------------------------------------


def test_the_fourth_request_in_a_minute_goes_to_another_account() -> None:
    pool, clock = make_pool("a", "b")
    headerless(pool, "a", "b")
    pool.set_declared_limits("a", {"rpm": 3})
    pool.prefer("a")
    served = [serve(pool) for _ in range(4)]
    assert served == ["a", "a", "a", "b"]
    assert pool.view(pool.accounts["a"])["status"] == "exhausted"
    w = window(pool, "a")
    assert (w["limit"], w["remaining"], w["source"]) == (3, 0, "declared")
    clock.now += MINUTE
    assert serve(pool) == "a"  # the minute reset


def test_tokens_are_reserved_by_the_estimate_and_corrected_by_usage() -> None:
    pool, _ = make_pool("a")
    headerless(pool, "a")
    pool.set_declared_limits("a", {"input_tpm": 10_000, "output_tpm": 1_000})
    lease = pool.choose(Estimate(input_tokens=4_000, output_tokens=1_000))
    assert lease is not None
    acc = pool.accounts["a"]
    # In flight: the estimate is held (the output window is fully reserved).
    assert pool.view(acc)["headroom"] == 0.0
    pool.release(lease, Usage(input_tokens=1_500, output_tokens=200, cache_write_5m=500))
    assert window(pool, "a", "input-tokens")["remaining"] == 8_000  # input + cache writes
    assert window(pool, "a", "output-tokens")["remaining"] == 800
    assert pool.view(acc)["headroom"] == 0.8


def test_answers_with_headers_take_over_from_declared_limits() -> None:
    pool, clock = make_pool("a")
    pool.set_declared_limits("a", {"rpm": 3, "output_tpm": 500})
    assert window(pool, "a")["source"] == "declared"  # no answer seen yet: the declared limits apply
    pool.observe_headers(pool.accounts["a"], Snapshot({"requests": Window(50, 49, clock.now + 60)}, None), status=200)
    view = pool.view(pool.accounts["a"])
    assert view["windows"] == {"requests": {"limit": 50, "remaining": 49, "reset": clock.now + 60, "source": "headers"}}
    assert view["limits"] == {"rpm": 3, "input_tpm": None, "output_tpm": 500}


def test_a_gateway_error_without_headers_does_not_mark_an_account_headerless() -> None:
    pool, clock = make_pool("a")
    pool.set_declared_limits("a", {"rpm": 3})
    pool.observe_headers(pool.accounts["a"], Snapshot({"requests": Window(50, 49, clock.now + 60)}, None), status=200)
    pool.observe_headers(pool.accounts["a"], NO_HEADERS, status=502)
    assert window(pool, "a")["source"] == "headers"


def test_clearing_declared_limits_removes_their_windows() -> None:
    pool, _ = make_pool("a")
    headerless(pool, "a")
    pool.set_declared_limits("a", {"rpm": 3, "input_tpm": 5000})
    assert set(pool.view(pool.accounts["a"])["windows"]) == {"requests", "input-tokens"}
    pool.set_declared_limits("a", {"rpm": 3})
    assert set(pool.view(pool.accounts["a"])["windows"]) == {"requests"}
    pool.set_declared_limits("a", {})
    assert pool.view(pool.accounts["a"])["windows"] == {}


# -- AIMD ----------------------------------------------------------------------------------------


def throttle(pool: Pool, alias: str, retry_after: float | None = None) -> None:
    others = [a for a in pool.accounts if a != alias]
    lease = pool.choose(Estimate(input_tokens=2_000, output_tokens=100), exclude=others)
    assert lease is not None and lease.account.alias == alias
    pool.observe_rate_limited(lease.account, Snapshot({}, retry_after), spend_limit=False, message="throttled")
    pool.release(lease, None)


def test_a_throttle_sets_the_estimate_to_a_share_of_the_last_minute_and_holds_to_the_reset() -> None:
    pool, clock = make_pool("a", "b")
    headerless(pool, "a", "b")
    pool.prefer("a")
    for _ in range(9):
        assert serve(pool, Estimate(2_000, 100), Usage(input_tokens=2_000, output_tokens=100)) == "a"
        clock.now += 1
    started = T0
    throttle(pool, "a")  # the tenth request in the minute
    view = pool.view(pool.accounts["a"])
    assert view["status"] == "exhausted"
    assert view["until"] == started + MINUTE  # the local minute's reset, not the 30 s default
    req = window(pool, "a")
    assert (req["limit"], req["source"]) == (int(DECREASE * 10), "estimated")
    # The throttled request took no tokens: 9 × 2000 input were sent (and its estimate of 2000).
    assert window(pool, "a", "input-tokens")["limit"] == int(DECREASE * 20_000)
    assert serve(pool) == "b"  # traffic moves away


def test_retry_after_wins_over_the_local_minute() -> None:
    pool, clock = make_pool("a")
    headerless(pool, "a")
    throttle(pool, "a", retry_after=5)
    assert pool.view(pool.accounts["a"])["until"] == clock.now + 5


def test_an_estimate_never_drops_below_the_floor() -> None:
    pool, _ = make_pool("a")
    headerless(pool, "a")
    throttle(pool, "a")  # one request sent: 0.7 of it would be no request at all
    assert window(pool, "a")["limit"] == FLOORS["requests"]
    assert window(pool, "a", "output-tokens")["limit"] == FLOORS["output-tokens"]


def test_an_estimate_rises_each_clean_minute_up_to_the_declared_limit() -> None:
    pool, clock = make_pool("a")
    headerless(pool, "a")
    pool.set_declared_limits("a", {"rpm": 50})
    for _ in range(19):
        serve(pool)
    throttle(pool, "a")  # 20 sent in the minute
    assert window(pool, "a")["limit"] == 14
    clock.now += MINUTE
    assert window(pool, "a")["limit"] == 19  # + 10 % of the declared 50
    clock.now += 3 * MINUTE
    assert window(pool, "a")["limit"] == 34
    clock.now += 4 * MINUTE
    w = window(pool, "a")
    assert (w["limit"], w["source"]) == (50, "declared")  # reached the cap: the declared limit rules


def test_without_a_declared_limit_the_estimate_rises_from_the_throttled_level_then_is_forgotten() -> None:
    pool, clock = make_pool("a")
    headerless(pool, "a")
    for _ in range(29):
        serve(pool)
    throttle(pool, "a")  # 30 sent
    assert window(pool, "a")["limit"] == 21
    clock.now += MINUTE
    assert window(pool, "a")["limit"] == 24  # + 10 % of the throttled level, 30
    clock.now += 12 * MINUTE
    assert "requests" not in pool.view(pool.accounts["a"])["windows"]  # past twice the level: unknown again


def test_a_declared_limit_caps_a_higher_estimate() -> None:
    local = LocalWindows()
    local.saw_answer("a", has_headers=False)
    for i in range(40):
        local.sent("a", 0, 0, T0 + i)
    local.throttled("a", T0 + 40)
    assert local.windows("a", T0 + 40)["requests"].limit == 28
    local.declare("a", {"rpm": 10}, T0 + 41)
    assert local.windows("a", T0 + 41)["requests"].limit == 10
    assert "requests" not in local.tracks["a"].learned  # the declared limit is the tighter one


# -- persistence -----------------------------------------------------------------------------------


def test_estimates_and_the_current_minute_survive_a_restart() -> None:
    pool, clock = make_pool("a")
    headerless(pool, "a")
    pool.set_declared_limits("a", {"rpm": 100})
    for _ in range(9):
        serve(pool)
    throttle(pool, "a")
    saved = orjson.loads(orjson.dumps(pool.export_state()))
    assert "requests" not in saved["accounts"]["a"]["windows"]  # rebuilt from "local", not restored raw
    clock.now += 1
    fresh = Pool(clock=clock)
    fresh.upsert("a", "anthropic-compatible", "https://example.invalid", 0.0, "secret-a")
    fresh.set_declared_limits("a", {"rpm": 100})  # from the registry, as at start-up
    fresh.import_state(saved)
    before, after = pool.view(pool.accounts["a"]), fresh.view(fresh.accounts["a"])
    assert after["windows"]["requests"] == before["windows"]["requests"]
    assert after["windows"]["requests"]["source"] == "estimated"
    assert after["status"] == "exhausted" and after["until"] == before["until"]
    clock.now += MINUTE
    assert fresh.view(fresh.accounts["a"])["windows"]["requests"]["limit"] == 7 + 10  # it keeps rising


def test_a_broken_saved_estimate_is_ignored() -> None:
    pool, _ = make_pool("a")
    pool.import_state({"accounts": {"a": {"local": {"learned": {"requests": {"limit": "x"}}, "used": 5}}}})
    assert pool.view(pool.accounts["a"])["windows"] == {}


# -- declared limits in the registry ---------------------------------------------------------------


def test_limits_are_checked_with_messages_that_name_the_flag() -> None:
    assert check_limits({"rpm": 50, "output_tpm": None}) == {"rpm": 50, "output_tpm": None}
    for bad in (0, -1, 2.5, True, "50", 10**10):
        with pytest.raises(InvalidAccount, match="--rpm must be a whole number"):
            check_limits({"rpm": bad})
    with pytest.raises(InvalidAccount, match="--input-tpm"):
        check_limits({"input_tpm": 0})
    with pytest.raises(InvalidAccount, match="unknown limit"):
        check_limits({"tpm": 5})


def test_declared_limits_round_trip_through_accounts_json(tmp_path: Any) -> None:
    path = tmp_path / "accounts.json"
    reg = Registry(path)
    acc = reg.upsert("a", "anthropic-compatible", "https://example.invalid")
    acc.set_limits({"rpm": 40, "input_tpm": None, "output_tpm": 8000})
    reg.save()
    again = Registry(path).load().accounts["a"]
    assert again.limits() == {"rpm": 40, "input_tpm": None, "output_tpm": 8000}
    # A re-login keeps them; a hand-edited bad value is dropped, not fatal.
    assert reg.upsert("a", "anthropic-compatible", "https://example.invalid").limits()["rpm"] == 40
    path.write_text(orjson.dumps({"accounts": [{"alias": "a", "base_url": "https://x.invalid", "rpm": -3}]}).decode())
    assert Registry(path).load().accounts["a"].limits()["rpm"] is None


def test_a_refresh_starts_a_fresh_minute_and_clear_forgets_the_estimates() -> None:
    pool, _ = make_pool("a")
    headerless(pool, "a")
    for _ in range(4):
        assert serve(pool, Estimate(2_000, 100), Usage(input_tokens=2_000, output_tokens=100)) == "a"
    throttle(pool, "a")
    assert pool.view(pool.accounts["a"])["status"] == "exhausted"
    pool.clear_block("a")  # what a successful `dario-ctl refresh` does
    assert pool.view(pool.accounts["a"])["status"] == "ok"
    assert window(pool, "a")["source"] == "estimated"  # learned, and kept
    pool.set_declared_limits("a", {}, forget_estimates=True)  # `dario-ctl limits a --clear`
    assert not any(w.get("source") == "estimated" for w in pool.view(pool.accounts["a"])["windows"].values())
