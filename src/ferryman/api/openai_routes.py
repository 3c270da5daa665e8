"""OpenAI-format ingress: chat completions (streamed or not), embeddings and the model list."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.auth import ANONYMOUS
from ferryman.api.body import read_json_object
from ferryman.api.chat import ChatFormat, finish_request, new_record, serve_chat
from ferryman.api.errors import error_body
from ferryman.api.state import AppState
from ferryman.core.canonical import JSONObject
from ferryman.errors import FerrymanError
from ferryman.wire import openai as wire


def _stream_error(exc: FerrymanError) -> bytes:
    """OpenAI clients raise on a chunk whose data carries an `error` object."""
    return b"data: " + error_body(exc) + b"\n\n"


def _renderer(model: str, body: JSONObject) -> wire.StreamRenderer:
    """OpenAI sends the final usage chunk only to clients that asked for it."""
    return wire.StreamRenderer(model, include_usage=wire.stream_usage_requested(body))


OPENAI_FORMAT = ChatFormat(
    render_response=wire.render_chat_response,
    make_renderer=_renderer,
    render_stream_error=_stream_error,
)


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await serve_chat(request, wire.parse_chat_request, OPENAI_FORMAT)


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    state: AppState = request.app.state.ferryman
    record = new_record(request, model="")
    principal = ANONYMOUS
    try:
        principal = await state.auth.authenticate(request)
        body = await read_json_object(request, state.settings.server.max_body_bytes)
        embedding_request = wire.parse_embedding_request(body)
        record.model = embedding_request.model
        state.auth.authorize_model(principal, embedding_request.model)
        response = await state.gateway.embed(embedding_request, record)
    except FerrymanError as exc:
        finish_request(state, record, principal, exc)
        raise
    finish_request(state, record, principal)
    rendered = wire.render_embedding_response(response, encoding_format=wire.embedding_encoding(body))
    return Response(orjson.dumps(rendered), media_type="application/json")


async def list_models(request: Request) -> Response:
    """GET /v1/models: the model names this gateway serves that the caller may use."""
    state: AppState = request.app.state.ferryman
    principal = await state.auth.authenticate(request)
    created = int(state.started_at)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "ferryman"}
        for name in state.gateway.router.model_names
        if principal.allows_model(name)
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
