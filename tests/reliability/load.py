"""The load driver for the reliability suite: many mixed requests through dariod while the
fake upstream injects faults, then a strict audit of what every client saw and of what the
upstream received.

One run:

* a seeded request mix: Anthropic Messages (streaming or not, some `count_tokens`) and OpenAI
  Chat Completions (streaming or not), each carrying a unique marker ``rl<run>-<i>`` in its last
  user message, some asking for a longer answer with ``[[long:N]]``;
* per account key, a seeded fault script (429, 529, 5xx, connection resets before and during
  streams, stalls, slow first bytes, slow drips, in-band errors) that a background task keeps
  topped up while the run proceeds;
* a monitor that polls ``GET /accounts`` so a refusal from dario itself can be checked against
  the pool's state when the request arrived;
* every client has a deadline; a request that misses it is "hung".

The audit (``audit``) classifies each client outcome (completed with the exact expected text,
a well-formed error in the request's own dialect, or anything else), and correlates each
outcome with the fake's request log through the marker and the upstream ``request-id`` that
dario passes through (``req_fake_<n>``, where n is the fake's own request number).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.fakeupstream import LONG_WORDS, FakeUpstream

MODEL = "claude-sonnet-4-6"
DEFAULT_TEXT = "Hello from the fake upstream."
KEYS = {"a": "sk-rl-a", "b": "sk-rl-b", "c": "sk-rl-c"}
ALIAS_OF = {v: k for k, v in KEYS.items()}
# A plain 429 on each key names a different reset, so the audit knows how long each account
# must be left alone before the same request may go to it again.
RETRY_AFTER = {"a": 1.0, "b": 2.0, "c": 3.0}
UPSTREAM_TIMEOUT = 2.0  # dariod's own upstream read timeout in these runs (DARIO_UPSTREAM_TIMEOUT)
# dariod --queue-timeout: a refusal from the queue still comes well inside the client deadline.
QUEUE_TIMEOUT = float(os.environ.get("DARIO_RELIABILITY_QUEUE_TIMEOUT", "5"))
# A request that waited this long while an account was free was held back by the queue, not by load.
HELD_WHILE_FREE = 0.7 * QUEUE_TIMEOUT
HELD_KEY = f"held in the queue > {HELD_WHILE_FREE:g} s while an account stayed free"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"


@dataclass(frozen=True)
class Profile:
    name: str
    requests: int
    concurrency: int
    deadline: float = 30.0
    seed: int = 20240611


SHORT = Profile("short", 2_000, 48)
LONG = Profile("long", 10_000, 64)


# ------------------------------------------------------------------------------------------
# The fake upstream with a request log big enough for a whole run
# ------------------------------------------------------------------------------------------


class BigLogFake(FakeUpstream):
    """`FakeUpstream` with a larger request log (the default keeps the last 10,000 entries)."""

    def __init__(self, log_max: int = 200_000) -> None:
        super().__init__(log_max=log_max)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def requests_big(self) -> list[dict[str, Any]]:
        with httpx.Client(timeout=120, trust_env=False) as c:
            r = c.get(self.url + "/_fake/requests")
            r.raise_for_status()
            result: list[dict[str, Any]] = orjson.loads(r.content)
            return result


def unlimited(fake: FakeUpstream) -> None:
    """Windows so large the fake never rate-limits on its own: every 429 in a run is scripted."""
    fake.set_limits(None, requests=10**8, tokens=10**12, input_tokens=10**12, output_tokens=10**12)


# ------------------------------------------------------------------------------------------
# /proc helpers
# ------------------------------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/PID/status, in kB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


# ------------------------------------------------------------------------------------------
# The fault mix
# ------------------------------------------------------------------------------------------

# (weight, kind). Kinds are turned into fake-upstream script actions by `make_action`. About one
# upstream attempt in ten fails and one in thirty is slow: many faults over a run, while the pool
# (whose accounts cool for a second or more after each failure) still has an account up most of
# the time. DARIO_RELIABILITY_OK_WEIGHT shifts the balance (a lower weight means more faults).
FAULT_MIX: list[tuple[int, str]] = [
    (int(os.environ.get("DARIO_RELIABILITY_OK_WEIGHT", "270")), "ok"),
    (4, "429"),
    (6, "529"),
    (5, "5xx"),
    (4, "reset"),  # TCP RST before any response byte
    (6, "cut"),  # the connection drops after K events (K=0,1: before content; K>=2: mid-stream)
    (4, "stream_error"),  # an in-band error event after K events
    (2, "stall"),  # never answers; dario's upstream read timeout must end it
    (5, "slow_first_byte"),
    (4, "slow_drip"),
]
_KINDS = [k for _, k in FAULT_MIX]
_WEIGHTS = [w for w, _ in FAULT_MIX]


def make_action(rng: random.Random, alias: str) -> tuple[str, dict[str, Any]]:
    kind = rng.choices(_KINDS, _WEIGHTS)[0]
    if kind == "ok":
        return kind, {}
    if kind == "429":
        return kind, {"status": 429, "retry_after": RETRY_AFTER[alias]}
    if kind == "529":
        return kind, {"status": 529}
    if kind == "5xx":
        return kind, {"status": rng.choice([500, 502, 503])}
    if kind == "reset":
        return kind, {"reset_connection": True}
    if kind == "cut":
        return kind, {"cut_after_events": rng.choice([0, 1, 2, 3, 5, 8])}
    if kind == "stream_error":
        return kind, {"stream_error": rng.choice(["overloaded_error", "api_error"]),
                      "after_events": rng.choice([0, 1, 3, 6])}
    if kind == "stall":
        return kind, {"stall": True}
    if kind == "slow_first_byte":
        return kind, {"delay": round(rng.uniform(0.2, 1.2), 2)}
    if kind == "slow_drip":
        return kind, {"event_delay": round(rng.uniform(0.02, 0.12), 3)}
    raise AssertionError(kind)


# ------------------------------------------------------------------------------------------
# The request mix
# ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Spec:
    i: int
    dialect: str  # anthropic | openai
    endpoint: str  # messages | count_tokens | chat
    stream: bool
    long: int  # 0: default answer
    marker: str

    @property
    def expected_text(self) -> str:
        if self.long:
            return "".join(LONG_WORDS[k % len(LONG_WORDS)] for k in range(self.long))
        return DEFAULT_TEXT

    def request(self) -> tuple[str, dict[str, str], bytes]:
        text = self.marker + (f" [[long:{self.long}]]" if self.long else "")
        messages = [{"role": "user", "content": text}]
        if self.dialect == "anthropic":
            headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"}
            if self.endpoint == "count_tokens":
                return "/v1/messages/count_tokens", headers, orjson.dumps({"model": MODEL, "messages": messages})
            body: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": messages}
            if self.stream:
                body["stream"] = True
            return "/v1/messages", headers, orjson.dumps(body)
        headers = {"content-type": "application/json", "authorization": "Bearer x"}
        body = {"model": MODEL, "max_completion_tokens": 256, "messages": messages}
        if self.stream:
            body["stream"] = True
            if self.i % 3 == 0:
                body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", headers, orjson.dumps(body)


def make_specs(profile: Profile, run: str) -> list[Spec]:
    rng = random.Random(f"{profile.seed}-requests")
    out = []
    for i in range(profile.requests):
        dialect = "anthropic" if rng.random() < 0.5 else "openai"
        if dialect == "anthropic":
            endpoint = "count_tokens" if rng.random() < 0.08 else "messages"
        else:
            endpoint = "chat"
        stream = endpoint != "count_tokens" and rng.random() < 0.5
        long = rng.randint(4, 30) if rng.random() < 0.4 else 0
        out.append(Spec(i, dialect, endpoint, stream, long, f"rl{run}-{i}"))
    return out


# ------------------------------------------------------------------------------------------
# Outcomes
# ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    spec: Spec
    t_send: float = 0.0  # wall clock (time.time), comparable with the fake's log
    t_first: float | None = None
    t_end: float = 0.0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    outcome: str = ""  # completed | error | hung | malformed | transport
    detail: str = ""
    error_type: str | None = None

    @property
    def upstream_n(self) -> int | None:
        """The fake's request number of the attempt whose answer reached the client, if any."""
        rid = self.headers.get("request-id") or self.headers.get("x-request-id") or ""
        if rid.startswith("req_fake_"):
            return int(rid[len("req_fake_"):])
        return None

    @property
    def from_dario(self) -> bool:
        """Whether the answer is dario's own (no upstream attempt's answer reached the client)."""
        return self.upstream_n is None

    @property
    def latency(self) -> float:
        return self.t_end - self.t_send


