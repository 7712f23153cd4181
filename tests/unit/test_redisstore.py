"""RedisStore against a real redis-server: each script's atomicity, the lease, key expiry, wake-ups, degraded mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio
import trio.testing

from dario.daemon.exchange import Estimate
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot, Window
from dario.daemon.routing.store import BlockKind
from tests.redisserver import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
redisstore = pytest.importorskip("dario.daemon.routing.redisstore")
RedisStore = redisstore.RedisStore

SECRET = "sk-ant-test-secret-never-in-redis-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.fresh_url()


def _pool(url: str, secret: str = SECRET) -> tuple[Pool, RedisStore]:
    store = RedisStore(url)
    pool = Pool(store=store)
    pool.upsert("team", "anthropic", "http://upstream.invalid", time.time(), secret)
    return pool, store


def _lease(store: RedisStore) -> None:
    store._set_lease([])


def test_reserve_is_atomic_across_instances(url: str) -> None:
    """60 concurrent reserves from three instances against 7 requests left: exactly 7 are admitted."""
    stores = [_pool(url)[1] for _ in range(3)]
    for s in stores:
        _lease(s)
    acc = stores[0].accounts["team"]
    tag = stores[0].tag(acc)
    now = time.time()
    stores[0]._call("observe", tag, [now, stores[0].instance_id, tag, "requests", f"100|7|{now + 60}"])

    def claim(i: int) -> int:
        s = stores[i % 3]
        reply = s._call("reserve", tag, [time.time(), s.instance_id, tag, 1, 10, 10, 1, 3000])
        return int(reply[0])

    with ThreadPoolExecutor(12) as ex:
        admitted = sum(ex.map(claim, range(60)))
    assert admitted == 7
    held = stores[0].client.hgetall(f"dario:res:{tag}")
    assert sum(int(v.split("|")[0]) for v in held.values()) == 7


def test_a_dead_instances_reservations_are_dropped(url: str) -> None:
    (_, a), (_, b) = _pool(url), _pool(url)
    _lease(a)
    _lease(b)
    acc_a, acc_b = a.accounts["team"], b.accounts["team"]
    tag = a.tag(acc_a)
    now = time.time()
    a._call("observe", tag, [now, a.instance_id, tag, "requests", f"4|4|{now + 60}"])
    for _ in range(3):
        assert a._call("reserve", tag, [now, a.instance_id, tag, 1, 0, 0, 1, 3000])[0] == 1
    # B sees A's three: only one left.
    assert b._call("reserve", tag, [now, b.instance_id, tag, 1, 0, 0, 1, 3000])[0] == 1
    assert b._call("reserve", tag, [now, b.instance_id, tag, 1, 0, 0, 1, 3000])[0] == 0
    # A dies: its lease key goes (as its TTL would end it); the next script drops its reservations.
    a.client.delete(f"dario:hb:{a.instance_id}")
    reply = b._call("reserve", tag, [now, b.instance_id, tag, 1, 0, 0, 1, 3000])
    assert reply[0] == 1
    assert a.instance_id not in b.client.hgetall(f"dario:res:{tag}")
    b._apply(acc_b, reply[1], reply[2])
    assert b._others["team"] == (0, 0, 0)


def test_lease_key_has_a_ttl(url: str) -> None:
    _, a = _pool(url)
    _lease(a)
    ttl = a.client.pttl(f"dario:hb:{a.instance_id}")
    assert 0 < ttl <= redisstore.LEASE_TTL_MS


def test_account_keys_expire_at_the_latest_reset_or_block_end(url: str) -> None:
    _, a = _pool(url)
    acc = a.accounts["team"]
    tag = a.tag(acc)
    now = time.time()
    a._call("observe", tag, [now, a.instance_id, tag, "requests", f"10|3|{now + 5}"])
    ttl = a.client.pttl(f"dario:acct:{tag}")
    assert 4000 < ttl <= 6100
    a._call("block", tag, [now, a.instance_id, tag, "exhausted", "429", repr(now + 30), repr(now)])
    ttl = a.client.pttl(f"dario:acct:{tag}")
    assert 29000 < ttl <= 31100


def test_observe_keeps_the_lowest_remaining_of_a_window_and_takes_a_new_window(url: str) -> None:
    _, a = _pool(url)
    acc = a.accounts["team"]
    tag = a.tag(acc)
    now = time.time()
    key = f"dario:acct:{tag}"
    def observe(remaining: int, reset: float, seen: float) -> str:
        a._call("observe", tag, [now, a.instance_id, tag, "requests", f"10|{remaining}|{reset}|{seen}"])
        return str(a.client.hget(key, "w:requests").split("|")[1])

    assert observe(3, now + 5, now) == "3"
    assert observe(6, now + 5, now + 1) == "3"  # same window: the lowest remaining, whatever the order
    assert observe(9, now + 15, now + 2) == "9"  # the next window
    assert observe(1, now + 5, now + 1) == "9"  # seen before the newer window: old news
    assert observe(4, now + 12, now + 3) == "4"  # a token bucket's reset moves: the later-seen answer


def test_a_cooldown_never_replaces_a_live_exhaustion(url: str) -> None:
    _, a = _pool(url)
    acc = a.accounts["team"]
    tag = a.tag(acc)
    now = time.time()
    key = f"dario:acct:{tag}"
    a._call("block", tag, [now, a.instance_id, tag, "exhausted", "429", repr(now + 30), repr(now)])
    a._call("block", tag, [now, a.instance_id, tag, "cooling", "529", repr(now + 1), repr(now)])
    a._call("block", tag, [now, a.instance_id, tag, "exhausted", "429", repr(now + 10), repr(now)])
    assert a.client.hget(key, "bk") == "exhausted"
    assert float(a.client.hget(key, "bu")) == pytest.approx(now + 30)
    # An exhausted account is refused by reserve, whatever the windows say.
    assert a._call("reserve", tag, [now, a.instance_id, tag, 1, 0, 0, 0, 3000])[0] == 0


def test_no_secret_reaches_redis_and_another_key_is_another_account(url: str) -> None:
    _, a = _pool(url)
    _, b = _pool(url, secret=SECRET + "-other")
    _lease(a)
    _lease(b)
    for store in (a, b):
        acc = store.accounts["team"]
        tag = store.tag(acc)
        store._call("block", tag, [time.time(), store.instance_id, tag, "exhausted", "429", repr(time.time() + 9), ""])
    assert a.tag(a.accounts["team"]) != b.tag(b.accounts["team"])
    dump = []
    for key in a.client.scan_iter("*"):
        dump.append(key)
        kind = a.client.type(key)
        if kind == "hash":
            dump += [f"{k}={v}" for k, v in a.client.hgetall(key).items()]
        elif kind == "string":
            dump.append(str(a.client.get(key)))
    text = "\n".join(dump)
    assert "dario:acct:team:" in text
    assert SECRET not in text and SECRET[-16:] not in text


def test_a_release_elsewhere_wakes_a_waiting_request_through_pubsub(url: str) -> None:
    granted: list[float] = []

    async def main() -> None:
        done = trio.Event()
        pool_a, a = _pool(url)
        pool_b, b = _pool(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            acc = pool_a.accounts["team"]
            pool_a.observe_headers(acc, _snap(Window(2, 2, time.time() + 60)))
            lease_a, _ = await pool_a.acquire(Estimate(), (), trio.current_time() + 5)
            lease_b, _ = await pool_b.acquire(Estimate(), (), trio.current_time() + 5)

            async def third() -> None:
                lease, waited = await pool_b.acquire(Estimate(), (), trio.current_time() + 10)
                granted.append(waited)
                pool_b.release(lease)
                done.set()

            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert pool_b.queue_depth == 1  # both requests of the window are held: it waits
            pool_a.release(lease_a)  # the only signal B gets is Redis's message
            with trio.fail_after(5):
                await done.wait()
            pool_b.release(lease_b)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(granted) == 1


def test_degraded_when_redis_stops_and_merged_back_when_it_returns(server: RedisServer, url: str) -> None:
    states: list[str] = []
    served: list[int] = []

    async def main() -> None:
        pool, store = _pool(url)
        acc = pool.accounts["team"]
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            states.append(store.health)
            await trio.to_thread.run_sync(server.stop)
            # Requests keep being served from the local picture; the heartbeat notices within a second.
            with trio.fail_after(3):
                async with trio.open_nursery() as inner:
                    async def serve_meanwhile() -> None:
                        while True:
                            lease, _ = await pool.acquire(Estimate(), (), trio.current_time() + 1)
                            pool.release(lease)
                            served.append(1)
                            await trio.sleep(0.05)
                    inner.start_soon(serve_meanwhile)
                    await store.wait_health("degraded")
                    inner.cancel_scope.cancel()
            states.append(store.health)
            lease, _ = await pool.acquire(Estimate(), (), trio.current_time() + 1)
            assert lease.account is acc
            pool.release(lease)
            # Learned while Redis was away: pushed back when it returns.
            pool.observe_auth_failure(acc, 401, "invalid x-api-key")
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(5):
                await store.wait_health("ok")
            states.append(store.health)
            tag = store.tag(acc)
            assert store.client.hget(f"dario:acct:{tag}", "nl", ).startswith("upstream answered 401")
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert states == ["ok", "degraded", "ok"]
    assert served  # requests went on while Redis was stopping


def test_block_learned_by_one_instance_reaches_the_other(url: str) -> None:
    async def main() -> None:
        pool_a, a = _pool(url)
        pool_b, b = _pool(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            acc_a = pool_a.accounts["team"]
            arrived = trio.Event()
            b.on_refresh = lambda acc: arrived.set() if acc.block_kind is BlockKind.EXHAUSTED else None
            a.block(acc_a, BlockKind.EXHAUSTED, "rate limited (429)", time.time() + 20, since=time.time())
            with trio.fail_after(3):
                await arrived.wait()
            assert pool_b.choose(Estimate()) is None
            nursery.cancel_scope.cancel()

    trio.run(main)


def _snap(window: Window) -> Snapshot:
    return Snapshot(windows={"requests": window}, retry_after=None)


def test_store_health_and_setting() -> None:
    from dario.daemon.settings import SettingsError, from_args

    assert Pool().store_health == "memory"
    assert from_args(["--store", "redis://127.0.0.1:6379/0"]).store == "redis://127.0.0.1:6379/0"
    with pytest.raises(SettingsError, match="Redis URL"):
        from_args(["--store", "postgresql://localhost/x"])


def test_an_instance_whose_lease_lapsed_holds_its_reservations_again(url: str) -> None:
    """A process stalled past its TTL: others dropped its share; its next heartbeat puts it back."""
    async def main() -> None:
        pool, store = _pool(url)
        await store._beat()
        lease1, _ = await pool.acquire(Estimate(input_tokens=5), (), trio.current_time() + 5)
        lease2, _ = await pool.acquire(Estimate(input_tokens=7), (), trio.current_time() + 5)
        tag = store.tag(pool.accounts["team"])
        res = f"dario:res:{tag}"
        assert store.client.hget(res, store.instance_id) == "2|12|0"
        store.client.delete(f"dario:hb:{store.instance_id}", res)  # lapsed, and a script dropped its share
        await store._beat()
        assert store.client.hget(res, store.instance_id) == "2|12|0"
        pool.release(lease1)
        pool.release(lease2)

    trio.run(main)


def test_a_refused_claim_leaves_no_reservation_and_the_request_waits(url: str) -> None:
    """B's picture is stale (no subscriber): its choice is refused by Redis, undone, and B learns why."""
    from dario.daemon.routing.pool import PoolExhausted

    async def main() -> None:
        pool_a, a = _pool(url)
        pool_b, b = _pool(url)
        await a._beat()
        await b._beat()
        acc_a, acc_b = pool_a.accounts["team"], pool_b.accounts["team"]
        pool_a.observe_headers(acc_a, _snap(Window(2, 2, time.time() + 60)))
        await a._send(a._pending)  # the writer's job, done here: A's windows reach Redis
        a._pending.clear()
        held = [(await pool_a.acquire(Estimate(), (), trio.current_time() + 1))[0] for _ in range(2)]
        assert acc_b.in_flight == 0  # B has not heard of A's two
        with pytest.raises(PoolExhausted):
            await pool_b.acquire(Estimate(), (), trio.current_time() + 0.3)
        assert b._local.get("team", [0])[0] == 0  # the refused reservation was undone
        assert acc_b.in_flight == 2 and acc_b.windows["requests"].limit == 2  # B now knows why
        tag = b.tag(acc_b)
        assert b.instance_id not in b.client.hgetall(f"dario:res:{tag}")
        for lease in held:
            pool_a.release(lease)

    trio.run(main)
