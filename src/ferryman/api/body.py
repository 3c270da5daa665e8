"""Reading request bodies safely: a size cap enforced while reading, and JSON that must be an object."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from ferryman.core.canonical import JSONObject
from ferryman.errors import InvalidRequestError, PayloadTooLargeError


async def read_json_object(request: Request, max_bytes: int) -> JSONObject:
    """The body as a JSON object; 413 past `max_bytes` (checked as it streams in), 400 if not an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc.msg}.") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body exceeds the limit of {max_bytes} bytes.")