def _sse_events(body: bytes) -> list[tuple[str | None, bytes]]:
    events = []
    for raw in body.split(b"\n\n"):
        if not raw.strip():
            continue
        name = None
        data = []
        for line in raw.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        events.append((name, b"\n".join(data)))
    return events


def _anthropic_error_ok(obj: Any) -> str | None:
    if isinstance(obj, dict) and obj.get("type") == "error" and isinstance(obj.get("error"), dict):
        err = obj["error"]
        if isinstance(err.get("type"), str) and isinstance(err.get("message"), str) and err["message"]:
            return str(err["type"])
    return None


def _openai_error_ok(obj: Any) -> str | None:
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        err = obj["error"]
        if isinstance(err.get("type"), str) and isinstance(err.get("message"), str) and err["message"]:
            return str(err["type"])
    return None


def classify(res: Result) -> None:
    """Set outcome/detail/error_type from status, headers and body."""
    spec = res.spec
    ctype = res.headers.get("content-type", "")
    status = res.status or 0
    if status != 200 or not ctype.startswith("text/event-stream"):
        try:
            obj = orjson.loads(res.body)
        except orjson.JSONDecodeError:
            res.outcome, res.detail = "malformed", f"{status} body is not JSON: {res.body[:120]!r}"
            return
        if status >= 400:
            etype = _anthropic_error_ok(obj) if spec.dialect == "anthropic" else _openai_error_ok(obj)
            if etype is None:
                res.outcome, res.detail = "malformed", f"{status} error not in the {spec.dialect} shape: {obj!r:.200}"
                return
            res.outcome, res.error_type = "error", etype
            return
        if status != 200:
            res.outcome, res.detail = "malformed", f"unexpected status {status}"
            return
        if spec.stream:
            res.outcome, res.detail = "malformed", f"stream asked, got {ctype!r}"
            return
        if spec.endpoint == "count_tokens":
            ok = isinstance(obj, dict) and isinstance(obj.get("input_tokens"), int)
        elif spec.dialect == "anthropic":
            ok = (isinstance(obj, dict) and obj.get("type") == "message"
                  and "".join(b.get("text", "") for b in obj.get("content", []) if b.get("type") == "text")
                  == spec.expected_text)
        else:
            try:
                choice = obj["choices"][0]
                ok = (obj.get("object") == "chat.completion" and choice["message"]["content"] == spec.expected_text
                      and choice["finish_reason"] == "stop")
            except (KeyError, IndexError, TypeError):
                ok = False
        if ok:
            res.outcome = "completed"
        else:
            res.outcome, res.detail = "malformed", f"wrong 200 body {res.body[:200]!r}"
        return
    # a 200 event stream
    if not spec.stream:
        res.outcome, res.detail = "malformed", "event stream for a non-streaming request"
        return
    if not res.body.endswith(b"\n\n"):
        res.outcome, res.detail = "malformed", f"stream does not end on an event boundary: {res.body[-120:]!r}"
        return
    events = _sse_events(res.body)
    if not events:
        res.outcome, res.detail = "malformed", "empty stream"
        return
    if spec.dialect == "anthropic":
        name, data = events[-1]
        text = []
        for n, d in events:
            if n == "content_block_delta":
                delta = orjson.loads(d).get("delta", {})
                if delta.get("type") == "text_delta":
                    text.append(delta["text"])
        if events[0][0] != "message_start":
            res.outcome, res.detail = "malformed", f"stream starts with {events[0][0]}"
        elif name == "message_stop":
            if "".join(text) == spec.expected_text:
                res.outcome = "completed"
            else:
                res.outcome, res.detail = "malformed", f"wrong text {''.join(text)!r}"
        elif name == "error":
            etype = _anthropic_error_ok(orjson.loads(data))
            if etype is None:
                res.outcome, res.detail = "malformed", f"bad error event {data!r:.200}"
            else:
                res.outcome, res.error_type = "error", etype
        else:
            res.outcome, res.detail = "malformed", f"stream ends with {name}"
        return
    # OpenAI frames: "data: {...}" ... "data: [DONE]", or ... "data: {"error": ...}"
    frames = [d for _, d in events]
    last = frames[-1]
    if last == b"[DONE]":
        text = []
        finish = None
        for d in frames[:-1]:
            obj = orjson.loads(d)
            if obj.get("object") != "chat.completion.chunk":
                res.outcome, res.detail = "malformed", f"not a chunk: {d[:200]!r}"
                return
            for choice in obj.get("choices") or []:
                text.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
        if "".join(text) == spec.expected_text and finish == "stop":
            res.outcome = "completed"
        else:
            res.outcome, res.detail = "malformed", f"wrong stream text/finish {''.join(text)!r} {finish!r}"
        return
    try:
        obj = orjson.loads(last)
    except orjson.JSONDecodeError:
        obj = None
    etype = _openai_error_ok(obj)
    if etype is None:
        res.outcome, res.detail = "malformed", f"stream ends with {last[:200]!r}"
    else:
        res.outcome, res.error_type = "error", etype


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    t: float
    statuses: dict[str, str]
    headroom: dict[str, float | None]

    @property
    def any_headroom(self) -> bool:
        return any(s == "ok" and (self.headroom.get(a) is None or (self.headroom[a] or 0) > 0)
                   for a, s in self.statuses.items())


