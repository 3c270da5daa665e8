"""The one place an exception becomes an HTTP response: an OpenAI-shaped error body.

The body is `{"error": {"message", "type", "param", "code"}}` as OpenAI clients expect, plus a top-level
`"type": "error"`, which makes the same body valid for Anthropic clients too. Unexpected exceptions
become a generic 500 whose message carries only the request id — the traceback goes to the log.
"""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferryman.errors import FerrymanError, RateLimitError, UpstreamStatusError

log = logging.getLogger("ferryman.api")


def error_body(exc: FerrymanError) -> bytes:
    """Serialize `exc` as the JSON error body."""
    return orjson.dumps(
        {
            "type": "error",
            "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code},
        }
    )


def error_response(exc: FerrymanError) -> Response:
    """The full HTTP response for `exc`, with `Retry-After` where the client should wait."""
    headers: dict[str, str] = {}
    retry_after: float | None = None
    if isinstance(exc, RateLimitError | UpstreamStatusError):
        retry_after = exc.retry_after
    if retry_after is not None:
        headers["retry-after"] = str(max(int(retry_after + 0.999), 0))
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=headers)


async def handle_ferryman_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for every `FerrymanError`."""
    assert isinstance(exc, FerrymanError)  # noqa: S101 - registered for this class only
    return error_response(exc)


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    """Last resort: log the traceback, tell the client only that it failed and how to find it."""
    request_id = request.scope.get("state", {}).get("request_id", "unknown")
    log.exception("unhandled error", exc_info=exc)
    internal = FerrymanError(f"Internal error; quote request id {request_id} when reporting it.")
    return error_response(internal)
