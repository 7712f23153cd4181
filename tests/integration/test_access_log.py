"""dariod --verbose: one access-log line per finished exchange, written by the recorder's observer."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any

import orjson

from tests.support import Dariod, wait_until

MODEL = "claude-sonnet-5-5"


def request(d: Dariod, stream: bool) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    body = {"model": MODEL, "max_tokens": 256, "stream": stream,
            "messages": [{"role": "user", "content": "[[long:12]]"}]}
    conn.request("POST", "/v1/messages", orjson.dumps(body),
                 {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"})
    return conn


def test_verbose_logs_each_exchange_and_a_client_that_hung_up(dariod_factory: Callable[..., Dariod],
                                                              upstream: Any) -> None:
    d = dariod_factory(args=["--verbose"])
    d.login("logged", "sk-ant-access-log", upstream.url)

    conn = request(d, stream=False)
    assert conn.getresponse().status == 200
    conn.close()
    wait_until(lambda: "anthropic messages → 200 via logged (0 failovers" in d.stderr(), 10, "the access-log line")

    upstream.script({"event_delay": 0.5})  # a stream of several seconds
    conn = request(d, stream=True)
    response = conn.getresponse()
    assert response.status == 200
    assert response.read1(64)  # the stream has begun
    conn.close()  # the client hangs up mid-stream
    wait_until(lambda: "anthropic messages: the client hung up" in d.stderr(), 10, "the hang-up line")
    assert "sk-ant-access-log" not in d.stderr()