@dataclass
class RunData:
    profile: Profile
    run: str
    results: list[Result]
    log: list[dict[str, Any]]
    snapshots: list[Snapshot]
    actions: dict[str, list[tuple[str, dict[str, Any]]]]  # per alias, in scripted order
    consumed: dict[str, int]  # per alias, how many of those actions were taken
    wall: float
    peak_rss_kb: int
    rss_kb: int
    dariod_stderr: str = ""


async def _refill(fake_url: str, rngs: dict[str, random.Random],
                  actions: dict[str, list[tuple[str, dict[str, Any]]]], stop: asyncio.Event,
                  ready: asyncio.Event, low: int = 60, high: int = 120) -> None:
    async with httpx.AsyncClient(base_url=fake_url, timeout=30, trust_env=False) as c:
        while not stop.is_set():
            pending = orjson.loads((await c.get("/_fake/script")).content)
            count = collections.Counter(p["key"] for p in pending)
            for alias, key in KEYS.items():
                if count[key] < low:
                    new = [make_action(rngs[alias], alias) for _ in range(high - count[key])]
                    actions[alias].extend(new)
                    r = await c.post("/_fake/script", content=orjson.dumps(
                        {"key": key, "actions": [a for _, a in new]}))
                    r.raise_for_status()
            ready.set()
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass


