"""In-process micro-benchmark: the cost of prompt-cache affinity per request.

Run alone: ``python -m tests.bench.bench_affinity [--quick]`` prints JSON of median ns:

- `cache_keys_plain_100k`: a 100 KB agent context with no `cache_control` (the fast path);
- `cache_keys_4bp_100k`: the same context with four breakpoints (tools, system, and the last two
  user turns, Claude Code's pattern), from the body the dialect already parsed;
- `choose_release_off` / `choose_release_on`: one `Pool.choose` + `Pool.release` with 10 accounts,
  without keys, and with the request's keys looked up (an owner found) plus the owner recorded
  after the answer, as the relay does.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from dario.daemon.exchange import CacheKeys, Estimate
from dario.daemon.routing.affinity import cache_keys
from tests.bench.bench_pool import make_pool

MODEL = "claude-sonnet-4-5"
CC = {"type": "ephemeral"}


def agent_context(size: int = 100_000, breakpoints: bool = True) -> dict[str, Any]:
    """About `size` bytes of JSON: 12 tools, a 12 KB system prompt, a tool-use loop of turns."""
    tools: list[dict[str, Any]] = [
        {"name": f"tool_{i}", "description": "Does one thing well. " * 12,
         "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"}},
                          "required": ["path"]}}
        for i in range(12)
    ]
    system = [{"type": "text", "text": "You are a careful coding agent. " * 380}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Fix the bug."}]}]
    turn = 0
    while len(orjson.dumps({"tools": tools, "system": system, "messages": messages})) < size:
        turn += 1
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Looking at step {turn}."},
            {"type": "tool_use", "id": f"toolu_{turn:04d}", "name": "tool_1", "input": {"path": f"src/f{turn}.py"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{turn:04d}", "content": "line of code\n" * 90},
        ]})
    if breakpoints:
        tools[-1]["cache_control"] = CC
        system[-1]["cache_control"] = CC
        messages[-3]["content"][-1]["cache_control"] = CC
        messages[-1]["content"][-1]["cache_control"] = CC
    return {"model": MODEL, "max_tokens": 8192, "tools": tools, "system": system, "messages": messages}


def median_ns(op: Callable[[], object], repeats: int, target_s: float) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(20):
        op()
    trial = max(1, time.perf_counter_ns() - t0) / 20
    iters = max(20, min(200_000, int(target_s * 1e9 / trial)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            op()
        samples.append((time.perf_counter_ns() - t0) / iters)
    return round(statistics.median(samples), 1)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    repeats, target = (5, 0.03) if "--quick" in args else (9, 0.08)
    plain = agent_context(breakpoints=False)
    marked = agent_context()
    plain_body, marked_body = orjson.dumps(plain), orjson.dumps(marked)
    keys = cache_keys(MODEL, marked, marked_body)
    assert keys is not None and len(keys.written) == 4

    pool = make_pool(10)
    est = Estimate(input_tokens=1200, output_tokens=1024)
    first = pool.choose(est, (), keys)
    assert first is not None
    pool.remember_cache(first.account.alias, keys)
    pool.release(first)

    def off() -> None:
        lease = pool.choose(est)
        pool.release(lease)  # type: ignore[arg-type]

    def on(k: CacheKeys = keys) -> None:
        lease = pool.choose(est, (), k)
        pool.remember_cache(lease.account.alias, k)  # type: ignore[union-attr]
        pool.release(lease)  # type: ignore[arg-type]

    out = {
        "body_bytes": len(marked_body),
        "lookup_keys": len(keys.lookup),
        "cache_keys_plain_100k": median_ns(lambda: cache_keys(MODEL, plain, plain_body), repeats, target),
        "cache_keys_4bp_100k": median_ns(lambda: cache_keys(MODEL, marked, marked_body), repeats, target),
        "choose_release_off": median_ns(off, repeats, target),
        "choose_release_on": median_ns(on, repeats, target),
    }
    print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()
