"""Anthropic's rate-limit response headers → a snapshot of the account's windows.

The `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
headers and `retry-after` are documented at https://docs.anthropic.com/en/api/rate-limits
(reset as RFC 3339). `retry-after-ms` is what the official SDKs prefer when present.
`Window` and `Snapshot` live here, with the upstream that reads them; the pool imports them.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import datetime

WINDOWS = ("requests", "tokens", "input-tokens", "output-tokens")
_PREFIX = b"anthropic-ratelimit-"


@dataclass(slots=True)
class Window:
    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None  # epoch seconds

    def remaining_at(self, now: float) -> int | None:
        """Remaining at `now`: back to the limit once the reset has passed."""
        if self.reset is not None and now >= self.reset and self.limit is not None:
            return self.limit
        return self.remaining

    def as_dict(self) -> dict[str, int | float | None]:
        return {"limit": self.limit, "remaining": self.remaining, "reset": self.reset}


@dataclass(slots=True)
class Snapshot:
    windows: dict[str, Window]
    retry_after: float | None  # seconds, from retry-after / retry-after-ms

    def latest_exhausted_reset(self) -> float | None:
        """The latest reset among windows that are at zero: when all of them are back."""
        resets = [w.reset for w in self.windows.values() if w.remaining == 0 and w.reset is not None]
        return max(resets) if resets else None


_RESET_CACHE: dict[str, float] = {}


def parse_reset(value: str) -> float | None:
    """RFC 3339 (`2025-02-24T22:25:32Z`); tolerate epoch seconds too.

    The same reset instants repeat across many responses, so parsed timestamps are remembered.
    """
    cached = _RESET_CACHE.get(value)
    if cached is not None:
        return cached
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    else:
        if len(_RESET_CACHE) > 4096:
            _RESET_CACHE.clear()
        _RESET_CACHE[value] = stamp
        return stamp
    try:
        number = float(value)
    except ValueError:
        return None
    # Large numbers are epoch seconds; small ones, seconds from now (never cached).
    return number if number > 1e9 else time.time() + number


def parse_retry_after(headers: list[tuple[bytes, bytes]], now: float | None = None) -> float | None:
    retry_ms = None
    retry = None
    for name, value in headers:
        if name == b"retry-after-ms":
            retry_ms = value
        elif name == b"retry-after":
            retry = value
    if retry_ms is not None:
        try:
            return max(0.0, float(retry_ms) / 1000.0)
        except ValueError:
            pass
    if retry is None:
        return None
    text = retry.decode("latin-1").strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (now if now is not None else time.time()))


def parse(headers: list[tuple[bytes, bytes]], now: float | None = None) -> Snapshot:
    windows: dict[str, Window] = {}
    for name, value in headers:
        if not name.startswith(_PREFIX):
            continue
        rest = name[len(_PREFIX) :].decode("latin-1")
        kind, _, field = rest.rpartition("-")
        if kind not in WINDOWS:
            continue  # unified-*, priority-*: not windows dario routes on
        window = windows.get(kind)
        if window is None:
            window = windows[kind] = Window()
        text = value.decode("latin-1").strip()
        try:
            if field == "limit":
                window.limit = int(text)
            elif field == "remaining":
                window.remaining = int(text)
            elif field == "reset":
                window.reset = parse_reset(text)
        except ValueError:
            continue
    return Snapshot(windows=windows, retry_after=parse_retry_after(headers, now))
