"""The OpenAI Chat Completions and Embeddings wire format, translated to and from the canonical types.

Both sides use it: `api/` parses a client's `/v1/chat/completions` body and renders the answer; the
`openai` and `openai-compatible` providers build their upstream bodies with it and parse the replies.

Where Chat Completions cannot carry a canonical feature, this module degrades as follows:

- Images are only allowed in user messages; image parts of system, assistant and tool messages are dropped.
- Tool results have no error flag (`Message.is_error`) and no function name; both are dropped on build.
  On parse, a tool message's `name` is recovered from the assistant tool call it answers (Gemini needs it).
- A canonical finish reason of "error" has no OpenAI equivalent and is rendered as "stop".
- Assistant replies are one string: several text parts are joined, images are dropped.
- Request fields without a canonical home (`n`, penalties, logprobs, a tool's `strict` …) are ignored;
  `n` > 1 is refused, because we always answer with one choice.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, TypeAlias

import orjson

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    FinishReason,
    ImagePart,
    JSONObject,
    JSONValue,
    Message,
    Part,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError

PROVIDER = "openai"

MaxTokensField: TypeAlias = Literal["max_completion_tokens", "max_tokens"]
EmbeddingEncoding: TypeAlias = Literal["float", "base64"]

_FINISH_REASONS: Mapping[str, FinishReason] = MappingProxyType(
    {
        "stop": "stop",
        "length": "length",
        "tool_calls": "tool_calls",
        "content_filter": "content_filter",
        "function_call": "tool_calls",  # the deprecated single-function form
    }
)
_TEXT_ONLY = frozenset({"text"})
_USER_PARTS = frozenset({"text", "image_url"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})
_TOOL_CHOICE_MODES: Mapping[str, ToolChoiceMode] = MappingProxyType(
    {"auto": "auto", "none": "none", "required": "required"}
)
_DONE = b"data: [DONE]\n\n"


class _Malformed(Exception):
    """A field is missing or mistyped; `path` names it. Each caller maps it to its own public error."""

    def __init__(self, message: str, path: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


# --- Field readers: one isinstance check each, with the JSON path for the error -------------------


def _root(value: object) -> JSONObject:
    if not isinstance(value, dict):
        raise _Malformed("the body must be a JSON object", None)
    return value


def _obj(value: JSONValue, path: str) -> JSONObject:
    if not isinstance(value, dict):
        raise _Malformed(_problem(value, path, "an object"), path)
    return value


def _list(value: JSONValue, path: str) -> list[JSONValue]:
    if not isinstance(value, list):
        raise _Malformed(_problem(value, path, "an array"), path)
    return value


def _str(value: JSONValue, path: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(_problem(value, path, "a string"), path)
    return value


def _opt_str(value: JSONValue, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _opt_bool(value: JSONValue, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _Malformed(_problem(value, path, "a boolean"), path)


def _opt_int(value: JSONValue, path: str, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(_problem(value, path, "an integer"), path)
    if minimum is not None and value < minimum:
        raise _Malformed(f"'{path}' must be at least {minimum}", path)
    return value


def _opt_number(value: JSONValue, path: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Malformed(_problem(value, path, "a number"), path)
    if not low <= value <= high:
        raise _Malformed(f"'{path}' must be between {low:g} and {high:g}", path)
    return float(value)


def _problem(value: JSONValue, path: str, expected: str) -> str:
    if value is None:
        return f"'{path}' is required"
    return f"'{path}' must be {expected}"


# --- Chat request: client body -> canonical ---------------------------------------------------------


def parse_chat_request(body: JSONObject) -> ChatRequest:
    """Validate a client's Chat Completions body; any problem is an InvalidRequestError naming the field."""
    try:
        return _parse_chat_request(_root(body))
    except _Malformed as exc:
        raise InvalidRequestError(exc.message, param=exc.path) from None


