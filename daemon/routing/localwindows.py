"""Rate-limit windows dario keeps itself, for accounts whose answers carry no rate-limit headers.

Amazon Bedrock and Google Vertex AI send no `anthropic-ratelimit-*` headers; their quotas are
requests and tokens per minute (https://docs.aws.amazon.com/bedrock/latest/userguide/quotas.html,
https://cloud.google.com/vertex-ai/generative-ai/docs/quotas). For such an account this module
counts what dario sends per minute and turns it into the same `Window(limit, remaining, reset)`
the header windows are, so the pool's headroom ranking, `fits`, the queue and exhaustion work
unchanged. A limit comes from one of two places:

- declared: what the user set (`dario-ctl limits ALIAS --rpm N --input-tpm N --output-tpm N`);
- estimated: learned from throttling, AIMD as in TCP congestion control (RFC 5681): on a throttle
  the estimate drops to `DECREASE` (0.7) of what was sent in the last 60 s (never below a floor);
  after each minute without a throttle it rises by `INCREASE` (10 %) of the declared limit, or
  with none of the level that was throttled, and it never passes a declared limit. Once it
  reaches the declared limit (or, with none, twice the throttled level) it is forgotten: the
  declared figure, or unknown headroom, rules again. With no declared limit and no throttle
  there is no window at all, as for any account before its first answer.

Counting uses fixed one-minute windows: a window starts with the first request sent after the
previous one ended and resets 60 s later. That maps one-to-one onto `Window` (the pool already
puts a window's remaining back to its limit at the reset and wakes queued requests then); a
rolling minute would have to be fed to the pool again at every expiring request. The price is
that a burst across a boundary can send up to twice a limit within 60 s; if the provider counts
a rolling minute it throttles, and the estimate learns a lower figure. A request counts in the
window it was sent in: while in flight it is held by the pool's reservation (one request and its
estimated tokens); when it ends its real usage is added, and the reservation given back.

The counts are this dariod's own (several daemons sharing an account would each count their
part; a shared store would move `used` next to the reservations). Learned estimates and the
current window are saved with the pool's state, so a restart neither forgets a throttle nor
hands out a fresh minute early.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dario.daemon.control.api import DeclaredLimits, WindowSource
from dario.daemon.upstream.ratelimits import Window

MINUTE = 60.0
DECREASE = 0.7  # on a throttle: this share of what was sent in the last minute
INCREASE = 0.1  # per clean minute: this share of the declared limit (or the throttled level)
FORGET_AT = 2.0  # with no declared limit, an estimate this many times the throttled level is dropped
# Declared-limit fields (control API, registry, CLI flags with - for _) and the window each bounds.
LIMIT_FIELDS: dict[str, str] = {"rpm": "requests", "input_tpm": "input-tokens", "output_tpm": "output-tokens"}
LOCAL_WINDOWS = tuple(LIMIT_FIELDS.values())
# An estimate never drops below these: one request, and room for a small prompt and answer.
FLOORS: dict[str, int] = {"requests": 1, "input-tokens": 1000, "output-tokens": 200}


@dataclass(slots=True)
class Learned:
    """An estimated limit for one window."""

    limit: float
    level: float  # what was sent in the minute before the last throttle: the step's base with no declared limit
    since: float  # when it last moved (a throttle or a raise); raises count whole minutes from here


@dataclass(slots=True)
class Sent:
    """One request in the last minute's log: when it went, and its tokens (estimate, then usage)."""

    at: float
    input: int
    output: int


@dataclass(eq=False, slots=True)
class Track:
    """One account's local accounting."""

    declared: dict[str, int] = field(default_factory=dict)  # window name -> limit
    learned: dict[str, Learned] = field(default_factory=dict)
    headerless: bool | None = None  # None: not known yet (no answer seen)
    start: float | None = None  # the current fixed window's start
    used: dict[str, int] = field(default_factory=dict)  # finished requests' use in the current window
    log: deque[Sent] = field(default_factory=deque)  # sent in the last minute, for a throttle's figure
    applied: frozenset[str] = frozenset()  # window names this tracker last put in the pool

    @property
    def active(self) -> bool:
        """Whether the local windows speak for this account (it sends no headers, or not known yet)."""
        return self.headerless is not False and bool(self.declared or self.learned)


