"""Prompt-cache affinity: prefix keys of a request, the owner map, and the pool's preference."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from dario.daemon.exchange import CacheKey, CacheKeys, Estimate
from dario.daemon.routing.affinity import LOOKBACK_BLOCKS, TTL_1H, TTL_5M, AffinityMap, cache_keys
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot, Window

MODEL = "claude-sonnet-4-5"
CC = {"type": "ephemeral"}
SECRET_TEXT = "the-system-prompt-words-nobody-should-store"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def conversation(turns: int, *, system: str = SECRET_TEXT) -> dict[str, Any]:
    """Claude Code's pattern: a cached system prompt, the breakpoint on the newest message."""
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        if i:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": f"question {i}"}]})
    messages[-1]["content"][-1]["cache_control"] = CC
    return {
        "model": MODEL, "max_tokens": 100,
        "system": [{"type": "text", "text": system, "cache_control": CC}],
        "messages": messages,
    }


def keys_of(body: dict[str, Any]) -> CacheKeys:
    keys = cache_keys(body["model"], body, orjson.dumps(body))
    assert keys is not None
    return keys


# -- prefix keys ---------------------------------------------------------------------------

def test_no_cache_control_gives_no_keys() -> None:
    body = conversation(2)
    body["system"] = "plain"
    body["messages"][-1]["content"][-1].pop("cache_control")
    assert cache_keys(MODEL, body, orjson.dumps(body)) is None


def test_one_key_per_breakpoint_in_prompt_order() -> None:
    keys = keys_of(conversation(3))
    assert len(keys.written) == 2
    assert all(len(k.digest) == 16 for k in keys.written)
    system_only = keys_of({"model": MODEL, "system": conversation(1)["system"], "messages": []})
    assert keys.written[0].digest == system_only.written[0].digest  # the shorter prefix comes first


def test_keys_are_stable_across_turns_and_the_next_turn_finds_the_previous_prefix() -> None:
    turn1, turn2 = keys_of(conversation(1)), keys_of(conversation(2))
    assert turn1.written[0] == turn2.written[0]  # the system prompt's prefix
    # The breakpoint moved to the newest message; the previous turn's breakpoint prefix is among
    # the boundaries the API's lookback checks, so the next turn can find its owner.
    assert turn1.written[-1].digest in turn2.lookup
    assert turn2.written[-1].digest not in turn1.lookup
    assert keys_of(conversation(2)) == turn2  # deterministic


def test_moving_the_breakpoint_keeps_earlier_prefix_keys() -> None:
    body = conversation(3)
    before = keys_of(body)
    moved = copy.deepcopy(body)
    moved["messages"][-1]["content"][-1].pop("cache_control")
    moved["messages"][-2]["content"][-1]["cache_control"] = CC
    after = keys_of(moved)
    assert after.written[0] == before.written[0]
    assert after.written[1].digest in before.lookup  # same prefix as the boundary it now marks


def test_lookup_is_longest_first_and_bounded_by_the_lookback() -> None:
    body = conversation(40)  # 79 messages, one block each
    keys = keys_of(body)
    assert keys.lookup[0] == keys.written[-1].digest
    # system breakpoint (1 boundary) + the last message's 20 boundaries
    assert len(keys.lookup) == 1 + LOOKBACK_BLOCKS
    assert keys.lookup[-1] == keys.written[0].digest


def test_a_changed_earlier_block_changes_the_later_prefix() -> None:
    a = keys_of(conversation(2))
    b = keys_of(conversation(2, system="another system prompt"))
    assert a.written[0] != b.written[0] and a.written[1] != b.written[1]


def test_string_and_block_forms_hash_alike() -> None:
    body = conversation(1)
    as_string = copy.deepcopy(body)
    as_string["messages"][0]["content"] = "question 0"
    as_string["cache_control"] = CC  # the top-level (automatic) form: the last block
    assert keys_of(as_string).written[-1] == keys_of(body).written[-1]


