"""Team mode end to end: three real dariod processes sharing one account's state through a real Redis.

The upstream (tests/fakeshared.py) enforces ONE request limit per key across all three and counts
what a team must avoid: requests sent after a 429 and before its reset (violations), and requests
sent with nothing left in the window (over-admission). Figures are printed (run with -s to see
them) and asserted with the margins stated at each assertion.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.fakeshared import FakeShared
from tests.redisserver import REDIS_SERVER, RedisServer
from tests.support import Dariod, wait_until

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
pytest.importorskip("redis")

BODY = orjson.dumps({"model": "claude-fake", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
_keys = itertools.count(1)


@dataclass
class Team:
    redis: RedisServer
    upstream: FakeShared
    instances: list[Dariod]
    key: str = ""

    def use_new_key(self) -> str:
        """A fresh key for this test: a fresh account in Redis and fresh counts at the fake."""
        self.key = f"sk-team-{next(_keys)}-{time.time_ns()}"
        for d in self.instances:
            if d.proc is not None and d.proc.poll() is None:
                d.login("team", self.key, self.upstream.url)
        return self.key

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.upstream.stats().get(self.key, {})
        return result


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    redis = RedisServer().start()
    upstream = FakeShared().start()
    instances = [Dariod(args=["--store", redis.url, "--no-analytics"]) for _ in range(3)]
    try:
        for d in instances:
            d.start()
        yield Team(redis, upstream, instances)
    finally:
        for d in instances:
            d.cleanup()
        upstream.stop()
        redis.cleanup()


def health(d: Dariod) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    try:
        conn.request("GET", "/health")
        return dict(orjson.loads(conn.getresponse().read()))
    finally:
        conn.close()


@dataclass
class Load:
    """`per_instance` client threads on each instance, sending one request after another."""

    instances: list[Dariod]
    per_instance: int = 4
    statuses: Counter[tuple[int, int]] = field(default_factory=Counter)  # (instance, status) -> count
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    slowest: float = 0.0  # seconds, the longest a request took (queued requests wait for a reset)

    def start(self, only: list[int] | None = None) -> Load:
        for i, d in enumerate(self.instances):
            if only is not None and i not in only:
                continue
            for _ in range(self.per_instance):
                t = threading.Thread(target=self._client, args=(i, d.port), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def _client(self, i: int, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                conn.request("POST", "/v1/messages", BODY, {"content-type": "application/json",
                                                             "anthropic-version": "2023-06-01"})
                resp = conn.getresponse()
                body = resp.read()
                with self.lock:
                    self.slowest = max(self.slowest, time.monotonic() - began)
                    self.statuses[(i, resp.status)] += 1
                    if resp.status != 200:
                        self.errors.append(f"instance {i}: {resp.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                if self.stop.is_set():
                    break
                with self.lock:
                    self.errors.append(f"instance {i}: {type(exc).__name__}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        conn.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def served(self, i: int | None = None) -> int:
        return sum(n for (inst, status), n in self.statuses.items() if status == 200 and (i is None or inst == i))


def _run_for(load: Load, seconds: float) -> None:
    load.start()
    time.sleep(seconds)  # the load runs for this long: a duration, not a synchronisation
    load.finish()


def _warm(team: Team) -> None:
    """One request through each instance: every instance has read the account, the windows are known."""
    one = Load(team.instances, per_instance=1)
    for i, d in enumerate(team.instances):
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        conn.request("POST", "/v1/messages", BODY, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        one.statuses[(i, resp.status)] += 1
        conn.close()
    assert one.served() == 3


def test_no_over_admission_near_the_limit(team: Team) -> None:
    """Figure 2: three instances, 12 clients, one shared limit of 15 per 2 s window: nothing sent beyond it."""
    team.upstream.configure(limit=15, window=2, delay=0.03, hide_headers=False)
    team.use_new_key()
    _warm(team)
    load = Load(team.instances, per_instance=4)
    _run_for(load, 6.0)
    st = team.stats()
    print(f"\n[team] over-admission: {st['over_admission']} of {st['ok'] + st['rejected']} requests sent "
          f"({st['ok']} admitted, limit 15 per 2 s, 3 instances x 4 clients, 6 s); client errors {len(load.errors)}; "
          f"slowest request {load.slowest:.1f} s (queued for the next window)")
    # Every request waits at most for the next reset (2 s), plus load on two shared cores: none is left
    # queued until its deadline (which a lost wake-up would do).
    assert load.slowest < 10
    shares = [load.served(i) / max(1, load.served()) for i in range(3)]
    print(f"[team] share of the admitted requests per instance (4 clients each): "
          f"{', '.join(f'{x:.0%}' for x in shares)}")
    assert load.errors == []
    assert st["ok"] >= 15 + 3  # at least one window was used up: the pool ran at its limit
    # Fair across instances, as far as this shows: no instance is starved (an even share is 33 %).
    assert min(shares) >= 0.15
    assert st["over_admission"] == 0


def test_no_instance_sends_after_a_429_before_the_reset(team: Team) -> None:
    """Figure 1: the limit is learned only from 429s; after one, the others stay away until the reset."""
    team.upstream.configure(limit=10, window=2, delay=0.03, hide_headers=True)
    team.use_new_key()
    load = Load(team.instances, per_instance=4)
    _run_for(load, 6.0)
    st = team.stats()
    delays = sorted(st["violation_delays"])
    late = [d for d in delays if d > PROPAGATION_ALLOWANCE]
    print(f"\n[team] after a 429: {st['violations']} requests arrived before the reset, all within "
          f"{max(delays, default=0) * 1000:.0f} ms of the 429 (requests already on their way); "
          f"{len(late)} later than {PROPAGATION_ALLOWANCE * 1000:.0f} ms; windows hit: {st['rejected']} 429s, "
          f"{st['ok']} admitted; client errors {len(load.errors)}")
    assert st["rejected"] >= 1  # the limit was reached
    assert late == []
    assert load.errors == []  # a 429 is waited out in dario's queue, not passed on


# A request already reserved (or on the wire) when the 429 was answered still arrives; the block
# reaches Redis in one pipelined write, so on loopback that is milliseconds. Two busy cores
# share this with three dariods, Redis, the fake and twelve clients: allow 250 ms.
PROPAGATION_ALLOWANCE = 0.25


def test_kill_9_releases_the_instances_reservations_within_the_lease(team: Team) -> None:
    """Figure 3: one instance dies with requests in flight; the others keep serving, its hold goes."""
    import redis as redis_py

    team.upstream.configure(limit=1000, window=2, delay=0.5, hide_headers=False)
    team.use_new_key()
    _warm(team)
    client = redis_py.Redis.from_url(team.redis.url, decode_responses=True)
    load = Load(team.instances, per_instance=3).start()
    try:
        def held_by() -> dict[str, str]:
            keys = [k for k in client.scan_iter("dario:res:team:*")]
            return client.hgetall(keys[0]) if keys else {}

        wait_until(lambda: len(held_by()) == 3, 10, "all three instances to hold reservations")
        victim = team.instances[2]
        beats_before = {k.split(":")[-1] for k in client.scan_iter("dario:hb:*")}
        assert victim.proc is not None
        victim.kill()
        killed_at = time.monotonic()
        wait_until(lambda: len({k.split(":")[-1] for k in client.scan_iter("dario:hb:*")}) == 2, 10,
                   "the killed instance's lease to lapse")
        dead = beats_before - {k.split(":")[-1] for k in client.scan_iter("dario:hb:*")}
        assert len(dead) == 1
        (dead_id,) = dead
        wait_until(lambda: dead_id not in held_by(), 10, "the killed instance's reservations to go")
        released_after = time.monotonic() - killed_at
        served_before = load.served(0) + load.served(1)
        wait_until(lambda: load.served(0) + load.served(1) >= served_before + 6, 10, "the others to keep serving")
    finally:
        load.finish()
    errors = [e for e in load.errors if not e.startswith("instance 2")]
    print(f"\n[team] kill -9 of one instance: its reservations gone {released_after:.2f} s after the kill "
          f"(lease TTL 3 s); the other two served {load.served(0) + load.served(1)} with {len(errors)} errors")
    assert released_after <= 3.0 + 1.0  # the TTL, plus one heartbeat period of slack
    assert errors == []
    victim.start()
    victim.login("team", team.key, team.upstream.url)


def test_redis_stopped_under_load_fails_no_request(team: Team) -> None:
    """Figure 4: Redis stops and comes back while three instances serve: no request fails."""
    team.upstream.configure(limit=100000, window=2, delay=0.02, hide_headers=False)
    team.use_new_key()
    _warm(team)
    load = Load(team.instances, per_instance=3).start()
    try:
        wait_until(lambda: load.served() >= 30, 10, "the load to start")
        stopped_at = time.monotonic()
        team.redis.stop()
        wait_until(lambda: all(health(d)["store"] == "degraded" for d in team.instances), 10,
                   "every instance to say store: degraded")
        degraded_after = time.monotonic() - stopped_at
        during = load.served()
        wait_until(lambda: load.served() >= during + 30, 10, "requests served while Redis is down")
        started_at = time.monotonic()
        team.redis.start()
        wait_until(lambda: all(health(d)["store"] == "ok" for d in team.instances), 10,
                   "every instance to say store: ok")
        recovered_after = time.monotonic() - started_at
        after = load.served()
        wait_until(lambda: load.served() >= after + 30, 10, "requests served after Redis returned")
    finally:
        load.finish()
    print(f"\n[team] Redis stopped under load: degraded in {degraded_after:.2f} s, back to ok "
          f"{recovered_after:.2f} s after it started; {load.served()} served, {len(load.errors)} failed")
    assert load.errors == []
    assert degraded_after <= 2.0  # "within about a second": one heartbeat (1 s) plus the 250 ms timeout
    for d in team.instances:
        assert "store: degraded" in d.stderr()
        assert d.stderr().count("store: degraded") == 1  # logged once per outage