async def _monitor(url: str, snapshots: list[Snapshot], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as c:
        while not stop.is_set():
            t0 = time.time()
            try:
                data = orjson.loads((await c.get("/accounts")).content)
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            t1 = time.time()
            snapshots.append(Snapshot(
                (t0 + t1) / 2,
                {a["alias"]: a["status"] for a in data["accounts"]},
                {a["alias"]: a["headroom"] for a in data["accounts"]},
            ))
            await asyncio.sleep(0.1)


async def _one(client: httpx.AsyncClient, spec: Spec, deadline: float) -> Result:
    res = Result(spec)
    path, headers, body = spec.request()
    res.t_send = time.time()
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(deadline):
            async with client.stream("POST", path, content=body, headers=headers) as r:
                res.status = r.status_code
                res.headers = {k.lower(): v for k, v in r.headers.items()}
                async for chunk in r.aiter_raw():
                    if res.t_first is None:
                        res.t_first = time.time()
                    chunks.append(chunk)
    except TimeoutError:
        res.t_end = time.time()
        res.body = b"".join(chunks)
        res.outcome, res.detail = "hung", f"no complete answer within {deadline:g} s ({len(res.body)} bytes seen)"
        return res
    except httpx.HTTPError as exc:
        res.t_end = time.time()
        res.body = b"".join(chunks)
        res.outcome, res.detail = "transport", f"{type(exc).__name__}: {exc}"
        return res
    res.t_end = time.time()
    res.body = b"".join(chunks)
    classify(res)
    return res


async def drive(url: str, fake_url: str, profile: Profile, run: str,
                actions: dict[str, list[tuple[str, dict[str, Any]]]],
                snapshots: list[Snapshot]) -> list[Result]:
    specs = make_specs(profile, run)
    rngs = {alias: random.Random(f"{profile.seed}-faults-{alias}") for alias in KEYS}
    stop = asyncio.Event()
    results: list[Result] = []
    limits = httpx.Limits(max_connections=profile.concurrency + 8, max_keepalive_connections=profile.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None), limits=limits, trust_env=False) as c:
        ready = asyncio.Event()
        refill = asyncio.create_task(_refill(fake_url, rngs, actions, stop, ready))
        # The first scripts land before the first request (and a broken refill fails the run at once).
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, refill], return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            await refill  # raises what went wrong
            raise RuntimeError("the fault scripts never landed")
        monitor = asyncio.create_task(_monitor(url, snapshots, stop))
        it = iter(specs)

        async def worker() -> None:
            for spec in it:
                results.append(await _one(c, spec, profile.deadline))

        try:
            await asyncio.gather(*(worker() for _ in range(profile.concurrency)))
        finally:
            stop.set()
            await asyncio.gather(refill, monitor, return_exceptions=True)
    results.sort(key=lambda r: r.spec.i)
    return results


