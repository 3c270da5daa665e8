"""The Anthropic Messages API wire format, translated to and from the canonical types.

Both sides use it: `api/` parses a client's `/v1/messages` body and renders the answer (and its SSE
stream); the `anthropic` provider builds its upstream body with it and parses the replies.

Where the Messages API cannot carry a canonical feature, this module degrades as follows:

- There is one `system` field: every canonical system message, leading or not, is folded into it in
  order, joined with blank lines. A system given as a list of text blocks parses to one system message
  per block (`cache_control` and other block options are dropped); `role: "system"` turns inside
  `messages` (which newer API versions accept) parse to system messages where they stand.
- Tool results live inside user turns and turns must alternate, so on build consecutive tool and user
  messages merge into one user turn (tool results first) and consecutive assistant messages merge.
  On parse the other way round: each `tool_result` block becomes its own `Message(role="tool")`, whose
  `name` is recovered from the `tool_use` it answers (Gemini needs it).
- Tool-call arguments that are not a JSON object travel as `input: {}`: the upstream rejects anything
  but an object, and the call's other fields are still worth keeping.
- There is no `response_format`: JSON mode becomes an instruction appended to the system prompt (with
  the schema for `json_schema`). There is no `seed`: it is dropped.
- `temperature` is clamped to Anthropic's range [0, 1] (OpenAI clients may send up to 2). When both
  `temperature` and `top_p` are set, only `temperature` is sent: current Claude models refuse the pair.
- Empty text parts are dropped on build (the upstream rejects empty text blocks); images in assistant
  messages are dropped (assistant turns cannot hold images); `detail` on images is dropped.
- Blocks with no canonical form are skipped where they are model output (thinking, server tool use and
  results) and refused where they are client input (documents, unknown block types). Server tools
  (those without `input_schema`) are skipped: only the client can run tools here.
- Anthropic replies carry no creation time (`created` is 0) and a canonical finish reason of "error"
  renders as `end_turn`; `stop` always renders as `end_turn`, never `stop_sequence`.
"""

from __future__ import annotations

import json
import uuid

import orjson

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
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
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError, UpstreamStatusError

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; this is sent when the canonical request has none."""

_SKIPPED_OUTPUT_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
    }
)
_JSON_ONLY = "Respond with a single valid JSON object and nothing else: no prose, no code fences."


class _Malformed(Exception):
    """A field is missing or mistyped; `path` names it. Each public entry point maps it to its own error."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# --- Typed field access --------------------------------------------------------------------------
# Paths are only formatted when something is wrong, so valid bodies pay for one isinstance per field.


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _json_type(value: JSONValue) -> str:
    """Name a JSON value's type the way an API user would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _wrong(obj: JSONObject, key: str, prefix: str, expected: str) -> _Malformed:
    path = _path(prefix, key)
    if key not in obj:
        return _Malformed(path, f"{path}: required field is missing")
    return _Malformed(path, f"{path}: expected {expected}, got {_json_type(obj[key])}")


def _str(obj: JSONObject, key: str, prefix: str = "") -> str:
    value = obj.get(key)
    if isinstance(value, str):
        return value
    raise _wrong(obj, key, prefix, "a string")


def _opt_str(obj: JSONObject, key: str, prefix: str = "") -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _wrong(obj, key, prefix, "a string")


def _int(obj: JSONObject, key: str, prefix: str = "") -> int:
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _wrong(obj, key, prefix, "an integer")


def _count(obj: JSONObject, key: str, prefix: str) -> int:
    """A token count: absent or null counts as 0."""
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _wrong(obj, key, prefix, "an integer")


def _opt_number(obj: JSONObject, key: str, prefix: str = "") -> float | None:
    value = obj.get(key)
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    raise _wrong(obj, key, prefix, "a number")


def _opt_bool(obj: JSONObject, key: str, prefix: str = "") -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong(obj, key, prefix, "a boolean")


def _list(obj: JSONObject, key: str, prefix: str = "") -> list[JSONValue]:
    value = obj.get(key)
    if isinstance(value, list):
        return value
    raise _wrong(obj, key, prefix, "an array")


def _opt_list(obj: JSONObject, key: str, prefix: str = "") -> list[JSONValue] | None:
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise _wrong(obj, key, prefix, "an array")


def _object(obj: JSONObject, key: str, prefix: str = "") -> JSONObject:
    value = obj.get(key)
    if isinstance(value, dict):
        return value
    raise _wrong(obj, key, prefix, "an object")


def _opt_object(obj: JSONObject, key: str, prefix: str = "") -> JSONObject | None:
    value = obj.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _wrong(obj, key, prefix, "an object")


def _item(value: JSONValue, path: str) -> JSONObject:
    """An array element that must be an object."""
    if isinstance(value, dict):
        return value
    raise _Malformed(path, f"{path}: expected an object, got {_json_type(value)}")


def _dump_json(value: JSONValue) -> str:
    """Compact JSON text; orjson for speed, the stdlib for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _load_arguments(arguments: str) -> JSONObject:
    """Tool-call arguments as the object Anthropic's `input` must be; anything else becomes `{}`."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# --- Requests: ingress ---------------------------------------------------------------------------


def parse_chat_request(body: JSONObject) -> ChatRequest:
    """Validate a client's Messages API body into a canonical request; unknown fields are ignored.

    Raises InvalidRequestError whose `param` names the offending field, and nothing else, on any JSON.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return _parse_request(body)
    except _Malformed as exc:
        raise InvalidRequestError(exc.message, param=exc.path) from exc


