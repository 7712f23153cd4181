"""dario's benchmark: direct (client → fake upstream) vs dario vs LiteLLM, on loopback.

    python -m tests.bench [--quick] [--json out.json] [--no-litellm] [--profile [out.txt]]

Not part of the pytest pass/fail. See tests/bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.bench import bench_litellm
from tests.support import Dariod, stop_process

ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-sonnet-4-5-20250929"
DIRECT_KEY, DARIO_KEY = "sk-bench-direct", "sk-bench-dario"
CONCURRENCY = (1, 16, 64)
STREAM_TEXT = "bench [[long:16]]"  # 22 SSE events per stream
EVENT_DELAY = 0.010  # s between upstream events in the event-timing test
EVENT_DELTAS = 12
HOLD_STREAMS = 1000
HOLD_DELTAS = 8
HOLD_DELAY = 0.5  # s between events: each held stream lasts (HOLD_DELTAS + 5) * HOLD_DELAY
BODY_SIZES = (1024, 1 << 20, 10 << 20)
BIG_LIMITS = {"requests": 10**9, "tokens": 10**13, "input-tokens": 10**13, "output-tokens": 10**13}

PROFILES: dict[str, dict[str, Any]] = {
    # budget: seconds for everything after the (cached) LiteLLM install
    "quick": {"runs": 3, "duration": 1.0, "warmup": 0.3, "events": 6, "body_runs": 3,
              "body_time": (0.4, 0.8, 1.5), "body_max": (200, 20, 5), "budget": 170.0},
    "full": {"runs": 5, "duration": 3.0, "warmup": 1.0, "events": 20, "body_runs": 5,
             "body_time": (1.0, 2.0, 4.0), "body_max": (1000, 40, 10), "budget": 690.0},
}

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes, cores, memory
# ---------------------------------------------------------------------------------------------


def pin(pid: int, cpus: set[int] | None, tree: bool = False) -> None:
    """Pin every thread of `pid` (and, with `tree`, of its descendants) to `cpus`."""
    if not cpus:
        return
    pids = [pid, *(descendants(pid) if tree else [])]
    for p in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds used so far by every thread of `pid`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, tree: bool = False) -> float | None:
    total = 0.0
    found = False
    for p in [pid, *(descendants(pid) if tree else [])]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024.0
                    found = True
        except OSError:
            pass
    return round(total, 1) if found else None


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            v = rss_mb(self.pid)
            if v is not None and v > self.peak:
                self.peak = v

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no answer within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"process {proc.pid} exited ({proc.poll()})")
    return line.decode(errors="replace").strip()


class Fake:
    """The fake upstream, started directly so its request log stays tiny (10 MB bodies)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakeupstream", "--host", "127.0.0.1", "--port", "0", "--log-max", "4"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        line = ""
        while not line.startswith("READY ") and time.monotonic() < deadline:
            line = read_line(self.proc, 30)
        if not line.startswith("READY "):
            raise RuntimeError("the fake upstream did not start")
        self.url = line.split(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with _NO_PROXY.open(req, timeout=30) as r:
            return orjson.loads(r.read())

    def reset(self) -> None:
        """Forget scripted actions, and lift the rate limits so they never bite the benchmark."""
        self.admin("POST", "/_fake/reset", {})
        self.admin("POST", "/_fake/limits", dict(BIG_LIMITS))

    def script(self, key: str, action: dict[str, Any], count: int) -> None:
        self.admin("POST", "/_fake/script", {"key": key, "actions": [action] * count})

    def stop(self) -> None:
        stop_process(self.proc)


class LoadGen:
    """The load generator process; one JSON job in, one JSON result out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_loadgen"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )
        if read_line(self.proc, 30) != "READY":
            raise RuntimeError("load generator did not start")
        self.cpu_pcts: list[float] = []

    def run(self, job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        job = {**job, "job_timeout": timeout}
        self.proc.stdin.write(orjson.dumps(job) + b"\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = orjson.loads(read_line(self.proc, timeout + 30))
        for r in result.get("runs") or []:
            if r.get("client_cpu_pct") is not None:
                self.cpu_pcts.append(r["client_cpu_pct"])
        if "error" in result:
            log(f"load generator: {result['error']}")
        return result

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"kind":"quit"}\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Statistics and formatting
# ---------------------------------------------------------------------------------------------


def med(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def pctl(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×" if v < 10 else f"{v:.1f}×"


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile_name = "quick" if args.quick else "full"
        self.p = PROFILES[self.profile_name]
        self.results: dict[str, Any] = {"profile": self.profile_name, "cells": {}, "skipped": []}
        self.rows: list[dict[str, Any]] = []
        self.targets: list[dict[str, Any]] = []
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            self.core_a, self.core_b = {cpus[0]}, {cpus[1]}
        else:
            self.core_a = self.core_b = None
        self.fake: Fake | None = None
        self.dario: Dariod | None = None
        self.litellm: bench_litellm.LiteLLM | None = None
        self.loadgen: LoadGen | None = None
        self.paths: dict[str, dict[str, Any]] = {}
        self.deadline = 0.0

    # -- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        if self.core_a:
            os.sched_setaffinity(0, self.core_a)  # children inherit core A; gateways move to B
        litellm_exe = None
        if not self.args.no_litellm:
            litellm_exe, info = bench_litellm.ensure_installed()
            if litellm_exe is None:
                log(f"continuing without LiteLLM: {info}")
                self.results["litellm_unavailable"] = info
            else:
                self.results["litellm_version"] = info
        self.t_start = time.monotonic()
        self.deadline = self.t_start + self.p["budget"]
        self.fake = Fake()
        self.fake.reset()
        log(f"fake upstream at {self.fake.url}")
        if litellm_exe is not None:
            self.litellm = bench_litellm.LiteLLM(litellm_exe, self.fake.url)
            self.litellm.start()  # boots while dariod starts
        self.dario = Dariod().start()
        assert self.dario.proc is not None
        self.dario.login("bench", DARIO_KEY, self.fake.url)
        pin(self.dario.proc.pid, self.core_b)
        log(f"dariod at {self.dario.url} (pid {self.dario.proc.pid})")
        self.loadgen = LoadGen()
        base = {"host": "127.0.0.1", "path": "/v1/messages"}
        self.paths["direct"] = {**base, "port": self.fake.port,
                                "headers": [["x-api-key", DIRECT_KEY], ["anthropic-version", "2023-06-01"]]}
        self.paths["dario"] = {**base, "port": self.dario.port,
                               "headers": [["x-api-key", "bench"], ["anthropic-version", "2023-06-01"]]}
        self.results["route"] = "/v1/messages (Anthropic Messages) on every path"
        if self.litellm is not None:
            try:
                self.litellm.wait_ready()
                assert self.litellm.proc is not None
                pin(self.litellm.proc.pid, self.core_b, tree=True)
                ok_ns, why_ns = self.litellm.probe("/v1/messages", stream=False)
                ok_s, why_s = self.litellm.probe("/v1/messages", stream=True)
                if ok_ns and ok_s:
                    self.paths["litellm"] = {**base, "port": self.litellm.port, "headers": self.litellm.headers()}
                else:
                    # LiteLLM's /v1/messages does not work here: compare on Chat Completions instead.
                    log(f"LiteLLM /v1/messages unusable ({why_ns if not ok_ns else why_s}); trying /chat/completions")
                    ok_c, why_c = self.litellm.probe("/chat/completions", stream=True)
                    if not ok_c:
                        raise RuntimeError(f"LiteLLM /chat/completions unusable too: {why_c}")
                    self.paths["litellm"] = {**base, "path": "/chat/completions", "port": self.litellm.port,
                                             "headers": self.litellm.headers()}
                    self.paths["dario_chat"] = {**self.paths["dario"], "path": "/v1/chat/completions"}
                    self.results["route"] = ("/chat/completions for dario vs LiteLLM (LiteLLM's /v1/messages "
                                             "failed); direct and dario's added latency on /v1/messages")
                log(f"litellm at {self.litellm.url}")
            except Exception as exc:
                log(f"continuing without LiteLLM: {exc}")
                self.results["litellm_unavailable"] = str(exc)
                self.litellm.stop()
                self.litellm = None
        self.results["pinning"] = (
            f"fake upstream + load generator + orchestrator (+ py-spy) on CPU {sorted(self.core_a)[0]}; "
            f"dariod and LiteLLM (one worker) on CPU {sorted(self.core_b)[0]}; never both gateways under load at once"
            if self.core_a and self.core_b else "not pinned (fewer than 2 CPUs)"
        )

    def teardown(self) -> None:
        for stop in (
            lambda: self.loadgen and self.loadgen.stop(),
            lambda: self.litellm and self.litellm.stop(),
            lambda: self.dario and self.dario.cleanup(),
            lambda: self.fake and self.fake.stop(),
        ):
            try:
                stop()
            except Exception as exc:  # keep tearing down
                log(f"teardown: {exc}")

    def time_left(self, what: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        log(f"time budget spent: skipping {what}")
        self.results["skipped"].append(what)
        return False

    def server_pid(self, path: str) -> int:
        """The process that answers the load generator on `path` (the fake itself for direct)."""
        if path.startswith("dario"):
            assert self.dario is not None and self.dario.proc is not None
            return self.dario.proc.pid
        if path == "litellm":
            assert self.litellm is not None and self.litellm.proc is not None
            return self.litellm.proc.pid
        return self.fake_pid()

    def fake_pid(self) -> int:
        assert self.fake is not None
        return self.fake.proc.pid

    def gateway_paths(self) -> list[str]:
        return [p for p in ("direct", "dario", "dario_chat", "litellm") if p in self.paths]

    def body(self, path: str, stream: bool, text: str = "bench", size: int = 0) -> dict[str, Any]:
        return {"model": MODEL, "stream": stream, "text": text, "size": size, "max_tokens": 64}

    # -- phases ------------------------------------------------------------------------------
    def phase_idle(self, label: str) -> None:
        assert self.dario is not None and self.dario.proc is not None
        time.sleep(1.0)
        self.results[f"rss_idle_{label}_mb"] = rss_mb(self.dario.proc.pid)
        if self.litellm is not None and self.litellm.proc is not None:
            self.results[f"litellm_rss_idle_{label}_mb"] = rss_mb(self.litellm.proc.pid, tree=True)

    def phase_matrix(self) -> None:
        assert self.loadgen is not None
        p = self.p
        for stream in (False, True):
            for c in CONCURRENCY:
                # Interleave the paths per cell, so drifting background load hits all of them alike.
                for path in self.gateway_paths():
                    name = f"{'stream' if stream else 'nonstream'}_c{c}_{path}"
                    if not self.time_left(name):
                        continue
                    job = {"kind": "closed", **self.paths[path], "concurrency": c,
                           "body": self.body(path, stream, STREAM_TEXT if stream else "bench"),
                           "duration": p["duration"], "runs": p["runs"], "warmup": p["warmup"], "timeout": 15.0}
                    server, fake = self.server_pid(path), self.fake_pid()
                    cpu0 = (cpu_s(server), cpu_s(fake))
                    res = self.loadgen.run(job, timeout=p["warmup"] + p["runs"] * (p["duration"] + 20) + 30)
                    cpu1 = (cpu_s(server), cpu_s(fake))
                    phases = [res.get("warmup") or {}, *(res.get("runs") or [])]
                    served = sum(r.get("n", 0) + r.get("errors", 0) for r in phases)
                    if served and None not in cpu0 and None not in cpu1:
                        res["cpu_us_per_request"] = {
                            "server": round(1e6 * (cpu1[0] - cpu0[0]) / served, 1),  # type: ignore[operator]
                            "fake_upstream": round(1e6 * (cpu1[1] - cpu0[1]) / served, 1),  # type: ignore[operator]
                        }
                    self.results["cells"][name] = res
                    runs = res.get("runs") or []
                    log(f"{name}: " + ", ".join(
                        f"{r['rps']:.0f} r/s p50 {fmt(r['p50_ms'])} p99 {fmt(r['p99_ms'])} err {r['errors']}"
                        for r in runs))

    def phase_events(self) -> None:
        assert self.loadgen is not None and self.fake is not None
        keys = {"direct": DIRECT_KEY, "dario": DARIO_KEY, "dario_chat": DARIO_KEY,
                "litellm": bench_litellm.UPSTREAM_KEY}
        count = self.p["events"]
        for path in self.gateway_paths():
            name = f"events_{path}"
            if not self.time_left(name):
                continue
            self.fake.reset()
            self.fake.script(keys[path], {"event_delay": EVENT_DELAY}, count)
            job = {"kind": "events", **self.paths[path], "count": count, "max_seconds": 60,
                   "body": self.body(path, True, f"bench [[long:{EVENT_DELTAS}]]")}
            res = self.loadgen.run(job, timeout=90)
            self.results["cells"][name] = {**res, "summary": self.summarize_events(res)}
            log(f"{name}: {self.results['cells'][name]['summary']}")
        self.fake.reset()

    @staticmethod
    def summarize_events(res: dict[str, Any]) -> dict[str, Any]:
        gaps: list[float] = []
        single = multi = 0
        first_event, first_content, events = [], [], []
        for s in res.get("streams") or []:
            reads = [(t, n) for t, n in s["reads"] if n > 0]
            first_event.append(s["first_event_ms"])
            first_content.append(s["first_content_ms"])
            events.append(s["events"])
            # The first read may carry several events (dario holds message_start until content).
            for (t0, _), (t1, n) in itertools.pairwise(reads):
                gaps.append(t1 - t0)
                if n == 1:
                    single += 1
                else:
                    multi += 1
        total = single + multi
        return {
            "streams": len(res.get("streams") or []), "errors": res.get("errors"),
            "events_per_stream": med(events), "first_event_ms": med(first_event),
            "first_content_ms": med(first_content),
            "gap_p50_ms": pctl(gaps, 0.5), "gap_p99_ms": pctl(gaps, 0.99),
            "reads_after_first": total, "single_event_reads": single, "coalesced_reads": multi,
            "single_event_pct": round(100.0 * single / total, 1) if total else None,
        }

    def phase_hold(self) -> None:
        assert self.loadgen is not None and self.fake is not None and self.dario is not None
        if not self.time_left("hold_1000_streams"):
            return
        assert self.dario.proc is not None
        # The floor first: the same 1,000 streams straight to the fake.
        self.fake.reset()
        self.fake.script(DIRECT_KEY, {"event_delay": HOLD_DELAY}, HOLD_STREAMS)
        job = {"kind": "hold", **self.paths["direct"], "count": HOLD_STREAMS, "timeout": 120,
               "expect_events": HOLD_DELTAS + 6, "body": self.body("direct", True, f"bench [[long:{HOLD_DELTAS}]]")}
        res = self.loadgen.run(job, timeout=180)
        self.results["cells"]["hold_1000_streams_direct"] = res
        log(f"hold direct: {res}")
        self.fake.reset()
        self.fake.script(DARIO_KEY, {"event_delay": HOLD_DELAY}, HOLD_STREAMS)
        job = {"kind": "hold", **self.paths["dario"], "count": HOLD_STREAMS, "timeout": 120,
               "expect_events": HOLD_DELTAS + 6, "body": self.body("dario", True, f"bench [[long:{HOLD_DELTAS}]]")}
        before = rss_mb(self.dario.proc.pid)
        with RssSampler(self.dario.proc.pid) as sampler:
            res = self.loadgen.run(job, timeout=180)
        res["rss_before_mb"] = before
        res["rss_peak_mb"] = round(sampler.peak, 1)
        res["rss_after_mb"] = rss_mb(self.dario.proc.pid)
        self.results["cells"]["hold_1000_streams"] = res
        log(f"hold: {res}")
        self.fake.reset()

    def phase_body(self) -> None:
        assert self.loadgen is not None
        p = self.p
        for i, size in enumerate(BODY_SIZES):
            for path in ("direct", "dario"):
                name = f"body_{size}_{path}"
                if not self.time_left(name):
                    continue
                job = {"kind": "closed", **self.paths[path], "concurrency": 1,
                       "body": self.body(path, False, "bench", size), "duration": p["body_time"][i],
                       "max_requests": p["body_max"][i], "runs": p["body_runs"], "warmup": 0.2, "timeout": 30.0}
                res = self.loadgen.run(job, timeout=300)
                self.results["cells"][name] = res
                log(f"{name}: p50 " + ", ".join(fmt(r["p50_ms"]) for r in res.get("runs") or []))

    def phase_pool(self) -> None:
        if not self.time_left("pool_choose"):
            return
        cmd = [sys.executable, "-m", "tests.bench.bench_pool", "1", "10", "100"]
        if self.args.quick:
            cmd.append("--quick")
        core = self.core_b

        def on_core_b() -> None:
            if core:
                os.sched_setaffinity(0, core)

        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=on_core_b)
        if out.returncode != 0:
            log(f"pool benchmark failed: {out.stderr[-500:]}")
            return
        self.results["pool_choose_release"] = orjson.loads(out.stdout)
        log(f"pool: {self.results['pool_choose_release']}")

    def phase_store(self) -> None:
        """Team mode: the pool's hot path with the Redis store against the memory store (loopback)."""
        if not self.time_left("pool_store") or shutil.which("redis-server") is None:
            return
        cmd = [sys.executable, "-m", "tests.bench.bench_store"]
        if self.args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            log(f"store benchmark failed: {out.stderr[-500:]}")
            return
        self.results["pool_store"] = orjson.loads(out.stdout)
        log(f"pool store: {self.results['pool_store']}")

    def phase_peer_uid(self) -> None:
        """µs dariod spends, once per new public connection, asking the kernel who the client is."""
        if not sys.platform.startswith("linux") or not self.time_left("peer_uid_lookup"):
            return
        cmd = [sys.executable, "-m", "tests.bench.bench_peeruid", "1", "1000"]
        if self.args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            log(f"peer-uid benchmark failed: {out.stderr[-500:]}")
            return
        self.results["peer_uid_lookup"] = orjson.loads(out.stdout)
        log(f"peer uid lookup: {self.results['peer_uid_lookup']}")

    def phase_profile(self) -> None:
        """py-spy on dariod during concurrency-16 non-streaming load."""
        assert self.loadgen is not None and self.dario is not None and self.dario.proc is not None
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            log("py-spy not found (pip install py-spy): no profile")
            self.results["pyspy"] = {"error": "py-spy not installed"}
            return
        out = Path(self.args.profile)
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = 8 if self.args.quick else 15
        # --gil: only samples where dariod holds the GIL, i.e. is running Python (idle trio worker
        # threads and the wait in epoll drop out); blocking sampling, so stacks are whole.
        rate = 200
        cmd = [spy, "record", "--pid", str(self.dario.proc.pid), "--duration", str(seconds), "--rate", str(rate),
               "--gil", "--format", "raw", "-o", str(out)]
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        job = {"kind": "closed", **self.paths["dario"], "concurrency": 16, "body": self.body("dario", False),
               "duration": seconds + 1.0, "runs": 1, "warmup": 0, "timeout": 15.0}
        load = self.loadgen.run(job, timeout=seconds + 60)
        try:
            spy_out = spy_proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            spy_out = spy_proc.communicate()[0].decode(errors="replace")
        summary = summarize_profile(out) if out.exists() else {"error": spy_out[-500:]}
        summary["load"] = (load.get("runs") or [{}])[0]
        if summary.get("samples"):
            summary["busy_pct"] = round(100.0 * summary["samples"] / (rate * seconds), 1)
        summary["raw_file"] = str(out)
        self.results["pyspy"] = summary

    # -- summary -----------------------------------------------------------------------------
    def cell(self, name: str, key: str) -> float | None:
        res = self.results["cells"].get(name)
        if not res:
            return None
        return med([r.get(key) for r in res.get("runs") or []])

    def row(self, metric: str, unit: str, vals: dict[str, float | None], better: str = "lower",
            added: bool = True, target: str = "") -> None:
        d, g, lt = vals.get("direct"), vals.get("dario"), vals.get("litellm")
        g_cmp = vals.get("dario_cmp", g)  # dario on the route LiteLLM was compared on
        self.rows.append({
            "metric": metric, "unit": unit, "direct": d, "dario": g, "litellm": lt,
            "added": sub(g, d) if added else None, "dario_vs_direct": div(g, d), "dario_vs_litellm": div(g_cmp, lt),
            "better": better, "target": target,
        })

    def check(self, name: str, target: str, value: float | None, ok: bool | None) -> str:
        verdict = "n/a" if ok is None else "MET" if ok else "NOT MET"
        self.targets.append({"target": name, "goal": target, "value": value, "verdict": verdict})
        return f"{target}: {verdict}"

    def summarize(self) -> None:
        cmp_path = "dario_chat" if "dario_chat" in self.paths else "dario"
        for stream in (False, True):
            kind = "stream" if stream else "nonstream"
            for c in CONCURRENCY:
                def v(key: str, kind: str = kind, c: int = c) -> dict[str, float | None]:
                    return {"direct": self.cell(f"{kind}_c{c}_direct", key),
                            "dario": self.cell(f"{kind}_c{c}_dario", key),
                            "litellm": self.cell(f"{kind}_c{c}_litellm", key),
                            "dario_cmp": self.cell(f"{kind}_c{c}_{cmp_path}", key)}
                label = f"{'stream' if stream else 'non-stream'} c={c}"
                rps, p50, p99 = v("rps"), v("p50_ms"), v("p99_ms")
                t_rps = t_p50 = t_p99 = ""
                if not stream and c == 1:
                    a50, a99 = sub(p50["dario"], p50["direct"]), sub(p99["dario"], p99["direct"])
                    t_p50 = self.check("c=1 non-stream added p50", "added ≤ 1.0 ms", a50,
                                       None if a50 is None else a50 <= 1.0)
                    t_p99 = self.check("c=1 non-stream added p99", "added ≤ 3 ms", a99,
                                       None if a99 is None else a99 <= 3.0)
                if not stream and c == 16:
                    r = rps["dario"]
                    ratio = div(rps["dario_cmp"], rps["litellm"])
                    ok_r = None if r is None else r >= 900
                    ok_l = None if ratio is None else ratio >= 15
                    t_rps = (self.check("c=16 throughput", "≥ 900 req/s", r, ok_r) + "; "
                             + self.check("c=16 vs LiteLLM", "≥ 15× LiteLLM", ratio, ok_l))
                    t_p99 = self.check("c=16 p99", "p99 ≤ 40 ms", p99["dario"],
                                       None if p99["dario"] is None else p99["dario"] <= 40)
                self.row(f"{label} throughput", "req/s", rps, better="higher", added=False, target=t_rps)
                if c == 16:
                    cpu = {p: ((self.results["cells"].get(f"{kind}_c{c}_{p}") or {}).get("cpu_us_per_request")
                               or {}).get("server") for p in {"direct", "dario", "litellm", cmp_path}}
                    cpu["dario_cmp"] = cpu.get(cmp_path)
                    self.row(f"{label} CPU per request of the answering process", "µs", cpu, added=False,
                             target="direct = the fake upstream itself")
                    proj = {p: (round(1e6 / x, 0) if x else None) for p, x in cpu.items()}
                    self.row(f"{label} projected req/s on one free core (1e6 / CPU µs)", "req/s", proj,
                             better="higher", added=False, target="noise-resistant estimate, not a measurement")
                self.row(f"{label} latency p50", "ms", p50, target=t_p50)
                self.row(f"{label} latency p99", "ms", p99, target=t_p99)
                if stream:
                    ttfb = v("ttfb_p50_ms")
                    t_ttfb = ""
                    if c == 1:
                        a = sub(ttfb["dario"], ttfb["direct"])
                        t_ttfb = self.check("stream TTFB added (c=1, p50)", "added ≤ 1 ms", a,
                                            None if a is None else a <= 1.0)
                    self.row(f"{label} TTFB p50 (first SSE event)", "ms", ttfb, target=t_ttfb)
        ev = {p: (self.results["cells"].get(f"events_{p}") or {}).get("summary") or {}
              for p in ("direct", "dario", "litellm")}
        if any(ev.values()):
            tag = f"events {EVENT_DELAY * 1000:g} ms apart"
            self.row(f"{tag}: first event", "ms", {p: ev[p].get("first_event_ms") for p in ev},
                     target="dario holds message_start until content: +1 gap by design")
            self.row(f"{tag}: first content event", "ms", {p: ev[p].get("first_content_ms") for p in ev})
            self.row(f"{tag}: gap p50", "ms", {p: ev[p].get("gap_p50_ms") for p in ev})
            self.row(f"{tag}: gap p99", "ms", {p: ev[p].get("gap_p99_ms") for p in ev})
            self.row(f"{tag}: reads with 1 event", "%", {p: ev[p].get("single_event_pct") for p in ev},
                     better="higher", added=False,
                     target="; ".join(f"{p} {ev[p].get('single_event_reads')}/{ev[p].get('reads_after_first')}"
                                      for p in ev if ev[p]))
        idle = self.results.get("rss_idle_start_mb")
        self.row("RSS idle (after login)", "MB",
                 {"dario": idle, "litellm": self.results.get("litellm_rss_idle_start_mb")}, added=False,
                 target=self.check("idle RSS", "≤ 60 MB", idle, None if idle is None else idle <= 60))
        hold = self.results["cells"].get("hold_1000_streams")
        if hold and "count" in hold:
            ok = hold["errors"] == 0 and hold["rss_peak_mb"] <= 200
            self.row(f"{HOLD_STREAMS} open streams: peak RSS", "MB", {"dario": hold["rss_peak_mb"]}, added=False,
                     target=self.check("1,000 concurrent streams", "0 errors and ≤ 200 MB", hold["rss_peak_mb"], ok))
            hd = self.results["cells"].get("hold_1000_streams_direct") or {}
            self.row(f"{HOLD_STREAMS} open streams: errors", "count",
                     {"direct": hd.get("errors"), "dario": hold["errors"]}, added=False,
                     target=f"completed {hold['completed']}/{hold['count']}")
            self.row(f"{HOLD_STREAMS} open streams: peak open at once", "count",
                     {"direct": hd.get("peak_open"), "dario": hold["peak_open"]},
                     better="higher", added=False,
                     target=f"wall {hold['elapsed_s']:.1f} s for streams of "
                            f"{(HOLD_DELTAS + 5) * HOLD_DELAY:.1f} s")
            self.row(f"{HOLD_STREAMS} open streams: first content p50", "s",
                     {"direct": hd.get("first_content_p50_s"), "dario": hold.get("first_content_p50_s")},
                     target=f"the fake sends content {HOLD_DELAY:g} s after the request")
            self.row(f"{HOLD_STREAMS} open streams: first content max", "s",
                     {"direct": hd.get("first_content_max_s"), "dario": hold.get("first_content_max_s")})
        pool = self.results.get("pool_choose_release")
        if pool:
            n1, n100 = pool["1"]["median_ns"], pool["100"]["median_ns"]
            ratio = div(n100, n1)
            for n in ("1", "10", "100"):
                self.row(f"Pool.choose+release, {n} account(s)", "ns", {"dario": pool[n]["median_ns"]}, added=False,
                         target="" if n != "100" else self.check(
                             "pool choice flat 1→100", "flat: t(100)/t(1) ≤ 2", ratio,
                             None if ratio is None else ratio <= 2.0) + f" (ratio {fmt(ratio)})")
        added_by_size: dict[int, float | None] = {}
        for size in BODY_SIZES:
            d, g = self.cell(f"body_{size}_direct", "p50_ms"), self.cell(f"body_{size}_dario", "p50_ms")
            added_by_size[size] = sub(g, d)
        for size in BODY_SIZES:
            label = {1024: "1 KB", 1 << 20: "1 MB", 10 << 20: "10 MB"}[size]
            d, g = self.cell(f"body_{size}_direct", "p50_ms"), self.cell(f"body_{size}_dario", "p50_ms")
            target = ""
            base = added_by_size.get(1024)
            if size != 1024 and added_by_size[size] is not None and base is not None:
                per_mb = round((added_by_size[size] - base) / (size / (1 << 20)), 3)  # type: ignore[operator]
                self.results[f"body_cost_ms_per_mb_{label.replace(' ', '')}"] = per_mb
                target = f"{fmt(per_mb)} ms/MB"
                if size == 10 << 20:
                    target = self.check("body cost", "≤ 3 ms/MB", per_mb, per_mb <= 3.0) + f" ({target})"
            self.row(f"request body {label}, c=1 p50", "ms", {"direct": d, "dario": g}, target=target)

    def summarize_store(self) -> None:
        st = self.results.get("pool_store")
        if not st:
            return
        mem, red = st["memory"]["acquire_us"], st["redis"]["acquire_us"]
        self.row("Pool.acquire, Redis store vs memory store (loopback)", "µs", {"direct": mem, "dario": red},
                 target=f"added {fmt(st['added_acquire_us'])} µs per request; release+observe pipelined: "
                        f"cycle {fmt(st['redis']['cycle_us'])} µs vs {fmt(st['memory']['cycle_us'])} µs")
        c = st["client"]
        self.row("Redis reserve round trip: sync client in a trio thread vs on the loop", "µs",
                 {"direct": c["sync_direct_us"], "dario": c["sync_in_thread_us"]},
                 target="thread hand-off is the difference")

    def summarize_peer_uid(self) -> None:
        for m in self.results.get("peer_uid_lookup") or []:
            n = m["open_connections"]
            self.row(f"peer-uid lookup per new connection ({n} open), sock_diag", "µs", {"dario": m["netlink_us"]},
                     added=False, target=f"/proc/net/tcp fallback {fmt(m['proc_us'])} µs")

    def print_table(self) -> str:
        head = ["metric", "unit", "direct", "dario", "LiteLLM", "dario−direct", "dario/direct",
                "dario/LiteLLM", "target"]
        lines = [[r["metric"], r["unit"], fmt(r["direct"]), fmt(r["dario"]), fmt(r["litellm"]), fmt(r["added"]),
                  fmt_ratio(r["dario_vs_direct"]), fmt_ratio(r["dario_vs_litellm"]), r["target"]]
                 for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
        right = {2, 3, 4, 5, 6, 7}

        def render(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()

        out = [render(head), render(["-" * w for w in widths])] + [render(x) for x in lines]
        return "\n".join(out)

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> int:
        started = time.time()
        self.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        self.results["machine"] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                                   "python": platform.python_version()}
        try:
            self.setup()
            self.phase_idle("start")
            self.phase_matrix()
            self.phase_events()
            self.phase_hold()
            self.phase_body()
            self.phase_pool()
            self.phase_store()
            self.phase_peer_uid()
            if self.args.profile:
                self.phase_profile()
            self.phase_idle("end")
        finally:
            self.teardown()
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["elapsed_s"] = round(time.time() - started, 1)
        self.results["load_generator_cpu_pct_max"] = max(self.loadgen.cpu_pcts) if self.loadgen and \
            self.loadgen.cpu_pcts else None
        self.summarize()
        self.summarize_store()
        self.summarize_peer_uid()
        self.results["rows"] = self.rows
        self.results["targets"] = self.targets
        table = self.print_table()
        lg = self.results["load_generator_cpu_pct_max"]
        notes = [
            f"profile {self.profile_name}: {self.p['runs']} runs × {self.p['duration']:g} s after "
            f"{self.p['warmup']:g} s warm-up per cell; medians over runs; {self.results['elapsed_s']:.0f} s in all",
            f"route: {self.results.get('route')}",
            f"pinning: {self.results.get('pinning')}",
            f"load average {self.results['machine']['loadavg_start'][0]:.2f} at start, "
            f"{self.results['machine']['loadavg_end'][0]:.2f} at end; load generator CPU ≤ {fmt(lg)} % of a core",
        ]
        if "litellm_version" in self.results and "litellm" in self.paths:
            notes.append(f"LiteLLM {self.results['litellm_version']} (proxy, 1 worker)")
        if "litellm_unavailable" in self.results:
            notes.append(f"LiteLLM not measured: {self.results['litellm_unavailable'].splitlines()[0]}")
        if self.results["skipped"]:
            notes.append(f"skipped for time: {', '.join(self.results['skipped'])}")
        prof = self.results.get("pyspy")
        print(table)
        print()
        for n in notes:
            print(n)
        if prof and "self" in prof:
            print(f"\npy-spy profile of dariod, c=16 non-stream, {fmt(prof['load'].get('rps'))} req/s: "
                  f"{prof['samples']} samples holding the GIL (busy {prof.get('busy_pct')} % of the time); "
                  f"raw stacks in {prof['raw_file']}")
            print("  self%  incl%  function")
            for item in prof["top"][:15]:
                print(f"  {item['self_pct']:5.1f}  {item['incl_pct']:5.1f}  {item['function']}")
            print("  by layer (self %): " + ", ".join(f"{x['package']} {x['pct']}" for x in prof["by_package_self"]))
            dario_incl = [x for x in prof["inclusive"] if "(daemon/" in x["function"]][:10]
            print("  dario functions (inclusive %): " + "; ".join(f"{x['function']} {x['pct']}" for x in dario_incl))
        json_path = Path(self.args.json) if self.args.json else ROOT / "tests" / "artifacts" / \
            f"bench-{self.profile_name}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(self.results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        print(f"\nJSON: {json_path}")
        return 0


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks → self and inclusive share per function, and per package."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    pkg_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
        pkg_c[_package(stack.split(";")[-1])] += n
    if not total:
        return {"error": "no samples", "samples": 0}

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1)

    return {
        "samples": total,
        "self": [{"function": f, "pct": pct(n)} for f, n in self_c.most_common(top)],
        "inclusive": [{"function": f, "pct": pct(n)} for f, n in incl_c.most_common(top * 2)],
        "by_package_self": [{"package": k, "pct": pct(n)} for k, n in pkg_c.most_common()],
        "top": [{"function": f, "self_pct": pct(n), "incl_pct": pct(incl_c[f])} for f, n in self_c.most_common(top)],
    }


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` → `func (package/file.py)`, dropping the line number."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


_STDLIB_DIRS = ("asyncio/", "json/", "sqlite3/", "logging/", "concurrent/", "email/", "urllib/", "importlib/")


def _package(frame: str) -> str:
    """Which layer a (py-spy shortened) frame belongs to: trio, hypercorn, h11, dario, stdlib, …"""
    where = frame.partition(" (")[2].rstrip(")")
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    if where.startswith("<attrs generated"):
        return "attrs-generated __init__ (trio/outcome objects)"
    if where.startswith("<string>"):
        return "generated __init__ (dataclasses, e.g. h11 events)"
    if where.startswith("<frozen") or "/" not in where or where.startswith(_STDLIB_DIRS) or "lib/python3" in where:
        return "stdlib"
    top = where.split("/", 1)[0]
    return "dario" if top in ("daemon", "ctl") or "/daemon/" in where else top


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short profile (≤ 3 minutes); default is the full one")
    ap.add_argument("--json", metavar="FILE", help="write results here (default tests/artifacts/bench-PROFILE.json)")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    ap.add_argument("--profile", nargs="?", const=str(ROOT / "tests" / "artifacts" / "dariod-pyspy.txt"),
                    metavar="FILE", help="also profile dariod with py-spy under c=16 non-stream load "
                                         "(raw collapsed stacks to FILE)")
    args = ap.parse_args(argv)
    sys.exit(Bench(args).run())