def _parse_chat_request(body: JSONObject) -> ChatRequest:
    n = _opt_int(body.get("n"), "n", minimum=1)
    if n is not None and n > 1:
        raise _Malformed("'n' greater than 1 is not supported: the gateway returns one choice", "n")
    completion_tokens = _opt_int(body.get("max_completion_tokens"), "max_completion_tokens", minimum=1)
    legacy_tokens = _opt_int(body.get("max_tokens"), "max_tokens", minimum=1)
    _parse_stream_options(body.get("stream_options"))
    return ChatRequest(
        model=_str(body.get("model"), "model"),
        messages=_parse_messages(body.get("messages")),
        max_tokens=completion_tokens if completion_tokens is not None else legacy_tokens,
        temperature=_opt_number(body.get("temperature"), "temperature", 0.0, 2.0),
        top_p=_opt_number(body.get("top_p"), "top_p", 0.0, 1.0),
        stop=_parse_stop(body.get("stop")),
        tools=_parse_tools(body.get("tools")),
        tool_choice=_parse_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=_opt_bool(body.get("parallel_tool_calls"), "parallel_tool_calls"),
        response_format=_parse_response_format(body.get("response_format")),
        stream=_opt_bool(body.get("stream"), "stream") or False,
        user=_opt_str(body.get("user"), "user"),
        seed=_opt_int(body.get("seed"), "seed"),
    )


def _parse_messages(value: JSONValue) -> tuple[Message, ...]:
    raw_messages = _list(value, "messages")
    if not raw_messages:
        raise _Malformed("'messages' must contain at least one message", "messages")
    # Tool results name no function in this format; remember each call's name to fill `Message.name`.
    names_by_call_id: dict[str, str] = {}
    messages = []
    for i, raw in enumerate(raw_messages):
        path = f"messages[{i}]"
        message = _parse_message(_obj(raw, path), path, names_by_call_id)
        names_by_call_id.update((call.id, call.name) for call in message.tool_calls)
        messages.append(message)
    return tuple(messages)


def _parse_message(raw: JSONObject, path: str, names_by_call_id: dict[str, str]) -> Message:
    role = raw.get("role")
    content = raw.get("content")
    if role == "user":
        return Message("user", _parse_content(content, f"{path}.content", _USER_PARTS))
    if role == "system" or role == "developer":
        return Message("system", _parse_content(content, f"{path}.content", _TEXT_ONLY))
    if role == "assistant":
        parts = _parse_content(content, f"{path}.content", _ASSISTANT_PARTS, nullable=True)
        return Message("assistant", parts, tool_calls=_parse_tool_calls(raw.get("tool_calls"), path))
    if role == "tool":
        call_id = _str(raw.get("tool_call_id"), f"{path}.tool_call_id")
        parts = _parse_content(content, f"{path}.content", _TEXT_ONLY)
        name = names_by_call_id.get(call_id) or _opt_str(raw.get("name"), f"{path}.name")
        return Message("tool", parts, tool_call_id=call_id, name=name)
    if role is None:
        raise _Malformed(f"'{path}.role' is required", f"{path}.role")
    raise _Malformed(f"'{path}.role' must be system, developer, user, assistant or tool", f"{path}.role")


def _parse_content(
    value: JSONValue, path: str, allowed: frozenset[str], *, nullable: bool = False
) -> tuple[Part, ...]:
    if isinstance(value, str):
        return (TextPart(value),) if value else ()
    if value is None and nullable:
        return ()
    if not isinstance(value, list):
        raise _Malformed(_problem(value, path, "a string or an array of content parts"), path)
    return tuple(
        _parse_part(_obj(item, f"{path}[{j}]"), f"{path}[{j}]", allowed) for j, item in enumerate(value)
    )


def _parse_part(part: JSONObject, path: str, allowed: frozenset[str]) -> Part:
    kind = part.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        expected = " or ".join(sorted(allowed))
        raise _Malformed(f"'{path}.type' must be {expected} in this message", f"{path}.type")
    if kind == "text":
        return TextPart(_str(part.get("text"), f"{path}.text"))
    if kind == "refusal":
        return TextPart(_str(part.get("refusal"), f"{path}.refusal"))
    image = part.get("image_url")
    if isinstance(image, str):  # the early vision preview sent the URL bare
        return ImagePart(image)
    image = _obj(image, f"{path}.image_url")
    return ImagePart(
        url=_str(image.get("url"), f"{path}.image_url.url"),
        detail=_opt_str(image.get("detail"), f"{path}.image_url.detail"),
    )