def run_load(dariod_url: str, dariod_pid: int, fake: BigLogFake, profile: Profile) -> RunData:
    run = os.urandom(3).hex()
    actions: dict[str, list[tuple[str, dict[str, Any]]]] = {alias: [] for alias in KEYS}
    snapshots: list[Snapshot] = []
    t0 = time.monotonic()
    results = asyncio.run(drive(dariod_url, fake.url, profile, run, actions, snapshots))
    wall = time.monotonic() - t0
    fake.wait_idle(timeout=30)
    pending = fake.pending()
    left = collections.Counter(p["key"] for p in pending)
    consumed = {alias: len(actions[alias]) - left[KEYS[alias]] for alias in KEYS}
    log = fake.requests_big()
    return RunData(profile, run, results, log, snapshots, actions, consumed, wall,
                   proc_status_kb(dariod_pid, "VmHWM"), proc_status_kb(dariod_pid, "VmRSS"))


# ------------------------------------------------------------------------------------------
# The audit
# ------------------------------------------------------------------------------------------


@dataclass
class Audit:
    data: RunData
    by_outcome: collections.Counter[str]
    errors_by_status: collections.Counter[str]
    problems: dict[str, list[str]]  # invariant -> examples
    counts: dict[str, int]
    attempts: dict[int, list[dict[str, Any]]]
    faults: collections.Counter[str]
    twice_after: collections.Counter[str]  # what the first attempt got, for "sent twice to one account"
    table: str = ""


def _marker_index(run: str) -> re.Pattern[bytes]:
    return re.compile(rb"rl" + run.encode() + rb"-(\d+)\b")