def _parse_request(body: JSONObject) -> ChatRequest:
    model = _str(body, "model")
    max_tokens = _int(body, "max_tokens")
    if max_tokens < 1:
        raise _Malformed("max_tokens", "max_tokens: must be at least 1")
    messages = _parse_system(body.get("system")) + _parse_messages(_list(body, "messages"))
    tool_choice, parallel_tool_calls = _parse_tool_choice(_opt_object(body, "tool_choice"))
    metadata = _opt_object(body, "metadata")
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=_opt_number(body, "temperature"),
        top_p=_opt_number(body, "top_p"),
        stop=_parse_stop(_opt_list(body, "stop_sequences")),
        tools=_parse_tools(_opt_list(body, "tools")),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        stream=_opt_bool(body, "stream") or False,
        user=_opt_str(metadata, "user_id", "metadata") if metadata else None,
    )


def _parse_system(system: JSONValue) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(role="system", parts=(TextPart(system),))]
    if not isinstance(system, list):
        raise _Malformed("system", f"system: expected a string or an array, got {_json_type(system)}")
    return [Message(role="system", parts=(part,)) for part in _parse_text_blocks(system, "system")]


def _parse_text_blocks(items: list[JSONValue], path: str) -> list[TextPart]:
    """System content, which may hold text blocks only."""
    parts = []
    for i, item in enumerate(items):
        block_path = f"{path}[{i}]"
        block = _item(item, block_path)
        if block.get("type") != "text":
            raise _Malformed(
                f"{block_path}.type", f"{block_path}.type: system content takes only text blocks"
            )
        parts.append(TextPart(_str(block, "text", block_path)))
    return parts


def _parse_messages(items: list[JSONValue]) -> list[Message]:
    tool_names: dict[str, str] = {}
    messages: list[Message] = []
    for i, item in enumerate(items):
        prefix = f"messages[{i}]"
        entry = _item(item, prefix)
        role = _str(entry, "role", prefix)
        if role not in ("user", "assistant", "system"):
            raise _Malformed(
                f"{prefix}.role", f"{prefix}.role: must be 'user', 'assistant' or 'system', got {role!r}"
            )
        content = entry.get("content")
        if not isinstance(content, str | list):
            raise _wrong(entry, "content", prefix, "a string or an array of content blocks")
        if role == "user":
            messages.extend(_parse_user_turn(content, prefix, tool_names))
            continue
        if role == "system":  # newer API versions accept system turns among the messages
            parts = (
                [TextPart(content)]
                if isinstance(content, str)
                else _parse_text_blocks(content, f"{prefix}.content")
            )
            messages.append(Message(role="system", parts=tuple(parts)))
            continue
        message = _parse_assistant_content(content, f"{prefix}.content")
        tool_names.update((call.id, call.name) for call in message.tool_calls)
        messages.append(message)
    return messages