def test_ttl_1h() -> None:
    body = conversation(2)
    body["system"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    keys = keys_of(body)
    assert [k.ttl for k in keys.written] == [TTL_1H, TTL_5M]
    assert keys.written[0].digest == keys_of(conversation(2)).written[0].digest  # the TTL is not the prefix


def test_model_is_in_the_key() -> None:
    body = conversation(2)
    other = dict(body, model="claude-opus-4-1")
    assert not set(keys_of(body).lookup) & set(keys_of(other).lookup)


def test_tools_come_first() -> None:
    body = conversation(1)
    body["tools"] = [{"name": "t", "input_schema": {"type": "object"}, "cache_control": CC}]
    keys = keys_of(body)
    assert len(keys.written) == 3
    assert keys.written[1] != keys_of(conversation(1)).written[0]  # system's prefix now includes the tools


def test_no_content_is_stored() -> None:
    keys = keys_of(conversation(3))
    flat = b"".join(k.digest for k in keys.written) + b"".join(keys.lookup)
    assert SECRET_TEXT.encode() not in flat and b"question" not in flat
    m = AffinityMap()
    m.put(keys.written, "a", 0.0)
    assert SECRET_TEXT not in repr(vars(m))


def test_malformed_bodies_give_no_keys() -> None:
    assert cache_keys(MODEL, {"messages": [{"role": "user", "content": 5}]}, b"cache_control") is None
    assert cache_keys(None, conversation(1)) is None
    assert cache_keys(MODEL, {"messages": ["not a message"]}, b"cache_control") is None


# -- the map -------------------------------------------------------------------------------

def key(n: int, ttl: float = TTL_5M) -> CacheKey:
    return CacheKey(n.to_bytes(16, "big"), ttl)


def test_longest_live_prefix_wins() -> None:
    m = AffinityMap()
    m.put([key(1)], "a", 0.0)
    m.put([key(2)], "b", 0.0)
    assert m.get([key(2).digest, key(1).digest], 1.0) == ("b", key(2).digest)
    assert m.get([key(3).digest, key(1).digest], 1.0) == ("a", key(1).digest)
    assert m.get([key(3).digest], 1.0) is None


def test_entries_expire_at_their_ttl_and_a_write_refreshes() -> None:
    m = AffinityMap()
    m.put([key(1), key(2, TTL_1H)], "a", 0.0)
    assert m.get([key(1).digest], TTL_5M - 1) is not None
    assert m.get([key(1).digest], TTL_5M) is None
    assert m.get([key(2).digest], TTL_5M + 1) == ("a", key(2).digest)
    m.put([key(1)], "a", 200.0)  # read again: refreshed
    assert m.get([key(1).digest], 200.0 + TTL_5M - 1) is not None
    m.expire(TTL_1H + 1000)
    assert len(m) == 0 and m.counts == {}


def test_a_new_owner_replaces_the_old() -> None:
    m = AffinityMap()
    m.put([key(1)], "a", 0.0)
    m.put([key(1)], "b", 1.0)
    assert m.get([key(1).digest], 2.0) == ("b", key(1).digest)
    assert m.counts == {"b": 1}


def test_lru_cap_evicts_the_least_recently_written() -> None:
    m = AffinityMap(max_entries=3)
    m.put([key(1, TTL_1H)], "a", 0.0)
    m.put([key(2)], "a", 1.0)
    m.put([key(3, TTL_1H)], "b", 2.0)
    m.put([key(1, TTL_1H)], "a", 3.0)  # key 1 used again: key 2 is now the oldest
    m.put([key(4)], "b", 4.0)
    assert len(m) == 3
    assert m.get([key(2).digest], 5.0) is None
    assert all(m.get([key(n).digest], 5.0) for n in (1, 3, 4))
    assert m.counts == {"a": 1, "b": 2}


# -- the pool ------------------------------------------------------------------------------

def make_pool(*aliases: str) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool(clock=clock)
    for a in aliases:
        pool.upsert(a, "anthropic", "https://example.invalid", 0.0, "secret-" + a)
    return pool, clock


def room(pool: Pool, clock: Clock, alias: str, remaining: int, limit: int = 1000) -> None:
    snap = Snapshot({"requests": Window(limit=limit, remaining=remaining, reset=clock.now + 60)}, None)
    pool.observe_headers(pool.accounts[alias], snap)


CONV = keys_of(conversation(2))


def choose(pool: Pool, affinity: CacheKeys | None = CONV, exclude: tuple[str, ...] = (),
           est: Estimate | None = None) -> str:
    lease = pool.choose(est or Estimate(), exclude, affinity)
    assert lease is not None
    pool.release(lease)
    return lease.account.alias


def owned_by(pool: Pool, alias: str) -> None:
    pool.remember_cache(alias, keys_of(conversation(1)))  # the previous turn


def test_the_owner_serves_the_next_turn_though_another_has_more_headroom() -> None:
    pool, clock = make_pool("a", "b", "c")
    room(pool, clock, "a", 600)
    room(pool, clock, "b", 900)
    room(pool, clock, "c", 800)
    owned_by(pool, "a")
    assert choose(pool, None) == "b"  # without affinity: most headroom
    assert [choose(pool) for _ in range(3)] == ["a", "a", "a"]


def test_the_longest_prefix_owner_wins() -> None:
    pool, clock = make_pool("a", "b", "c")
    room(pool, clock, "c", 1000)
    pool.remember_cache("a", keys_of({"model": MODEL, "system": conversation(1)["system"], "messages": []}))
    owned_by(pool, "b")
    assert choose(pool) == "b"


def test_not_the_owner_when_it_cannot_serve_now() -> None:
    pool, clock = make_pool("a", "b")
    owned_by(pool, "a")
    assert choose(pool) == "a"
    assert choose(pool, exclude=("a",)) == "b"  # failover: excluded
    pool.observe_transient(pool.accounts["a"], "upstream 529")
    assert choose(pool) == "b"  # cooling
    clock.now += 1.0
    assert choose(pool) == "a"
    pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 30.0), spend_limit=False, message="429")
    assert choose(pool) == "b"  # exhausted
    clock.now += 31.0
    room(pool, clock, "b", 1000)
    pool.observe_headers(pool.accounts["a"], Snapshot(
        {"input-tokens": Window(limit=1000, remaining=600, reset=clock.now + 60)}, None))
    assert choose(pool, est=Estimate(input_tokens=500)) == "a"  # fits
    assert choose(pool, est=Estimate(input_tokens=700)) == "b"  # the estimate does not fit


