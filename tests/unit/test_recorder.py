"""Recording as observers of a finished exchange, and the composition root that subscribes them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dario.daemon import app
from dario.daemon.exchange import Estimate, Incoming, Outcome, Usage
from dario.daemon.recording.analytics import UsageRecord
from dario.daemon.recording.recorder import AccessLog, AnalyticsObserver, MetricsObserver, Recorder
from dario.daemon.settings import from_args


def incoming(**changes: Any) -> Incoming:
    fields: dict[str, Any] = dict(
        dialect="anthropic", endpoint="messages", path="/v1/messages", query=b"", headers=[], body=b"{}",
        stream=False, model="claude-x", estimate=Estimate(), client="curl", t_start=time.perf_counter(),
    )
    fields.update(changes)
    return Incoming(**fields)


class Counting:
    def __init__(self) -> None:
        self.seen: list[tuple[Incoming, Outcome]] = []

    def finished(self, inc: Incoming, out: Outcome) -> None:
        self.seen.append((inc, out))


class Broken:
    def finished(self, inc: Incoming, out: Outcome) -> None:
        raise RuntimeError("disk full")


def test_each_observer_sees_each_exchange_once_in_order() -> None:
    first, second = Counting(), Counting()
    recorder = Recorder([first, second])
    a, b = (incoming(), Outcome(status=200)), (incoming(endpoint="count_tokens"), Outcome(status=429))
    recorder.finished(*a)
    recorder.finished(*b)
    assert first.seen == [a, b] and second.seen == [a, b]


def test_a_failing_observer_stops_neither_the_others_nor_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    before, after = Counting(), Counting()
    recorder = Recorder([before, Broken(), after])
    exchange = (incoming(), Outcome(status=200, account="main"))
    with caplog.at_level(logging.ERROR, "dario.recording"):
        recorder.finished(*exchange)  # does not raise
    assert before.seen == [exchange] and after.seen == [exchange]
    assert "recording observer Broken failed" in caplog.text


def test_analytics_and_metrics_get_the_usage_row() -> None:
    rows: list[UsageRecord] = []

    class Sink:
        def record(self, rec: UsageRecord) -> None:
            rows.append(rec)

        def observe(self, rec: UsageRecord) -> None:
            rows.append(rec)

    out = Outcome(account="main", status=200, usage=Usage(input_tokens=7, output_tokens=3, cache_read=2),
                  failovers=1, queue_wait_ms=5.0, ttft_ms=12.0)
    Recorder([AnalyticsObserver(Sink()), MetricsObserver(Sink())]).finished(  # type: ignore[arg-type]
        incoming(stream=True, client="claude-code"), out)
    assert len(rows) == 2
    for rec in rows:
        assert (rec.account, rec.client, rec.model, rec.streaming, rec.status) == ("main", "claude-code", "claude-x",
                                                                                   True, 200)
        assert (rec.input_tokens, rec.output_tokens, rec.cache_read, rec.failovers) == (7, 3, 2, 1)
        assert rec.ttft_ms == 12.0 and rec.latency_ms >= 0


def test_access_log_names_status_and_account(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "dario.server"):
        AccessLog(logging.getLogger("dario.server")).finished(
            incoming(dialect="openai", endpoint="chat"), Outcome(status=200, account="main", failovers=1))
    assert caplog.messages == ["openai chat → 200 via main (1 failovers, 0 ms queued)"]


def test_access_log_says_when_the_exchange_was_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(logging.getLogger("dario.server"))

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()  # the hang-up watcher's cancel, as the public app does it
            try:
                await trio.sleep_forever()
            finally:  # where the relay records
                log.finished(incoming(stream=True), Outcome(status=200, account="main"))

    with caplog.at_level(logging.INFO, "dario.server"):
        trio.run(main)
    assert caplog.messages == ["anthropic messages: the client hung up"]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return tmp_path


@pytest.mark.parametrize(("args", "observers"), [
    ([], ["AnalyticsObserver", "MetricsObserver"]),
    (["--verbose"], ["AnalyticsObserver", "MetricsObserver", "AccessLog"]),
    (["--no-analytics"], ["MetricsObserver"]),
])
def test_build_subscribes_the_observers_and_hands_the_relay_the_recorder(xdg: Path, args: list[str],
                                                                         observers: list[str]) -> None:
    daemon = trio.run(_build, args)
    assert [type(o).__name__ for o in daemon.recorder.observers] == observers
    assert daemon.relay.record == daemon.recorder.finished
    edge = daemon.public.state
    assert edge.recorder is daemon.recorder
    assert edge.pool is daemon.pool and edge.settings is daemon.settings


def test_edge_counters_are_the_status_view_s(xdg: Path) -> None:
    daemon = trio.run(_build, [])
    edge = daemon.public.state
    edge.requests_served += 1
    assert daemon.view.status()["requests_served"] == 1 == edge.requests_served
    assert edge.started_at == daemon.view.started_at


async def _build(args: list[str]) -> app.Daemon:
    daemon = app.build(from_args(args))
    await daemon.aclose()
    return daemon
