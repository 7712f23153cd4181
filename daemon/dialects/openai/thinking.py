"""Server-side memory of thinking blocks, keyed by the tool-call ids they preceded.

OpenAI clients drop Anthropic's signed thinking blocks from the history they send back, but with thinking
enabled Anthropic insists that the assistant turn of an ongoing tool loop starts with them
(https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#preserving-thinking-blocks). The response
and stream translators remember each tool-calling turn's thinking blocks here; the request translator
puts them back in front of the matching assistant turn.

Entries belong to the client that received them (see `thinking_owner`): tool-call ids travel in plain
sight (logs, shared transcripts) and are guessable, and a thinking block is part of another client's
conversation, so presenting someone else's id must not bring their thinking back.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def _size(blocks: list[dict[str, Any]]) -> int:
    # Rough byte count (thinking text, signature, redacted data) so the byte cap bounds real memory.
    total = 0
    for b in blocks:
        for key in ("thinking", "signature", "data"):
            v = b.get(key)
            if isinstance(v, str):
                total += len(v)
    return total + 64


def thinking_owner(
    client_key: str | None, client_family: str, remote_host: str | None, peer_uid: int | None = None
) -> str:
    """Who a cached thinking block belongs to: the dario client key if one was presented; else the local
    user (peer uid, where the OS tells us) or the remote address, together with the client family."""
    if client_key:
        return "key\0" + client_key
    if peer_uid is not None:
        return f"uid\0{peer_uid}\0{client_family}"
    return f"addr\0{remote_host or ''}\0{client_family}"


class ThinkingCache:
    """Bounded LRU: (owner, tool_call_id) → the assistant turn's thinking blocks (with signatures), in order.

    Bounded by entry count and by approximate bytes, because one high-effort turn can think for tens of KB.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, tool_call_ids: list[str], thinking_blocks: list[dict[str, Any]], owner: str = "") -> None:
        # Only blocks Anthropic will accept back: signed thinking, or redacted data.
        blocks = [
            b
            for b in thinking_blocks
            if isinstance(b, dict)
            and (
                (b.get("type") == "thinking" and isinstance(b.get("signature"), str) and b["signature"])
                or (b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str))
            )
        ]
        if not blocks:
            return
        size = _size(blocks)
        if size > self.max_bytes:
            return
        for tid in tool_call_ids:
            if not isinstance(tid, str) or not tid:
                continue
            key = (owner, tid)
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            # Ids of one turn share the list object; each is counted, which only over-estimates memory.
            self._entries[key] = (blocks, size)
            self._bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def recall(self, tool_call_id: str, owner: str = "") -> list[dict[str, Any]] | None:
        key = (owner, tool_call_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        # A fresh list so a caller that edits it cannot corrupt the cache; the blocks themselves are
        # never mutated by dario (they must go back to Anthropic unmodified).
        return list(entry[0])
