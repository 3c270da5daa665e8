"""The OpenAI Chat Completions and Embeddings wire format, translated to and from the canonical types.

Both sides use it: `api/` parses a client's `/v1/chat/completions` body and renders the answer; the
`openai` and `openai-compatible` providers build their upstream bodies with it and parse the replies.

Where Chat Completions cannot carry a canonical feature, this module degrades as follows:

- Images are only allowed in user messages; image parts of system, assistant and tool messages are dropped.
- Tool results have no error flag (`Message.is_error`) and no function name; both are dropped on build.
  On parse, a tool message's `name` is recovered from the assistant tool call it answers (Gemini needs it).
- A canonical finish reason of "error" has no OpenAI equivalent and is rendered as "stop".
- Assistant replies are one string: several text parts are joined, images are dropped.
- `reasoning_effort` is `ChatRequest.reasoning` (a level, see docs/api.md for its budgets). It is built
  only for OpenAI reasoning models (o-series, gpt-5 and later, gpt-oss; other models refuse it), and
  left out when another format switched thinking off with a budget of 0. Chat Completions has no
  place for the model's reasoning itself: thinking from another provider is dropped from replies and
  streams (never mixed into `content`), and only its token count is reported, in
  `usage.completion_tokens_details.reasoning_tokens`.
- Request fields without a canonical home (`n`, penalties, logprobs, a tool's `strict` …) are ignored;
  `n` > 1 is refused, because we always answer with one choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, TypeAlias

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    JSONObject,
    JSONValue,
    Message,
    Part,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_list,
    as_object,
    as_str,
    field_path,
    get_gateway_options,
    get_list,
    get_object,
    get_opt_bool,
    get_opt_int,
    get_opt_list,
    get_opt_number,
    get_opt_object,
    get_opt_str,
    get_str,
    wrong,
)
from ferryman.wire._openai_reply import (
    PROVIDER,
    parse_created,
    parse_finish_reason,
    parse_usage,
    render_finish_reason,
    render_usage,
    upstream_error,
)
from ferryman.wire._reasoning import openai_effort, parse_effort
from ferryman.wire.openai_embeddings import (
    EmbeddingEncoding,
    build_embedding_request,
    embedding_encoding,
    parse_embedding_request,
    parse_embedding_response,
    render_embedding_response,
)
from ferryman.wire.openai_stream import StreamParser, StreamRenderer

__all__ = [
    "PROVIDER",
    "EmbeddingEncoding",
    "MaxTokensField",
    "StreamParser",
    "StreamRenderer",
    "build_chat_request",
    "build_embedding_request",
    "embedding_encoding",
    "parse_chat_request",
    "parse_chat_response",
    "parse_embedding_request",
    "parse_embedding_response",
    "render_chat_response",
    "render_embedding_response",
    "stream_usage_requested",
]

MaxTokensField: TypeAlias = Literal["max_completion_tokens", "max_tokens"]

_TEXT_ONLY = frozenset({"text"})
_USER_PARTS = frozenset({"text", "image_url"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})
_TOOL_CHOICE_MODES: Mapping[str, ToolChoiceMode] = MappingProxyType(
    {"auto": "auto", "none": "none", "required": "required"}
)


# --- Chat request: client body -> canonical ---------------------------------------------------------


def parse_chat_request(body: JSONObject) -> ChatRequest:
    """Validate a client's Chat Completions body; any problem is an InvalidRequestError naming the field."""
    try:
        return _parse_chat_request(as_body(body))
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def _parse_chat_request(body: JSONObject) -> ChatRequest:
    n = get_opt_int(body, "n", minimum=1, whole_floats=True)
    if n is not None and n > 1:
        raise Malformed("n", "greater than 1 is not supported: the gateway returns one choice")
    completion_tokens = get_opt_int(body, "max_completion_tokens", minimum=1, whole_floats=True)
    legacy_tokens = get_opt_int(body, "max_tokens", minimum=1, whole_floats=True)
    _parse_stream_options(body)
    fallbacks, timeout = get_gateway_options(body)
    return ChatRequest(
        model=get_str(body, "model"),
        messages=_parse_messages(get_list(body, "messages")),
        max_tokens=completion_tokens if completion_tokens is not None else legacy_tokens,
        temperature=get_opt_number(body, "temperature", low=0.0, high=2.0),
        top_p=get_opt_number(body, "top_p", low=0.0, high=1.0),
        stop=_parse_stop(body),
        tools=_parse_tools(body),
        tool_choice=_parse_tool_choice(body),
        parallel_tool_calls=get_opt_bool(body, "parallel_tool_calls"),
        response_format=_parse_response_format(body),
        stream=get_opt_bool(body, "stream") or False,
        user=get_opt_str(body, "user"),
        seed=get_opt_int(body, "seed", whole_floats=True),
        reasoning=_parse_reasoning_effort(body),
        fallbacks=fallbacks,
        timeout=timeout,
    )


