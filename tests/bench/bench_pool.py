"""In-process micro-benchmark: one `Pool.choose` + `Pool.release` with N accounts.

Run alone: ``python -m tests.bench.bench_pool [--mixed] [--local] [N ...]`` prints JSON {N: median ns}.
Every account is usable and has all four rate-limit windows known (the steady state once
the upstream's headers have been seen), so `choose` does its full work: status, fit and
headroom for each account, then the tie-break. Each choice names a model, as the relay's do,
so the per-model verdict (which accounts' kinds offer it) is part of the measured path.
``--mixed``: every other account is a Bedrock account in us-east-1 without an inference profile,
which does not offer the model asked for (Sonnet 4.5 is profile-only there): the pool must pass
over half its accounts on every choice. ``--local``: the accounts send no rate-limit headers and
have declared limits instead: dario counts each request in its own per-minute windows
(routing/localwindows.py), at send and at release.
"""

from __future__ import annotations

import statistics
import sys
import time

import orjson

from dario.daemon.exchange import Estimate
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.ratelimits import WINDOWS, Snapshot, Window

MODEL = "claude-sonnet-4-5-20250929"
LIMITS = {"requests": 4000, "tokens": 2_000_000, "input-tokens": 1_600_000, "output-tokens": 400_000}


def make_pool(n: int, mixed: bool = False, local: bool = False) -> Pool:
    pool = Pool()
    now = time.time()
    for i in range(n):
        if mixed and i % 2:
            acc = pool.upsert(f"acct{i:03d}", "bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com", now,
                              f"sk-bench-{i}", details={"region": "us-east-1"})
        else:
            acc = pool.upsert(f"acct{i:03d}", "anthropic", "https://api.anthropic.com", now, f"sk-bench-{i}")
        if local:
            pool.observe_headers(acc, Snapshot({}, None), status=200)
            # Limits no loop of the benchmark reaches within a minute: every account stays usable.
            pool.set_declared_limits(acc.alias, {"rpm": 10**9, "input_tpm": 10**9, "output_tpm": 10**9})
            continue
        for name in WINDOWS:
            limit = LIMITS[name]
            acc.windows[name] = Window(limit, limit - 10 * (i % 7), now + 3600.0)
    return pool


def per_op_ns(n: int, repeats: int = 7, target_s: float = 0.05, max_iters: int = 200_000,
              mixed: bool = False, local: bool = False) -> dict[str, float]:
    """Median and spread over `repeats` timed loops, each sized to take about `target_s`."""
    pool = make_pool(n, mixed, local)
    est = Estimate(input_tokens=1200, output_tokens=1024)
    choose, release = pool.choose, pool.release
    # Size the loop from a short trial.
    t0 = time.perf_counter_ns()
    for _ in range(100):
        release(choose(est, (), None, MODEL))  # type: ignore[arg-type]
    trial = max(1, time.perf_counter_ns() - t0) / 100
    iters = max(100, min(max_iters, int(target_s * 1e9 / trial)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            lease = choose(est, (), None, MODEL)
            release(lease)  # type: ignore[arg-type]
        samples.append((time.perf_counter_ns() - t0) / iters)
    samples.sort()
    return {"median_ns": round(statistics.median(samples), 1), "min_ns": round(samples[0], 1),
            "max_ns": round(samples[-1], 1), "iterations": iters, "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    sizes = [int(a) for a in args if not a.startswith("-")] or [1, 10, 100]
    quick = "--quick" in args
    mixed, local = "--mixed" in args, "--local" in args
    out = {str(n): per_op_ns(n, repeats=5 if quick else 9, target_s=0.03 if quick else 0.08, mixed=mixed,
                             local=local)
           for n in sizes}
    print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()