def _parse_tool_calls(value: JSONValue, path: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    calls = _list(value, f"{path}.tool_calls")
    return tuple(
        _parse_tool_call(_obj(c, f"{path}.tool_calls[{k}]"), f"{path}.tool_calls[{k}]")
        for k, c in enumerate(calls)
    )


def _parse_tool_call(raw: JSONObject, path: str) -> ToolCall:
    kind = raw.get("type")
    if kind is not None and kind != "function":
        raise _Malformed(f"'{path}.type' must be function", f"{path}.type")
    function = _obj(raw.get("function"), f"{path}.function")
    return ToolCall(
        id=_str(raw.get("id"), f"{path}.id"),
        name=_str(function.get("name"), f"{path}.function.name"),
        arguments=_str(function.get("arguments"), f"{path}.function.arguments"),
    )


def _parse_stop(value: JSONValue) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(_str(s, f"stop[{i}]") for i, s in enumerate(_list(value, "stop")))


def _parse_tools(value: JSONValue) -> tuple[Tool, ...]:
    if value is None:
        return ()
    tools = []
    for i, raw in enumerate(_list(value, "tools")):
        tool = _obj(raw, f"tools[{i}]")
        if _str(tool.get("type"), f"tools[{i}].type") != "function":
            continue  # hosted tools (web search, custom …) have no canonical form
        tools.append(
            _parse_function(_obj(tool.get("function"), f"tools[{i}].function"), f"tools[{i}].function")
        )
    return tuple(tools)


def _parse_function(function: JSONObject, path: str) -> Tool:
    parameters = function.get("parameters")
    _opt_bool(function.get("strict"), f"{path}.strict")  # validated, then dropped: no canonical home
    return Tool(
        name=_str(function.get("name"), f"{path}.name"),
        description=_opt_str(function.get("description"), f"{path}.description"),
        parameters=None if parameters is None else _obj(parameters, f"{path}.parameters"),
    )


def _parse_tool_choice(value: JSONValue) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, str):
        mode = _TOOL_CHOICE_MODES.get(value)
        if mode is None:
            raise _Malformed("'tool_choice' must be auto, none, required or a function", "tool_choice")
        return ToolChoice(mode=mode)
    choice = _obj(value, "tool_choice")
    if choice.get("type") != "function":
        raise _Malformed("'tool_choice.type' must be function", "tool_choice.type")
    function = _obj(choice.get("function"), "tool_choice.function")
    return ToolChoice(mode="required", name=_str(function.get("name"), "tool_choice.function.name"))


