"""FakeGemini: the Gemini API's generateContent, streamGenerateContent, embeddings and model list."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from ferryman.testing._delivery import Answer, Dialect, Event, Framing, error_response, json_text
from ferryman.testing._script import HttpError, Usage
from ferryman.testing._server import FakeServer
from ferryman.testing._turn import Prompt, Turn, embedding_vector, last_user_text, prompt_words, typed_text

__all__ = ["FakeGemini"]

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_KEY_INVALID = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
    "metadata": {"service": "generativelanguage.googleapis.com"},
}


def _error_body(fault: HttpError) -> object:
    status, message = _ERRORS.get(fault.status, ("UNKNOWN", f"Error {fault.status}"))
    return {
        "error": {
            "code": fault.status,
            "message": fault.message or message,
            "status": fault.error_type or status,
        }
    }


def _invalid(message: str) -> HttpError:
    return HttpError(400, message)


_SSE = Dialect(
    framing=Framing(content_type="text/event-stream", line_end="\r\n"),
    error_body=_error_body,
    stream_error=lambda fault: Event(json_text(_error_body(fault))),
)
_JSON_ARRAY = Dialect(
    framing=Framing(content_type="application/json; charset=UTF-8", json_array=True),
    error_body=_error_body,
    stream_error=lambda fault: Event(json_text(_error_body(fault))),
)


class FakeGemini(FakeServer):
    """A fake Gemini API: give `base_url` (`http://127.0.0.1:PORT`) to google-genai or to Ferryman.

    Serves `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with `?alt=sse`,
    else a streamed JSON array, as Google does), `:embedContent`, `:batchEmbedContents`, `:countTokens`
    and `GET /v1beta/models`, all under `/v1` too (google-genai's default version). Requires a key in
    `x-goog-api-key` or `?key=`; any key is accepted unless `api_key` was given.

    A reply's `thinking` is the model's: shown as `thought: true` parts before the answer only when
    `generationConfig.thinkingConfig.includeThoughts` is set, as Gemini shows thought summaries, and
    always sealed with the first block's signature as Gemini 3 seals a turn (on its first function
    call, else on its last text part; in a stream, an empty text part of its own at the end). Thinking
    tokens are reported in `thoughtsTokenCount`. A `thinkingConfig` with both `thinkingBudget` and
    `thinkingLevel` is refused, as Gemini refuses it.
    """

    provider = "gemini"
    default_models = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001")

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`: google-genai's `HttpOptions(base_url=...)` and Ferryman's `api_base`."""
        return self.url

    @property
    def _dialect(self) -> Dialect:
        return _SSE

    def _routes(self) -> list[web.RouteDef]:
        version = "/{version:v1beta|v1|v1alpha}"
        return [
            web.post(version + "/models/{target}", self._dispatch),
            web.get(version + "/models", self._list_models),
        ]

    def _authenticate(self, request: web.Request) -> HttpError | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return HttpError(403, _NO_KEY)
        if self.api_key is not None and key != self.api_key:
            body = {
                "error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                    "details": [_KEY_INVALID],
                }
            }
            return HttpError(400, body=body)
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method in ("generateContent", "streamGenerateContent"):
            stream = method == "streamGenerateContent"
            dialect = _JSON_ARRAY if stream and request.query.get("alt") != "sse" else _SSE
            read = partial(self._read_generate, model=model, stream=stream)
            return await self._model_call(request, read, self._render_generate, dialect)
        if method in ("embedContent", "batchEmbedContents"):
            read = partial(self._read_embed, model=model, batch=method == "batchEmbedContents")
            return await self._model_call(request, read, self._render_embed)
        if method == "countTokens":
            return self._count_tokens(request)
        message = f"Method {method or '(none)'} not found for models/{model}."
        return error_response(_SSE, HttpError(404, message))

    # -- generateContent ---------------------------------------------------------------------------

    def _read_generate(
        self, request: web.Request, body: dict[str, Any], *, model: str, stream: bool
    ) -> Prompt | HttpError:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return _invalid("* GenerateContentRequest.contents: contents is not specified\n")
        for content in contents:
            if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
                return _invalid("Please use a valid role: user, model.")
        thinking = _thinking_config(body)
        budget = {"thinkingBudget", "thinking_budget"} & thinking.keys()
        if budget and {"thinkingLevel", "thinking_level"} & thinking.keys():
            return _invalid("You can only set either thinking budget or thinking level.")
        return Prompt(
            model=model,
            stream=stream,
            last_user_text=last_user_text(contents, content_key="parts", default_role="user"),
            word_count=prompt_words(body.get("systemInstruction"), contents),
            body=body,
        )

    def _render_generate(self, turn: Turn, prompt: Prompt) -> Answer:
        head = {"modelVersion": prompt.model, "responseId": self._new_id("fake-response-")}
        finish = _FINISH.get(turn.finish, turn.finish)
        thoughts = _thought_parts(turn, prompt)
        if not prompt.stream:
            answer = [{"text": turn.text}] if turn.text or not turn.tool_calls else []
            parts = thoughts + _sealed(answer, _call_parts(turn), turn)
            candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
            return Answer(body={"candidates": [candidate], "usageMetadata": _usage(turn.usage), **head})
        return Answer(events=_stream_chunks(turn, head, finish, thoughts))

    # -- embeddings and listings -------------------------------------------------------------------

    def _read_embed(
        self, request: web.Request, body: dict[str, Any], *, model: str, batch: bool
    ) -> Prompt | HttpError:
        requests = body.get("requests") if batch else [body]
        if not isinstance(requests, list) or not requests:
            return _invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n")
        if not all(isinstance(item, dict) and isinstance(item.get("content"), dict) for item in requests):
            return _invalid("* EmbedContentRequest.content: content is not specified\n")
        inputs = tuple(typed_text(item["content"].get("parts")) for item in requests)
        return Prompt(model, False, "", sum(len(text.split()) for text in inputs), body, inputs)

    def _render_embed(self, turn: Turn, prompt: Prompt) -> Answer:
        requests = prompt.body.get("requests") or [prompt.body]
        embeddings = [
            {
                "values": list(
                    embedding_vector(text, int(item.get("outputDimensionality") or self.embedding_dimensions))
                )
            }
            for text, item in zip(prompt.inputs, requests, strict=True)
        ]
        if "requests" in prompt.body:
            return Answer(body={"embeddings": embeddings})
        return Answer(body={"embedding": embeddings[0]})

    def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = self._request_body(request)
        if not isinstance(body, dict):
            return error_response(_SSE, _invalid("Invalid JSON payload received."))
        nested = body.get("generateContentRequest")
        source = nested if isinstance(nested, dict) else body
        total = prompt_words(source.get("systemInstruction"), source.get("contents"))
        return web.json_response({"totalTokens": total})

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        models = [
            {
                "name": f"models/{name}",
                "displayName": name,
                "supportedGenerationMethods": ["generateContent", "countTokens", "embedContent"],
            }
            for name in self.models
        ]
        return web.json_response({"models": models})


def _thinking_config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig") or body.get("generation_config")
    if not isinstance(config, dict):
        return {}
    thinking = config.get("thinkingConfig") or config.get("thinking_config")
    return thinking if isinstance(thinking, dict) else {}


def _thought_parts(turn: Turn, prompt: Prompt) -> list[dict[str, Any]]:
    """Thought summaries, shown only to a request that asked for them."""
    thinking = _thinking_config(prompt.body)
    if not (thinking.get("includeThoughts") or thinking.get("include_thoughts")):
        return []
    return [{"text": spec.text, "thought": True} for spec in turn.thinking if spec.redacted_data is None]


def _sealed(
    text_parts: list[dict[str, Any]], call_parts: list[dict[str, Any]], turn: Turn
) -> list[dict[str, Any]]:
    """Text then calls, the turn's signature on the first call or else on the last text part."""
    signed = call_parts[:1] or text_parts[-1:]
    if turn.thinking and signed:
        signed[0]["thoughtSignature"] = turn.thinking[0].signature
    return text_parts + call_parts


