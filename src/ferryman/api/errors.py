"""The one place an exception becomes an HTTP response: an OpenAI-shaped error body.

The body is `{"error": {"message", "type", "param", "code"}}` as OpenAI clients expect, plus a top-level
`"type": "error"`, which makes the same body valid for Anthropic clients too. Unexpected exceptions
become a generic 500 whose message carries only the request id — the traceback goes to the log.
An admin change saved but not announced to the other replicas also carries the saved resource, as
`"saved"`, next to its error.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from ferryman.errors import FerrymanError, InvalidationNotDeliveredError, RateLimitError, UpstreamStatusError


def error_body(exc: FerrymanError) -> bytes:
    """Serialize `exc` as the JSON error body."""
    body: dict[str, object] = {
        "type": "error",
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code},
    }
    if isinstance(exc, InvalidationNotDeliveredError) and isinstance(exc.saved, BaseModel):
        body["saved"] = exc.saved.model_dump(mode="json")  # the admin API's rendering of it
    return orjson.dumps(body)


def error_response(
    exc: FerrymanError, *, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> Response:
    """The full HTTP response for `exc`, with `Retry-After` where the client should wait (and, for the
    gateway's own limits, `retry-after-ms`, which the OpenAI SDKs prefer); `body` replaces the OpenAI
    shape for ingress formats with their own, `headers` adds what the pipeline's stages set."""
    extra: dict[str, str] = dict(headers or {})
    retry_after: float | None = None
    if isinstance(exc, RateLimitError | UpstreamStatusError):
        retry_after = exc.retry_after
    if retry_after is not None:
        extra["retry-after"] = str(max(int(retry_after + 0.999), 0))
        if isinstance(exc, RateLimitError):
            extra["retry-after-ms"] = str(max(round(retry_after * 1000), 0))
            if not exc.worth_retrying:
                extra["x-should-retry"] = "false"  # the OpenAI and Anthropic SDKs then do not retry
    payload = error_body(exc) if body is None else body
    return Response(payload, status_code=exc.status, media_type="application/json", headers=extra)


async def handle_ferryman_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for every `FerrymanError`."""
    assert isinstance(exc, FerrymanError)  # noqa: S101 - registered for this class only
    return error_response(exc)


def unexpected_error_response(request_id: str) -> Response:
    """The generic 500: the client learns only that it failed and how to find it in the log."""
    return error_response(FerrymanError(f"Internal error; quote request id {request_id} when reporting it."))


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    """Starlette's last resort (the `Exception` handler): the generic 500.

    Starlette re-raises after sending it; `RequestIdMiddleware` catches the re-raise, logs the traceback
    (once) and keeps it from the server, which would otherwise drop the keep-alive connection.
    """
    return unexpected_error_response(request.scope.get("state", {}).get("request_id", "unknown"))
