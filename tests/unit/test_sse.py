"""The SSE splitter: whole events out, whatever the chunking; linear cost; a capped pending event."""

from __future__ import annotations

import random
import time

import pytest

from dario.daemon.upstream.sse import EventSplitter, EventTooLarge, iter_events

EVENTS = [
    b'event: message_start\ndata: {"type":"message_start"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","text":"a\\n\\nb"}\n\n',
    b'event: ping\r\ndata: {"type":"ping"}\r\n\r\n',
    b": a comment\n\n",
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


@pytest.mark.parametrize("seed", range(20))
def test_any_chunking_gives_back_whole_events(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(EVENTS)
    splitter = EventSplitter()
    out: list[bytes] = []
    k = 0
    while k < len(stream):
        n = rng.choice([1, 1, 2, 3, 5, 17, 64])
        block = splitter.feed(stream[k : k + n])
        if block:
            assert block.endswith((b"\n\n", b"\r\n\r\n"))  # never half an event
            out.append(block)
        k += n
    assert b"".join(out) == stream and splitter.pending == b""
    assert [name for name, _ in iter_events(b"".join(out))] == [
        b"message_start", b"content_block_delta", b"ping", b"message_stop",
    ]  # fmt: skip


def test_boundary_split_across_chunks_and_pending_rest() -> None:
    s = EventSplitter()
    assert s.feed(b"data: 1\r\n\r") == b""
    assert s.feed(b"\n") == b"data: 1\r\n\r\n"
    assert s.feed(b"data: 2\n") == b""
    assert s.feed(b"\ndata: 3") == b"data: 2\n\n"
    assert s.pending == b"data: 3"
    assert s.feed(bytearray(b"\n\n")) == b"data: 3\n\n"  # h11 may hand over a bytearray


def test_one_byte_drip_is_linear() -> None:
    # 512 KiB in 1-byte pieces: re-copying the buffer per piece would move ~137 GB; linear is instant.
    event = b"event: content_block_delta\ndata: " + b"x" * (512 * 1024) + b"\n\n"
    s = EventSplitter()
    t0 = time.process_time()
    out = [s.feed(event[k : k + 1]) for k in range(len(event))]
    cpu = time.process_time() - t0
    assert b"".join(out) == event
    assert cpu < 5.0, f"{cpu:.1f} s of CPU for a 512 KiB event in 1-byte pieces"


def test_a_pending_event_is_capped() -> None:
    s = EventSplitter(max_pending=1000)
    assert s.feed(b"data: " + b"x" * 900) == b""
    with pytest.raises(EventTooLarge):
        s.feed(b"x" * 200)
    # Complete events of any number pass; only one unfinished event is bounded.
    s = EventSplitter(max_pending=1000)
    block = b"".join(b"data: %d\n\n" % i for i in range(500))
    assert s.feed(block) == block