def _call_parts(turn: Turn) -> list[dict[str, Any]]:
    parts = []
    for call in turn.tool_calls:
        function_call: dict[str, Any] = {"name": call.spec.name, "args": dict(call.spec.arguments)}
        if call.spec.id is not None:
            function_call["id"] = call.spec.id
        parts.append({"functionCall": function_call})
    return parts


def _usage(usage: Usage) -> dict[str, Any]:
    """Gemini counts thinking apart from the candidates, and cached input inside the prompt."""
    metadata: dict[str, Any] = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.total_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input_tokens}],
    }
    if usage.cached_tokens:
        metadata["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        metadata["thoughtsTokenCount"] = usage.reasoning_tokens
    return metadata


def _stream_chunks(
    turn: Turn, head: dict[str, Any], finish: str, thoughts: list[dict[str, Any]]
) -> tuple[Event, ...]:
    """One GenerateContentResponse per thought, per text piece, then one per whole function call; the
    last one carries the finish reason and the full usage, earlier ones only the prompt's count. Without
    calls, the signature comes last on an empty text part of its own, as Gemini streams it."""
    calls = _call_parts(turn)
    seal = [{"text": ""}] if turn.thinking and not calls else []
    parts = thoughts + _sealed([{"text": piece} for piece in turn.text_pieces] + seal, calls, turn)
    parts = parts or [{"text": ""}]
    running = {
        "promptTokenCount": turn.usage.input_tokens,
        "totalTokenCount": turn.usage.input_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": turn.usage.input_tokens}],
    }
    events = []
    for position, part in enumerate(parts):
        candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
        last = position == len(parts) - 1
        if last:
            candidate["finishReason"] = finish
        chunk = {"candidates": [candidate], "usageMetadata": _usage(turn.usage) if last else running, **head}
        events.append(Event(json_text(chunk)))
    return tuple(events)
