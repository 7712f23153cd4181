"""Prompt-cache affinity: which prefixes of a request the upstream may hold in a cache, and where.

Anthropic's prompt cache is per organisation and per model, keyed on the exact prefix of the
prompt up to a `cache_control` breakpoint, in the order tools → system → messages
(https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching). A request reads a cache
entry when one of its breakpoints — or one of the block boundaries up to about 20 blocks before
a breakpoint (the API's automatic lookback) — ends exactly where a cached prefix ends. So a
conversation whose breakpoint moves to the newest message each turn still reads the previous
turn's prefix, found by the lookback.

`cache_keys(model, parsed, body)` turns a Messages request into `CacheKeys`: a 16-byte blake2b
digest of the model and each prefix, never the content. One running hash covers the whole prompt
once, over a canonical form of each block (orjson, sorted keys, `cache_control` left out so moving
a breakpoint does not change the digests of earlier prefixes); each candidate boundary costs one
`copy().digest()` of that running hash, so the cost is O(prompt size) + O(breakpoints × 20).

`AffinityMap` remembers the account that served each written prefix until its TTL runs out (a
use refreshes it), bounded by an LRU cap; `MemoryStore` (store.py) keeps one. In team mode
`RedisStore` also puts other instances' entries, as of the time they were written there: a dict's
order can then be off by the propagation delay, so an entry past its expiry may stay that much
longer before `expire` drops it (`get` checks each entry's expiry itself).

May import: exchange.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from dario.daemon.exchange import CacheKey, CacheKeys

__all__ = ["LOOKBACK_BLOCKS", "MAX_ENTRIES", "TTL_1H", "TTL_5M", "AffinityMap", "cache_keys"]

TTL_5M = 300.0  # the default ephemeral TTL
TTL_1H = 3600.0  # "ttl": "1h"
# "The system automatically checks for cache hits at all previous content block boundaries (up to
# approximately 20 blocks before your explicit breakpoint)" — the prompt-caching guide.
LOOKBACK_BLOCKS = 20
MAX_ENTRIES = 100_000  # about 100 bytes an entry: ~10 MB at the cap
_DIGEST_SIZE = 16
_SORT = orjson.OPT_SORT_KEYS


def cache_keys(model: object, parsed: dict[str, Any], body: bytes | None = None) -> CacheKeys | None:
    """The prefix keys of every breakpoint of a Messages request body (already parsed).

    `body`, when given, lets a request without the word `cache_control` skip everything else.
    None when it has no breakpoint. Malformed shapes give None too: the upstream judges them;
    affinity only ever prefers.
    """
    if body is not None and b'"cache_control"' not in body:  # a JSON key is always quoted
        return None
    if not isinstance(model, str):
        return None
    try:
        blocks = list(_blocks(parsed))
    except (TypeError, AttributeError):
        return None
    breakpoints = _breakpoints(blocks, parsed.get("cache_control"))
    if not breakpoints:
        return None
    wanted: set[int] = set()
    for index, _ in breakpoints:
        wanted.update(range(max(0, index - LOOKBACK_BLOCKS + 1), index + 1))
    running = hashlib.blake2b(model.encode(), digest_size=_DIGEST_SIZE)
    digests: dict[int, bytes] = {}
    last = max(wanted)
    try:
        for i, (tag, block) in enumerate(blocks):
            if i > last:
                break
            running.update(tag)
            running.update(_canonical(block))
            if i in wanted:
                digests[i] = running.copy().digest()
    except TypeError:  # a value orjson cannot serialise: not a body the API would take
        return None
    written = tuple(CacheKey(digests[i], ttl) for i, ttl in breakpoints)
    lookup = tuple(digests[i] for i in sorted(wanted, reverse=True))
    return CacheKeys(written, lookup)


def _blocks(parsed: dict[str, Any]) -> Iterator[tuple[bytes, Any]]:
    """Every cacheable block in cache order, each with a tag that says where it sits.

    A string `system` or message `content` is the same prompt as one text block, so it hashes as
    one. A message's role goes into the tag of its first block: the prefix includes the turn.
    """
    tools = parsed.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            yield b"\x00t", tool
    system = parsed.get("system")
    if isinstance(system, str):
        yield b"\x00s", {"type": "text", "text": system}
    elif isinstance(system, list):
        for block in system:
            yield b"\x00s", block
    messages = parsed.get("messages")
    if isinstance(messages, list):
        for message in messages:
            role = str(message.get("role")).encode()
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            elif not isinstance(content, list):
                continue
            tag = b"\x00m" + role + b"\x00"
            for block in content:
                yield tag, block
                tag = b"\x00b"


def _breakpoints(blocks: Sequence[tuple[bytes, Any]], top: object) -> list[tuple[int, float]]:
    """(index of the block, TTL seconds) of each breakpoint, in prompt order.

    A top-level `cache_control` (the API's automatic form) marks the last cacheable block.
    """
    out: list[tuple[int, float]] = []
    for i, (_, block) in enumerate(blocks):
        if isinstance(block, dict):
            cc = block.get("cache_control")
            if isinstance(cc, dict):
                out.append((i, _ttl(cc)))
    if isinstance(top, dict) and blocks and (not out or out[-1][0] != len(blocks) - 1):
        out.append((len(blocks) - 1, _ttl(top)))
    return out


def _ttl(cache_control: dict[str, Any]) -> float:
    return TTL_1H if cache_control.get("ttl") == "1h" else TTL_5M


def _canonical(block: Any) -> bytes:
    if isinstance(block, dict) and "cache_control" in block:
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return orjson.dumps(block, option=_SORT)


class AffinityMap:
    """Owner (account alias) of each remembered prefix digest, until its TTL; LRU-bounded.

    One ordered dict per TTL: every write moves a key to the end with a fresh expiry, so each dict
    is in expiry order and in least-recently-written order at once. Expired entries are dropped
    from the fronts (amortised O(1)); at the cap the older of the two fronts goes. `counts` keeps
    the live entries per alias, so a view never scans the map.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        # digest -> (alias, expires), one dict per TTL
        self._by_ttl: dict[float, OrderedDict[bytes, tuple[str, float]]] = {}
        self._ttl_of: dict[bytes, float] = {}
        self.counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ttl_of)

    def get(self, lookup: Sequence[bytes], now: float) -> tuple[str, bytes] | None:
        """The owner of the first live digest in `lookup` (longest prefix first), and the digest."""
        ttl_of = self._ttl_of
        for digest in lookup:
            ttl = ttl_of.get(digest)
            if ttl is None:
                continue
            alias, expires = self._by_ttl[ttl][digest]
            if expires > now:
                return alias, digest
        return None

    def put(self, keys: Sequence[CacheKey], alias: str, now: float) -> None:
        """`alias` now holds each key's prefix, for the key's TTL from `now`."""
        for digest, ttl in keys:
            self._drop(digest)
            entries = self._by_ttl.get(ttl)
            if entries is None:
                entries = self._by_ttl[ttl] = OrderedDict()
            entries[digest] = (alias, now + ttl)
            self._ttl_of[digest] = ttl
            self.counts[alias] = self.counts.get(alias, 0) + 1
        self.expire(now)
        while len(self._ttl_of) > self.max_entries:
            self._evict_oldest()

    def forget(self, alias: str) -> None:
        """Drop every entry `alias` owns (the account is gone). A scan: removal is rare."""
        if alias not in self.counts:
            return
        for entries in self._by_ttl.values():
            for digest in [d for d, (owner, _) in entries.items() if owner == alias]:
                self._drop(digest)

    def expire(self, now: float) -> None:
        """Drop every entry whose TTL has run out."""
        for entries in self._by_ttl.values():
            while entries:
                digest, (_, expires) = next(iter(entries.items()))
                if expires > now:
                    break
                self._drop(digest)

    def _evict_oldest(self) -> None:
        """Drop the least recently written entry (over all TTLs)."""
        oldest: tuple[float, bytes] | None = None
        for ttl, entries in self._by_ttl.items():
            if entries:
                digest, (_, expires) = next(iter(entries.items()))
                written = expires - ttl
                if oldest is None or written < oldest[0]:
                    oldest = (written, digest)
        if oldest is not None:
            self._drop(oldest[1])

    def _drop(self, digest: bytes) -> None:
        ttl = self._ttl_of.pop(digest, None)
        if ttl is None:
            return
        alias, _ = self._by_ttl[ttl].pop(digest)
        left = self.counts[alias] - 1
        if left:
            self.counts[alias] = left
        else:
            del self.counts[alias]