def _parse_response_format(value: JSONValue) -> ResponseFormat | None:
    if value is None:
        return None
    response_format = _obj(value, "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return ResponseFormat(type="text")
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise _Malformed(
            "'response_format.type' must be text, json_object or json_schema", "response_format.type"
        )
    spec = _obj(response_format.get("json_schema"), "response_format.json_schema")
    schema = spec.get("schema")
    return ResponseFormat(
        type="json_schema",
        name=_str(spec.get("name"), "response_format.json_schema.name"),
        schema=None if schema is None else _obj(schema, "response_format.json_schema.schema"),
        strict=_opt_bool(spec.get("strict"), "response_format.json_schema.strict"),
    )


def _parse_stream_options(value: JSONValue) -> None:
    if value is not None:
        options = _obj(value, "stream_options")
        _opt_bool(options.get("include_usage"), "stream_options.include_usage")


def stream_usage_requested(body: JSONObject) -> bool:
    """Whether the client asked for a usage chunk (`stream_options.include_usage`).

    The canonical request has no field for it (we always ask upstreams for usage), so the ingress reads
    it here and passes it to `StreamRenderer`: some older clients index `choices[0]` of every chunk and
    break on the usage chunk's empty `choices`.
    """
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# --- Chat request: canonical -> upstream body --------------------------------------------------------


def build_chat_request(
    req: ChatRequest, *, max_tokens_field: MaxTokensField = "max_completion_tokens"
) -> JSONObject:
    """Build the upstream Chat Completions body for `req`.

    OpenAI deprecated `max_tokens` for `max_completion_tokens` (its reasoning models reject the old
    name), but some OpenAI-compatible servers (Ollama, LM Studio) only know `max_tokens`: their adapter
    passes `max_tokens_field="max_tokens"`.
    """
    messages: list[JSONValue] = [_build_message(m) for m in req.messages]
    body: JSONObject = {"model": req.model, "messages": messages}
    if req.max_tokens is not None:
        body[max_tokens_field] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = list(req.stop)
    _build_tools(req, body)
    if req.response_format is not None:
        body["response_format"] = _build_response_format(req.response_format)
    if req.stream:
        # Without include_usage an OpenAI stream carries no token counts, and spend must never be $0.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.user is not None:
        body["user"] = req.user
    if req.seed is not None:
        body["seed"] = req.seed
    return body


def _build_message(message: Message) -> JSONObject:
    if message.role == "user":
        return {"role": "user", "content": _build_content(message.parts)}
    if message.role == "system":
        return {"role": "system", "content": _build_content(_text_parts(message.parts))}
    if message.role == "tool":
        content = _build_content(_text_parts(message.parts))
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": content}
    parts = _text_parts(message.parts)
    built: JSONObject = {
        "role": "assistant",
        "content": None if not parts and message.tool_calls else _build_content(parts),
    }
    if message.tool_calls:
        built["tool_calls"] = [_build_tool_call(call) for call in message.tool_calls]
    return built


def _text_parts(parts: tuple[Part, ...]) -> tuple[Part, ...]:
    # Only user messages may carry images in Chat Completions; elsewhere they are dropped.
    return tuple(p for p in parts if isinstance(p, TextPart))


def _build_content(parts: tuple[Part, ...]) -> JSONValue:
    if not parts:
        return ""
    if len(parts) == 1 and isinstance(parts[0], TextPart) and parts[0].text:
        return parts[0].text  # the common case, and the form every compatible server understands
    return [_build_part(p) for p in parts]


def _build_part(part: Part) -> JSONValue:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    image: JSONObject = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _build_tool_call(call: ToolCall) -> JSONValue:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _build_tools(req: ChatRequest, body: JSONObject) -> None:
    if req.tools:
        body["tools"] = [_build_tool(tool) for tool in req.tools]
    if req.tool_choice is not None:
        choice = req.tool_choice
        named: JSONValue = {"type": "function", "function": {"name": choice.name}}
        body["tool_choice"] = choice.mode if choice.name is None else named
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls


def _build_tool(tool: Tool) -> JSONValue:
    function: JSONObject = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _build_response_format(response_format: ResponseFormat) -> JSONValue:
    if response_format.type != "json_schema":
        return {"type": response_format.type}
    # OpenAI requires a schema name; formats without one get a neutral default.
    spec: JSONObject = {"name": response_format.name or "response"}
    if response_format.schema is not None:
        spec["schema"] = response_format.schema
    if response_format.strict is not None:
        spec["strict"] = response_format.strict
    return {"type": "json_schema", "json_schema": spec}


# --- Chat response ------------------------------------------------------------------------------------


def parse_chat_response(body: JSONObject) -> ChatResponse:
    """Translate an upstream `chat.completion` reply; a malformed one is an UpstreamConnectionError."""
    try:
        return _parse_chat_response(_root(body))
    except _Malformed as exc:
        raise _upstream_error(exc) from None


def _upstream_error(exc: _Malformed) -> UpstreamConnectionError:
    return UpstreamConnectionError(f"malformed reply from OpenAI: {exc.message}", provider=PROVIDER)


def _parse_chat_response(body: JSONObject) -> ChatResponse:
    choices = _list(body.get("choices"), "choices")
    if not choices:
        raise _Malformed("'choices' is empty", "choices")
    choice = _obj(choices[0], "choices[0]")
    raw_message = _obj(choice.get("message"), "choices[0].message")
    # A refusal arrives instead of content; pass it on as text so the client sees why.
    text = _opt_str(raw_message.get("content"), "choices[0].message.content") or _opt_str(
        raw_message.get("refusal"), "choices[0].message.refusal"
    )
    calls = _parse_tool_calls(raw_message.get("tool_calls"), "choices[0].message")
    return ChatResponse(
        id=_opt_str(body.get("id"), "id") or "",
        model=_opt_str(body.get("model"), "model") or "",
        message=Message("assistant", (TextPart(text),) if text else (), tool_calls=calls),
        finish_reason=_parse_finish_reason(choice.get("finish_reason"), has_tool_calls=bool(calls)),
        usage=_parse_usage(body.get("usage")),
        created=_parse_created(body.get("created")),
    )


def _parse_finish_reason(value: JSONValue, *, has_tool_calls: bool) -> FinishReason:
    reason = _FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"
    # OpenAI says "stop" when tool_choice forced a function; canonically the model stopped to call it.
    if reason == "stop" and has_tool_calls:
        return "tool_calls"
    return reason


def _parse_usage(value: JSONValue) -> Usage:
    if value is None:
        return Usage()  # some OpenAI-compatible servers omit usage
    usage = _obj(value, "usage")
    details = usage.get("prompt_tokens_details")
    cached = None if details is None else _obj(details, "usage.prompt_tokens_details").get("cached_tokens")
    return Usage(
        input_tokens=_opt_int(usage.get("prompt_tokens"), "usage.prompt_tokens", minimum=0) or 0,
        output_tokens=_opt_int(usage.get("completion_tokens"), "usage.completion_tokens", minimum=0) or 0,
        cached_tokens=_opt_int(cached, "usage.prompt_tokens_details.cached_tokens", minimum=0) or 0,
    )


def _parse_created(value: JSONValue) -> int:
    if isinstance(value, float) and math.isfinite(value):  # some compatible servers send fractions
        return int(value)
    return _opt_int(value, "created") or 0


def render_chat_response(resp: ChatResponse) -> JSONObject:
    """Render a canonical answer as the `chat.completion` object OpenAI clients expect."""
    message = resp.message
    text = message.text
    reply: JSONObject = {
        "role": "assistant",
        # Clients call .strip() on content unless the model called tools, where OpenAI sends null.
        "content": text if text or not message.tool_calls else None,
        "refusal": None,
    }
    if message.tool_calls:
        reply["tool_calls"] = [_build_tool_call(call) for call in message.tool_calls]
    choice: JSONObject = {
        "index": 0,
        "message": reply,
        "logprobs": None,
        "finish_reason": _render_finish_reason(resp.finish_reason),
    }
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [choice],
        "usage": _render_usage(resp.usage),
    }


