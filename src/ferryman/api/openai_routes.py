"""OpenAI-format ingress: chat completions (streamed or not), embeddings and the model list."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.errors import error_body
from ferryman.api.serve import ChatFormat, EmbeddingFormat, serve
from ferryman.api.state import AppState
from ferryman.core.canonical import EmbeddingResponse, JSONObject
from ferryman.errors import FerrymanError
from ferryman.wire import openai as wire


def _stream_error(exc: FerrymanError) -> bytes:
    """OpenAI clients raise on a chunk whose data carries an `error` object."""
    return b"data: " + error_body(exc) + b"\n\n"


def _renderer(model: str, body: JSONObject) -> wire.StreamRenderer:
    """OpenAI sends the final usage chunk only to clients that asked for it."""
    return wire.StreamRenderer(model, include_usage=wire.stream_usage_requested(body))


def _render_embeddings(response: EmbeddingResponse, body: JSONObject) -> JSONObject:
    """Vectors as floats or base64, as the client asked."""
    return wire.render_embedding_response(response, encoding_format=wire.embedding_encoding(body))


OPENAI_FORMAT = ChatFormat(
    render_response=wire.render_chat_response,
    make_renderer=_renderer,
    render_stream_error=_stream_error,
)
OPENAI_EMBEDDINGS = EmbeddingFormat(render_response=_render_embeddings)


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await serve(request, wire.parse_chat_request, OPENAI_FORMAT)


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    return await serve(request, wire.parse_embedding_request, OPENAI_EMBEDDINGS)


async def list_models(request: Request) -> Response:
    """GET /v1/models: the model names this gateway serves that the caller may use."""
    state: AppState = request.app.state.ferryman
    caller = await state.auth.authenticate(request)
    created = int(state.started_at)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "ferryman"}
        for name in state.router.model_names
        if caller.allows_model(name)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


def openai_routes() -> list[BaseRoute]:
    """The OpenAI paths, also without the `/v1` prefix for clients whose base URL omits it."""
    routes: list[BaseRoute] = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
            Route(f"{prefix}/embeddings", embeddings, methods=["POST"]),
            Route(f"{prefix}/models", list_models, methods=["GET"]),
        ]
    return routes
