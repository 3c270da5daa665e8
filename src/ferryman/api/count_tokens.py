"""Token counting: Anthropic's `POST /v1/messages/count_tokens` and Gemini's `:countTokens`.

A count is answered by the deployment the model would be routed to: natively by an upstream with a
counting API (Anthropic's count_tokens, Gemini's countTokens), else offline with `ferryman.tokenizers`
(exact for OpenAI models, erring high for the rest, as the budgets estimate). An upstream count that
fails falls back to the estimate; `x-ferryman-token-count` says which the client got (`upstream` or
`estimated`).

Counting is free at every provider, so it does not run the pipeline: it is never charged, reserves no
budget or rate-limit tokens and writes nothing to the ledger. It does pass the same key and model rules
as inference (401 for a bad key, 403 for a model the key may not use, 404 for one nobody serves).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Protocol, runtime_checkable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from ferryman.api.body import read_json_object
from ferryman.api.errors import error_body, error_response
from ferryman.api.state import AppState
from ferryman.core.canonical import ChatRequest, JSONObject
from ferryman.core.estimate import estimate_input_tokens
from ferryman.core.routing import Target
from ferryman.errors import FerrymanError, PermissionDeniedError, ProviderError
from ferryman.tokenizers import Tokenizers
from ferryman.wire import anthropic as anthropic_wire
from ferryman.wire import gemini as gemini_wire

log = logging.getLogger("ferryman.api")
COUNT_HEADER = "x-ferryman-token-count"
# count_tokens takes no max_tokens, but the Messages parser requires one; it plays no part in a count.
_PLACEHOLDER_MAX_TOKENS = 1
_FORWARDED_HEADERS = ("anthropic-beta",)


@runtime_checkable
class CountsTokens(Protocol):
    """An upstream that may count a prompt itself (`HttpProvider.count_tokens`; None: it cannot)."""

    async def count_tokens(self, request: ChatRequest, headers: Mapping[str, str]) -> int | None:
        """The upstream's count of `request`'s input tokens, or None."""
        ...


async def count_input_tokens(
    request: Request,
    parse: Callable[[JSONObject], ChatRequest],
    render: Callable[[int], JSONObject],
    render_error: Callable[[FerrymanError], bytes],
) -> Response:
    """Authenticate, parse, authorize the model, count; every refusal in the route's error shape."""
    state: AppState = request.app.state.ferryman
    try:
        caller = await state.auth.authenticate(request)
        chat = parse(await read_json_object(request, state.settings.server.max_body_bytes))
        if not caller.allows_model(chat.model):
            raise PermissionDeniedError(
                f"This API key is not allowed to use model {chat.model!r}.", param="model"
            )
        target = state.router.choose_order(chat.model)[0]  # NotFoundError (404) for an unknown model
        forwarded = {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}
        tokens, source = await _count(request.app, target, chat, forwarded)
    except FerrymanError as exc:
        return error_response(exc, body=render_error(exc))
    headers = {
        COUNT_HEADER: source,
        "x-ferryman-model": chat.model,
        "x-ferryman-deployment": target.deployment,
    }
    return Response(orjson.dumps(render(tokens)), media_type="application/json", headers=headers)


async def _count(
    app: Starlette, target: Target, chat: ChatRequest, headers: Mapping[str, str]
) -> tuple[int, str]:
    """The upstream's count when it has one and answers, else the gateway's estimate."""
    upstream = target.upstream
    if isinstance(upstream, CountsTokens):
        try:
            counted = await upstream.count_tokens(replace(chat, model=target.upstream_model), headers)
        except ProviderError as exc:
            log.warning("deployment %s could not count tokens (%s); estimating", target.deployment, exc)
        else:
            if counted is not None:
                return counted, "upstream"
    counter = _tokenizers(app).for_model(target.provider, target.upstream_model)
    # Off the event loop: the first count with an encoding loads it (~0.3 s), and a long prompt encodes
    # for a millisecond or more.
    return await asyncio.to_thread(estimate_input_tokens, chat, counter), "estimated"


def _tokenizers(app: Starlette) -> Tokenizers:
    """This app's tokenizers for counting, made on first use and kept with the app (not the module)."""
    tokenizers: Tokenizers | None = getattr(app.state, "count_tokenizers", None)
    if tokenizers is None:
        tokenizers = app.state.count_tokenizers = Tokenizers()
    return tokenizers


# --- Anthropic ------------------------------------------------------------------------------------


def parse_anthropic_count(body: JSONObject) -> ChatRequest:
    """A count_tokens body through the Messages parser, with the `max_tokens` it does not carry."""
    return anthropic_wire.parse_chat_request({**body, "max_tokens": _PLACEHOLDER_MAX_TOKENS, "stream": False})


async def anthropic_count_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens (the SDK's beta client adds `?beta=true`, which changes nothing)."""
    return await count_input_tokens(
        request, parse_anthropic_count, lambda tokens: {"input_tokens": tokens}, error_body
    )


# --- Gemini ---------------------------------------------------------------------------------------


def parse_gemini_count(body: JSONObject, *, model: str) -> ChatRequest:
    """`{contents}` or `{generateContentRequest: {...}}` (which may add a system instruction and
    tools), through the generateContent parser; the model is the path's."""
    nested = body.get("generateContentRequest")
    source = nested if isinstance(nested, dict) and "contents" not in body else body
    return gemini_wire.parse_chat_request(source, model=model, stream=False)


def gemini_count_route(
    render_error: Callable[[FerrymanError], bytes],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler for POST /{version}/models/{model}:countTokens, answering in Google's error shape."""

    async def count_tokens(request: Request) -> Response:
        """POST /v1beta/models/{model}:countTokens."""
        parse = partial(parse_gemini_count, model=request.path_params["model"])
        return await count_input_tokens(request, parse, lambda tokens: {"totalTokens": tokens}, render_error)

    return count_tokens