def audit(data: RunData) -> Audit:
    pat = _marker_index(data.run)
    attempts: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    by_n: dict[int, dict[str, Any]] = {}
    for entry in data.log:
        if entry["path"] not in ("/v1/messages", "/v1/messages/count_tokens"):
            continue
        m = pat.search(orjson.dumps(entry.get("body")))
        if m:
            attempts[int(m.group(1))].append(entry)
            by_n[entry["n"]] = entry
    for tries in attempts.values():
        tries.sort(key=lambda e: e["n"])

    problems: dict[str, list[str]] = collections.defaultdict(list)
    counts: collections.Counter[str] = collections.Counter()
    twice_after: collections.Counter[str] = collections.Counter()
    by_outcome: collections.Counter[str] = collections.Counter()
    errors_by_status: collections.Counter[str] = collections.Counter()
    snaps = data.snapshots
    snap_times = [s.t for s in snaps]

    import bisect

    for res in data.results:
        spec = res.spec
        by_outcome[res.outcome] += 1
        tries = attempts.get(spec.i, [])
        counts["upstream_attempts"] += len(tries)
        if res.outcome == "error":
            src = "dario" if res.from_dario else "upstream"
            errors_by_status[f"{res.status} {res.error_type} ({src})"] += 1
        if res.outcome not in ("completed", "error"):
            problems[f"not completed nor a well-formed error ({res.outcome})"].append(
                f"#{spec.i} {spec.dialect}/{spec.endpoint}/{'stream' if spec.stream else 'plain'}: "
                f"status {res.status}, {res.detail}")
        if res.outcome == "hung":
            counts["hung"] += 1

        # Which attempt's answer reached the client, and was anything sent after it?
        n = res.upstream_n
        if n is not None:
            answered = by_n.get(n)
            if answered is None:
                problems["answer from an attempt that does not carry this request's marker"].append(
                    f"#{spec.i}: request-id req_fake_{n}")
            elif tries and tries[-1]["n"] != n:
                later = [t["n"] for t in tries if t["n"] > n]
                counts["resent_after_bytes"] += 1
                problems["re-sent upstream after bytes reached the client"].append(
                    f"#{spec.i}: client got req_fake_{n} ({'stream' if spec.stream else 'plain'}), "
                    f"later attempts {later}")
            if answered is not None and ALIAS_OF.get(answered["key"]) != res.headers.get("x-dario-account"):
                problems["x-dario-account names another account than the one that answered"].append(
                    f"#{spec.i}: answered by {ALIAS_OF.get(answered['key'])}, header says "
                    f"{res.headers.get('x-dario-account')}")

        # Same key twice only after a plain 429, and only after that account's reset.
        per_key: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for t in tries:
            per_key[t["key"]].append(t)
        for key, seq in per_key.items():
            alias = ALIAS_OF.get(key, key)
            for prev, nxt in itertools.pairwise(seq):
                if prev["status"] != 429:
                    counts["same_key_not_after_429"] += 1
                    how = ("no answer, connection reset" if prev["status"] is None and not prev["disconnected"]
                           else "no answer, dario hung up" if prev["status"] is None else f"status {prev['status']}")
                    twice_after[how] += 1
                    problems["sent twice to one account without a plain 429 first"].append(
                        f"#{spec.i} on {alias}: attempt n={prev['n']} status {prev['status']} "
                        f"(disconnected={prev['disconnected']}), then n={nxt['n']}")
                elif nxt["time"] - prev["time"] < RETRY_AFTER[alias] - 0.05:
                    counts["same_key_before_reset"] += 1
                    problems["re-sent to a 429'd account before its reset"].append(
                        f"#{spec.i} on {alias}: 429 at n={prev['n']}, again at n={nxt['n']} "
                        f"{nxt['time'] - prev['time']:.3f} s later (reset after {RETRY_AFTER[alias]:g} s)")
                else:
                    counts["same_key_after_reset"] += 1

        # A refusal from dario itself (queue deadline, no account) while some account had headroom.
        if res.outcome == "error" and res.from_dario and res.status in (429, 503):
            counts["dario_refusals"] += 1
            k = bisect.bisect_right(snap_times, res.t_send)
            before = snaps[k - 1] if k > 0 else None
            after = snaps[k] if k < len(snaps) else None
            if before is not None and after is not None and before.any_headroom and after.any_headroom:
                counts["refused_with_headroom"] += 1
                problems["dario refused (429/503) while an account had headroom"].append(
                    f"#{spec.i}: {res.status} {res.error_type}; accounts before {before.statuses}, "
                    f"after {after.statuses}; body {res.body[:300]!r}")

    counts["served_while_headroom"] = 0
    for res in data.results:
        k = bisect.bisect_right(snap_times, res.t_send)
        # Headroom on both sides of the arrival (the monitor polls every 0.1 s), as for refusals above.
        if 0 < k < len(snaps) and snaps[k - 1].any_headroom and snaps[k].any_headroom:
            counts["arrived_with_headroom"] += 1
            if res.outcome == "completed" or not (res.from_dario and res.status in (429, 503)):
                counts["served_while_headroom"] += 1
        # Held in the wait queue for most of the queue timeout although one account stayed free the
        # whole time. Head-of-line blocking held requests up to the queue deadline; under this load
        # on two busy cores, reading the request and reaching the upstream alone took up to 2.45 s.
        tries = attempts.get(res.spec.i, [])
        first = tries[0]["time"] if tries else res.t_end
        if first - res.t_send > HELD_WHILE_FREE:
            window = [s for s in snaps if res.t_send - 0.15 <= s.t <= first]
            if len(window) >= 3 and any(all(s.statuses.get(alias) == "ok" for s in window) for alias in KEYS):
                counts["held_while_free"] += 1
                problems[HELD_KEY].append(
                    f"#{res.spec.i}: first attempt {first - res.t_send:.2f} s after arrival; accounts at "
                    f"arrival {window[0].statuses}")

    faults: collections.Counter[str] = collections.Counter()
    for alias, scripted in data.actions.items():
        for kind, _ in scripted[: data.consumed[alias]]:
            faults[kind] += 1
    a = Audit(data, by_outcome, errors_by_status, dict(problems), dict(counts), attempts, faults, twice_after)
    a.table = render(a)
    return a


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def render(a: Audit) -> str:
    d = a.data
    res = d.results
    n = len(res)
    lat = [r.latency for r in res if r.outcome != "hung"]
    dialects = collections.Counter(r.spec.dialect for r in res)
    streams = sum(1 for r in res if r.spec.stream)
    c = a.counts
    rows: list[tuple[str, str]] = [
        ("requests", f"{n}  (anthropic {dialects['anthropic']} / openai {dialects['openai']}; "
                     f"streaming {streams} / non-streaming {n - streams})"),
        ("completed (exact expected answer)", str(a.by_outcome["completed"])),
        ("well-formed errors in the request's dialect", str(a.by_outcome["error"])),
        ("not completed and not well-formed", str(n - a.by_outcome["completed"] - a.by_outcome["error"])),
        ("hung (no answer within the deadline)", f"{c.get('hung', 0)}  (deadline {d.profile.deadline:g} s)"),
        ("re-sent upstream after bytes reached the client", str(c.get("resent_after_bytes", 0))),
        ("sent twice to one account, not after a plain 429", str(c.get("same_key_not_after_429", 0))
         + (f"  (first attempt: {', '.join(f'{k} {v}' for k, v in sorted(a.twice_after.items()))})"
            if a.twice_after else "")),
        ("re-sent to a 429'd account before its reset", str(c.get("same_key_before_reset", 0))),
        ("re-sent to a 429'd account after its reset (allowed)", str(c.get("same_key_after_reset", 0))),
        ("served-while-headroom", f"{c.get('served_while_headroom', 0)} of {c.get('arrived_with_headroom', 0)} "
                                  f"that arrived while an account had headroom"),
        ("dario's own 429/503 (queue deadline / no account)", f"{c.get('dario_refusals', 0)}, "
                                                              f"{c.get('refused_with_headroom', 0)} of them with "
                                                              f"headroom"),
        (HELD_KEY, str(c.get("held_while_free", 0))),
        ("upstream attempts", f"{c.get('upstream_attempts', 0)}  (faults taken: "
                              + ", ".join(f"{k} {v}" for k, v in sorted(a.faults.items())) + ")"),
        ("latency p50 / p90 / p99 / max", f"{_pct(lat, .5):.3f} / {_pct(lat, .9):.3f} / {_pct(lat, .99):.3f} / "
                                          f"{max(lat, default=0):.3f} s"),
        ("wall time, throughput", f"{d.wall:.1f} s, {n / d.wall:.1f} req/s"),
        ("dariod peak RSS (VmHWM) / RSS at end", f"{d.peak_rss_kb / 1024:.1f} MB / {d.rss_kb / 1024:.1f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"dario reliability: faults under load (profile {d.profile.name}, seed {d.profile.seed}, "
             f"concurrency {d.profile.concurrency}, 3 accounts, upstream timeout {UPSTREAM_TIMEOUT:g} s, "
             f"queue timeout {QUEUE_TIMEOUT:g} s)"]
    lines.append("-" * len(lines[0]))
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    if a.errors_by_status:
        lines.append("errors by status / type / origin:")
        lines += [f"  {k:<{width - 2}}  {v}" for k, v in sorted(a.errors_by_status.items())]
    if a.problems:
        lines.append("invariant violations (first examples):")
        for k, v in a.problems.items():
            lines.append(f"  {k}: {len(v)}")
            lines += [f"    {x}" for x in v[:3]]
    return "\n".join(lines) + "\n"


def summary_path(profile: Profile) -> Path:
    """tests/artifacts/reliability-summary.txt for the short profile; other profiles get their own file."""
    suffix = "" if profile.name == "short" else f"-{profile.name}"
    return ARTIFACTS / f"reliability-summary{suffix}.txt"


def write_summary(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
