"""`Dialect` is an enum in code and the same plain strings on the wire: logs, metrics labels, analytics rows."""

from __future__ import annotations

import logging

import pytest

from dario.daemon.exchange import Dialect
from dario.daemon.recording.metrics import Metrics
from tests.unit.test_metrics import rec, sample


def test_dialect_values_are_the_strings_recorded_before() -> None:
    assert [d.value for d in Dialect] == ["anthropic", "openai"]
    assert f"{Dialect.OPENAI}" == "openai" and Dialect("anthropic") is Dialect.ANTHROPIC


def test_metrics_label_a_dialect_by_its_value() -> None:
    m = Metrics(lambda: [], lambda: 0)
    m.observe(rec(dialect=Dialect.OPENAI))
    body = m.render()[0].decode()
    labels = {"account": "work", "model": "claude-sonnet-4-5", "dialect": "openai", "status": "200"}
    assert sample(body, "dario_requests_total", **labels) == 1.0
    assert "Dialect" not in body


def test_a_log_line_names_the_dialect_plainly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dario.test"):
        logging.getLogger("dario.test").info("%s %s: the client hung up", Dialect.ANTHROPIC, "messages")
    assert caplog.messages == ["anthropic messages: the client hung up"]
