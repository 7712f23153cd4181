"""What the relay tells a client when nothing could serve before the queue deadline."""

from __future__ import annotations

from dario.daemon.errors import openai_error_status_and_body
from dario.daemon.routing.pool import Pool, PoolExhausted
from dario.daemon.routing.relay import Relay


def relay() -> Relay:
    return Relay(Pool(), {}, queue_timeout=5, failover_deadline=30, hold_message_start=1,
                 read_timeout=60)


def test_queue_deadline_says_rate_limited_only_when_an_account_was() -> None:
    err = relay()._queue_deadline_error(PoolExhausted(12.2, "a: exhausted, resets in 12 s", rate_limited=True))
    assert (err.status, err.type) == (429, "rate_limit_error")
    assert "rate limited" in err.message and (b"retry-after", b"13") in err.headers


def test_queue_deadline_after_overloads_is_overloaded_not_rate_limited() -> None:
    err = relay()._queue_deadline_error(PoolExhausted(2.0, "a: cooling, resets in 2 s", rate_limited=False))
    assert (err.status, err.type) == (529, "overloaded_error")
    assert "rate limited" not in err.message
    status, _ = openai_error_status_and_body(err.status, err.type, err.message)
    assert status == 503
