"""The recorder: observers of finished exchanges.

Like mitmproxy's addon list, each observer has one hook, `finished(incoming, outcome)`, called
once per exchange after the answer went out (or failed). Usage analytics, the Prometheus
metrics and the `--verbose` access log subscribe here; the relay calls `Recorder.finished` and
knows nothing of what listens. One observer that raises is logged and skipped: it neither stops
the others nor reaches the proxy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Protocol

import trio

from dario.daemon.exchange import Incoming, Outcome
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.metrics import Metrics

log = logging.getLogger("dario.recording")


class Observer(Protocol):
    def finished(self, inc: Incoming, out: Outcome) -> None: ...


class Recorder:
    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def finished(self, inc: Incoming, out: Outcome) -> None:
        for observer in self.observers:
            try:
                observer.finished(inc, out)
            except Exception:  # recording must never break the proxy, nor one observer the others
                log.exception("recording observer %s failed", type(observer).__name__)


def usage_record(inc: Incoming, out: Outcome) -> UsageRecord:
    """The row analytics and metrics keep about one finished exchange."""
    return UsageRecord(
        ts=time.time(), client=inc.client, account=out.account, model=inc.model, dialect=inc.dialect,
        endpoint=inc.endpoint, streaming=inc.stream, status=out.status, error_type=out.error_type,
        input_tokens=out.usage.input_tokens, output_tokens=out.usage.output_tokens,
        cache_write_5m=out.usage.cache_write_5m, cache_write_1h=out.usage.cache_write_1h,
        cache_read=out.usage.cache_read, latency_ms=(time.perf_counter() - inc.t_start) * 1000.0,
        ttft_ms=out.ttft_ms, failovers=out.failovers, queue_wait_ms=out.queue_wait_ms,
        account_kind=out.account_kind,
    )


class AnalyticsObserver:
    """Usage rows into the SQLite store (batched there, written off the event loop)."""

    def __init__(self, store: AnalyticsStore) -> None:
        self.store = store

    def finished(self, inc: Incoming, out: Outcome) -> None:
        self.store.record(usage_record(inc, out))


class MetricsObserver:
    """Counters and histograms for /metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def finished(self, inc: Incoming, out: Outcome) -> None:
        self.metrics.observe(usage_record(inc, out))


class AccessLog:
    """One log line per finished exchange (dariod --verbose); names the account, never a secret."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger

    def finished(self, inc: Incoming, out: Outcome) -> None:
        if _being_cancelled():
            # The exchange was cut short from outside (the client hung up, or shutdown's grace ran out).
            self.log.info("%s %s: the client hung up", inc.dialect, inc.endpoint)
            return
        self.log.info(
            "%s %s → %s via %s (%d failovers, %.0f ms queued)", inc.dialect, inc.endpoint,
            out.status, out.account, out.failovers, out.queue_wait_ms,
        )


def _being_cancelled() -> bool:
    # trio.current_effective_deadline() is -inf inside a cancelled scope (trio's documented API).
    try:
        return trio.current_effective_deadline() == -math.inf
    except RuntimeError:  # called outside trio
        return False
