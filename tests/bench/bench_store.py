"""Team mode's added latency: the pool's hot path with the Redis store against the memory store, loopback.

Run alone: ``python -m tests.bench.bench_store [--quick]`` prints JSON. Needs redis-server (started
here on an ephemeral port, no persistence) and redis-py (`pip install 'dario[team]'`).

One request's pool work, timed inside one trio run, for each store:

- ``acquire_us``: `Pool.acquire` — choose, then (Redis) the `reserve` script's round trip. This is
  what a request waits for before it is sent: the added latency.
- ``cycle_us``: acquire + `observe_headers` + `release`, then (Redis) until the writer's pipelined
  round trip carrying them is answered — what one request costs the store end to end.

and, for the choice of client (redis-py's asyncio client does not run under trio), the bare
round trip of the `reserve` script: ``sync_direct_us`` (the sync client called on the trio thread,
blocking the event loop — not usable, a floor) against ``sync_in_thread_us`` (the same call through
`trio.to_thread.run_sync`, what RedisStore does).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import orjson
import trio

from dario.daemon.exchange import Estimate
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import Snapshot, Window
from dario.daemon.routing.store import MemoryStore, PoolStore
from tests.redisserver import RedisServer


def _pool(store: PoolStore) -> Pool:
    pool = Pool(store=store)
    pool.upsert("bench", "anthropic", "http://upstream.invalid", time.time(), "sk-bench-store")
    return pool


async def _time_pool(pool: Pool, n: int) -> dict[str, float]:
    est = Estimate(input_tokens=1200, output_tokens=1024)
    acc = pool.accounts["bench"]
    snap = Snapshot(windows={"requests": Window(1_000_000, 999_000, time.time() + 3600)}, retry_after=None)
    store = pool.store
    acquire: list[float] = []
    cycle: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        lease, _ = await pool.acquire(est, (), trio.current_time() + 10)
        t1 = time.perf_counter()
        pool.observe_headers(acc, snap, lease.started)
        pool.release(lease)
        flushed = getattr(store, "flushed", None)
        if flushed is not None:
            await flushed()
        t2 = time.perf_counter()
        acquire.append((t1 - t0) * 1e6)
        cycle.append((t2 - t0) * 1e6)
    return {"acquire_us": round(statistics.median(acquire), 1), "cycle_us": round(statistics.median(cycle), 1),
            "acquire_p99_us": round(sorted(acquire)[int(len(acquire) * 0.99)], 1)}


async def _time_client(store: Any, n: int) -> dict[str, float]:
    acc = store.accounts["bench"]
    tag = store.tag(acc)
    args = [time.time(), store.instance_id, tag, 0, 0, 0, 0, 3000]  # reserves nothing: a pure round trip
    direct, threaded = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        store._call("reserve", tag, args)
        t1 = time.perf_counter()
        await trio.to_thread.run_sync(store._call, "reserve", tag, args)
        t2 = time.perf_counter()
        direct.append((t1 - t0) * 1e6)
        threaded.append((t2 - t1) * 1e6)
    return {"sync_direct_us": round(statistics.median(direct), 1),
            "sync_in_thread_us": round(statistics.median(threaded), 1)}


def run(n: int) -> dict[str, Any]:
    from dario.daemon.routing.redisstore import RedisStore

    server = RedisServer().start()
    try:
        async def main() -> dict[str, Any]:
            memory = await _time_pool(_pool(MemoryStore()), n)
            store = RedisStore(server.url)
            pool = _pool(store)
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                await _time_pool(pool, 20)  # warm: scripts loaded, connections open
                shared = await _time_pool(pool, n)
                client = await _time_client(store, n)
                nursery.cancel_scope.cancel()
            return {"memory": memory, "redis": shared, "client": client,
                    "added_acquire_us": round(shared["acquire_us"] - memory["acquire_us"], 1),
                    "requests": n}

        return trio.run(main)
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    print(orjson.dumps(run(300 if "--quick" in args else 2000)).decode(), flush=True)


if __name__ == "__main__":
    main()