def _parse_reasoning_effort(body: JSONObject) -> Reasoning | None:
    effort = parse_effort(body.get("reasoning_effort"), "reasoning_effort")
    return None if effort is None else Reasoning(effort=effort)


def _parse_messages(raw_messages: list[JSONValue]) -> tuple[Message, ...]:
    if not raw_messages:
        raise Malformed("messages", "must contain at least one message")
    # Tool results name no function in this format; remember each call's name to fill `Message.name`.
    names_by_call_id: dict[str, str] = {}
    messages = []
    for i, raw in enumerate(raw_messages):
        path = f"messages[{i}]"
        message = _parse_message(as_object(raw, path), path, names_by_call_id)
        names_by_call_id.update((call.id, call.name) for call in message.tool_calls)
        messages.append(message)
    return tuple(messages)


def _parse_message(raw: JSONObject, path: str, names_by_call_id: dict[str, str]) -> Message:
    role = raw.get("role")
    if role == "user":
        return Message("user", _parse_content(raw, path, _USER_PARTS))
    if role == "system" or role == "developer":
        return Message("system", _parse_content(raw, path, _TEXT_ONLY))
    if role == "assistant":
        parts = _parse_content(raw, path, _ASSISTANT_PARTS, nullable=True)
        return Message("assistant", parts, tool_calls=_parse_tool_calls(raw, path))
    if role == "tool":
        call_id = get_str(raw, "tool_call_id", path)
        parts = _parse_content(raw, path, _TEXT_ONLY)
        name = names_by_call_id.get(call_id) or get_opt_str(raw, "name", path)
        return Message("tool", parts, tool_call_id=call_id, name=name)
    if role is None:
        raise Malformed(f"{path}.role", "is required")
    raise Malformed(f"{path}.role", "must be system, developer, user, assistant or tool")


def _parse_content(
    message: JSONObject, path: str, allowed: frozenset[str], *, nullable: bool = False
) -> tuple[Part, ...]:
    value = message.get("content")
    if isinstance(value, str):
        return (TextPart(value),) if value else ()
    if value is None and nullable:
        return ()
    if not isinstance(value, list):
        raise wrong(value, f"{path}.content", "a string or an array of content parts")
    return tuple(
        _parse_part(as_object(item, f"{path}.content[{j}]"), f"{path}.content[{j}]", allowed)
        for j, item in enumerate(value)
    )


def _parse_part(part: JSONObject, path: str, allowed: frozenset[str]) -> Part:
    kind = part.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        expected = " or ".join(sorted(allowed))
        raise Malformed(f"{path}.type", f"must be {expected} in this message")
    if kind == "text":
        return TextPart(get_str(part, "text", path))
    if kind == "refusal":
        return TextPart(get_str(part, "refusal", path))
    image = part.get("image_url")
    if isinstance(image, str):  # the early vision preview sent the URL bare
        return ImagePart(image)
    image = get_object(part, "image_url", path)
    image_path = f"{path}.image_url"
    return ImagePart(url=get_str(image, "url", image_path), detail=get_opt_str(image, "detail", image_path))


def _parse_tool_calls(message: JSONObject, path: str) -> tuple[ToolCall, ...]:
    calls = get_opt_list(message, "tool_calls", path)
    if calls is None:
        return ()
    prefix = field_path(path, "tool_calls")
    return tuple(
        _parse_tool_call(as_object(c, f"{prefix}[{k}]"), f"{prefix}[{k}]") for k, c in enumerate(calls)
    )


