"""The benchmark's load generator: a separate process speaking raw HTTP/1.1 on asyncio.

It reads one JSON job per line on stdin and answers one JSON line on stdout, so the
orchestrator can keep it running (pinned to its own core) for the whole benchmark. It is
deliberately lean — pre-encoded requests, `asyncio.Protocol` callbacks, a hand-written
response parser — so the client is never the bottleneck; each result carries the client's
own CPU use so that can be checked.

Jobs (all bounded in count and time):
  closed  closed-loop load at a fixed concurrency: warm-up, then `runs` timed runs
  events  sequential streams, recording every socket read (timing, events per read)
  hold    N streams opened at once (slow drip), counting errors and the peak open
  quit    exit
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import sys
import time
from typing import Any

import orjson

perf = time.perf_counter
_CONTENT_RE = re.compile(rb'content_block_start|"content":"[^"]')


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def build_body(spec: dict[str, Any]) -> bytes:
    """A Messages or Chat Completions body; `size` pads the user text to that many bytes."""
    text = spec.get("text", "bench")
    msg: dict[str, Any] = {"model": spec["model"], "max_tokens": spec.get("max_tokens", 64),
                           "messages": [{"role": "user", "content": text}]}
    if spec.get("stream"):
        msg["stream"] = True
    raw = orjson.dumps(msg)
    size = int(spec.get("size") or 0)
    if size > len(raw) + 1:
        msg["messages"][0]["content"] = text + " " + "x" * (size - len(raw) - 1)
        raw = orjson.dumps(msg)
    return raw


def build_request(job: dict[str, Any]) -> bytes:
    body = build_body(job["body"])
    head = [f"POST {job['path']} HTTP/1.1", f"host: {job['host']}:{job['port']}",
            "content-type: application/json", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in job.get("headers", [])]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------------------------
# One connection: an incremental HTTP/1.1 response parser
# ---------------------------------------------------------------------------------------------


class Result:
    __slots__ = ("events", "first_content", "first_event", "head", "reads", "status", "t0", "t_done")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.status = 0
        self.head = 0.0
        self.first_event = 0.0
        self.first_content = 0.0
        self.t_done = 0.0
        self.events = 0
        self.reads: list[tuple[float, int]] | None = None  # (time, events completed in this read)


class Conn(asyncio.Protocol):
    """A keep-alive client connection; `request()` sends pre-encoded bytes and awaits the answer."""

    def __init__(self, record_reads: bool = False, on_head: Any = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.fut: asyncio.Future[Result] | None = None
        self.res: Result | None = None
        self.record_reads = record_reads
        self.on_head = on_head
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.in_head = True
        self.length = -1  # content-length, or -1 for chunked / until close
        self.chunked = False
        self.close_after = False
        self.cstate = 0  # chunked: 0 size line, 1 data, 2 data CRLF, 3 trailers
        self.crem = 0
        self.tail = b""

    # asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            if self.res is not None and not self.in_head and self.length == -1 and not self.chunked:
                self._finish(perf())  # body delimited by close
            else:
                self.fut.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        now = perf()
        res = self.res
        if res is None or self.fut is None or self.fut.done():
            return  # unexpected bytes: ignored (the next request would fail to parse and count)
        if self.in_head:
            self.buf += data
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i])
            data = bytes(self.buf[i + 4:])
            self.buf = bytearray()
            self.in_head = False
            res.head = now
            lines = head.split(b"\r\n")
            try:
                res.status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.fut.set_exception(ConnectionError("bad status line"))
                return
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    self.close_after = True
            if self.on_head is not None:
                self.on_head(res)
            if self.record_reads:
                res.reads = []
            if not self.chunked and self.length == 0:
                self._finish(now)
                return
        if self.chunked:
            self._chunked(data, now)
        else:
            self._payload(data, now)
            if self.length >= 0:
                self.length -= len(data)
                if self.length <= 0:
                    self._finish(now)

    # body ---------------------------------------------------------------------------------
    def _payload(self, data: bytes | bytearray, now: float) -> None:
        res = self.res
        assert res is not None
        if not data:
            return
        s = bytes(data).replace(b"\r", b"")
        n = (self.tail + s).count(b"\n\n")
        self.tail = s[-1:] if not s.endswith(b"\n\n") else b""
        if n:
            res.events += n
            if not res.first_event:
                res.first_event = now
        if not res.first_content and _CONTENT_RE.search(s):
            res.first_content = now
        if res.reads is not None:
            res.reads.append((now, n))

    def _chunked(self, data: bytes, now: float) -> None:
        buf = self.buf
        buf += data
        pos = 0
        out = bytearray()
        while True:
            if self.cstate == 1:
                take = min(self.crem, len(buf) - pos)
                if take <= 0:
                    break
                out += buf[pos:pos + take]
                pos += take
                self.crem -= take
                if self.crem == 0:
                    self.cstate = 2
                continue
            if self.cstate == 2:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.cstate = 0
                continue
            j = buf.find(b"\r\n", pos)
            if j < 0:
                break
            line = bytes(buf[pos:j])
            pos = j + 2
            if self.cstate == 3:
                if not line:  # the blank line after the (absent) trailers: done
                    del buf[:pos]
                    self._payload(out, now)
                    self._finish(now)
                    return
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self.cstate = 3
            else:
                self.crem, self.cstate = size, 1
        del buf[:pos]
        self._payload(out, now)

    def _finish(self, now: float) -> None:
        res, fut = self.res, self.fut
        assert res is not None and fut is not None
        res.t_done = now
        close = self.close_after
        self._reset()
        self.res = None
        if close and self.transport is not None:
            self.transport.close()
            self.closed = True
        if not fut.done():
            fut.set_result(res)

    # API -----------------------------------------------------------------------------------
    def request(self, data: bytes) -> asyncio.Future[Result]:
        assert self.transport is not None
        self._reset()
        self.fut = asyncio.get_running_loop().create_future()
        self.res = Result(perf())
        self.transport.write(data)
        return self.fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


async def connect(host: str, port: int, **kw: Any) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Conn(**kw), host, port)
    return proto


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 4)


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


async def job_closed(job: dict[str, Any]) -> dict[str, Any]:
    """Closed loop: `concurrency` connections each send, await, repeat; warm-up then timed runs."""
    host, port, conc = job["host"], int(job["port"]), int(job["concurrency"])
    req = build_request(job)
    timeout = float(job.get("timeout", 30.0))
    max_requests = int(job.get("max_requests", 1_000_000))
    conns: list[Conn | None] = [None] * conc
    connect_errors = 0

    async def one_phase(duration: float) -> dict[str, Any]:
        nonlocal connect_errors
        lat: list[float] = []
        ttfb: list[float] = []
        errors = 0
        statuses: dict[int, int] = {}
        issued = 0
        t_start = perf()
        deadline = t_start + duration
        cpu0 = cpu_seconds()

        async def worker(i: int) -> None:
            nonlocal errors, issued, connect_errors
            while perf() < deadline and issued < max_requests:
                c = conns[i]
                if c is None or c.closed:
                    try:
                        c = conns[i] = await asyncio.wait_for(connect(host, port), 5.0)
                    except (TimeoutError, OSError):
                        connect_errors += 1
                        errors += 1
                        await asyncio.sleep(0.01)
                        continue
                issued += 1
                try:
                    r = await asyncio.wait_for(c.request(req), timeout)
                except (TimeoutError, OSError, ConnectionError):
                    errors += 1
                    c.close()
                    conns[i] = None
                    continue
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status != 200:
                    errors += 1
                    continue
                lat.append(r.t_done - r.t0)
                if r.first_event:
                    ttfb.append(r.first_event - r.t0)

        await asyncio.gather(*(worker(i) for i in range(conc)))
        elapsed = perf() - t_start
        cpu = cpu_seconds() - cpu0
        lat.sort()
        ttfb.sort()
        return {
            "n": len(lat), "errors": errors, "statuses": {str(k): v for k, v in statuses.items()},
            "elapsed_s": round(elapsed, 4), "rps": round(len(lat) / elapsed, 2) if elapsed > 0 else 0.0,
            "p50_ms": ms(pct(lat, 0.50)), "p90_ms": ms(pct(lat, 0.90)), "p99_ms": ms(pct(lat, 0.99)),
            "max_ms": ms(lat[-1] if lat else None),
            "ttfb_p50_ms": ms(pct(ttfb, 0.50)), "ttfb_p99_ms": ms(pct(ttfb, 0.99)),
            "client_cpu_pct": round(100.0 * cpu / elapsed, 1) if elapsed > 0 else None,
        }

    try:
        warm = await one_phase(float(job.get("warmup", 0.5))) if job.get("warmup", 0.5) else None
        runs = []
        for _ in range(int(job.get("runs", 3))):
            runs.append(await one_phase(float(job["duration"])))
    finally:
        for c in conns:
            if c is not None:
                c.close()
    return {"warmup": warm, "runs": runs, "connect_errors": connect_errors, "request_bytes": len(req)}


async def job_events(job: dict[str, Any]) -> dict[str, Any]:
    """Sequential streams on one connection, every read recorded."""
    host, port = job["host"], int(job["port"])
    req = build_request(job)
    streams = []
    errors = 0
    deadline = perf() + float(job.get("max_seconds", 60.0))
    c: Conn | None = None
    for _ in range(int(job["count"])):
        if perf() > deadline:
            break
        try:
            if c is None or c.closed:
                c = await asyncio.wait_for(connect(host, port, record_reads=True), 5.0)
            r = await asyncio.wait_for(c.request(req), float(job.get("timeout", 30.0)))
        except (TimeoutError, OSError, ConnectionError):
            errors += 1
            if c is not None:
                c.close()
            c = None
            continue
        if r.status != 200:
            errors += 1
            continue
        reads = [(round((t - r.t0) * 1000.0, 4), n) for t, n in (r.reads or [])]
        streams.append({
            "head_ms": ms(r.head - r.t0), "first_event_ms": ms(r.first_event - r.t0 if r.first_event else None),
            "first_content_ms": ms(r.first_content - r.t0 if r.first_content else None),
            "total_ms": ms(r.t_done - r.t0), "events": r.events, "reads": reads,
        })
    if c is not None:
        c.close()
    return {"streams": streams, "errors": errors, "request_bytes": len(req)}


async def job_hold(job: dict[str, Any]) -> dict[str, Any]:
    """Open `count` streams at once and hold them to the end; count errors and the peak open."""
    host, port, count = job["host"], int(job["port"]), int(job["count"])
    req = build_request(job)
    state = {"open": 0, "peak": 0, "heads": 0, "first_events": 0}
    t_start = perf()

    def on_head(res: Result) -> None:
        state["heads"] += 1
        if res.status == 200:
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])

    connect_errors = 0
    bad_status: dict[str, int] = {}
    errors = 0
    completed = 0
    incomplete = 0
    durations: list[float] = []
    first_events: list[float] = []
    conns: list[Conn] = []

    async def one() -> None:
        nonlocal connect_errors, errors, completed, incomplete
        try:
            c = await asyncio.wait_for(connect(host, port, on_head=on_head), 30.0)
        except (TimeoutError, OSError):
            connect_errors += 1
            errors += 1
            return
        conns.append(c)
        fut = c.request(req)
        try:
            r = await asyncio.wait_for(fut, float(job.get("timeout", 120.0)))
        except (TimeoutError, OSError, ConnectionError):
            errors += 1
            incomplete += 1
            if c.res is not None and c.res.status == 200:
                state["open"] -= 1
            return
        if r.status != 200:
            errors += 1
            bad_status[str(r.status)] = bad_status.get(str(r.status), 0) + 1
            return
        state["open"] -= 1
        if r.first_event:
            state["first_events"] += 1
        if r.events < int(job.get("expect_events", 0)):
            errors += 1
            incomplete += 1
            return
        completed += 1
        durations.append(r.t_done - r.t0)
        first_events.append((r.first_content or r.first_event) - r.t0)

    await asyncio.gather(*(one() for _ in range(count)))
    for c in conns:
        c.close()
    durations.sort()
    first_events.sort()
    return {
        "count": count, "completed": completed, "errors": errors, "connect_errors": connect_errors,
        "incomplete": incomplete, "bad_status": bad_status, "peak_open": state["peak"],
        "heads": state["heads"], "elapsed_s": round(perf() - t_start, 3),
        "duration_p50_s": round(pct(durations, 0.5) or 0.0, 3), "duration_max_s": round(durations[-1], 3)
        if durations else None,
        "first_content_p50_s": round(pct(first_events, 0.5) or 0.0, 3),
        "first_content_max_s": round(first_events[-1], 3) if first_events else None,
    }


JOBS = {"closed": job_closed, "events": job_events, "hold": job_hold}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    while True:
        # A thread reads stdin, so a file or a pipe both work; jobs come one at a time anyway.
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        job = orjson.loads(line)
        if job.get("kind") == "quit":
            return
        try:
            result = await asyncio.wait_for(JOBS[job["kind"]](job), float(job.get("job_timeout", 600.0)))
        except Exception as exc:  # report, keep serving
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
