"""Anthropic-format ingress: `POST /v1/messages`, streamed or not, any `anthropic-version`, and
`POST /v1/messages/count_tokens`."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.count_tokens import anthropic_count_tokens
from ferryman.api.serve import ChatFormat, serve
from ferryman.errors import FerrymanError
from ferryman.wire import anthropic as wire


def _stream_error(exc: FerrymanError) -> bytes:
    """Anthropic's mid-stream `error` event."""
    payload = {"type": "error", "error": {"type": exc.type, "message": exc.message}}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


ANTHROPIC_FORMAT = ChatFormat(
    render_response=wire.render_chat_response,
    make_renderer=lambda model, body: wire.StreamRenderer(model),
    render_stream_error=_stream_error,
)


async def messages(request: Request) -> Response:
    """POST /v1/messages."""
    return await serve(request, wire.parse_chat_request, ANTHROPIC_FORMAT)


def anthropic_routes() -> list[BaseRoute]:
    """The Anthropic paths."""
    return [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic_count_tokens, methods=["POST"]),
    ]
