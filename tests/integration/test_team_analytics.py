"""Team mode usage: dariod instances writing to one PostgreSQL (a real, throwaway server).

Figure 6: `dario-ctl usage` on any instance shows every instance's requests.
Figure 5: PostgreSQL stopped under load, then started: no request fails or slows beyond noise, and
every request sent is either written after recovery or counted as dropped.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.pgserver import PASSWORD, PgServer, pg_server  # noqa: F401 (fixture)
from tests.support import Dariod, wait_until

pytestmark = pytest.mark.timeout(120)

SONNET = "claude-sonnet-4-6"
_db_numbers = itertools.count(1)


@pytest.fixture
def team_url(pg_server: PgServer) -> str:  # noqa: F811
    import psycopg

    name = f"team{next(_db_numbers)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def instances(fake: Any, team_url: str) -> Iterator[list[Dariod]]:
    fake.clear()
    started: list[Dariod] = []
    try:
        for n in range(2):
            d = Dariod(env={"DARIO_ANALYTICS_URL": team_url}).start()
            started.append(d)
            d.login(f"acct{n}", f"sk-ant-team-{n}", fake.url)
        yield started
    finally:
        for d in started:
            d.cleanup()


def _post(conn: http.client.HTTPConnection, text: str) -> tuple[int, float]:
    body = orjson.dumps({"model": SONNET, "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/messages", body=body,
                 headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    resp = conn.getresponse()
    resp.read()
    return resp.status, time.perf_counter() - t0


def _usage(d: Dariod) -> dict[str, Any]:
    result: dict[str, Any] = d.ctl_json("usage", "--window", "1h")
    return result


def test_usage_on_any_instance_shows_every_instances_requests(instances: list[Dariod]) -> None:
    sent = {0: 3, 1: 2}
    for n, count in sent.items():
        conn = http.client.HTTPConnection("127.0.0.1", instances[n].port, timeout=30)
        try:
            assert [_post(conn, f"hello from {n}")[0] for _ in range(count)] == [200] * count
        finally:
            conn.close()
    for d in instances:
        # The other instance's rows arrive with its next periodic flush (every 0.5 s).
        u = wait_until(lambda d=d: (u := _usage(d))["totals"]["requests"] == 5 and u, 15, "both instances' rows")
        assert u["problem"] is None and u["instances"] == 2
        assert {g["key"]: g["requests"] for g in u["by_account"]} == {"acct0": 3, "acct1": 2}
        status = d.ctl_json("status")
        assert status["analytics"]["store"] == "postgresql" and status["analytics"]["ok"] is True
        assert "***@127.0.0.1" in status["analytics"]["where"] and PASSWORD not in orjson.dumps(status).decode()


class Load:
    """Client threads sending requests back to back; each request's phase, status and latency."""

    def __init__(self, d: Dariod, threads: int = 2) -> None:
        self.d = d
        self.phase = "before"
        self.results: list[tuple[str, int, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=30)
        try:
            while not self._stop.is_set():
                phase = self.phase
                started = time.monotonic()
                try:
                    status, seconds = _post(conn, f"load {i}")
                except Exception as exc:  # a failed request is a result, not a crash of the load
                    self.errors.append(f"{phase}: {exc!r} after {time.monotonic() - started:.1f} s")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=30)
                    continue
                self.results.append((phase, status, seconds))
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.results if p == phase)

    def latencies(self, phase: str) -> list[float]:
        return sorted(s for p, _, s in self.results if p == phase)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def test_postgres_outage_under_load_fails_and_slows_nothing(
    fake: Any, team_url: str, pg_server: PgServer  # noqa: F811
) -> None:
    fake.clear()
    d = Dariod(env={"DARIO_ANALYTICS_URL": team_url}).start()
    try:
        # The load sends about a thousand requests in seconds: above the fake's default 1,000 a minute.
        fake.set_limits("sk-ant-team-load", requests=1_000_000)
        d.login("work", "sk-ant-team-load", fake.url)
        with Load(d) as load:
            wait_until(lambda: load.count("before") >= 200, 30, "load before the outage")
            pg_server.stop()
            load.phase = "during"
            # The outage is seen (a problem, without the password) while requests keep succeeding.
            status = wait_until(lambda: (s := d.ctl_json("status"))["analytics"]["problem"] and s, 15, "a problem")
            t0 = time.monotonic()
            during_usage = _usage(d)  # reads answer, with the problem, instead of hanging
            read_s = time.monotonic() - t0
            wait_until(lambda: load.count("during") >= 400, 60, "load during the outage")
            pg_server.start()
            load.phase = "after"
            wait_until(lambda: d.ctl_json("status")["analytics"]["ok"], 40, "the writer to reconnect")
            wait_until(lambda: load.count("after") >= 200, 30, "load after the outage")
        sent = len(load.results) + len(load.errors)
        final = wait_until(lambda: (s := d.ctl_json("status"))["analytics"]["pending"] == 0 and s, 30, "a drain")
        written = _usage(d)["totals"]["requests"]
        dropped = final["analytics"]["dropped"]
        summary = {p: (load.count(p), _pct(load.latencies(p), 50) * 1000, _pct(load.latencies(p), 99) * 1000)
                   for p in ("before", "during", "after")}
        for phase, (n, p50, p99) in summary.items():
            print(f"figure 5: {phase:6} n={n:4} p50={p50:6.2f} ms p99={p99:6.2f} ms")
        print(f"figure 5: sent={sent} written={written} dropped={dropped} usage read during outage {read_s:.2f} s")

        assert load.errors == [] and {s for _, s, _ in load.results} == {200}
        assert written + dropped == sent
        assert during_usage["problem"] and during_usage["totals"]["requests"] == 0 and read_s < 10
        shown = orjson.dumps([status, during_usage, final]).decode() + d.stderr()
        assert PASSWORD not in shown and "***" in status["analytics"]["problem"]
        # Generous: an outage must not put the database on the request path (that would be seconds).
        before_p99, during_p99 = summary["before"][2], summary["during"][2]
        assert during_p99 < max(5 * before_p99, 250.0), summary
        health = orjson.loads(_health(d))
        assert health["analytics"] == {"store": "postgresql", "ok": True, "pending": 0, "dropped": dropped}
    finally:
        d.cleanup()
        if pg_server.proc is None:
            pg_server.start()


def _health(d: Dariod) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().read()
    finally:
        conn.close()
