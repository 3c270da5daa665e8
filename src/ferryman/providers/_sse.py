"""Server-sent events framing: turn an upstream byte stream into `(event, data)` pairs.

Only the fields the providers use are kept (`event`, `data`); comments and `id` / `retry` lines are
skipped. Multi-line `data:` fields are joined with newlines, as the SSE specification says.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[tuple[str | None, str]]:
    """Yield `(event name or None, data)` for each dispatched event in `lines` (each ending in `\\n`)."""
    event: str | None = None
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
            continue
        if line.startswith(b"data:"):
            data.append(_field_value(line, 5))
        elif line.startswith(b"event:"):
            event = _field_value(line, 6)
    if data:
        yield event, "\n".join(data)


def _field_value(line: bytes, prefix_len: int) -> str:
    value = line[prefix_len:]
    if value.startswith(b" "):
        value = value[1:]
    return value.decode("utf-8")
