from __future__ import annotations

import re
from typing import Any, cast

from prometheus_client import REGISTRY

from dario.daemon.recording import metrics as metrics_mod
from dario.daemon.recording.analytics import UsageRecord
from dario.daemon.recording.metrics import Metrics


def rec(**kw: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "ts": 1.0,
        "client": "curl",
        "account": "work",
        "model": "claude-sonnet-4-5",
        "dialect": "anthropic",
        "endpoint": "messages",
        "streaming": True,
        "status": 200,
        "error_type": None,
    }
    base.update(kw)
    return UsageRecord(**base)


POOL: list[dict[str, Any]] = [
    {
        "alias": "work",
        "status": "cooling",
        "headroom": 0.25,
        "in_flight": 3,
        "windows": {
            "requests": {"limit": 50, "remaining": 12, "reset": 10.0},
            "output-tokens": {"limit": 8000, "remaining": None, "reset": None},
        },
    },
    {"alias": "home", "status": "ok", "headroom": None, "in_flight": 0, "windows": {}},
]


def sample(body: str, name: str, **labels: str) -> float | None:
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


def test_counters_histograms_and_pool_gauges() -> None:
    m = Metrics(lambda: POOL, lambda: 4)
    m.observe(
        rec(input_tokens=100, output_tokens=40, cache_read=7, latency_ms=1500, ttft_ms=200, failovers=2)
    )
    m.observe(rec(input_tokens=1, latency_ms=300))
    m.observe(rec(status=429, error_type="rate_limit_error", account=None, model=None, dialect="openai"))
    body_bytes, content_type = m.render()
    body = body_bytes.decode()
    assert content_type.startswith("text/plain")

    labels = {"account": "work", "model": "claude-sonnet-4-5", "dialect": "anthropic", "status": "200"}
    assert sample(body, "dario_requests_total", **labels) == 2.0
    assert (
        sample(body, "dario_requests_total", account="none", model="none", dialect="openai", status="429")
        == 1
    )
    assert sample(body, "dario_tokens_total", account="work", model="claude-sonnet-4-5", kind="input") == 101
    assert (
        sample(body, "dario_tokens_total", account="work", model="claude-sonnet-4-5", kind="cache_read") == 7
    )
    assert (
        sample(body, "dario_tokens_total", account="work", model="claude-sonnet-4-5", kind="cache_write_1h")
        is None
    )
    assert sample(body, "dario_request_latency_seconds_count", account="work") == 2
    assert sample(body, "dario_request_latency_seconds_sum", account="work") == 1.8
    assert sample(body, "dario_request_latency_seconds_bucket", account="work", le="0.5") == 1
    assert sample(body, "dario_ttft_seconds_count", account="work") == 1
    assert sample(body, "dario_failovers_total") == 2

    assert sample(body, "dario_account_headroom", account="work") == 0.25
    assert sample(body, "dario_account_headroom", account="home") is None  # unknown, not zero
    assert sample(body, "dario_account_status", account="work", status="cooling") == 1
    assert sample(body, "dario_account_status", account="work", status="ok") == 0
    assert sample(body, "dario_account_status", account="home", status="ok") == 1
    assert sample(body, "dario_account_in_flight", account="work") == 3
    assert sample(body, "dario_account_window_remaining", account="work", window="requests") == 12
    assert sample(body, "dario_account_window_remaining", account="work", window="output-tokens") is None
    assert sample(body, "dario_queue_depth") == 4


def test_gauges_are_read_at_scrape_time_and_survive_callback_errors() -> None:
    state: dict[str, Any] = {"depth": 1, "fail": False}

    def snapshot() -> list[dict[str, Any]]:
        if state["fail"]:
            raise RuntimeError("pool mid-change")
        return POOL

    m = Metrics(snapshot, lambda: state["depth"])
    assert sample(m.render()[0].decode(), "dario_queue_depth") == 1
    state["depth"] = 9
    state["fail"] = True
    body = m.render()[0].decode()
    assert sample(body, "dario_queue_depth") == 9
    assert sample(body, "dario_account_in_flight", account="work") is None


def test_own_registry_and_bounded_model_labels(monkeypatch: Any) -> None:
    monkeypatch.setattr(metrics_mod, "MAX_MODELS", 2)
    a = Metrics(lambda: [], lambda: 0)
    b = Metrics(lambda: [], lambda: 0)  # a second instance must not clash with the first
    for model in ("m1", "m2", "m3", "m4"):
        a.observe(rec(model=model))
    body = a.render()[0].decode()
    assert (
        sample(body, "dario_requests_total", account="work", model="m2", dialect="anthropic", status="200")
        == 1
    )
    assert (
        sample(body, "dario_requests_total", account="work", model="other", dialect="anthropic", status="200")
        == 2
    )
    assert "m1" not in b.render()[0].decode()
    assert REGISTRY.get_sample_value("dario_requests_total", {"account": "work"}) is None
    a.observe(cast(Any, None))  # never raises on the request path
