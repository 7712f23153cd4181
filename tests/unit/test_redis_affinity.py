"""Prompt-cache affinity shared through a real redis-server: pub/sub to every mirror, the TTL, the account id."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio

from dario.daemon.exchange import CacheKey, CacheKeys
from dario.daemon.routing.affinity import TTL_1H, TTL_5M
from dario.daemon.routing.pool import Pool
from tests.redisserver import REDIS_SERVER, RedisServer, free_port

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
redisstore = pytest.importorskip("dario.daemon.routing.redisstore")
RedisStore = redisstore.RedisStore

SECRET = "sk-ant-test-secret-never-in-redis-0123456789"
OTHER_SECRET = "sk-ant-another-organisations-key-9876543210"
DIGEST = bytes(range(16))
LONGER = bytes(range(16, 32))


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.fresh_url()


def _pool(url: str, accounts: dict[str, str]) -> tuple[Pool, RedisStore]:
    store = RedisStore(url)
    pool = Pool(store=store)
    for alias, secret in accounts.items():
        pool.upsert(alias, "anthropic", "http://upstream.invalid", time.time(), secret)
    return pool, store


def _arrivals(store: RedisStore) -> dict[str, trio.Event]:
    """An event per alias, set when an affinity message for it was applied to `store`'s map."""
    events: dict[str, trio.Event] = {}

    def arrived(alias: str) -> None:
        events.setdefault(alias, trio.Event()).set()

    store.on_affinity = arrived
    return events


async def _wait(events: dict[str, trio.Event], alias: str) -> None:
    with trio.fail_after(5):
        await events.setdefault(alias, trio.Event()).wait()


def test_a_put_on_one_instance_is_found_by_the_other_and_written_to_redis(url: str) -> None:
    async def main() -> None:
        pool_a, a = _pool(url, {"team": SECRET, "spare": SECRET})
        pool_b, b = _pool(url, {"team": SECRET, "spare": SECRET})
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            arrivals = _arrivals(b)
            keys = CacheKeys((CacheKey(DIGEST, TTL_5M), CacheKey(LONGER, TTL_1H)), (LONGER, DIGEST))
            assert b.affinity_get(keys.lookup, time.time()) is None
            pool_a.remember_cache("spare", keys)
            await _wait(arrivals, "spare")
            now = time.time()
            assert b.affinity_get(keys.lookup, now) == ("spare", LONGER)
            assert b.affinity_get((DIGEST,), now) == ("spare", DIGEST)
            assert pool_b.conversations() == {"team": 0, "spare": 2}
            # The shared record: the account id (alias and key fingerprint), expiring at the prefix's TTL.
            tag = a.tag(a.accounts["spare"])
            assert a.client.get(f"dario:aff:{DIGEST.hex()}") == tag
            assert 0 < a.client.pttl(f"dario:aff:{DIGEST.hex()}") <= TTL_5M * 1000
            assert TTL_5M * 1000 < a.client.pttl(f"dario:aff:{LONGER.hex()}") <= TTL_1H * 1000
            # A later answer on B moves the prefix to another account, and A follows.
            arrivals_a = _arrivals(a)
            pool_b.remember_cache("team", CacheKeys((CacheKey(DIGEST, TTL_5M),), (DIGEST,)))
            await _wait(arrivals_a, "team")
            assert a.affinity_get((DIGEST,), time.time()) == ("team", DIGEST)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_mirror_entry_runs_out_when_the_writers_does(url: str) -> None:
    async def main() -> None:
        _, a = _pool(url, {"team": SECRET})
        _, b = _pool(url, {"team": SECRET})
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            arrivals = _arrivals(b)
            written = time.time() - (TTL_5M - 30)  # 30 s of the 5 minutes left
            a.affinity_put((CacheKey(DIGEST, TTL_5M),), "team", written)
            await _wait(arrivals, "team")
            assert b.affinity_get((DIGEST,), time.time()) == ("team", DIGEST)
            assert b.affinity_get((DIGEST,), written + TTL_5M + 0.001) is None
            # Already over when it arrives: not added.
            arrivals["team"] = trio.Event()
            a.affinity_put((CacheKey(LONGER, TTL_5M),), "team", time.time() - TTL_5M - 1)
            await _wait(arrivals, "team")
            assert b.affinity_get((LONGER,), time.time()) is None
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_another_key_under_the_same_alias_shares_nothing(url: str) -> None:
    async def main() -> None:
        _, a = _pool(url, {"team": SECRET, "common": SECRET})
        _, b = _pool(url, {"team": OTHER_SECRET, "common": SECRET})
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            arrivals = _arrivals(b)
            a.affinity_put((CacheKey(DIGEST, TTL_5M),), "team", time.time())
            a.affinity_put((CacheKey(LONGER, TTL_5M),), "common", time.time())
            await _wait(arrivals, "common")  # one subscriber applies messages in order: "team"'s came first
            assert "team" not in arrivals
            assert b.affinity_get((DIGEST,), time.time()) is None
            assert b.affinity_get((LONGER,), time.time()) == ("common", LONGER)
            assert a.client.get(f"dario:aff:{DIGEST.hex()}") == a.tag(a.accounts["team"])
            assert a.tag(a.accounts["team"]) != b.tag(b.accounts["team"])
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_degraded_affinity_stays_local(url: str) -> None:
    async def main() -> None:
        pool, store = _pool(f"redis://127.0.0.1:{free_port()}/0", {"team": SECRET})  # nothing listens
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert store.health == "degraded"
            pool.remember_cache("team", CacheKeys((CacheKey(DIGEST, TTL_5M),), (DIGEST,)))
            assert store.affinity_get((DIGEST,), time.time()) == ("team", DIGEST)
            assert not store._pending  # nothing queued for a Redis that is not there
            await store.flushed()
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Nothing reached the team's Redis either.
    assert RedisStore(url).client.keys("dario:aff:*") == []
