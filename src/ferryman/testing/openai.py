"""FakeOpenAI: OpenAI's Chat Completions, Embeddings and Models endpoints, plus Azure OpenAI's paths."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any

from aiohttp import web

from ferryman.testing._delivery import Answer, Dialect, Event, Framing, json_text
from ferryman.testing._script import HttpError, Usage
from ferryman.testing._server import FakeServer
from ferryman.testing._turn import (
    Prompt,
    Turn,
    embedding_vector,
    float32_bytes,
    last_user_text,
    prompt_words,
)
from ferryman.testing.openai_responses import read_responses_request, render_responses_answer

__all__ = ["FakeOpenAI"]

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("request_forbidden", "unsupported_country_region_territory", "Request forbidden."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_AZURE_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
_AZURE_FILTER = {
    name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")
}


def _error_body(fault: HttpError) -> object:
    error_type, code, message = _ERRORS.get(fault.status, ("api_error", None, f"Error {fault.status}"))
    return {
        "error": {
            "message": fault.message or message,
            "type": fault.error_type or error_type,
            "param": None,
            "code": fault.code or code,
        }
    }


def _invalid(
    message: str, *, param: str | None = None, code: str | None = None, status: int = 400
) -> HttpError:
    """A validation failure worded and shaped as OpenAI's API words it."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return HttpError(status, message, body={"error": error})


_DIALECT = Dialect(
    framing=Framing(),
    error_body=_error_body,
    stream_error=lambda fault: Event(json_text(_error_body(fault))),
)