def _parse_user_turn(
    content: str | list[JSONValue], prefix: str, tool_names: dict[str, str]
) -> list[Message]:
    """One Anthropic user turn: its tool results become tool messages, the rest user messages, in order."""
    if isinstance(content, str):
        return [Message(role="user", parts=(TextPart(content),))]
    messages: list[Message] = []
    parts: list[Part] = []
    for j, item in enumerate(content):
        path = f"{prefix}.content[{j}]"
        block = _item(item, path)
        if block.get("type") != "tool_result":
            parts.append(_parse_part(block, path))
            continue
        if parts:
            messages.append(Message(role="user", parts=tuple(parts)))
            parts = []
        messages.append(_parse_tool_result(block, path, tool_names))
    if parts or not messages:
        messages.append(Message(role="user", parts=tuple(parts)))
    return messages


def _parse_part(block: JSONObject, path: str) -> Part:
    kind = _str(block, "type", path)
    if kind == "text":
        return TextPart(_str(block, "text", path))
    if kind == "image":
        return _parse_image(_object(block, "source", path), f"{path}.source")
    raise _Malformed(f"{path}.type", f"{path}.type: unsupported content block type {kind!r}")


def _parse_image(source: JSONObject, path: str) -> ImagePart:
    kind = _str(source, "type", path)
    if kind == "base64":
        return ImagePart(f"data:{_str(source, 'media_type', path)};base64,{_str(source, 'data', path)}")
    if kind == "url":
        return ImagePart(_str(source, "url", path))
    raise _Malformed(f"{path}.type", f"{path}.type: unsupported image source {kind!r} (use base64 or url)")


def _parse_tool_result(block: JSONObject, path: str, tool_names: dict[str, str]) -> Message:
    call_id = _str(block, "tool_use_id", path)
    content = block.get("content")
    if content is None:
        parts: tuple[Part, ...] = ()
    elif isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, list):
        parts = tuple(
            _parse_part(_item(b, f"{path}.content[{k}]"), f"{path}.content[{k}]")
            for k, b in enumerate(content)
        )
    else:
        raise _wrong(block, "content", path, "a string or an array of content blocks")
    return Message(
        role="tool",
        parts=parts,
        tool_call_id=call_id,
        name=tool_names.get(call_id),
        is_error=_opt_bool(block, "is_error", path) or False,
    )


def _parse_assistant_content(content: str | list[JSONValue], path: str) -> Message:
    """Assistant content (a request's history or an upstream reply): text parts and tool calls."""
    if isinstance(content, str):
        return Message(role="assistant", parts=(TextPart(content),))
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for j, item in enumerate(content):
        block_path = f"{path}[{j}]"
        block = _item(item, block_path)
        kind = _str(block, "type", block_path)
        if kind == "text":
            parts.append(TextPart(_str(block, "text", block_path)))
        elif kind == "tool_use":
            arguments = _dump_json(_object(block, "input", block_path))
            calls.append(ToolCall(_str(block, "id", block_path), _str(block, "name", block_path), arguments))
        elif kind not in _SKIPPED_OUTPUT_BLOCKS:
            raise _Malformed(
                f"{block_path}.type", f"{block_path}.type: unsupported content block type {kind!r}"
            )
    return Message(role="assistant", parts=tuple(parts), tool_calls=tuple(calls))


def _parse_tools(items: list[JSONValue] | None) -> tuple[Tool, ...]:
    if not items:
        return ()
    tools = []
    for i, item in enumerate(items):
        path = f"tools[{i}]"
        spec = _item(item, path)
        if spec.get("input_schema") is None:
            continue  # a server tool (web search, code execution …): only Anthropic itself can run those
        tools.append(
            Tool(
                name=_str(spec, "name", path),
                description=_opt_str(spec, "description", path),
                parameters=_object(spec, "input_schema", path),
            )
        )
    return tuple(tools)


def _parse_tool_choice(choice: JSONObject | None) -> tuple[ToolChoice | None, bool | None]:
    """Anthropic's tool_choice also carries the parallel-calls switch, returned second."""
    if choice is None:
        return None, None
    disable_parallel = _opt_bool(choice, "disable_parallel_tool_use", "tool_choice")
    parallel = None if disable_parallel is None else not disable_parallel
    match _str(choice, "type", "tool_choice"):
        case "auto":
            return ToolChoice("auto"), parallel
        case "any":
            return ToolChoice("required"), parallel
        case "tool":
            return ToolChoice("required", _str(choice, "name", "tool_choice")), parallel
        case "none":
            return ToolChoice("none"), parallel
        case other:
            raise _Malformed("tool_choice.type", f"tool_choice.type: unknown tool choice {other!r}")