def _render_finish_reason(reason: FinishReason) -> str:
    return "stop" if reason == "error" else reason


def _render_usage(usage: Usage) -> JSONObject:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


# --- Streaming ------------------------------------------------------------------------------------------


class StreamParser:
    """Turns upstream `chat.completion.chunk`s into canonical stream events.

    OpenAI numbers streamed tool calls by `index` and sends their id and name only in the first fragment,
    so the parser remembers which calls it has announced; usage arrives in a last chunk with no choices
    (or, from some compatible servers, on every chunk), so it keeps the latest figures until it is sure.
    """

    __slots__ = ("_call_indices", "_finished", "_last_call_key", "_started", "_usage", "_usage_sent")

    def __init__(self) -> None:
        self._started = False
        self._finished = False
        self._usage: Usage | None = None
        self._usage_sent = False
        self._call_indices: dict[int | str, int] = {}
        self._last_call_key: int | str = 0

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Translate one chunk; `event` is unused (OpenAI names no SSE events)."""
        try:
            return self._feed(_root(data))
        except _Malformed as exc:
            raise _upstream_error(exc) from None

    def finish(self) -> list[StreamEvent]:
        """Close the canonical stream: a Finish the upstream never sent, and usage not yet reported."""
        if not self._started:
            raise UpstreamConnectionError("the OpenAI stream ended before its first chunk", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("tool_calls" if self._call_indices else "stop"))
        if self._usage is not None and not self._usage_sent:
            self._usage_sent = True
            events.append(UsageReport(self._usage))
        return events

    def _feed(self, chunk: JSONObject) -> list[StreamEvent]:
        error = chunk.get("error")
        if error is not None:  # OpenAI reports mid-stream failures as a chunk holding only `error`
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamConnectionError(f"OpenAI stream failed: {message}", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            events.append(self._stream_start(chunk))
        choices = _list(chunk.get("choices", []), "choices")
        for i, choice in enumerate(choices):
            self._read_choice(_obj(choice, f"choices[{i}]"), f"choices[{i}]", events)
        if chunk.get("usage") is not None:
            self._usage = _parse_usage(chunk.get("usage"))
            if not choices and not self._usage_sent:  # OpenAI's closing usage chunk: nothing follows it
                self._usage_sent = True
                events.append(UsageReport(self._usage))
        return events

    def _stream_start(self, chunk: JSONObject) -> StreamStart:
        return StreamStart(
            id=_opt_str(chunk.get("id"), "id") or "",
            model=_opt_str(chunk.get("model"), "model") or "",
            created=_parse_created(chunk.get("created")),
        )

    def _read_choice(self, choice: JSONObject, path: str, events: list[StreamEvent]) -> None:
        if choice.get("index", 0) != 0:
            return  # we never ask for more than one choice
        delta = choice.get("delta")
        if delta is not None:
            delta = _obj(delta, f"{path}.delta")
            text = _opt_str(delta.get("content"), f"{path}.delta.content") or _opt_str(
                delta.get("refusal"), f"{path}.delta.refusal"
            )
            if text:
                events.append(TextDelta(text))
            calls = delta.get("tool_calls")
            if calls is not None:
                for k, call in enumerate(_list(calls, f"{path}.delta.tool_calls")):
                    call_path = f"{path}.delta.tool_calls[{k}]"
                    self._read_tool_call(_obj(call, call_path), call_path, events)
        reason = choice.get("finish_reason")
        if reason is not None and not self._finished:
            self._finished = True
            events.append(Finish(_parse_finish_reason(reason, has_tool_calls=bool(self._call_indices))))

    def _read_tool_call(self, call: JSONObject, path: str, events: list[StreamEvent]) -> None:
        raw_function = call.get("function")
        function = {} if raw_function is None else _obj(raw_function, f"{path}.function")
        call_id = _opt_str(call.get("id"), f"{path}.id")
        key = self._call_key(call.get("index"), call_id, path)
        index = self._call_indices.get(key)
        if index is None:
            index = self._call_indices[key] = len(self._call_indices)
            name = _opt_str(function.get("name"), f"{path}.function.name") or ""
            events.append(ToolCallStart(index, call_id or f"call_{index}", name))
        arguments = _opt_str(function.get("arguments"), f"{path}.function.arguments")
        if arguments:
            events.append(ToolCallDelta(index, arguments))

    def _call_key(self, raw_index: JSONValue, call_id: str | None, path: str) -> int | str:
        # Some compatible servers omit `index`: then a fragment with an id starts a call and one
        # without continues the latest.
        if raw_index is None:
            key: int | str = call_id if call_id is not None else self._last_call_key
        else:
            key = _opt_int(raw_index, f"{path}.index", minimum=0) or 0
        self._last_call_key = key
        return key


class StreamRenderer:
    """Renders canonical stream events as the `chat.completion.chunk` SSE frames OpenAI clients read.

    Usage goes in a final chunk with empty `choices`, after the finish chunk, as OpenAI sends it with
    `stream_options.include_usage`; a UsageReport that arrives before Finish is held until then.
    """

    __slots__ = ("_created", "_finished", "_id", "_include_usage", "_model", "_pending_usage")

    def __init__(self, model: str, *, include_usage: bool = True) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._finished = False
        self._pending_usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        """Frames for one canonical event (b"" when it has none of its own)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, ToolCallDelta):
            fragment: JSONValue = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [fragment]})
        if isinstance(event, ToolCallStart):
            function: JSONValue = {"name": event.name, "arguments": ""}
            start: JSONValue = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": function,
            }
            return self._chunk({"tool_calls": [start]})
        if isinstance(event, StreamStart):
            self._id, self._created = event.id, event.created
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, Finish):
            self._finished = True
            return self._chunk({}, _render_finish_reason(event.reason)) + self._flush_usage()
        self._pending_usage = event.usage
        return self._flush_usage() if self._finished else b""

    def close(self) -> bytes:
        """The usage chunk if it is still held, then OpenAI's `[DONE]` sentinel."""
        return self._flush_usage() + _DONE

    def _chunk(self, delta: JSONObject, finish_reason: str | None = None) -> bytes:
        choice: JSONObject = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._frame({"choices": [choice]})

    def _flush_usage(self) -> bytes:
        usage, self._pending_usage = self._pending_usage, None
        if usage is None or not self._include_usage:
            return b""
        return self._frame({"choices": [], "usage": _render_usage(usage)})

    def _frame(self, fields: JSONObject) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        return b"data: " + orjson.dumps(chunk | fields) + b"\n\n"


