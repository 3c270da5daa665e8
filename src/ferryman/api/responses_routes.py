"""OpenAI Responses API ingress: create (streamed or not), retrieve, delete, and list input items."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ferryman.api.errors import error_body
from ferryman.api.serve import ChatFormat, serve
from ferryman.api.state import AppState
from ferryman.core.canonical import ChatRequest, ChatResponse, JSONObject, JSONValue, Message
from ferryman.core.exchange import Exchange
from ferryman.core.response_store import NOTE, ResponsesNote, ResponseStore, StoredResponse, caller_scope
from ferryman.errors import FerrymanError, NotFoundError
from ferryman.wire import openai_responses as wire
from ferryman.wire.openai_responses_stream import ResponsesStreamRenderer


def _store(state: AppState) -> ResponseStore:
    return ResponseStore(state.shared.cache, state.settings.responses.ttl_seconds)


def _not_found(response_id: str, param: str | None = None) -> NotFoundError:
    error = NotFoundError(f"No response found with id '{response_id}'.", param=param)
    error.code = "response_not_found"
    return error


class ResponsesIngress:
    """Continues a stored conversation when asked, then answers through the chat flow as a `response`.

    The continuation is looked up here rather than in the route's parse, because only here is the
    caller known (a stored response belongs to one key); the storage itself is the `ResponseStorage`
    stage's, so answers given by any stage are kept alike.
    """

    async def respond(self, state: AppState, exchange: Exchange, body: JSONObject) -> Response:
        """Run the request, rendered as a Responses object or event stream."""
        request = exchange.request
        assert isinstance(request, ChatRequest)  # noqa: S101 - the route parsed a chat request
        options = wire.responses_options(body)
        messages = request.messages
        instructions, own = (messages[:1], messages[1:]) if options.has_instructions else ((), messages)
        earlier = await self._earlier_turns(state, exchange, options.previous_response_id)
        conversation = (*earlier, *own)
        exchange.request = replace(request, messages=(*instructions, *conversation))
        response_id, created_at = f"resp_{secrets.token_hex(24)}", int(time.time())
        echo = wire.request_echo(body)
        note = ResponsesNote(response_id, created_at, options.store, conversation, echo)
        exchange.notes[NOTE] = note
        renderer = ResponsesStreamRenderer(
            response_id, created_at, exchange.model, echo, note.thinking.append
        )

        def render(response: ChatResponse) -> JSONObject:
            return wire.render_response(response, response_id, created_at, echo)

        answer = ChatFormat(
            render_response=render,
            make_renderer=lambda model, raw: renderer,
            render_stream_error=renderer.render_error,
        )
        return await answer.respond(state, exchange, body)

    def error_body(self, exc: FerrymanError) -> bytes:
        """OpenAI's error body, as for chat completions."""
        return error_body(exc)

    @staticmethod
    async def _earlier_turns(
        state: AppState, exchange: Exchange, previous_id: str | None
    ) -> tuple[Message, ...]:
        if previous_id is None:
            return ()
        stored = await _store(state).load(caller_scope(exchange.caller), previous_id)
        if stored is None:
            raise _not_found(previous_id, "previous_response_id")
        return stored.messages


RESPONSES = ResponsesIngress()


async def create_response(request: Request) -> Response:
    """POST /v1/responses."""
    return await serve(request, wire.parse_responses_request, RESPONSES)


async def _stored(request: Request) -> tuple[AppState, str, StoredResponse]:
    state: AppState = request.app.state.ferryman
    caller = await state.auth.authenticate(request)
    response_id = request.path_params["response_id"]
    stored = await _store(state).load(caller_scope(caller), response_id)
    if stored is None:
        raise _not_found(response_id)
    return state, caller_scope(caller), stored


def _json(payload: JSONObject) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


async def retrieve_response(request: Request) -> Response:
    """GET /v1/responses/{id}: a stored response, as it was answered."""
    _, _, stored = await _stored(request)
    return _json(wire.render_response(stored.answer, stored.id, stored.created_at, stored.echo))


async def delete_response(request: Request) -> Response:
    """DELETE /v1/responses/{id}."""
    state, scope, stored = await _stored(request)
    await _store(state).delete(scope, stored.id)
    return _json({"id": stored.id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """GET /v1/responses/{id}/input_items: the conversation the response answered, newest first
    unless `order=asc` (as OpenAI lists them)."""
    _, _, stored = await _stored(request)
    items: list[JSONValue] = []
    for index, message in enumerate(stored.messages[: stored.input_count]):
        items += wire.render_input_item(message, index)
    if request.query_params.get("order", "desc") != "asc":
        items.reverse()
    ids = [item.get("id") for item in items if isinstance(item, dict)]
    return _json(
        {
            "object": "list",
            "data": items,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "has_more": False,
        }
    )


def responses_routes() -> list[BaseRoute]:
    """The Responses paths, also without the `/v1` prefix, like the other OpenAI paths."""
    routes: list[BaseRoute] = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/responses", create_response, methods=["POST"]),
            Route(f"{prefix}/responses/{{response_id}}", retrieve_response, methods=["GET"]),
            Route(f"{prefix}/responses/{{response_id}}", delete_response, methods=["DELETE"]),
            Route(f"{prefix}/responses/{{response_id}}/input_items", list_input_items, methods=["GET"]),
        ]
    return routes
