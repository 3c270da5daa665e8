"""FakeAnthropic: Anthropic's Messages API (plain and streamed), token counting and model list."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

from ferryman.testing._delivery import Answer, Dialect, Event, Framing, error_response, json_text
from ferryman.testing._script import HttpError, ThinkingSpec, Usage
from ferryman.testing._server import FakeServer
from ferryman.testing._turn import PlannedToolCall, Prompt, Turn, last_user_text, prompt_words, split_evenly

__all__ = ["FakeAnthropic"]

_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def _error(fault: HttpError) -> dict[str, Any]:
    error_type, message = _ERRORS.get(fault.status, ("api_error", f"Error {fault.status}"))
    return {
        "type": "error",
        "error": {"type": fault.error_type or error_type, "message": fault.message or message},
    }


def _error_body(fault: HttpError) -> object:
    return {**_error(fault), "request_id": f"req_fake{uuid.uuid4().hex[:20]}"}


def _invalid(message: str, *, status: int = 400) -> HttpError:
    """A refusal worded and shaped as Anthropic's API words it."""
    return HttpError(status, message)


_DIALECT = Dialect(
    framing=Framing(),
    error_body=_error_body,
    stream_error=lambda fault: Event(json_text(_error(fault)), "error"),
)


class FakeAnthropic(FakeServer):
    """A fake Anthropic API: give `base_url` (`http://127.0.0.1:PORT`) to the SDK or to Ferryman.

    Serves `POST /v1/messages` (streamed as named SSE events when `stream` is true),
    `POST /v1/messages/count_tokens` and `GET /v1/models`. Requires a key in `x-api-key` (or, as recent
    SDKs send it, `Authorization: Bearer`) and an `anthropic-version` header; any key is accepted unless
    `api_key` was given. Rejects what the real API rejects in translated requests: a missing
    `max_tokens`, a `system` role inside `messages`, a `tool_result` with no matching `tool_use`,
    a `thinking` budget under 1024 tokens or not below `max_tokens`.

    A reply's `thinking` comes first in the content, as Claude's does: `thinking` blocks (streamed as
    `thinking_delta`s then one `signature_delta`) and `redacted_thinking` ones (whole in their start).
    Every request's headers are recorded (`anthropic-beta` among them).
    """

    provider = "anthropic"
    default_models = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7")

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`: the Anthropic SDK's `base_url` and Ferryman's `api_base`."""
        return self.url

    @property
    def _dialect(self) -> Dialect:
        return _DIALECT

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
            web.get("/v1/models", self._list_models),
        ]

    def _response_headers(self) -> Mapping[str, str]:
        return {"request-id": f"req_fake{uuid.uuid4().hex[:20]}"}

    def _authenticate(self, request: web.Request) -> HttpError | None:
        bearer = request.headers.get("Authorization", "")
        key = request.headers.get("x-api-key") or (bearer[7:].strip() if bearer.startswith("Bearer ") else "")
        if not key:
            return _invalid("x-api-key header is required", status=401)
        if self.api_key is not None and key != self.api_key:
            return _invalid("invalid x-api-key", status=401)
        if not request.headers.get("anthropic-version"):
            return _invalid("anthropic-version: header is required")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, self._read_messages, self._render_messages)

    def _read_messages(self, request: web.Request, body: dict[str, Any]) -> Prompt | HttpError:
        problem = _messages_problem(body)
        if problem is not None:
            return problem
        return Prompt(
            model=str(body["model"]),
            stream=body.get("stream") is True,
            last_user_text=last_user_text(body["messages"], content_key="content"),
            word_count=prompt_words(body.get("system"), body["messages"]),
            body=body,
        )

    def _render_messages(self, turn: Turn, prompt: Prompt) -> Answer:
        message: dict[str, Any] = {
            "id": self._new_id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(turn.usage),
        }
        blocks = _content_blocks(
            turn, [call.spec.id or self._new_id("toolu_fake") for call in turn.tool_calls]
        )
        if not prompt.stream:
            finished = {**message, "content": blocks, "stop_reason": _FINISH.get(turn.finish, turn.finish)}
            return Answer(body=finished)
        return Answer(events=_stream_events(message, blocks, turn))

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = self._request_body(request)
        if not isinstance(body, dict):
            return error_response(_DIALECT, _invalid("The request body is not valid JSON."))
        problem = _messages_problem(body, needs_max_tokens=False)
        if problem is not None:
            return error_response(_DIALECT, problem)
        return web.json_response({"input_tokens": prompt_words(body.get("system"), body["messages"])})

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        models = [
            {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
            for name in self.models
        ]
        first, last = (models[0]["id"], models[-1]["id"]) if models else (None, None)
        return web.json_response({"data": models, "has_more": False, "first_id": first, "last_id": last})


def _messages_problem(body: dict[str, Any], *, needs_max_tokens: bool = True) -> HttpError | None:
    """The first reason Anthropic would reject this request, in its own words."""
    required = ("model", "max_tokens", "messages") if needs_max_tokens else ("model", "messages")
    for name in required:
        if name not in body:
            return _invalid(f"{name}: Field required")
    if needs_max_tokens and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return _invalid("max_tokens: Input should be an integer greater than or equal to 1")
    problem = _thinking_problem(body.get("thinking"), body.get("max_tokens") if needs_max_tokens else None)
    if problem is not None:
        return problem
    messages = body["messages"]
    if not isinstance(messages, list):
        return _invalid("messages: Input should be a valid list")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return _invalid(
                f'messages: Unexpected role "{role}". The Messages API accepts a top-level `system` '
                f'parameter, not "{role}" as an input message role.'
            )
        problem = _unanswered_tool_result(messages, index)
        if problem is not None:
            return problem
    return None


def _thinking_problem(thinking: object, max_tokens: object) -> HttpError | None:
    """Anthropic's rules for `thinking`: a type, and an enabled budget of 1024+ below `max_tokens`."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return None
    if kind != "enabled" or not isinstance(thinking, dict):
        return _invalid("thinking.type: Input should be 'enabled' or 'disabled'")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return _invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if isinstance(max_tokens, int) and max_tokens <= budget:
        return _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    return None


def _unanswered_tool_result(messages: list[Any], index: int) -> HttpError | None:
    """Each `tool_result` must answer a `tool_use` of the message right before it."""
    content = messages[index].get("content")
    if not isinstance(content, list):
        return None
    previous = messages[index - 1].get("content") if index else None
    used = {
        block.get("id")
        for block in previous or ()
        if isinstance(block, dict) and block.get("type") == "tool_use"
    }
    for position, block in enumerate(content):
        if (
            isinstance(block, dict)
            and block.get("type") == "tool_result"
            and block.get("tool_use_id") not in used
        ):
            return _invalid(
                f"messages.{index}.content.{position}: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message."
            )
    return None


def _usage(usage: Usage, *, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic counts uncached input apart from cache reads and cache writes."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def _content_blocks(turn: Turn, call_ids: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [_thinking_block(spec) for spec in turn.thinking]
    if turn.text or not turn.tool_calls:
        blocks.append({"type": "text", "text": turn.text})
    for call_id, call in zip(call_ids, turn.tool_calls, strict=True):
        blocks.append(
            {"type": "tool_use", "id": call_id, "name": call.spec.name, "input": dict(call.spec.arguments)}
        )
    return blocks


def _thinking_block(spec: ThinkingSpec) -> dict[str, Any]:
    if spec.redacted_data is not None:
        return {"type": "redacted_thinking", "data": spec.redacted_data}
    return {"type": "thinking", "thinking": spec.text, "signature": spec.signature}


def _block_stream(
    block: dict[str, Any], turn: Turn, calls: Iterator[PlannedToolCall]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A block's opening as `content_block_start` carries it, and the deltas that fill it."""
    if block["type"] == "text":
        return {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in turn.text_pieces]
    if block["type"] == "thinking":
        pieces = split_evenly(block["thinking"], max(len(turn.text_pieces), 1))
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {"type": "thinking", "thinking": "", "signature": ""}, deltas
    if block["type"] == "redacted_thinking":
        return block, []
    pieces = ("", *next(calls).pieces)
    return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]


def _stream_events(message: dict[str, Any], blocks: list[dict[str, Any]], turn: Turn) -> tuple[Event, ...]:
    """message_start, then per block start / deltas / stop (a ping after the first start), then the end."""
    start_usage = _usage(turn.usage, output_tokens=min(1, turn.usage.output_tokens))
    events = [_event("message_start", message={**message, "usage": start_usage})]
    calls = iter(turn.tool_calls)
    for index, block in enumerate(blocks):
        opening, deltas = _block_stream(block, turn, calls)
        events.append(_event("content_block_start", index=index, content_block=opening))
        if index == 0:
            events.append(_event("ping"))
        events.extend(_event("content_block_delta", index=index, delta=delta) for delta in deltas)
        events.append(_event("content_block_stop", index=index))
    final_usage = {key: value for key, value in _usage(turn.usage).items() if key != "service_tier"}
    stop = {"stop_reason": _FINISH.get(turn.finish, turn.finish), "stop_sequence": None}
    events.append(_event("message_delta", delta=stop, usage=final_usage))
    events.append(_event("message_stop"))
    return tuple(events)


def _event(name: str, **fields: object) -> Event:
    return Event(json_text({"type": name, **fields}), name)