# --- Embeddings -----------------------------------------------------------------------------------------


def parse_embedding_request(body: JSONObject) -> EmbeddingRequest:
    """Validate a client's `/v1/embeddings` body; token-array inputs are refused (param "input")."""
    try:
        return _parse_embedding_request(_root(body))
    except _Malformed as exc:
        raise InvalidRequestError(exc.message, param=exc.path) from None


def _parse_embedding_request(body: JSONObject) -> EmbeddingRequest:
    embedding_encoding(body)
    return EmbeddingRequest(
        model=_str(body.get("model"), "model"),
        inputs=_parse_embedding_inputs(body.get("input")),
        dimensions=_opt_int(body.get("dimensions"), "dimensions", minimum=1),
        user=_opt_str(body.get("user"), "user"),
    )


def _parse_embedding_inputs(value: JSONValue) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    inputs = _list(value, "input")
    if not inputs:
        raise _Malformed("'input' must not be empty", "input")
    texts = tuple(item for item in inputs if isinstance(item, str))
    if len(texts) != len(inputs):
        # Token arrays would need the upstream's tokenizer to mean the same thing everywhere.
        raise _Malformed("'input' must be strings; token arrays are not supported", "input")
    return texts


def embedding_encoding(body: JSONObject) -> EmbeddingEncoding:
    """The `encoding_format` the client asked for; render the answer with it.

    The canonical request has no such field: the vectors are the same, only their spelling differs. The
    official SDK asks for "base64" unless told otherwise.
    """
    value = body.get("encoding_format")
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise InvalidRequestError("'encoding_format' must be float or base64", param="encoding_format")


