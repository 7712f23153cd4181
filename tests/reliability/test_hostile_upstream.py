"""A hostile upstream: streams cut off cleanly, data that is not JSON, 1-byte drips, huge events and
bodies. Whatever it does, a client never gets a broken answer that looks finished, and one dripping
upstream does not hold up another client.

Figures go to the summary table: truncated/malformed streams → error endings (and how many looked
complete), the CPU dariod spends on a 60 KB event dripped in 1-byte pieces and the `/health`
latency meanwhile, and dariod's RSS around a refused huge answer.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.reliability import harness, load
from tests.reliability.harness import ask, chat, post, start_pool
from tests.support import Dariod

KEYS = load.KEYS


@pytest.fixture
def fake(big_fake: load.BigLogFake) -> Iterator[load.BigLogFake]:
    big_fake.clear()
    load.unlimited(big_fake)
    yield big_fake
    big_fake.clear()


@pytest.fixture
def one(fake: load.BigLogFake) -> Iterator[Dariod]:
    d = start_pool(fake, "a")
    yield d
    d.cleanup()


def _ending(dialect: str, body: bytes) -> str:
    """How a streamed answer ended, as a client sees it: "error", "complete" or "silent"."""
    last = body.rstrip(b"\n").split(b"\n\n")[-1]
    if dialect == "anthropic":
        if last.startswith(b"event: error\n"):
            orjson.loads(last.split(b"\ndata: ", 1)[1])  # well-formed
            return "error"
        return "complete" if last.startswith(b"event: message_stop\n") else "silent"
    if last == b"data: [DONE]" or b'"finish_reason":"' in body:
        return "complete"
    if last.startswith(b"data: {") and "error" in orjson.loads(last[6:]):
        return "error"
    return "silent"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.parametrize("fault", ["truncate", "malformed"])
def test_cut_off_and_garbled_streams_always_end_in_an_error(fake: load.BigLogFake, one: Dariod, fault: str) -> None:
    rng = random.Random(11)
    n = 20
    endings: dict[str, int] = {"error": 0, "complete": 0, "silent": 0}
    for i in range(n):
        dialect = "anthropic" if i % 2 == 0 else "openai"
        action = {fault: rng.randint(4, 12)}
        if fault == "malformed":
            action["event_delay"] = 0.01  # the garbage comes after the stream was committed
        fake.script(action, key=KEYS["a"])
        path, body = (("/v1/messages", ask("[[long:12]]", stream=True)) if dialect == "anthropic"
                      else ("/v1/chat/completions", chat("[[long:12]]", stream=True)))
        status, _, data = post(one.url, path, body)
        assert status == 200, data[:300]
        endings[_ending(dialect, data)] += 1
        # A broken stream puts the account in a short cooldown; a good answer (after it) ends it, so
        # the cooldown does not grow over the run.
        status, _, data = post(one.url, "/v1/messages", ask("fine", stream=True))
        assert status == 200 and _ending("anthropic", data) == "complete"
    assert endings == {"error": n, "complete": 0, "silent": 0}
    usage = one.ctl_json("usage", "--window", "1h")["totals"]
    assert usage["errors"] == n and usage["requests"] == 2 * n
    harness.report(
        f"hostile upstream, {fault}: {n} streams (half Anthropic, half OpenAI dialect) → "
        f"{endings['error']} error endings, {endings['complete']} looked complete, "
        f"{endings['silent']} ended silently; usage counts {usage['errors']} errors\n")


def test_a_1_byte_drip_of_a_60kb_event_is_cheap_and_does_not_hold_up_health(
        fake: load.BigLogFake, one: Dariod) -> None:
    assert one.proc is not None
    pid = one.proc.pid
    fake.script({"huge_event": 60_000, "drip": 1}, key=KEYS["a"])
    latencies: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", one.port, timeout=30)
        while not done.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            latencies.append(time.perf_counter() - t0)
            done.wait(0.02)  # a monitor's pace, so its own cost barely shows in dariod's CPU
        conn.close()

    cpu0 = _cpu_seconds(pid)
    t0 = time.monotonic()
    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        status, _, data = post(one.url, "/v1/messages", ask("hi", stream=True), timeout=300)
    finally:
        done.set()
        poller.join(30)
    took = time.monotonic() - t0
    cpu = _cpu_seconds(pid) - cpu0
    assert status == 200 and _ending("anthropic", data) == "complete"
    assert b"x" * 60_000 in data
    worst = max(latencies)
    assert len(latencies) > 5
    assert cpu < 2.0, f"dariod spent {cpu:.2f} s of CPU on one 60 KB event"
    assert worst < 0.25, f"/health took up to {worst:.2f} s while the drip was relayed"
    harness.report(
        f"hostile upstream, 1-byte drip of one 60 KB event ({len(data) / 1024:.0f} KiB streamed in "
        f"{took:.1f} s): dariod CPU {cpu:.2f} s (1.63 s before this fix); "
        f"/health during it: {len(latencies)} requests, median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, "
        f"worst {worst * 1000:.1f} ms (3.6 s before this fix)\n")


def test_a_huge_answer_is_refused_without_holding_it(fake: load.BigLogFake, one: Dariod) -> None:
    assert one.proc is not None
    pid = one.proc.pid
    rss_before = harness.rss_kb(pid)
    rows = []
    for chunked in (False, True):
        fake.script({"huge_body": 200 * 1024 * 1024, "huge_body_chunked": chunked}, key=KEYS["a"])
        t0 = time.monotonic()
        status, _, body = post(one.url, "/v1/messages", ask("hi"), timeout=120)
        took = time.monotonic() - t0
        assert status == 502, body[:300]
        assert orjson.loads(body)["error"]["type"] == "api_error"
        peak = load.proc_status_kb(pid, "VmHWM")
        rows.append(f"  {'chunked, no length' if chunked else 'Content-Length'}: 502 api_error in {took:.2f} s, "
                    f"dariod peak RSS so far {peak / 1024:.0f} MB\n")
    rss_after = harness.rss_kb(pid)
    assert load.proc_status_kb(pid, "VmHWM") / 1024 < 300  # was 656 MB for one 200 MB answer
    # glibc may keep freed heap pages for reuse; before the cap it kept 452 MB.
    assert (rss_after - rss_before) / 1024 < 96
    harness.report(
        f"hostile upstream, a 200 MiB whole answer (cap 64 MiB): dariod RSS {rss_before / 1024:.0f} MB before, "
        f"{rss_after / 1024:.0f} MB after\n" + "".join(rows))
