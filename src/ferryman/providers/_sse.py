"""Server-sent events framing: turn an upstream byte stream into `(event, data)` pairs.

Reads whatever the socket has (not line by line) and splits whole events out of it, so a burst of
events costs one read and is handed on as one batch (written to the client as one write). Only the
fields the providers use are kept (`event`, `data`); comments and `id` / `retry` lines are skipped.
Multi-line `data:` fields are joined with newlines, and CRLF framing (Gemini's) is accepted, as the
SSE specification says.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

SSEEvent = tuple[str | None, str]


async def iter_sse_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[SSEEvent]]:
    """Yield the `(event name or None, data)` pairs completed by each chunk (split at arbitrary points).

    A chunk that completes no event yields nothing; batches are never empty.
    """
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in chunk or buffer.endswith(b"\r"):
            buffer = buffer.replace(b"\r\n", b"\n")
        batch: list[SSEEvent] = []
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            event = _parse_event(block)
            if event is not None:
                batch.append(event)
        if batch:
            yield batch
    event = _parse_event(buffer)
    if event is not None:
        yield [event]


def _parse_event(block: bytes) -> tuple[str | None, str] | None:
    """One event's fields; None for a block with no data (a comment or keep-alive)."""
    name: str | None = None
    data: list[str] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(_field_value(line, 5))
        elif line.startswith(b"event:"):
            name = _field_value(line, 6)
    if not data:
        return None
    return name, "\n".join(data)


def _field_value(line: bytes, prefix_len: int) -> str:
    value = line[prefix_len:]
    if value.startswith(b" "):
        value = value[1:]
    return value.decode("utf-8")