def build_embedding_request(req: EmbeddingRequest) -> JSONObject:
    """Build the upstream `/v1/embeddings` body; always float vectors, which every server supports."""
    inputs: list[JSONValue] = list(req.inputs)
    body: JSONObject = {"model": req.model, "input": inputs, "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.user is not None:
        body["user"] = req.user
    return body


def parse_embedding_response(body: JSONObject) -> EmbeddingResponse:
    """Translate an upstream embeddings list, in input order; malformed is an UpstreamConnectionError."""
    try:
        return _parse_embedding_response(_root(body))
    except _Malformed as exc:
        raise _upstream_error(exc) from None


def _parse_embedding_response(body: JSONObject) -> EmbeddingResponse:
    indexed = []
    for i, raw in enumerate(_list(body.get("data"), "data")):
        item = _obj(raw, f"data[{i}]")
        index = _opt_int(item.get("index"), f"data[{i}].index", minimum=0)
        indexed.append(
            (i if index is None else index, _parse_vector(item.get("embedding"), f"data[{i}].embedding"))
        )
    indexed.sort(key=lambda pair: pair[0])
    return EmbeddingResponse(
        model=_opt_str(body.get("model"), "model") or "",
        vectors=tuple(vector for _, vector in indexed),
        usage=_parse_usage(body.get("usage")),
    )


def _parse_vector(value: JSONValue, path: str) -> tuple[float, ...]:
    if isinstance(value, str):  # base64 of little-endian float32, should an upstream answer that way
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise _Malformed(f"'{path}' is not valid base64", path) from None
        if len(raw) % 4:
            raise _Malformed(f"'{path}' is not a whole number of float32 values", path)
        return struct.unpack(f"<{len(raw) // 4}f", raw)
    numbers = _list(value, path)
    vector = tuple(float(x) for x in numbers if type(x) is float or type(x) is int)
    if len(vector) != len(numbers):
        raise _Malformed(f"'{path}' must be an array of numbers", path)
    return vector


def render_embedding_response(
    resp: EmbeddingResponse, *, encoding_format: EmbeddingEncoding = "float"
) -> JSONObject:
    """Render the `list` of embeddings OpenAI clients expect, as floats or base64 float32 as they asked."""
    data: list[JSONValue] = [
        {"object": "embedding", "index": i, "embedding": _render_vector(vector, encoding_format)}
        for i, vector in enumerate(resp.vectors)
    ]
    usage: JSONObject = {"prompt_tokens": resp.usage.input_tokens, "total_tokens": resp.usage.total_tokens}
    return {"object": "list", "data": data, "model": resp.model, "usage": usage}


def _render_vector(vector: tuple[float, ...], encoding_format: EmbeddingEncoding) -> JSONValue:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)
