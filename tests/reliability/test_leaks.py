"""Key leaks by side doors, as figures for the summary: a hostile upstream that quotes the key in
its errors (every place dario logs, stores or shows is searched for it), and proxy variables
set around a loopback http:// account (what reached the proxy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.test_leaks import RecordingProxy, echo_key_leaks, proxy_env, served_past_a_proxy
from tests.reliability import harness
from tests.support import Dariod


def test_echo_key_and_proxy(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    checked, leaks, _ = echo_key_leaks(dariod_factory(args=["--verbose"]), upstream)
    upstream.clear()
    proxy = RecordingProxy().start()
    try:
        served = served_past_a_proxy(dariod_factory(env=proxy_env(proxy.url)), upstream)
    finally:
        proxy.stop()
    harness.report(
        "key leaks by side doors:\n"
        f"  {'echo-key: places checked (replies, ctl, tray, logs, files, db)':<66} {checked}\n"
        f"  {'echo-key: key occurrences found':<66} {len(leaks)}\n"
        f"  {'proxy: requests to a loopback http:// account with *_PROXY set':<66} {served}\n"
        f"  {'proxy: connections / bytes that reached the proxy':<66} "
        f"{proxy.connections} / {len(proxy.received)}\n"
    )
    assert not leaks, leaks
    assert proxy.connections == 0 and len(proxy.received) == 0