class FakeOpenAI(FakeServer):
    """A fake OpenAI API: give `base_url` (`http://127.0.0.1:PORT/v1`) to the SDK or to Ferryman.

    Serves `POST /v1/chat/completions` (streamed when `stream` is true, with a final usage chunk when
    `stream_options.include_usage` is set; `reasoning_effort` refused for models that do not reason, as
    OpenAI refuses it, and a reply's `thinking` never shown, only its `reasoning_tokens` counted),
    `POST /v1/responses` (the Responses API, whole or as its
    events), `POST /v1/embeddings` (float or base64), `GET /v1/models`,
    and Azure's `POST /openai/deployments/{deployment}/chat/completions|embeddings?api-version=...`
    (give `url` to `AzureOpenAI(azure_endpoint=...)`). Requires `Authorization: Bearer <key>` (Azure:
    `api-key` or Bearer); any key is accepted unless `api_key` was given.
    """

    provider = "openai"
    default_models = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`: the `base_url` of the OpenAI SDK and Ferryman's `api_base`."""
        return f"{self.url}/v1"

    @property
    def _dialect(self) -> Dialect:
        return _DIALECT

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/v1/models", self._list_models),
            web.post(
                "/v1/responses",
                partial(self._model_call, read=read_responses_request, render=render_responses_answer),
            ),
            web.post("/openai/deployments/{deployment}/chat/completions", self._chat),
            web.post("/openai/deployments/{deployment}/embeddings", self._embeddings),
        ]

    def _response_headers(self) -> Mapping[str, str]:
        return {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-processing-ms": "1"}

    def _unknown_route(self, request: web.Request, status: int) -> HttpError:
        return _invalid(f"Invalid URL ({request.method} {request.path})", status=status)

    # -- credentials -------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> HttpError | None:
        if request.path.startswith("/openai/"):
            return self._authenticate_azure(request)
        header = request.headers.get("Authorization", "")
        key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not key:
            return _invalid(_NO_KEY, status=401)
        if self.api_key is not None and key != self.api_key:
            return _invalid(
                f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", code="invalid_api_key", status=401
            )
        return None

    def _authenticate_azure(self, request: web.Request) -> HttpError | None:
        if "api-version" not in request.query:
            return HttpError(404, body={"error": {"code": "404", "message": "Resource not found"}})
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        key = request.headers.get("api-key") or bearer
        if not key or (self.api_key is not None and key != self.api_key):
            return HttpError(401, body={"error": {"code": "401", "message": _AZURE_DENIED}})
        return None

    # -- chat completions --------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        azure = "deployment" in request.match_info
        return await self._model_call(request, self._read_chat, partial(self._render_chat, azure=azure))

    def _read_chat(self, request: web.Request, body: dict[str, Any]) -> Prompt | HttpError:
        deployment = request.match_info.get("deployment")
        problem = _chat_problem(body, needs_model=deployment is None)
        if problem is not None:
            return problem
        return Prompt(
            model=str(body.get("model") or deployment),
            stream=body.get("stream") is True,
            last_user_text=last_user_text(body["messages"], content_key="content"),
            word_count=prompt_words(body["messages"]),
            body=body,
        )

    def _render_chat(self, turn: Turn, prompt: Prompt, *, azure: bool) -> Answer:
        head = {
            "id": self._new_id("chatcmpl-fake"),
            "created": int(time.time()),
            "model": prompt.model,
            "system_fingerprint": "fp_ferryman_fake",
        }
        call_ids = tuple(call.spec.id or self._new_id("call_fake") for call in turn.tool_calls)
        if not prompt.stream:
            return Answer(body=_completion(head, turn, call_ids, azure=azure))
        options = prompt.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return Answer(
            events=_completion_chunks(head, turn, call_ids, include_usage=include_usage, azure=azure)
        )

    # -- embeddings and models ---------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, self._read_embeddings, self._render_embeddings)

    def _read_embeddings(self, request: web.Request, body: dict[str, Any]) -> Prompt | HttpError:
        deployment = request.match_info.get("deployment")
        if deployment is None and not body.get("model"):
            return _invalid("you must provide a model parameter")
        if "input" not in body:
            return _invalid(
                "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        inputs = _embedding_inputs(body["input"])
        if not inputs:
            return _invalid("'$.input' is invalid. Please check the API reference.", param="input")
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            return _invalid("Invalid 'dimensions': expected an integer greater than 0.", param="dimensions")
        words = sum(len(text.split()) for text in inputs)
        return Prompt(str(body.get("model") or deployment), False, "", words, body, inputs)

    def _render_embeddings(self, turn: Turn, prompt: Prompt) -> Answer:
        dimensions = int(prompt.body.get("dimensions") or self.embedding_dimensions)
        as_base64 = prompt.body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(prompt.inputs):
            vector = embedding_vector(text, dimensions)
            encoded: object = base64.b64encode(float32_bytes(vector)).decode() if as_base64 else list(vector)
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage = {"prompt_tokens": turn.usage.input_tokens, "total_tokens": turn.usage.input_tokens}
        return Answer(body={"object": "list", "data": data, "model": prompt.model, "usage": usage})

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        models = [
            {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
            for name in self.models
        ]
        return web.json_response({"object": "list", "data": models})


def _chat_problem(body: dict[str, Any], *, needs_model: bool) -> HttpError | None:
    """The first reason OpenAI would reject this chat request, checked in the order it checks them."""
    if needs_model and not body.get("model"):
        return _invalid("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _invalid(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not messages:
        return _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", param="messages"
        )
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    return _reasoning_problem(body) or _orphan_tool_message(messages)


_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _reasoning_problem(body: dict[str, Any]) -> HttpError | None:
    """OpenAI refuses an unknown `reasoning_effort`, and any at all for a model that does not reason."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        return _invalid(
            f"Invalid value: '{effort}'. Supported values are: 'none', 'minimal', 'low', 'medium', 'high', "
            "'xhigh', and 'max'.",
            param="reasoning_effort",
            code="invalid_value",
        )
    model = body.get("model")  # Azure names a deployment instead, which says nothing of the model
    if isinstance(model, str) and not model.startswith(("o1", "o3", "o4", "gpt-5", "gpt-oss")):
        return _invalid(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            param="reasoning_effort",
            code="unsupported_parameter",
        )
    return None


def _orphan_tool_message(messages: list[Any]) -> HttpError | None:
    """OpenAI rejects a `tool` message whose `tool_call_id` no earlier assistant message called."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return _invalid(
                f"Invalid type for 'messages[{index}]': expected an object.", param=f"messages[{index}]"
            )
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                called.add(str(call.get("id")))
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return _invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                "with 'tool_calls'.",
                param=f"messages.[{index}].role",
            )
    return None


def _embedding_inputs(value: object) -> tuple[str, ...]:
    """The texts to embed: a string, strings, token ids or lists of token ids (as digits)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        return ()
    if all(isinstance(item, int) for item in value):
        return (" ".join(map(str, value)),)
    texts = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(token, int) for token in item):
            texts.append(" ".join(map(str, item)))
        else:
            return ()
    return tuple(texts)


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _completion(
    head: dict[str, Any], turn: Turn, call_ids: tuple[str, ...], *, azure: bool
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.text if turn.text or not turn.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if turn.tool_calls:
        message["tool_calls"] = [
            _tool_call(call_id, call.spec.name, call.arguments_json)
            for call_id, call in zip(call_ids, turn.tool_calls, strict=True)
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _FINISH.get(turn.finish, turn.finish),
    }
    body = {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(turn.usage)}
    if azure:
        choice["content_filter_results"] = _AZURE_FILTER
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}]
    else:
        body["service_tier"] = "default"
    return body


def _completion_chunks(
    head: dict[str, Any], turn: Turn, call_ids: tuple[str, ...], *, include_usage: bool, azure: bool
) -> tuple[Event, ...]:
    """The SSE stream: role, text pieces, tool-call fragments, finish, optional usage, then [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> Event:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data: dict[str, Any] = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return Event(json_text(data))

    events = [_azure_prompt_filter_chunk()] if azure else []
    events.append(chunk({"role": "assistant", "content": "" if turn.text else None, "refusal": None}))
    events.extend(chunk({"content": piece}) for piece in turn.text_pieces)
    for index, (call_id, call) in enumerate(zip(call_ids, turn.tool_calls, strict=True)):
        events.append(chunk({"tool_calls": [{"index": index, **_tool_call(call_id, call.spec.name, "")}]}))
        events.extend(
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in call.pieces
        )
    events.append(chunk({}, _FINISH.get(turn.finish, turn.finish)))
    if include_usage:
        usage_chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(turn.usage)}
        events.append(Event(json_text(usage_chunk)))
    events.append(Event("[DONE]"))
    return tuple(events)


def _azure_prompt_filter_chunk() -> Event:
    """Azure opens every stream with a chunk that has no choices, only the prompt's filter results."""
    data = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}],
    }
    return Event(json_text(data))
