"""Split a server-sent-events byte stream into whole events without re-serializing them.

dario forwards upstream SSE bytes as they are; it only needs to know where each event
ends (so it never forwards half an event, and can end a broken stream well-formed) and
each event's name (to tap usage and spot in-band errors).
"""

from __future__ import annotations

_LF2 = b"\n\n"
_CRLF2 = b"\r\n\r\n"


class EventSplitter:
    """Feed raw chunks; get back the bytes of the complete events they finish."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """Return the longest prefix of (buffer + chunk) that ends on an event boundary."""
        if type(chunk) is not bytes:  # h11 may hand over a bytearray
            chunk = bytes(chunk)
        data = self._buf + chunk if self._buf else chunk
        end = data.rfind(_LF2)
        end_crlf = data.rfind(_CRLF2)
        cut = max(end + 2 if end >= 0 else -1, end_crlf + 4 if end_crlf >= 0 else -1)
        if cut < 0:
            self._buf = data
            return b""
        self._buf = data[cut:]
        return data[:cut]

    @property
    def pending(self) -> bytes:
        return self._buf


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