def test_not_the_owner_when_its_headroom_is_far_below_the_best() -> None:
    pool, clock = make_pool("a", "b")
    owned_by(pool, "a")
    room(pool, clock, "b", 1000)
    room(pool, clock, "a", 510)
    assert choose(pool) == "a"  # half of the best and more: kept
    room(pool, clock, "a", 490)
    assert choose(pool) == "b"  # below half of the best: moved


def test_not_the_owner_below_the_floor_unless_all_are_that_low() -> None:
    pool, clock = make_pool("a", "b")
    owned_by(pool, "a")
    room(pool, clock, "a", 40)
    room(pool, clock, "b", 60)
    assert choose(pool) == "b"  # 4 % is below the 5 % floor
    room(pool, clock, "b", 49)
    room(pool, clock, "a", 40)
    assert choose(pool) == "b"  # both below the floor: the owner must be as good as the best
    room(pool, clock, "b", 30)
    assert choose(pool) == "a"  # the owner is the best anyway


def test_the_preferred_account_still_comes_first() -> None:
    pool, _ = make_pool("a", "b")
    owned_by(pool, "a")
    pool.prefer("b")
    assert choose(pool) == "b"


def test_a_served_turn_makes_its_account_the_owner_and_the_conversation_stays() -> None:
    pool, clock = make_pool("a", "b", "c")
    for alias in "abc":
        room(pool, clock, alias, 1000)
    turns = [keys_of(conversation(n)) for n in range(1, 6)]
    served = []
    for keys in turns:
        lease = pool.choose(Estimate(), (), keys)
        assert lease is not None
        pool.remember_cache(lease.account.alias, keys)
        pool.release(lease)
        served.append(lease.account.alias)
    assert len(set(served)) == 1
    # When the owner is exhausted the conversation moves once and stays on its new account.
    owner = served[0]
    pool.observe_rate_limited(pool.accounts[owner], Snapshot({}, 600.0), spend_limit=False, message="429")
    moved = []
    for n in range(6, 10):
        keys = keys_of(conversation(n))
        lease = pool.choose(Estimate(), (), keys)
        assert lease is not None
        pool.remember_cache(lease.account.alias, keys)
        pool.release(lease)
        moved.append(lease.account.alias)
    assert owner not in moved and len(set(moved)) == 1


def test_conversations_counts_live_prefixes_per_account() -> None:
    pool, clock = make_pool("a", "b")
    pool.remember_cache("a", keys_of(conversation(1)))
    pool.remember_cache("b", keys_of(conversation(1, system="other")))
    pool.remember_cache("b", keys_of(conversation(2, system="other")))
    assert pool.conversations() == {"a": 2, "b": 3}  # system prefix + one per turn
    assert {v["alias"]: v["conversations"] for v in pool.views()} == {"a": 2, "b": 3}
    clock.now += TTL_5M
    assert pool.conversations() == {"a": 0, "b": 0}


def test_affinity_never_makes_a_request_wait() -> None:
    async def main() -> None:
        pool, clock = make_pool("a", "b")
        owned_by(pool, "a")
        pool.observe_rate_limited(pool.accounts["a"], Snapshot({}, 600.0), spend_limit=False, message="429")
        lease, waited = await pool.acquire(Estimate(), (), trio.current_time() + 5, CONV)
        assert lease.account.alias == "b" and waited == 0.0
        # Queued behind a busy pool, a waiter is granted the first account that frees up.
        room(pool, clock, "b", 0)
        pool.release(lease)
        granted: list[str] = []

        async def wait_for_one() -> None:
            got, _ = await pool.acquire(Estimate(), (), trio.current_time() + 5, CONV)
            granted.append(got.account.alias)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_one)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.queue_depth == 1
            room(pool, clock, "b", 500)
        assert granted == ["b"]

    trio.run(main)


@pytest.mark.parametrize("affinity", [None, CONV])
def test_choice_without_a_remembered_prefix_is_the_normal_one(affinity: CacheKeys | None) -> None:
    pool, clock = make_pool("a", "b")
    room(pool, clock, "a", 300)
    room(pool, clock, "b", 900)
    assert choose(pool, affinity) == "b"


def test_a_removed_account_owns_nothing_when_it_comes_back() -> None:
    pool, _ = make_pool("a", "b")
    owned_by(pool, "a")
    pool.remember_cache("b", keys_of(conversation(1, system="other")))
    pool.remove("a")
    pool.upsert("a", "anthropic", "https://example.invalid", 0.0, "another-org-key")
    assert pool.conversations() == {"b": 2, "a": 0}
