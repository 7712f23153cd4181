"""Prometheus exposition: request counters from usage records, pool gauges read at scrape time.

Uses its own CollectorRegistry, so nothing else in the process (or a second daemon in a
test) leaks series into it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from dario.daemon.recording.analytics import UsageRecord

STATUSES = ("ok", "cooling", "exhausted", "needs_login", "disabled", "waiting_for_keyring")
NONE_LABEL = "none"
OTHER_LABEL = "other"
# The model name comes from the client; cap distinct values so a buggy or hostile
# client cannot grow the label set (and the daemon's memory) without bound.
MAX_MODELS = 64
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._:/-]+")
# Anthropic's error types (https://docs.anthropic.com/en/api/errors) and dario's own.
_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error",
    "not_found_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error",
    "timeout_error", "conflict_error", "client_closed_request",
})  # fmt: skip

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60)
TOKEN_KINDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


class _PoolCollector:
    """Gauges computed from the live pool on every scrape, never stale."""

    def __init__(
        self, pool_snapshot: Callable[[], list[dict[str, Any]]], queue_depth: Callable[[], int]
    ) -> None:
        self._pool_snapshot = pool_snapshot
        self._queue_depth = queue_depth

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "headroom": GaugeMetricFamily(
                "dario_account_headroom",
                "Smallest remaining fraction of the account's rate-limit windows (0-1)",
                labels=["account"],
            ),
            "status": GaugeMetricFamily(
                "dario_account_status",
                "1 for the account's current status, 0 for the others",
                labels=["account", "status"],
            ),
            "in_flight": GaugeMetricFamily(
                "dario_account_in_flight", "Requests in flight on the account", labels=["account"]
            ),
            "remaining": GaugeMetricFamily(
                "dario_account_window_remaining",
                "Remaining units in the account's rate-limit window, as last reported upstream",
                labels=["account", "window"],
            ),
            "queue": GaugeMetricFamily("dario_queue_depth", "Requests waiting for an account with headroom"),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        fam = self._families()
        try:
            accounts = self._pool_snapshot() or []
        except Exception:
            accounts = []  # a scrape must not fail because the pool is mid-change
        for acc in accounts:
            alias = str(acc.get("alias", NONE_LABEL))
            headroom = acc.get("headroom")
            if headroom is not None:
                fam["headroom"].add_metric([alias], float(headroom))
            status = acc.get("status")
            for s in STATUSES:
                fam["status"].add_metric([alias, s], 1.0 if s == status else 0.0)
            fam["in_flight"].add_metric([alias], float(acc.get("in_flight") or 0))
            for window, view in (acc.get("windows") or {}).items():
                remaining = (view or {}).get("remaining")
                if remaining is not None:
                    fam["remaining"].add_metric([alias, str(window)], float(remaining))
        try:
            fam["queue"].add_metric([], float(self._queue_depth()))
        except Exception:
            pass
        return list(fam.values())


class Metrics:
    def __init__(
        self, pool_snapshot: Callable[[], list[dict[str, Any]]], queue_depth: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._models: set[str] = set()
        self.requests = Counter(
            "dario_requests_total", "Proxied requests", ["account", "model", "dialect", "status"],
            registry=self.registry,
        )  # fmt: skip
        # Errors include streams that started with 200 and then failed (cut off, malformed, an
        # in-band error event): their status label alone would count them as successes.
        self.errors = Counter(
            "dario_request_errors_total", "Proxied requests that ended in an error, by error type",
            ["account", "dialect", "type"], registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "dario_tokens_total", "Tokens by kind", ["account", "model", "kind"], registry=self.registry
        )
        self.latency = Histogram(
            "dario_request_latency_seconds", "Total request latency", ["account"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "dario_ttft_seconds", "Time to first token of streamed responses", ["account"],
            buckets=TTFT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.failovers = Counter(
            "dario_failovers_total", "Times a request moved to another account", registry=self.registry
        )
        self.registry.register(_PoolCollector(pool_snapshot, queue_depth))

    def _model_label(self, model: str | None) -> str:
        if not model:
            return NONE_LABEL
        label = _LABEL_SAFE.sub("_", model)[:100]
        if label in self._models:
            return label
        if len(self._models) >= MAX_MODELS:
            return OTHER_LABEL
        self._models.add(label)
        return label

    def _child(self, metric: Any, *labels: str) -> Any:
        # prometheus_client's labels() validates and locks on every call; the label sets are few.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, rec: UsageRecord) -> None:
        # On the request path: metrics are never worth failing a request over.
        try:
            account = rec.account or NONE_LABEL
            model = self._model_label(rec.model)
            self._child(self.requests, account, model, rec.dialect, str(rec.status)).inc()
            if rec.status >= 400 or rec.error_type is not None:
                etype = rec.error_type or f"http_{rec.status}"
                if etype not in _ERROR_TYPES and not etype.startswith("http_"):
                    etype = OTHER_LABEL  # an upstream's free text must not grow the label set
                self._child(self.errors, account, rec.dialect, etype).inc()
            counts = (
                rec.input_tokens,
                rec.output_tokens,
                rec.cache_write_5m,
                rec.cache_write_1h,
                rec.cache_read,
            )
            if rec.endpoint != "count_tokens":  # counting tokens consumes none
                for kind, n in zip(TOKEN_KINDS, counts, strict=True):
                    if n > 0:
                        self._child(self.tokens, account, model, kind).inc(n)
            if rec.latency_ms > 0:
                self._child(self.latency, account).observe(rec.latency_ms / 1000.0)
            if rec.ttft_ms is not None:
                self._child(self.ttft, account).observe(rec.ttft_ms / 1000.0)
            if rec.failovers > 0:
                self.failovers.inc(rec.failovers)
        except Exception:
            pass

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
