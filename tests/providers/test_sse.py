"""SSE framing: events split anywhere across reads, CRLF, comments, multi-line data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferryman.providers._sse import iter_sse_batches

STREAM = (
    b": keep-alive comment\n\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
)
EXPECTED = [("message_start", '{"a": 1}'), (None, "line one\nline two"), (None, "[DONE]")]


async def chunks_of(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def collect(data: bytes, cuts: list[int]) -> list[tuple[str | None, str]]:
    return [event async for batch in iter_sse_batches(chunks_of(data, cuts)) for event in batch]


async def test_whole_stream_in_one_read() -> None:
    assert await collect(STREAM, []) == EXPECTED


async def test_crlf_framing() -> None:
    assert await collect(STREAM.replace(b"\n", b"\r\n"), [5, 40, 41]) == EXPECTED


async def test_last_event_without_blank_line_is_kept() -> None:
    assert await collect(b"data: tail", []) == [(None, "tail")]


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12), crlf=st.booleans())
def test_any_split_gives_the_same_events(cuts: list[int], crlf: bool) -> None:
    import asyncio

    data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    assert asyncio.run(collect(data, [min(c, len(data)) for c in cuts])) == EXPECTED


@pytest.mark.parametrize("block", [b"event: ping\n\n", b": only a comment\n\n"])
async def test_events_without_data_are_skipped(block: bytes) -> None:
    assert await collect(block + b"data: x\n\n", []) == [(None, "x")]


async def test_events_completed_by_one_read_come_as_one_batch() -> None:
    batches = [batch async for batch in iter_sse_batches(chunks_of(STREAM, [len(STREAM) - 5]))]
    assert batches == [EXPECTED[:2], EXPECTED[2:]]
    assert all(batches)
