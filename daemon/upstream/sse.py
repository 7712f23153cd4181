"""Split a server-sent-events byte stream into whole events without re-serializing them.

dario forwards upstream SSE bytes as they are; it only needs to know where each event
ends (so it never forwards half an event, and can end a broken stream well-formed) and
each event's name (to tap usage and spot in-band errors).

The splitter is linear in the bytes it receives: each chunk is scanned once (plus the three
bytes before it, for a boundary split across chunks) and copied at most once more, when the
event it completes is handed out. An upstream that drips one byte at a time, or sends a huge
line with no blank line after it, costs O(n), and a pending event is capped.
"""

from __future__ import annotations

_LF2 = b"\n\n"
_CRLF2 = b"\r\n\r\n"
_OVERLAP = len(_CRLF2) - 1  # a boundary may start this many bytes before a new chunk

# The largest single event dario will buffer. Real events are small (deltas are a few bytes to
# a few KB; a content_block_start carrying a server-tool result can reach some hundred KB). A
# pending event beyond this is an upstream that is broken or hostile, not an answer.
MAX_PENDING_EVENT = 4 * 1024 * 1024


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's Content-Type says server-sent events (text/event-stream)."""
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


class EventTooLarge(Exception):
    """An event grew past the splitter's cap before its blank line arrived."""


class EventSplitter:
    """Feed raw chunks; get back the bytes of the complete events they finish."""

    __slots__ = ("_cap", "_parts", "_size", "_tail")

    def __init__(self, max_pending: int = MAX_PENDING_EVENT) -> None:
        self._cap = max_pending
        self._parts: list[bytes] = []  # the pending (incomplete) event, in pieces
        self._size = 0
        self._tail = b""  # its last few bytes, to find a boundary that straddles two chunks

    def feed(self, chunk: bytes) -> bytes:
        """Return the longest prefix of (pending + chunk) that ends on an event boundary.

        Raises EventTooLarge when the pending event exceeds the cap.
        """
        if type(chunk) is not bytes:  # h11 may hand over a bytearray
            chunk = bytes(chunk)
        if not chunk:
            return b""
        tail = self._tail
        window = tail + chunk if tail else chunk
        end = window.rfind(_LF2)
        end_crlf = window.rfind(_CRLF2)
        cut = max(end + 2 if end >= 0 else -1, end_crlf + 4 if end_crlf >= 0 else -1)
        if cut < 0:
            self._parts.append(chunk)
            self._size += len(chunk)
            if self._size > self._cap:
                raise EventTooLarge(f"an upstream event exceeded {self._cap} bytes without ending")
            self._tail = window[-_OVERLAP:]
            return b""
        # The pending bytes hold no boundary (they were cut at the last one), so this one ends
        # inside the new chunk.
        cut_in_chunk = cut - len(tail)
        rest = chunk[cut_in_chunk:]
        if self._parts:
            self._parts.append(chunk[:cut_in_chunk])
            out = b"".join(self._parts)
        else:
            out = chunk[:cut_in_chunk] if rest else chunk
        self._parts = [rest] if rest else []
        self._size = len(rest)
        self._tail = rest[-_OVERLAP:]
        if self._size > self._cap:
            raise EventTooLarge(f"an upstream event exceeded {self._cap} bytes without ending")
        return out

    @property
    def pending(self) -> bytes:
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""


def iter_events(block: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a block of complete events into (event name, data) pairs.

    Multi-line `data:` fields are joined with newlines, per the SSE spec; comments and
    empty events are skipped. An event without an `event:` line is named `message`.
    """
    out: list[tuple[bytes, bytes]] = []
    for raw in block.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not raw:
            continue
        name = b"message"
        data: list[bytes] = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                name = line[7:] if line[6:7] == b" " else line[6:]
        if data or name != b"message":
            out.append((name.strip(), b"\n".join(data)))
    return out