def _parse_stop(items: list[JSONValue] | None) -> tuple[str, ...]:
    if not items:
        return ()
    stop = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _Malformed(f"stop_sequences[{i}]", f"stop_sequences[{i}]: expected a string")
        stop.append(item)
    return tuple(stop)


# --- Requests: egress ----------------------------------------------------------------------------


def build_chat_request(req: ChatRequest) -> JSONObject:
    """The Messages API body for `req`; Anthropic streams always carry usage, so nothing extra is asked."""
    body: JSONObject = {
        "model": req.model,
        "max_tokens": req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": _build_turns(req.messages),
    }
    system = _build_system(req.messages, req.response_format)
    if system:
        body["system"] = system
    if req.temperature is not None:
        body["temperature"] = min(max(req.temperature, 0.0), 1.0)
    elif req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.tools:  # Anthropic refuses a tool_choice without tools
        body["tools"] = [_build_tool(tool) for tool in req.tools]
        choice = _build_tool_choice(req.tool_choice, req.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.stream:
        body["stream"] = True
    return body


def _build_system(messages: tuple[Message, ...], response_format: ResponseFormat | None) -> str:
    texts = [message.text for message in messages if message.role == "system"]
    texts.append(_json_mode_instruction(response_format))
    return "\n\n".join(text for text in texts if text)


def _json_mode_instruction(response_format: ResponseFormat | None) -> str:
    """JSON mode as a system-prompt instruction: the base Messages API has no `response_format`."""
    if response_format is None or response_format.type == "text":
        return ""
    if response_format.schema is None:
        return _JSON_ONLY
    return f"{_JSON_ONLY} It must conform to this JSON Schema:\n{_dump_json(response_format.schema)}"


def _build_turns(messages: tuple[Message, ...]) -> list[JSONValue]:
    """Alternating user / assistant turns; tool results ride in user turns, same-role runs merge."""
    turns: list[JSONValue] = []
    role = ""
    blocks: list[JSONObject] = []
    for message in messages:
        if message.role == "system":
            continue
        message_role = "assistant" if message.role == "assistant" else "user"
        if message_role != role:
            if role:
                turns.append(_build_turn(role, blocks))
            role, blocks = message_role, []
        blocks.extend(_build_blocks(message))
    if role:
        turns.append(_build_turn(role, blocks))
    return turns


def _build_turn(role: str, blocks: list[JSONObject]) -> JSONObject:
    if role == "user":  # Anthropic wants a turn's tool results before anything else in it
        blocks.sort(key=lambda block: block["type"] != "tool_result")
    return {"role": role, "content": _collapse(blocks)}


def _collapse(blocks: list[JSONObject]) -> JSONValue:
    """A lone text block is sent as a plain string, the form clients and the reference use most."""
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return blocks[0]["text"]
    return [*blocks]


def _build_blocks(message: Message) -> list[JSONObject]:
    if message.role == "tool":
        return [_build_tool_result(message)]
    if message.role == "user":
        return _build_parts(message.parts)
    blocks: list[JSONObject] = [
        {"type": "text", "text": p.text} for p in message.parts if isinstance(p, TextPart) and p.text
    ]
    blocks.extend(_build_tool_use(call) for call in message.tool_calls)
    return blocks


def _build_parts(parts: tuple[Part, ...]) -> list[JSONObject]:
    blocks: list[JSONObject] = []
    for part in parts:
        if isinstance(part, ImagePart):
            blocks.append(_build_image(part))
        elif part.text:
            blocks.append({"type": "text", "text": part.text})
    return blocks


def _build_image(image: ImagePart) -> JSONObject:
    if image.is_data_url:
        media_type, data = image.split_data_url()
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": image.url}}


def _build_tool_result(message: Message) -> JSONObject:
    block: JSONObject = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
    content = _build_parts(message.parts)
    if content:
        block["content"] = _collapse(content)
    if message.is_error:
        block["is_error"] = True
    return block


def _build_tool_use(call: ToolCall) -> JSONObject:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": _load_arguments(call.arguments)}


def _build_tool(tool: Tool) -> JSONObject:
    spec: JSONObject = {"name": tool.name}
    if tool.description is not None:
        spec["description"] = tool.description
    spec["input_schema"] = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    return spec


def _build_tool_choice(choice: ToolChoice | None, parallel: bool | None) -> JSONObject | None:
    if choice is None and parallel is None:
        return None
    mode = choice.mode if choice is not None else "auto"
    if mode == "none":
        return {"type": "none"}  # takes no parallel switch: no tool will be called at all
    if mode == "required":
        name = choice.name if choice is not None else None
        spec: JSONObject = {"type": "tool", "name": name} if name else {"type": "any"}
    else:
        spec = {"type": "auto"}
    if parallel is not None:
        spec["disable_parallel_tool_use"] = not parallel
    return spec


# --- Responses -----------------------------------------------------------------------------------


def parse_chat_response(body: JSONObject) -> ChatResponse:
    """An upstream Messages API reply as a canonical response; malformed replies are connection errors."""
    if not isinstance(body, dict):
        raise UpstreamConnectionError("Anthropic reply is not a JSON object", provider=PROVIDER)
    try:
        return ChatResponse(
            id=_str(body, "id"),
            model=_str(body, "model"),
            message=_parse_assistant_content(_list(body, "content"), "content"),
            finish_reason=_finish_reason(_opt_str(body, "stop_reason")),
            usage=_parse_usage(_object(body, "usage"), "usage"),
        )
    except _Malformed as exc:
        raise UpstreamConnectionError(f"malformed Anthropic reply: {exc.message}", provider=PROVIDER) from exc


def _finish_reason(stop_reason: str | None) -> FinishReason:
    match stop_reason:
        case "max_tokens" | "model_context_window_exceeded":
            return "length"
        case "tool_use":
            return "tool_calls"
        case "refusal":
            return "content_filter"
        case _:  # end_turn, stop_sequence, pause_turn, and reasons added after this was written
            return "stop"


def _stop_reason(finish_reason: FinishReason) -> str:
    match finish_reason:
        case "length":
            return "max_tokens"
        case "tool_calls":
            return "tool_use"
        case "content_filter":
            return "refusal"
        case _:
            return "end_turn"


def _parse_usage(usage: JSONObject, path: str) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`; canonical input includes them."""
    cache_read = _count(usage, "cache_read_input_tokens", path)
    cache_creation = _count(usage, "cache_creation_input_tokens", path)
    return Usage(
        input_tokens=_count(usage, "input_tokens", path) + cache_read + cache_creation,
        output_tokens=_count(usage, "output_tokens", path),
        cached_tokens=cache_read,
    )


def _render_usage(usage: Usage) -> JSONObject:
    return {
        "input_tokens": max(usage.input_tokens - usage.cached_tokens, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def render_chat_response(resp: ChatResponse) -> JSONObject:
    """The Message body an Anthropic client expects; image parts are dropped (replies hold no images)."""
    content: list[JSONValue] = [
        {"type": "text", "text": p.text} for p in resp.message.parts if isinstance(p, TextPart)
    ]
    content.extend(_build_tool_use(call) for call in resp.message.tool_calls)
    return {
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": _stop_reason(resp.finish_reason),
        "stop_sequence": None,
        "usage": _render_usage(resp.usage),
    }


# --- Streams -------------------------------------------------------------------------------------


class StreamParser:
    """Turns one upstream stream's named SSE events into canonical stream events.

    Anthropic numbers content blocks (text and tool use alike) while canonical tool calls count from 0,
    and splits usage between `message_start` (input) and `message_delta` (output): both need state.
    """

    __slots__ = ("_finished", "_started", "_tool_blocks", "_usage", "_usage_sent", "_with_args")

    def __init__(self) -> None:
        self._started = False
        self._finished = False
        self._usage: JSONObject | None = None
        self._usage_sent = False
        self._tool_blocks: dict[int, int] = {}  # Anthropic block index -> canonical tool-call index
        self._with_args: set[int] = set()  # tool blocks that have streamed some arguments

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Translate one SSE event; raises UpstreamStatusError on an `error` event."""
        if not isinstance(data, dict):
            raise UpstreamConnectionError("Anthropic stream event is not a JSON object", provider=PROVIDER)
        try:
            return self._dispatch(data.get("type", event), data)
        except _Malformed as exc:
            raise _malformed_stream(exc) from exc

    def finish(self) -> list[StreamEvent]:
        """What is still owed when the upstream stream ends: Finish, and usage not yet reported."""
        if not self._started:
            raise UpstreamConnectionError("Anthropic stream ended before message_start", provider=PROVIDER)
        try:
            return self._settle()
        except _Malformed as exc:  # usage counts are only checked once they are all in
            raise _malformed_stream(exc) from exc

    def _dispatch(self, kind: JSONValue, data: JSONObject) -> list[StreamEvent]:
        match kind:
            case "message_start":
                return self._on_message_start(_object(data, "message"))
            case "error":
                raise _stream_error(data)
            case (
                "content_block_start"
                | "content_block_delta"
                | "content_block_stop"
                | "message_delta"
                | "message_stop"
            ) if not self._started:
                raise _Malformed("type", f"type: {kind} before message_start")
            case "content_block_delta":
                return self._on_block_delta(_int(data, "index"), _object(data, "delta"))
            case "content_block_start":
                return self._on_block_start(_int(data, "index"), _object(data, "content_block"))
            case "content_block_stop":
                return self._on_block_stop(_int(data, "index"))
            case "message_delta":
                return self._on_message_delta(data)
            case "message_stop":
                return self._settle()
            case _:
                return []  # ping, and event types added after this was written

    def _on_message_start(self, message: JSONObject) -> list[StreamEvent]:
        start = StreamStart(id=_str(message, "id", "message"), model=_str(message, "model", "message"))
        usage = _opt_object(message, "usage", "message")
        if self._started:
            return []
        self._started = True
        if usage is not None:
            self._usage = dict(usage)
        return [start]

    def _on_block_start(self, index: int, block: JSONObject) -> list[StreamEvent]:
        kind = _str(block, "type", "content_block")
        if kind == "text":
            text = _opt_str(block, "text", "content_block")
            return [TextDelta(text)] if text else []
        if kind != "tool_use":
            return []  # thinking and server tool blocks have no canonical form
        tool_index = len(self._tool_blocks)
        start = ToolCallStart(
            tool_index, _str(block, "id", "content_block"), _str(block, "name", "content_block")
        )
        self._tool_blocks[index] = tool_index
        initial = block.get("input")
        if isinstance(initial, dict) and initial:  # Anthropic sends {} here; a full input is taken whole
            self._with_args.add(index)
            return [start, ToolCallDelta(tool_index, _dump_json(initial))]
        return [start]

    def _on_block_delta(self, index: int, delta: JSONObject) -> list[StreamEvent]:
        kind = _str(delta, "type", "delta")
        if kind == "text_delta":
            text = _str(delta, "text", "delta")
            return [TextDelta(text)] if text else []
        if kind != "input_json_delta":
            return []  # thinking, signature and citation deltas have no canonical form
        fragment = _str(delta, "partial_json", "delta")
        tool_index = self._tool_blocks.get(index)
        if tool_index is None or not fragment:  # a server tool's input, or the usual empty first fragment
            return []
        self._with_args.add(index)
        return [ToolCallDelta(tool_index, fragment)]

    def _on_block_stop(self, index: int) -> list[StreamEvent]:
        tool_index = self._tool_blocks.get(index)
        if tool_index is None or index in self._with_args:
            return []
        self._with_args.add(index)
        # A call without parameters streams no fragment; canonical arguments must still be a JSON object.
        return [ToolCallDelta(tool_index, "{}")]

    def _on_message_delta(self, data: JSONObject) -> list[StreamEvent]:
        delta = _opt_object(data, "delta") or {}
        stop_reason = _opt_str(delta, "stop_reason", "delta")
        usage = _opt_object(data, "usage")
        events: list[StreamEvent] = []
        if stop_reason is not None and not self._finished:
            self._finished = True
            events.append(Finish(_finish_reason(stop_reason)))
        if usage is not None:
            # message_delta counts are cumulative and win; fields it omits keep their message_start value
            self._usage = {**(self._usage or {}), **{k: v for k, v in usage.items() if v is not None}}
            events.extend(self._owed_usage())
        return events

    def _settle(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("stop"))
        events.extend(self._owed_usage())
        return events

    def _owed_usage(self) -> list[StreamEvent]:
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [UsageReport(_parse_usage(self._usage, "usage"))]


def _malformed_stream(exc: _Malformed) -> UpstreamConnectionError:
    return UpstreamConnectionError(f"malformed Anthropic stream event: {exc.message}", provider=PROVIDER)


def _stream_error(data: JSONObject) -> UpstreamStatusError:
    """An in-stream `error` event; Anthropic's `overloaded_error` is its HTTP 529."""
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    detail = error.get("message") if isinstance(error, dict) else None
    message = (
        f"Anthropic stream error ({kind}): {detail}" if isinstance(detail, str) else "Anthropic stream error"
    )
    status = 529 if kind == "overloaded_error" else 500
    return UpstreamStatusError(message, provider=PROVIDER, upstream_status=status)


def _frame(name: bytes, payload: JSONObject) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class StreamRenderer:
    """Renders canonical stream events as the Messages API SSE sequence the `anthropic` SDK accumulates.

    Anthropic streams content blocks one at a time; a new text or tool call closes the open block. If a
    source interleaves the argument fragments of parallel calls, a late fragment is sent to its (already
    stopped) block's index, where the SDK still accumulates it. `message_delta` must carry both the stop
    reason and the usage, so whichever of Finish and UsageReport comes first waits for the other, or
    for close().
    """

    __slots__ = (
        "_ended",
        "_model",
        "_next_block",
        "_open_block",
        "_reason",
        "_started",
        "_text_open",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._ended = False
        self._next_block = 0
        self._open_block: int | None = None
        self._text_open = False
        self._tool_blocks: dict[int, int] = {}  # canonical tool-call index -> Anthropic block index
        self._reason: FinishReason | None = None
        self._usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        """Zero or more complete SSE frames for `event` (b"" once the message has ended)."""
        if self._ended:
            return b""
        if isinstance(event, TextDelta):
            return self._render_text(event.text)
        if isinstance(event, ToolCallDelta):
            return self._render_arguments(event)
        if isinstance(event, ToolCallStart):
            return self._render_tool_start(event)
        if isinstance(event, StreamStart):
            return self._render_start(event.id)
        if isinstance(event, Finish):
            self._reason = event.reason
            return self._close_block() + self._end_when_complete()
        self._usage = event.usage
        return self._end_when_complete()

    def close(self) -> bytes:
        """Ends the message if Finish or usage never came: Anthropic clients wait for message_stop."""
        if self._ended:
            return b""
        return self._close_block() + self._render_end()

    def _render_start(self, message_id: str | None) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: JSONObject = {
            "id": message_id or f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # the real counts are only known at the end; they travel in message_delta, which the SDK trusts
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame(b"message_start", {"type": "message_start", "message": message})

    def _render_text(self, text: str) -> bytes:
        if not text:
            return b""
        frames = b""
        if not self._text_open:
            frames = self._render_start(None) + self._open(True, {"type": "text", "text": ""})
        delta: JSONObject = {"type": "text_delta", "text": text}
        return frames + _frame(
            b"content_block_delta", {"type": "content_block_delta", "index": self._open_block, "delta": delta}
        )

    def _render_tool_start(self, event: ToolCallStart) -> bytes:
        frames = self._render_start(None)
        self._tool_blocks[event.index] = self._next_block
        return frames + self._open(
            False, {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
        )

    def _render_arguments(self, event: ToolCallDelta) -> bytes:
        block = self._tool_blocks.get(event.index)
        if block is None or not event.arguments:
            return b""  # fragments of a call that never started cannot be placed
        delta: JSONObject = {"type": "input_json_delta", "partial_json": event.arguments}
        return _frame(b"content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta})

    def _open(self, is_text: bool, block: JSONObject) -> bytes:
        frames = self._close_block()
        self._open_block, self._text_open = self._next_block, is_text
        self._next_block += 1
        payload: JSONObject = {
            "type": "content_block_start",
            "index": self._open_block,
            "content_block": block,
        }
        return frames + _frame(b"content_block_start", payload)

    def _close_block(self) -> bytes:
        if self._open_block is None:
            return b""
        index, self._open_block, self._text_open = self._open_block, None, False
        return _frame(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _end_when_complete(self) -> bytes:
        if self._reason is None or self._usage is None:
            return b""
        return self._render_end()

    def _render_end(self) -> bytes:
        frames = self._render_start(None)
        self._ended = True
        delta: JSONObject = {"stop_reason": _stop_reason(self._reason or "stop"), "stop_sequence": None}
        usage = _render_usage(self._usage or Usage())
        frames += _frame(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return frames + _frame(b"message_stop", {"type": "message_stop"})
