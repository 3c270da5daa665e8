"""Gemini-format ingress: generateContent, streamGenerateContent (server-sent events), countTokens,
embedContent and batchEmbedContents."""

from __future__ import annotations

from functools import partial

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.count_tokens import gemini_count_route
from ferryman.api.serve import ChatFormat, EmbeddingFormat, serve
from ferryman.errors import FerrymanError
from ferryman.wire import gemini as wire
from ferryman.wire import gemini_embeddings

# HTTP status → the google.rpc status name Google's APIs put beside it.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _error_body(exc: FerrymanError) -> bytes:
    """Google's error object; our stable reason (`model_not_found`, `rate_limit_exceeded`…) rides in an
    `ErrorInfo` detail, where Google puts its own."""
    info: dict[str, object] = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": exc.code or exc.type,
        "domain": "ferryman",
    }
    if exc.param is not None:
        info["metadata"] = {"param": exc.param}
    status = _GOOGLE_STATUS.get(exc.status, "UNKNOWN")
    return orjson.dumps(
        {"error": {"code": exc.status, "message": exc.message, "status": status, "details": [info]}}
    )


def _stream_error(exc: FerrymanError) -> bytes:
    """Google's error object, as a final stream chunk."""
    return b"data: " + _error_body(exc) + b"\n\n"


GEMINI_FORMAT = ChatFormat(
    render_response=wire.render_chat_response,
    make_renderer=lambda model, body: wire.StreamRenderer(model),
    render_stream_error=_stream_error,
    render_error=_error_body,
    cost_comment=False,
)


async def generate_content(request: Request) -> Response:
    """POST /v1beta/models/{model}:generateContent."""
    parse = partial(wire.parse_chat_request, model=request.path_params["model"], stream=False)
    return await serve(request, parse, GEMINI_FORMAT)


async def stream_generate_content(request: Request) -> Response:
    """POST /v1beta/models/{model}:streamGenerateContent (answered as SSE, as with `alt=sse`)."""
    parse = partial(wire.parse_chat_request, model=request.path_params["model"], stream=True)
    return await serve(request, parse, GEMINI_FORMAT)


EMBED_CONTENT = EmbeddingFormat(
    render_response=gemini_embeddings.render_embed_content, render_error=_error_body
)
BATCH_EMBED_CONTENTS = EmbeddingFormat(
    render_response=gemini_embeddings.render_batch_embed_contents, render_error=_error_body
)
count_tokens = gemini_count_route(_error_body)


async def embed_content(request: Request) -> Response:
    """POST /v1beta/models/{model}:embedContent, charged and recorded like /v1/embeddings."""
    parse = partial(gemini_embeddings.parse_embed_content, model=request.path_params["model"])
    return await serve(request, parse, EMBED_CONTENT)


async def batch_embed_contents(request: Request) -> Response:
    """POST /v1beta/models/{model}:batchEmbedContents (what google-genai's embed_content calls)."""
    parse = partial(gemini_embeddings.parse_batch_embed_contents, model=request.path_params["model"])
    return await serve(request, parse, BATCH_EMBED_CONTENTS)


def gemini_routes() -> list[BaseRoute]:
    """The Gemini paths, under both API versions the SDK may use."""
    routes: list[BaseRoute] = []
    for version in ("v1beta", "v1"):
        routes += [
            Route(f"/{version}/models/{{model}}:generateContent", generate_content, methods=["POST"]),
            Route(
                f"/{version}/models/{{model}}:streamGenerateContent",
                stream_generate_content,
                methods=["POST"],
            ),
            Route(f"/{version}/models/{{model}}:countTokens", count_tokens, methods=["POST"]),
            Route(f"/{version}/models/{{model}}:embedContent", embed_content, methods=["POST"]),
            Route(f"/{version}/models/{{model}}:batchEmbedContents", batch_embed_contents, methods=["POST"]),
        ]
    return routes