def _parse_tool_call(raw: JSONObject, path: str) -> ToolCall:
    kind = raw.get("type")
    if kind is not None and kind != "function":
        raise Malformed(f"{path}.type", "must be function")
    function = get_object(raw, "function", path)
    return ToolCall(
        id=get_str(raw, "id", path),
        name=get_str(function, "name", f"{path}.function"),
        arguments=get_str(function, "arguments", f"{path}.function"),
    )


def _parse_stop(body: JSONObject) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(as_str(s, f"stop[{i}]") for i, s in enumerate(as_list(value, "stop")))


def _parse_tools(body: JSONObject) -> tuple[Tool, ...]:
    tools = []
    for i, raw in enumerate(get_opt_list(body, "tools") or ()):
        path = f"tools[{i}]"
        tool = as_object(raw, path)
        if get_str(tool, "type", path) != "function":
            continue  # hosted tools (web search, custom …) have no canonical form
        tools.append(_parse_function(get_object(tool, "function", path), f"{path}.function"))
    return tuple(tools)


def _parse_function(function: JSONObject, path: str) -> Tool:
    get_opt_bool(function, "strict", path)  # validated, then dropped: no canonical home
    return Tool(
        name=get_str(function, "name", path),
        description=get_opt_str(function, "description", path),
        parameters=get_opt_object(function, "parameters", path),
    )


def _parse_tool_choice(body: JSONObject) -> ToolChoice | None:
    value = body.get("tool_choice")
    if value is None:
        return None
    if isinstance(value, str):
        mode = _TOOL_CHOICE_MODES.get(value)
        if mode is None:
            raise Malformed("tool_choice", "must be auto, none, required or a function")
        return ToolChoice(mode=mode)
    choice = as_object(value, "tool_choice")
    if choice.get("type") != "function":
        raise Malformed("tool_choice.type", "must be function")
    function = get_object(choice, "function", "tool_choice")
    return ToolChoice(mode="required", name=get_str(function, "name", "tool_choice.function"))


def _parse_response_format(body: JSONObject) -> ResponseFormat | None:
    response_format = get_opt_object(body, "response_format")
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return ResponseFormat(type="text")
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise Malformed("response_format.type", "must be text, json_object or json_schema")
    spec = get_object(response_format, "json_schema", "response_format")
    return ResponseFormat(
        type="json_schema",
        name=get_str(spec, "name", "response_format.json_schema"),
        schema=get_opt_object(spec, "schema", "response_format.json_schema"),
        strict=get_opt_bool(spec, "strict", "response_format.json_schema"),
    )


def _parse_stream_options(body: JSONObject) -> None:
    options = get_opt_object(body, "stream_options")
    if options is not None:
        get_opt_bool(options, "include_usage", "stream_options")


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
    effort = openai_effort(req.reasoning, req.model)
    if effort is not None:
        body["reasoning_effort"] = effort
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
        return _parse_chat_response(as_body(body))
    except Malformed as exc:
        raise upstream_error(exc) from None


def _parse_chat_response(body: JSONObject) -> ChatResponse:
    choices = get_list(body, "choices")
    if not choices:
        raise Malformed("choices", "is empty")
    choice = as_object(choices[0], "choices[0]")
    raw_message = get_object(choice, "message", "choices[0]")
    # A refusal arrives instead of content; pass it on as text so the client sees why.
    text = get_opt_str(raw_message, "content", "choices[0].message") or get_opt_str(
        raw_message, "refusal", "choices[0].message"
    )
    calls = _parse_tool_calls(raw_message, "choices[0].message")
    return ChatResponse(
        id=get_opt_str(body, "id") or "",
        model=get_opt_str(body, "model") or "",
        message=Message("assistant", (TextPart(text),) if text else (), tool_calls=calls),
        finish_reason=parse_finish_reason(choice.get("finish_reason"), has_tool_calls=bool(calls)),
        usage=parse_usage(body),
        created=parse_created(body),
    )


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
        "finish_reason": render_finish_reason(resp.finish_reason),
    }
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [choice],
        "usage": render_usage(resp.usage),
    }