class LocalWindows:
    """Every header-less account's counts, declared limits and learned estimates, by alias."""

    def __init__(self) -> None:
        self.tracks: dict[str, Track] = {}

    def forget(self, alias: str) -> None:
        self.tracks.pop(alias, None)

    def track(self, alias: str) -> Track:
        t = self.tracks.get(alias)
        if t is None:
            t = self.tracks[alias] = Track()
        return t

    # -- what the user declares ----------------------------------------------------------------
    def declare(self, alias: str, limits: Mapping[str, int | None], now: float) -> None:
        """The declared limits (by field: rpm, input_tpm, output_tpm); None or absent: none."""
        declared = {LIMIT_FIELDS[k]: int(v) for k, v in limits.items() if k in LIMIT_FIELDS and v}
        t = self.tracks.get(alias)
        if t is None:
            if not declared:
                return  # nothing to keep for an account that has never needed a record
            t = self.track(alias)
        t.declared = declared
        for name, learned in list(t.learned.items()):
            cap = t.declared.get(name)
            if cap is not None and learned.limit >= cap:
                del t.learned[name]  # the declared limit is already the tighter one
        self._advance(t, now)

    def declared(self, alias: str) -> DeclaredLimits:
        t = self.tracks.get(alias)
        d = t.declared if t is not None else {}
        return {"rpm": d.get("requests"), "input_tpm": d.get("input-tokens"), "output_tpm": d.get("output-tokens")}

    # -- what the upstream shows ---------------------------------------------------------------
    def saw_answer(self, alias: str, has_headers: bool) -> None:
        """An answer came: with rate-limit headers (the upstream counts) or without (dario counts)."""
        t = self.tracks.get(alias)
        if t is None:
            if has_headers:
                return  # the usual case, kept free of any record
            t = self.track(alias)
        t.headerless = not has_headers

    def is_headerless(self, alias: str) -> bool:
        t = self.tracks.get(alias)
        return t is not None and t.headerless is True

    # -- counting ------------------------------------------------------------------------------
    def sent(self, alias: str, input_tokens: int, output_tokens: int, now: float) -> Sent | None:
        """A request goes to `alias`; the handle comes back to `finished`. None: not counted here."""
        t = self.tracks.get(alias)
        if t is None or t.headerless is False:
            return None
        self._roll(t, now)
        if t.start is None:
            t.start = now
        entry = Sent(now, input_tokens, output_tokens)
        t.log.append(entry)
        _prune(t.log, now)
        return entry

    def finished(self, alias: str, entry: Sent, used: tuple[int, int] | None, now: float) -> None:
        """The request is over: it joins its window with its real tokens.

        `used` None: no answer came through (refused, throttled, failed), so it took no quota;
        it stays in the last minute's log as a request sent, which is what a throttle is judged by.
        """
        t = self.tracks.get(alias)
        if t is None:
            return
        entry.input, entry.output = used if used is not None else (0, 0)
        self._roll(t, now)
        if used is not None and t.start is not None and entry.at >= t.start:
            u = t.used
            u["requests"] = u.get("requests", 0) + 1
            u["input-tokens"] = u.get("input-tokens", 0) + entry.input
            u["output-tokens"] = u.get("output-tokens", 0) + entry.output

    # -- learning ------------------------------------------------------------------------------
    def throttled(self, alias: str, now: float) -> float:
        """The upstream throttled `alias` with no reset named: lower the estimates; hold until when."""
        t = self.track(alias)
        t.headerless = True
        _prune(t.log, now)
        sent = {
            "requests": len(t.log),
            "input-tokens": sum(e.input for e in t.log),
            "output-tokens": sum(e.output for e in t.log),
        }
        for name in LOCAL_WINDOWS:
            current = self.limit_of(t, name)
            level = float(sent[name]) if current is None else min(float(sent[name]), current)
            floor = FLOORS[name]
            t.learned[name] = Learned(max(float(floor), DECREASE * level), max(float(floor), level), now)
        self._roll(t, now)
        if t.start is None:
            t.start = now
        return t.start + MINUTE

    def forget_estimates(self, alias: str) -> None:
        """Drop the limits learned from throttling; declared limits and this minute's counts stay."""
        t = self.tracks.get(alias)
        if t is not None:
            t.learned.clear()

    def new_minute(self, alias: str) -> None:
        """Forget this minute's counts (the learned estimates stay): the user asked for a fresh check."""
        t = self.tracks.get(alias)
        if t is not None:
            t.start = None
            t.used = {}

    def _advance(self, t: Track, now: float) -> None:
        """Raise each estimate by one step per whole minute since it last moved (the additive part)."""
        for name, learned in list(t.learned.items()):
            minutes = int((now - learned.since) // MINUTE)
            if minutes <= 0:
                continue
            cap = t.declared.get(name)
            step = max(INCREASE * (cap if cap is not None else learned.level), float(FLOORS[name]))
            learned.limit += step * minutes
            learned.since += minutes * MINUTE
            ceiling = cap if cap is not None else FORGET_AT * learned.level
            if learned.limit >= ceiling:
                del t.learned[name]

    @staticmethod
    def limit_of(t: Track, name: str) -> float | None:
        learned = t.learned.get(name)
        cap = t.declared.get(name)
        if learned is None:
            return None if cap is None else float(cap)
        return learned.limit if cap is None else min(learned.limit, float(cap))

    def _roll(self, t: Track, now: float) -> None:
        if t.start is not None and now >= t.start + MINUTE:
            t.start = None
            t.used = {}

    # -- what the pool reads -------------------------------------------------------------------
    def windows(self, alias: str, now: float) -> dict[str, Window]:
        """The windows to route `alias` by (empty: none apply); `sources` says where each comes from.

        Called at every send and release of such an account, so kept to plain reads.
        """
        t = self.tracks.get(alias)
        if t is None or t.headerless is False or not (t.declared or t.learned):
            return {}
        if t.learned:
            self._advance(t, now)
        start = t.start
        if start is not None and now >= start + MINUTE:
            t.start = start = None
            t.used = {}
        reset = None if start is None else start + MINUTE
        declared, learned, used = t.declared, t.learned, t.used
        windows: dict[str, Window] = {}
        for name in LOCAL_WINDOWS:
            est = learned.get(name)
            cap = declared.get(name)
            if est is None:
                if cap is None:
                    continue
                whole = cap
            else:
                limit = est.limit if cap is None or est.limit < cap else cap
                whole = int(limit) if limit >= 1 else 1
            remaining = whole - used.get(name, 0)
            windows[name] = Window(whole, remaining if remaining > 0 else 0, reset)
        return windows

    def sources(self, alias: str) -> dict[str, WindowSource]:
        """Where the local windows now in the pool come from (their names), without moving anything."""
        t = self.tracks.get(alias)
        if t is None or not t.applied:
            return {}
        return {name: "estimated" if name in t.learned else "declared" for name in t.applied}

    # -- persistence ---------------------------------------------------------------------------
    def export(self, alias: str) -> dict[str, Any] | None:
        t = self.tracks.get(alias)
        if t is None or (not t.learned and t.start is None and t.headerless is None):
            return None
        return {
            "headerless": t.headerless,
            "learned": {n: {"limit": v.limit, "level": v.level, "since": v.since} for n, v in t.learned.items()},
            "start": t.start,
            "used": dict(t.used),
        }

    def restore(self, alias: str, data: object, now: float) -> None:
        """What `export` wrote (declared limits come from the registry, not from here)."""
        if not isinstance(data, dict):
            return
        t = self.track(alias)
        headerless = data.get("headerless")
        t.headerless = headerless if isinstance(headerless, bool) else None
        learned = data.get("learned")
        for name, item in (learned.items() if isinstance(learned, dict) else ()):
            if name not in LOCAL_WINDOWS or not isinstance(item, dict):
                continue
            values = [item.get(k) for k in ("limit", "level", "since")]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                limit, level, since = (float(v) for v in values)  # type: ignore[arg-type]
                t.learned[name] = Learned(max(limit, float(FLOORS[name])), max(level, float(FLOORS[name])),
                                          min(since, now))
        start, used = data.get("start"), data.get("used")
        if isinstance(start, (int, float)) and not isinstance(start, bool) and start <= now < start + MINUTE:
            t.start = float(start)
            if isinstance(used, dict):
                t.used = {k: int(v) for k, v in used.items()
                          if k in LOCAL_WINDOWS and isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        self._advance(t, now)


def _prune(log: deque[Sent], now: float) -> None:
    cutoff = now - MINUTE
    while log and log[0].at <= cutoff:
        log.popleft()
