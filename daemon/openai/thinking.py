"""Server-side memory of thinking blocks, keyed by the tool-call ids they preceded (protocol.md E12).

OpenAI clients drop Anthropic's signed thinking blocks from the history they send back, but with thinking
enabled Anthropic insists that the assistant turn of an ongoing tool loop starts with them. The response
and stream translators remember each tool-calling turn's thinking blocks here; the request translator
puts them back in front of the matching assistant turn.
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


class ThinkingCache:
    """Bounded LRU: tool_call_id → the assistant turn's thinking blocks (with signatures), in order.

    Bounded by entry count and by approximate bytes, because one high-effort turn can think for tens of KB.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, tool_call_ids: list[str], thinking_blocks: list[dict[str, Any]]) -> None:
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
            old = self._entries.pop(tid, None)
            if old is not None:
                self._bytes -= old[1]
            # Ids of one turn share the list object; each is counted, which only over-estimates memory.
            self._entries[tid] = (blocks, size)
            self._bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def recall(self, tool_call_id: str) -> list[dict[str, Any]] | None:
        entry = self._entries.get(tool_call_id)
        if entry is None:
            return None
        self._entries.move_to_end(tool_call_id)
        # A fresh list so a caller that edits it cannot corrupt the cache; the blocks themselves are
        # never mutated by dario (they must go back to Anthropic unmodified).
        return list(entry[0])
