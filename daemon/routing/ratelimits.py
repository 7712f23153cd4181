"""Rate-limit snapshots as the pool reads them.

Reading the headers is the upstream's knowledge (`dario.daemon.upstream.ratelimits`); these
names stay importable here so the pool and its tests need not know where parsing lives.
"""

from __future__ import annotations

from dario.daemon.upstream.ratelimits import WINDOWS, Snapshot, Window, parse, parse_reset, parse_retry_after

__all__ = ["WINDOWS", "Snapshot", "Window", "parse", "parse_reset", "parse_retry_after"]
