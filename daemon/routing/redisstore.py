"""Team mode: the pool's shared state in Redis (`dariod --store redis://HOST:6379/0`).

`RedisStore` is a `MemoryStore` that is a *local mirror* of the shared truth in Redis. Every
synchronous store operation the pool calls changes the mirror at once (so the pool's choice
stays in microseconds and a single dariod's semantics are untouched) and queues the same change
for Redis; a writer task sends the queue as one pipeline of Lua scripts (`EVALSHA`), so a
release and the windows observed with it cost one round trip, and requests finishing together
share it. Only the choice needs an answer before the request goes out: `claim` runs the
`reserve` script, which re-checks the account against the shared state (an exhaustion or
needs-login another instance learned, a window at zero, the requests window less every live
instance's reservations, and — when the local choice thought it fitted — the token windows)
and either adds the reservation or refuses. Every script answers with the account's shared
record, which replaces the mirror's, so a refused choice is not made again. `Pool.acquire`
awaits `claim` (one round trip) and chooses again, or queues, when it is refused.

Keys (`<id>` = alias + ":" + key fingerprint, see `fingerprint`; the key itself never leaves
the process):

- `dario:acct:<id>` hash: `w:<window>` = "limit|remaining|reset|seen" per known window, `bk` `br`
  `bu` `bs` (block kind, reason, until, since), `f` (consecutive failures), `nl` (needs-login
  reason), `en` ("0" when disabled). `PEXPIREAT` the latest window reset or block end, so stale
  windows and finished blocks vanish by themselves (a day when none is known).
- `dario:res:<id>` hash: one field per instance id = "requests|input|output" it holds in flight.
  One aggregate per instance rather than one field per request: the instance knows its own
  in-flight total exactly, so after Redis comes back it rewrites its field from that truth
  instead of leaving orphans from releases that were lost while Redis was away.
- `dario:hb:<instance id>`: the instance's lease, `SET … PX 3000` refreshed every second.
  Scripts that read reservations drop fields whose instance has no lease: a `kill -9`'d
  instance's reservations vanish within the lease TTL.
- `dario:aff:<hex digest>` string: the `<id>` that holds the prompt-cache prefix, with the
  cache's TTL; channel `dario:aff` carries the same entries to every instance's map (below).
- `dario:pref`: the preferred alias. Channel `dario:pool`: every script that changes an account
  (release, observe, block, clear, recovery) publishes its new record (JSON); each instance's
  subscriber applies it to the mirror and calls `Pool.refreshed`, which re-judges the wait queue:
  waiting requests are woken by Redis, not by polling. Every instance sees the messages in the
  same order; each keeps its own FIFO queue.

Prompt-cache affinity (`affinity_put`, called after a successful answer): the local
`AffinityMap` as in `MemoryStore`, plus one queued op that the writer sends in its pipeline as one
`SET dario:aff:<hex digest> <id> PX <ttl ms>` per cache key (Redis expires it with the upstream's
cache; a rewrite refreshes it) and one `PUBLISH dario:aff` of {instance, id, [(digest, ttl,
expiry)]}. Each other instance adds the entries to its own map when `<id>` names the account it
holds under the same key (another key under the same alias is another organisation, whose cache
this one cannot read), with the writer's expiry. `affinity_get` stays the local, synchronous
lookup: no Redis call on the request path. The subscriber is started (and `run` returns) only
once Redis has confirmed both subscriptions, so nothing published after that is missed.

Entries an instance missed (it started, or it was degraded, while they were written) are *not*
read back, neither at merge-back nor lazily. A read on a local miss would either have to be
awaited before the choice (the round trip this design avoids) or arrive after the choice was
made, when the request's own answer is about to write (and publish) the entry anyway. Entries
live five minutes to an hour, so the cost is at most one cache miss per conversation that was
live across the gap, after which that conversation's next answer (on any instance) brings the
entry to every map. The `dario:aff:*` strings are the shared record for an awaited read should a
later change want one (`MGET` of the lookup digests, longest first). Entries written while
degraded stay in the writer's map and are not pushed at merge-back, for the same reason.

Clocks: scripts compare times the calling instance sends (epoch seconds), so instances of one
team need clocks in sync (NTP) to well under a window.

Redis gone: any error or timeout (250 ms) flips the store to *degraded* — the mirror alone
decides, exactly as `MemoryStore` would, queued writes are dropped, `health` says "degraded" and
it is logged once. The heartbeat task retries every second; when Redis answers again it merges
back (rewrites this instance's reservations, pushes blocks and needs-login verdicts learned
meanwhile, then re-reads every account) and says "ok".

redis-py's asyncio client does not run under trio, so the synchronous client runs in trio
worker threads (`trio.to_thread.run_sync`); the README's team-mode section has the measured cost.

May import: routing's siblings, exchange. `redis` is imported here only; this module is imported
only when `--store` names Redis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from dario.daemon.exchange import CacheKey, Estimate
from dario.daemon.routing.affinity import TTL_1H, TTL_5M
from dario.daemon.routing.ratelimits import WINDOWS, Window
from dario.daemon.routing.store import AccountState, BlockKind, MemoryStore

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("team mode needs redis-py: pip install 'dario[team]'") from exc

log = logging.getLogger("dario")

PREFIX = "dario:"
CHANNEL = PREFIX + "pool"
AFFINITY_CHANNEL = PREFIX + "aff"
_AFFINITY_TTLS = frozenset((TTL_5M, TTL_1H))
LEASE_TTL_MS = 3000
HEARTBEAT_EVERY = 1.0
TIMEOUT = 0.25
NO_RESET_TTL_MS = 86_400_000
_FP_LABEL = b"dario team account id v1\x00"

# Shared by every script: the live reservations (dead instances' fields dropped) and the record.
_LUA_COMMON = """
local now = tonumber(ARGV[1])
local iid = ARGV[2]
local acct, res = KEYS[1], KEYS[2]
local function live()
  local all = redis.call('HGETALL', res)
  local out = {}
  for i = 1, #all, 2 do
    if redis.call('EXISTS', 'dario:hb:' .. all[i]) == 1 then
      out[#out + 1] = all[i]; out[#out + 1] = all[i + 1]
    else
      redis.call('HDEL', res, all[i])
    end
  end
  return out
end
local function split(s)
  local t = {}
  for part in string.gmatch(s .. '|', '([^|]*)|') do t[#t + 1] = part end
  return t
end
local function expire()
  local h = redis.call('HGETALL', acct)
  if #h == 0 then return end
  local latest, sticky = nil, false
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    local t = nil
    if string.sub(f, 1, 2) == 'w:' then t = tonumber(split(v)[3]) elseif f == 'bu' then t = tonumber(v) end
    if f == 'nl' or f == 'en' then sticky = true end
    if t and (latest == nil or t > latest) then latest = t end
  end
  if sticky or latest == nil then
    redis.call('PEXPIRE', acct, NO_RESET_TTL)
  else
    redis.call('PEXPIREAT', acct, math.floor(latest * 1000) + 1000)
  end
end
local function answer(publish)
  local rec = {redis.call('HGETALL', acct), live()}
  if publish then
    redis.call('PUBLISH', 'CHANNEL', cjson.encode({t = ARGV[3], h = rec[1], r = rec[2]}))
  end
  return rec
end
""".replace("NO_RESET_TTL", str(NO_RESET_TTL_MS)).replace("CHANNEL", CHANNEL)

# ARGV: now, iid, tag, n, input, output, strict(0/1), lease ttl ms
_RESERVE = _LUA_COMMON + """
local h = redis.call('HGETALL', acct)
local rec = {}
for i = 1, #h, 2 do rec[h[i]] = h[i + 1] end
local refuse = false
if rec.en == '0' or rec.nl then refuse = true end
local bu = tonumber(rec.bu)
if rec.bk == 'exhausted' and bu and now < bu then refuse = true end
local n, ri, ro = 0, 0, 0
local lv = live()
for i = 1, #lv, 2 do
  local p = split(lv[i + 1])
  n = n + tonumber(p[1]); ri = ri + tonumber(p[2]); ro = ro + tonumber(p[3])
end
local need_in, need_out, strict = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
if not refuse then
  for f, v in pairs(rec) do
    if string.sub(f, 1, 2) == 'w:' then
      local name = string.sub(f, 3)
      local p = split(v)
      local limit, remaining, reset = tonumber(p[1]), tonumber(p[2]), tonumber(p[3])
      if reset and now >= reset and limit then remaining = limit end
      if remaining then
        if remaining == 0 and reset and now < reset then refuse = true end
        local need, held = need_in + need_out, ri + ro
        if name == 'requests' then need, held = 1, n
        elseif name == 'input-tokens' then need, held = need_in, ri
        elseif name == 'output-tokens' then need, held = need_out, ro end
        if limit and limit > 0 and need > limit then need = limit end
        if (name == 'requests' or strict) and remaining - held < need then refuse = true end
      end
    end
  end
end
if refuse then return {0, h, lv} end
local own = redis.call('HGET', res, iid)
local a, b, c = 0, 0, 0
if own then local p = split(own); a, b, c = tonumber(p[1]), tonumber(p[2]), tonumber(p[3]) end
redis.call('HSET', res, iid, (a + tonumber(ARGV[4])) .. '|' .. (b + need_in) .. '|' .. (c + need_out))
redis.call('PEXPIRE', res, tonumber(ARGV[8]) * 4)
return {1, h, live()}
"""

# ARGV: now, iid, tag, n, input, output (subtracted from this instance's field, never below 0)
_RELEASE = _LUA_COMMON + """
local own = redis.call('HGET', res, iid)
if own then
  local p = split(own)
  local a = math.max(0, tonumber(p[1]) - tonumber(ARGV[4]))
  local b = math.max(0, tonumber(p[2]) - tonumber(ARGV[5]))
  local c = math.max(0, tonumber(p[3]) - tonumber(ARGV[6]))
  if a == 0 and b == 0 and c == 0 then redis.call('HDEL', res, iid)
  else redis.call('HSET', res, iid, a .. '|' .. b .. '|' .. c) end
end
return answer(true)
"""

# ARGV: now, iid, tag, then (name, "limit|remaining|reset|seen") pairs, `seen` = when the answer was
# read. Within one fixed window (same reset) the smallest remaining wins, whatever the order the
# answers arrive in; otherwise the later-seen answer wins (a new window, or a token bucket whose
# reset moves with every answer); a window whose reset has passed is always replaced.
_OBSERVE = _LUA_COMMON + """
for i = 4, #ARGV, 2 do
  local f, v = 'w:' .. ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', acct, f)
  local keep = false
  if old then
    local o, n = split(old), split(v)
    local oreset, nreset = tonumber(o[3]), tonumber(n[3])
    local orem, nrem = tonumber(o[2]), tonumber(n[2])
    local oseen, nseen = tonumber(o[4]) or 0, tonumber(n[4]) or 0
    if oreset and now < oreset then
      if nreset and math.abs(nreset - oreset) <= 0.5 then
        keep = orem ~= nil and nrem ~= nil and orem < nrem
      else
        keep = oseen > nseen
      end
    end
  end
  if not keep then redis.call('HSET', acct, f, v) end
end
expire()
return answer(true)
"""

# ARGV: now, iid, tag, kind, reason, until, since ('' = none). A cooldown never replaces a live
# exhaustion, and a shorter exhaustion never shortens a longer one.
_BLOCK = _LUA_COMMON + """
local kind, till = ARGV[4], tonumber(ARGV[6])
local bk, bu = redis.call('HGET', acct, 'bk'), tonumber(redis.call('HGET', acct, 'bu'))
local live_exh = bk == 'exhausted' and bu and now < bu
if not (live_exh and (kind ~= 'exhausted' or bu > till)) then
  redis.call('HSET', acct, 'bk', kind, 'br', ARGV[5], 'bu', ARGV[6])
end
if ARGV[7] ~= '' then
  local bs = tonumber(redis.call('HGET', acct, 'bs'))
  if bs == nil or tonumber(ARGV[7]) > bs then redis.call('HSET', acct, 'bs', ARGV[7]) end
end
expire()
return answer(true)
"""

# ARGV: now, iid, tag, then (field, value) pairs; '' deletes; 'f+' as a field adds one to `f`.
_FIELDS = _LUA_COMMON + """
for i = 4, #ARGV, 2 do
  if ARGV[i] == 'f+' then redis.call('HINCRBY', acct, 'f', 1)
  elseif ARGV[i + 1] == '' then redis.call('HDEL', acct, ARGV[i])
  else redis.call('HSET', acct, ARGV[i], ARGV[i + 1]) end
end
expire()
return answer(true)
"""

# ARGV: now, iid, tag, "requests|input|output" this instance holds (resync after an outage).
_RESYNC = _LUA_COMMON + """
if ARGV[4] == '0|0|0' then redis.call('HDEL', res, iid) else
  redis.call('HSET', res, iid, ARGV[4]); redis.call('PEXPIRE', res, RES_TTL) end
return answer(false)
""".replace("RES_TTL", str(LEASE_TTL_MS * 4))

_READ = _LUA_COMMON + """
return answer(false)
"""


def fingerprint(secret: str) -> str:
    """First 16 hex of SHA-256 over a fixed label and the key: names the account, reveals nothing usable."""
    return hashlib.sha256(_FP_LABEL + secret.encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Op:
    script: str
    tag: str
    args: list[str | float | int]
    queued: bool = False  # by a store operation (counted in `_writes_unanswered`)


def _fmt(x: float | int | None) -> str:
    return "" if x is None else repr(x) if isinstance(x, float) else str(x)


def _num(s: str) -> float | None:
    if s == "":
        return None
    v = float(s)
    return v


def _int(s: str) -> int | None:
    v = _num(s)
    return None if v is None else int(v)


class RedisStore(MemoryStore):
    """`MemoryStore` semantics locally, the shared truth in Redis (see the module docstring)."""

    shared = True

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 client: redis.Redis | None = None) -> None:
        super().__init__()
        self.url = url
        self.clock = clock
        self.instance_id = secrets.token_hex(8)
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0),
            health_check_interval=0, decode_responses=True,
        )
        self._scripts = {name: self.client.register_script(src) for name, src in (
            ("reserve", _RESERVE), ("release", _RELEASE), ("observe", _OBSERVE), ("block", _BLOCK),
            ("fields", _FIELDS), ("resync", _RESYNC), ("read", _READ))}
        self._ids: dict[str, tuple[str, str]] = {}  # alias -> (secret it was computed from, "<alias>:<fp>")
        self._local: dict[str, list[int]] = {}  # alias -> this instance's [requests, input, output] in flight
        self._others: dict[str, tuple[int, int, int]] = {}  # alias -> every other live instance's
        self._loaded: set[str] = set()  # tags read from Redis since (re)connecting
        self._pending: list[_Op] = []
        self._wake = trio.Event()
        self._queued_total = 0  # writes queued since start, and how many of them Redis has answered
        self._answered_total = 0
        self._answered = trio.Event()
        self.degraded = False
        self._beaten = False  # whether a heartbeat reached Redis yet
        self._writes_unanswered: dict[str, int] = {}  # tag -> queued writes Redis has not answered yet
        self._health_changed = trio.Event()
        self.on_refresh: Callable[[AccountState], None] | None = None  # the pool's re-judge hook
        self.on_affinity: Callable[[str], None] | None = None  # called with the alias of each affinity message applied

    # -- identity ----------------------------------------------------------------------
    def tag(self, acc: AccountState) -> str | None:
        """`<alias>:<fingerprint>`, or None while the key is not known (the account cannot serve)."""
        secret = acc.secret
        if secret is None:
            return None
        cached = self._ids.get(acc.alias)
        if cached is not None and cached[0] is secret:
            return cached[1]
        tag = f"{acc.alias}:{fingerprint(secret)}"
        self._ids[acc.alias] = (secret, tag)
        return tag

    @staticmethod
    def keys(tag: str) -> list[str]:
        return [f"{PREFIX}acct:{tag}", f"{PREFIX}res:{tag}"]

    @property
    def health(self) -> str:
        return "degraded" if self.degraded else "ok"

    async def wait_health(self, wanted: str) -> None:
        """Return once `health` is `wanted` (for tests and tools; the daemon never waits on it)."""
        while self.health != wanted:
            await self._health_changed.wait()

    def _set_degraded(self, degraded: bool) -> None:
        self.degraded = degraded
        self._health_changed.set()
        self._health_changed = trio.Event()

    # -- the synchronous operations: the mirror now, Redis by the writer -------------------
    def _queue(self, acc: AccountState, script: str, *args: str | float | int) -> None:
        if self.degraded:
            return
        tag = self.tag(acc)
        if tag is None:
            return
        self._pending.append(_Op(script, tag, list(args), queued=True))
        self._writes_unanswered[tag] = self._writes_unanswered.get(tag, 0) + 1
        self._queued_total += 1
        self._wake.set()

    def remove(self, alias: str) -> None:
        super().remove(alias)
        self._ids.pop(alias, None)
        self._local.pop(alias, None)
        self._others.pop(alias, None)

    def affinity_put(self, keys: Sequence[CacheKey], alias: str, now: float) -> None:
        super().affinity_put(keys, alias, now)
        acc = self.accounts.get(alias)
        tag = None if self.degraded or acc is None else self.tag(acc)
        if tag is None:
            return  # degraded (this instance's map only, as `MemoryStore`), or a key not known yet
        args: list[str | float | int] = []
        for digest, ttl in keys:
            args += [digest.hex(), ttl, now + ttl]
        # Not counted in `_writes_unanswered`: no account record comes back from these writes.
        self._pending.append(_Op("aff", tag, args))
        self._queued_total += 1
        self._wake.set()

    def _apply_affinity(self, data: str) -> None:
        """Another instance's `affinity_put`, published on `AFFINITY_CHANNEL`: add it to the local map."""
        msg = json.loads(data)
        if msg["i"] == self.instance_id:
            return  # this instance's own, already in its map
        tag = str(msg["t"])
        alias = tag.rsplit(":", 1)[0]
        acc = self.accounts.get(alias)
        if acc is None or self.tag(acc) != tag:
            return  # another team member's account, or another key under the same name (another org)
        now = self.clock()
        for digest_hex, ttl, expires in msg["e"]:
            ttl, expires = float(ttl), float(expires)
            if ttl not in _AFFINITY_TTLS or expires <= now:
                continue
            # Written as of the sender's clock, so the entry runs out when the sender's does.
            self.affinity.put((CacheKey(bytes.fromhex(digest_hex), ttl),), alias, expires - ttl)
        if self.on_affinity is not None:
            self.on_affinity(alias)

    def prefer(self, alias: str | None) -> None:
        super().prefer(alias)
        if not self.degraded:
            self._pending.append(_Op("pref", "", [alias or ""]))
            self._queued_total += 1
            self._wake.set()

    def set_enabled(self, acc: AccountState, enabled: bool) -> None:
        super().set_enabled(acc, enabled)
        self._queue(acc, "fields", "en", "" if enabled else "0")

    def set_needs_login(self, acc: AccountState, reason: str | None, *, since: float | None = None) -> None:
        super().set_needs_login(acc, reason, since=since)
        args: list[str | float | int] = ["nl", reason or ""]
        if since is not None:
            args += ["bs", _fmt(float(since))]
        self._queue(acc, "fields", *args)

    def reserve(self, acc: AccountState, est: Estimate) -> None:
        super().reserve(acc, est)
        mine = self._local.setdefault(acc.alias, [0, 0, 0])
        mine[0] += 1
        mine[1] += est.input_tokens
        mine[2] += est.output_tokens

    def unclaim(self, acc: AccountState, est: Estimate) -> None:
        """Undo a `reserve` that Redis refused (nothing was held there)."""
        super().release(acc, est)
        self._drop_local(acc, est)

    def _drop_local(self, acc: AccountState, est: Estimate) -> None:
        mine = self._local.get(acc.alias)
        if mine is not None:
            mine[0] = max(0, mine[0] - 1)
            mine[1] = max(0, mine[1] - est.input_tokens)
            mine[2] = max(0, mine[2] - est.output_tokens)

    def release(self, acc: AccountState, est: Estimate) -> None:
        super().release(acc, est)
        self._drop_local(acc, est)
        self._queue(acc, "release", 1, est.input_tokens, est.output_tokens)

    def observe_windows(self, acc: AccountState, windows: Mapping[str, Window]) -> None:
        super().observe_windows(acc, windows)
        args: list[str | float | int] = []
        seen = _fmt(self.clock())
        for name, w in windows.items():
            args += [name, f"{_fmt(w.limit)}|{_fmt(w.remaining)}|{_fmt(w.reset)}|{seen}"]
        if args:
            self._queue(acc, "observe", *args)

    def block(self, acc: AccountState, kind: BlockKind, reason: str | None, until: float,
              *, since: float | None) -> None:
        super().block(acc, kind, reason, until, since=since)
        self._queue(acc, "block", kind.value, reason or "", _fmt(float(until)),
                    "" if since is None else _fmt(float(since)))

    def clear_block(self, acc: AccountState, *, forget_failures: bool = False) -> None:
        super().clear_block(acc, forget_failures=forget_failures)
        args: list[str | float | int] = ["bk", "", "br", "", "bu", ""]
        if forget_failures:
            args += ["f", ""]
        self._queue(acc, "fields", *args)

    def count_failure(self, acc: AccountState) -> int:
        count = super().count_failure(acc)
        self._queue(acc, "fields", "f+", "")
        return count

    def recovered(self, acc: AccountState) -> None:
        super().recovered(acc)
        self._queue(acc, "fields", "f", "", "nl", "", "bk", "", "br", "", "bu", "")

    def restore(self, acc: AccountState, *, failures: int) -> None:
        super().restore(acc, failures=failures)
        self._queue(acc, "fields", "f", str(failures) if failures else "")

    # -- the one awaited operation --------------------------------------------------------
    async def claim(self, acc: AccountState, est: Estimate, strict: bool) -> bool:
        """Hold the reservation `reserve` made locally in Redis too; False when Redis refused it."""
        tag = self.tag(acc)
        if self.degraded or tag is None:
            return True
        args = [self.clock(), self.instance_id, tag, 1, est.input_tokens, est.output_tokens,
                1 if strict else 0, LEASE_TTL_MS]
        try:
            reply = await trio.to_thread.run_sync(self._call, "reserve", tag, args)
        except redis.RedisError as exc:
            self._degrade(exc)
            return True
        admitted, h, r = reply
        self._apply(acc, h, r)
        if not admitted:
            self.unclaim(acc, est)
            self._sum_in_flight(acc)
        return bool(admitted)

    def _call(self, script: str, tag: str, args: list[Any]) -> Any:
        return self._scripts[script](keys=self.keys(tag), args=args)

    # -- applying the shared record to the mirror ----------------------------------------
    def _apply(self, acc: AccountState, h: list[str], r: list[str]) -> None:
        self._apply_reservations(acc, r)
        tag = self._ids.get(acc.alias, ("", ""))[1]
        if self._writes_unanswered.get(tag):
            return  # the mirror holds newer news (a write on its way): the reply to that write brings it
        rec = dict(zip(h[::2], h[1::2], strict=True))
        windows: dict[str, Window] = {}
        for f, v in rec.items():
            if f.startswith("w:") and f[2:] in WINDOWS:
                limit, remaining, reset = (v.split("|") + ["", "", ""])[:3]  # then when it was seen
                windows[f[2:]] = Window(_int(limit), _int(remaining), _num(reset))
        acc.windows = windows
        kind = rec.get("bk")
        acc.block_kind = BlockKind(kind) if kind in ("cooling", "exhausted") else None
        acc.block_reason = rec.get("br") or None
        acc.block_until = _num(rec.get("bu", ""))
        since = _num(rec.get("bs", ""))
        if since is not None:
            acc.block_since = since
        acc.failures = int(rec.get("f") or 0)
        acc.needs_login = rec.get("nl") or None
        acc.enabled = rec.get("en") != "0" if "en" in rec else acc.enabled

    def _apply_reservations(self, acc: AccountState, r: list[str]) -> None:
        n = i = o = 0
        for iid, value in zip(r[::2], r[1::2], strict=True):
            if iid == self.instance_id:
                continue
            parts = value.split("|")
            n, i, o = n + int(parts[0]), i + int(parts[1]), o + int(parts[2])
        self._others[acc.alias] = (n, i, o)
        self._sum_in_flight(acc)

    def _sum_in_flight(self, acc: AccountState) -> None:
        mine = self._local.get(acc.alias, [0, 0, 0])
        others = self._others.get(acc.alias, (0, 0, 0))
        acc.in_flight = mine[0] + others[0]
        acc.reserved_input = mine[1] + others[1]
        acc.reserved_output = mine[2] + others[2]

    def _apply_tagged(self, tag: str, h: list[str], r: list[str]) -> None:
        alias = tag.rsplit(":", 1)[0]
        acc = self.accounts.get(alias)
        if acc is None or self.tag(acc) != tag:
            return  # another team member's account, or another key under the same name
        self._apply(acc, h, r)
        if self.on_refresh is not None:
            self.on_refresh(acc)

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            self._set_degraded(True)
            log.warning("store: degraded — Redis at %s is not answering (%s); using this instance's own picture",
                        _safe_url(self.url), type(exc).__name__)
        self._answered_total += len(self._pending)
        self._pending.clear()
        self._writes_unanswered.clear()
        self._loaded.clear()
        # Other instances' reservations cannot be seen released any more: this instance's own only.
        self._others.clear()
        for acc in self.accounts.values():
            self._sum_in_flight(acc)
        self._answered.set()
        self._answered = trio.Event()

    # -- background tasks -------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat and reconnect, writer, subscriber: run in the daemon's nursery."""
        async with trio.open_nursery() as nursery:
            await self._beat()
            nursery.start_soon(self._heartbeat_forever)
            nursery.start_soon(self._write_forever)
            # Started once subscribed (or failed to): a change published after `run` started is heard.
            await nursery.start(self._subscribe_forever)
            task_status.started()

    async def _heartbeat_forever(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT_EVERY)
            await self._beat()

    async def _beat(self) -> None:
        was_degraded = self.degraded
        try:
            holding = [self.keys(tag)[1] for acc in list(self.accounts.values())
                       if (tag := self.tag(acc)) is not None and self._local.get(acc.alias, [0])[0] > 0]
            lapsed, preferred = await trio.to_thread.run_sync(self._set_lease, holding)
            first, self._beaten = not self._beaten, True
            if lapsed and not first and not was_degraded:
                # This process stalled past its lease (others dropped its reservations): hold them again.
                log.warning("store: this instance's lease lapsed; re-registering its reservations")
                await self._merge_back()
            if not any(op.script == "pref" for op in self._pending) and preferred != self.preferred \
                    and (preferred is None or preferred in self.accounts) and not was_degraded:
                self.preferred = preferred  # another member of the team chose (at most a heartbeat ago)
            if was_degraded:
                await self._merge_back()
            await self._load_new()
        except redis.RedisError as exc:
            self._degrade(exc)
            return
        if was_degraded:
            self._set_degraded(False)
            log.warning("store: ok — Redis at %s answers again; merged this instance's picture back",
                        _safe_url(self.url))

    def _set_lease(self, holding: list[str]) -> tuple[bool, str | None]:
        """Renew this instance's lease and keep alive the reservation hashes it holds a share of.

        Returns whether the lease had lapsed (the key was gone) and the team's preferred alias.
        """
        beat = f"{PREFIX}hb:{self.instance_id}"
        pipe = self.client.pipeline(transaction=False)
        pipe.set(beat, "1", px=LEASE_TTL_MS, nx=True)
        pipe.pexpire(beat, LEASE_TTL_MS)
        pipe.get(PREFIX + "pref")
        for key in holding:  # a stream may outlive the hash's own TTL while nobody else reserves
            pipe.pexpire(key, LEASE_TTL_MS * 4)
        reply = pipe.execute()
        return bool(reply[0]), reply[2]

    async def _merge_back(self) -> None:
        """Push what was learned while Redis was away, then read the shared record back."""
        now = self.clock()
        ops: list[_Op] = []
        for acc in list(self.accounts.values()):
            tag = self.tag(acc)
            if tag is None:
                continue
            mine = self._local.get(acc.alias, [0, 0, 0])
            ops.append(_Op("resync", tag, [f"{mine[0]}|{mine[1]}|{mine[2]}"]))
            if acc.block_kind is not None and acc.block_until is not None and acc.block_until > now:
                ops.append(_Op("block", tag, [acc.block_kind.value, acc.block_reason or "",
                                              _fmt(acc.block_until), _fmt(acc.block_since)]))
            if acc.needs_login:
                ops.append(_Op("fields", tag, ["nl", acc.needs_login]))
            if acc.windows:
                args: list[str | float | int] = []
                for name, w in acc.windows.items():  # seen 0: never newer than what Redis has
                    args += [name, f"{_fmt(w.limit)}|{_fmt(w.remaining)}|{_fmt(w.reset)}|0"]
                ops.append(_Op("observe", tag, args))
        await self._send(ops)

    async def _load_new(self) -> None:
        """Read the shared record of accounts whose key became known (or all, after reconnecting)."""
        ops = []
        for acc in list(self.accounts.values()):
            tag = self.tag(acc)
            if tag is not None and tag not in self._loaded:
                ops.append(_Op("read", tag, []))
        if not ops:
            return
        await self._send(ops)
        self._loaded.update(op.tag for op in ops)

    async def _send(self, ops: list[_Op]) -> None:
        now = self.clock()
        replies = await trio.to_thread.run_sync(self._pipeline, ops, now)
        for op, reply in zip(ops, replies, strict=True):
            if op.script not in ("pref", "aff"):
                if op.queued:
                    self._answered_write(op.tag)
                self._apply_tagged(op.tag, reply[0], reply[1])

    def _answered_write(self, tag: str) -> None:
        left = self._writes_unanswered.get(tag, 0) - 1
        if left > 0:
            self._writes_unanswered[tag] = left
        else:
            self._writes_unanswered.pop(tag, None)

    def _pipeline(self, ops: list[_Op], now: float) -> list[Any]:
        """Send every op in one round trip; one reply per op (an affinity op's are its SETs' and PUBLISH's)."""
        pipe = self.client.pipeline(transaction=False)
        sizes: list[int] = []
        for op in ops:
            if op.script == "pref":
                if op.args[0]:
                    pipe.set(PREFIX + "pref", str(op.args[0]))
                else:
                    pipe.delete(PREFIX + "pref")
                sizes.append(1)
            elif op.script == "aff":
                entries = [op.args[i:i + 3] for i in range(0, len(op.args), 3)]
                for digest_hex, ttl, _ in entries:
                    pipe.set(f"{PREFIX}aff:{digest_hex}", op.tag, px=int(float(ttl) * 1000))
                pipe.publish(AFFINITY_CHANNEL, json.dumps({"i": self.instance_id, "t": op.tag, "e": entries}))
                sizes.append(len(entries) + 1)
            else:
                self._scripts[op.script](keys=self.keys(op.tag), args=[now, self.instance_id, op.tag, *op.args],
                                         client=pipe)
                sizes.append(1)
        flat = pipe.execute()
        replies: list[Any] = []
        start = 0
        for size in sizes:
            replies.append(flat[start] if size == 1 else flat[start:start + size])
            start += size
        return replies

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            ops, self._pending = self._pending, []
            try:
                if ops and not self.degraded:
                    await self._send(ops)
            except redis.RedisError as exc:
                self._degrade(exc)
            finally:
                self._answered_total += len(ops)
                self._answered.set()
                self._answered = trio.Event()

    async def flushed(self) -> None:
        """Return once every write queued so far was answered by Redis (or dropped: degraded)."""
        target = self._queued_total
        while self._answered_total < target and not self.degraded:
            await self._answered.wait()

    async def _subscribe_forever(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            pubsub = self.client.pubsub()
            try:
                await trio.to_thread.run_sync(_subscribe, pubsub)
                if not started:
                    started = True
                    task_status.started()
                while True:
                    batch = await trio.to_thread.run_sync(_next_messages, pubsub, abandon_on_cancel=True)
                    for channel, data in batch:
                        try:
                            if channel == AFFINITY_CHANNEL:
                                self._apply_affinity(data)
                                continue
                            msg = json.loads(data)
                            self._apply_tagged(msg["t"], _lua_list(msg["h"]), _lua_list(msg["r"]))
                        except (ValueError, KeyError, TypeError):
                            continue
            except redis.RedisError as exc:
                self._degrade(exc)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close_quietly, pubsub)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(HEARTBEAT_EVERY / 2)


def _lua_list(value: object) -> list[str]:
    # cjson encodes an empty Lua table as {} (an object), a non-empty list as an array.
    return [str(x) for x in value] if isinstance(value, list) else []


def _subscribe(pubsub: Any) -> None:
    """Subscribe to both channels and wait for Redis to confirm each: every later PUBLISH is heard."""
    channels = (CHANNEL, AFFINITY_CHANNEL)
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        msg = pubsub.get_message(timeout=TIMEOUT)
        if msg is None:
            raise redis.TimeoutError("Redis did not confirm the subscription")
        if msg.get("type") == "subscribe":
            confirmed += 1


def _next_messages(pubsub: Any) -> list[tuple[str, str]]:
    """Block up to a second for one message, then take whatever else is already there: (channel, data)."""
    out: list[tuple[str, str]] = []
    msg = pubsub.get_message(timeout=1.0)
    while msg is not None:
        if msg.get("type") == "message":
            out.append((msg["channel"], msg["data"]))
        msg = pubsub.get_message(timeout=0.0)
    return out


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except (redis.RedisError, OSError):
        pass


def _safe_url(url: str) -> str:
    """The URL without a password (redis://:secret@host)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url
