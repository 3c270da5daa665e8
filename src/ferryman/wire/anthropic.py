"""The Anthropic Messages API wire format, translated to and from the canonical types.

Both sides use it: `api/` parses a client's `/v1/messages` body and renders the answer (and its SSE
stream); the `anthropic` provider builds its upstream body with it and parses the replies.

Where the Messages API cannot carry a canonical feature, this module degrades as follows:

- There is one `system` field: every canonical system message, leading or not, is folded into it in
  order, joined with blank lines. A system given as a list of text blocks parses to one system message
  per block (its `cache_control` kept, other block options dropped), and is built back as blocks when
  any carries `cache_control` (a plain string otherwise); `role: "system"` turns inside `messages`
  (which newer API versions accept) parse to system messages where they stand.
- `cache_control` rides on the canonical part or tool it was set on; a tool result's or tool use's
  goes on its `Message.cache_control` and is built back on the last block of that message (a cache
  breakpoint covers everything before it, so a tool use's mark moves at most past its siblings).
- `thinking` becomes `ChatRequest.reasoning` and is built from it: the budget is raised to Anthropic's
  floor of 1024 tokens, and lowered below `max_tokens` (which Anthropic requires; a `max_tokens` of
  1024 or less cannot hold any thinking and is refused). `temperature` and `top_p` are dropped with
  thinking on, which Anthropic refuses them beside. Thinking and redacted thinking blocks are kept
  byte for byte in `Message.thinking` and built back before that turn's text; a thinking block with
  no signature (another provider's reasoning) is dropped, since Anthropic refuses it.
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
- Blocks with no canonical form are skipped where they are model output (server tool use and
  results) and refused where they are client input (documents, unknown block types). Server tools
  (those without `input_schema`) are skipped: only the client can run tools here.
- Anthropic replies carry no creation time (`created` is 0) and a canonical finish reason of "error"
  renders as `end_turn`; `stop` always renders as `end_turn`, never `stop_sequence`.
"""

from __future__ import annotations

from dataclasses import replace

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
    ThinkingPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError
from ferryman.wire._anthropic_reply import (
    PROVIDER,
    dump_json,
    parse_stop_reason,
    parse_usage,
    render_stop_reason,
    render_usage,
)
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_object,
    get_int,
    get_list,
    get_object,
    get_opt_bool,
    get_opt_list,
    get_opt_number,
    get_opt_object,
    get_opt_str,
    get_str,
    load_object,
    wrong,
)
from ferryman.wire.anthropic_stream import StreamParser, StreamRenderer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PROVIDER",
    "StreamParser",
    "StreamRenderer",
    "build_chat_request",
    "parse_chat_request",
    "parse_chat_response",
    "render_chat_response",
]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; this is sent when the canonical request has none."""
MIN_THINKING_BUDGET = 1024
"""Anthropic's smallest `thinking.budget_tokens`."""

_SKIPPED_OUTPUT_BLOCKS = frozenset(
    {
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


def _arguments_object(arguments: str) -> JSONObject:
    """Tool-call arguments as the object Anthropic's `input` must be; anything else becomes `{}`."""
    return load_object(arguments) or {}


# --- Requests: ingress ---------------------------------------------------------------------------


def parse_chat_request(body: JSONObject) -> ChatRequest:
    """Validate a client's Messages API body into a canonical request; unknown fields are ignored.

    Raises InvalidRequestError whose `param` names the offending field, and nothing else, on any JSON.
    """
    try:
        return _parse_request(as_body(body))
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def _parse_request(body: JSONObject) -> ChatRequest:
    model = get_str(body, "model")
    max_tokens = get_int(body, "max_tokens", minimum=1)
    messages = _parse_system(body.get("system")) + _parse_messages(get_list(body, "messages"))
    tool_choice, parallel_tool_calls = _parse_tool_choice(get_opt_object(body, "tool_choice"))
    metadata = get_opt_object(body, "metadata")
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=get_opt_number(body, "temperature"),
        top_p=get_opt_number(body, "top_p"),
        stop=_parse_stop(get_opt_list(body, "stop_sequences")),
        tools=_parse_tools(get_opt_list(body, "tools")),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        stream=get_opt_bool(body, "stream") or False,
        user=get_opt_str(metadata, "user_id", "metadata") if metadata else None,
        reasoning=_parse_thinking(get_opt_object(body, "thinking")),
    )


def _parse_thinking(thinking: JSONObject | None) -> Reasoning | None:
    """`{type: enabled, budget_tokens}` or `{type: disabled}`; Anthropic always shows enabled thinking."""
    if thinking is None:
        return None
    match get_str(thinking, "type", "thinking"):
        case "enabled":
            budget = get_int(thinking, "budget_tokens", "thinking", minimum=1)
            return Reasoning(budget_tokens=budget, include_thoughts=True)
        case "disabled":
            return Reasoning(budget_tokens=0)
        case other:
            raise Malformed("thinking.type", f"must be 'enabled' or 'disabled', not {other!r}")


def _cache_control(block: JSONObject, path: str) -> JSONObject | None:
    return get_opt_object(block, "cache_control", path)


def _parse_system(system: JSONValue) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(role="system", parts=(TextPart(system),))]
    if not isinstance(system, list):
        raise wrong(system, "system", "a string or an array")
    return [Message(role="system", parts=(part,)) for part in _parse_text_blocks(system, "system")]


def _parse_text_blocks(items: list[JSONValue], path: str) -> list[TextPart]:
    """System content, which may hold text blocks only."""
    parts = []
    for i, item in enumerate(items):
        block_path = f"{path}[{i}]"
        block = as_object(item, block_path)
        if block.get("type") != "text":
            raise Malformed(f"{block_path}.type", "must be text: system content takes only text blocks")
        parts.append(TextPart(get_str(block, "text", block_path), _cache_control(block, block_path)))
    return parts


def _parse_messages(items: list[JSONValue]) -> list[Message]:
    tool_names: dict[str, str] = {}
    messages: list[Message] = []
    for i, item in enumerate(items):
        prefix = f"messages[{i}]"
        entry = as_object(item, prefix)
        role = get_str(entry, "role", prefix)
        if role not in ("user", "assistant", "system"):
            raise Malformed(f"{prefix}.role", f"must be 'user', 'assistant' or 'system', not {role!r}")
        content = entry.get("content")
        if not isinstance(content, str | list):
            raise wrong(content, f"{prefix}.content", "a string or an array of content blocks")
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
        block = as_object(item, path)
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
    kind = get_str(block, "type", path)
    if kind == "text":
        return TextPart(get_str(block, "text", path), _cache_control(block, path))
    if kind == "image":
        image = _parse_image(get_object(block, "source", path), f"{path}.source")
        return replace(image, cache_control=_cache_control(block, path))
    raise Malformed(f"{path}.type", f"names an unsupported content block type {kind!r}")


def _parse_image(source: JSONObject, path: str) -> ImagePart:
    kind = get_str(source, "type", path)
    if kind == "base64":
        return ImagePart(f"data:{get_str(source, 'media_type', path)};base64,{get_str(source, 'data', path)}")
    if kind == "url":
        return ImagePart(get_str(source, "url", path))
    raise Malformed(f"{path}.type", f"names an unsupported image source {kind!r} (use base64 or url)")


def _parse_tool_result(block: JSONObject, path: str, tool_names: dict[str, str]) -> Message:
    call_id = get_str(block, "tool_use_id", path)
    content = block.get("content")
    if content is None:
        parts: tuple[Part, ...] = ()
    elif isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, list):
        parts = tuple(
            _parse_part(as_object(b, f"{path}.content[{k}]"), f"{path}.content[{k}]")
            for k, b in enumerate(content)
        )
    else:
        raise wrong(content, f"{path}.content", "a string or an array of content blocks")
    return Message(
        role="tool",
        parts=parts,
        tool_call_id=call_id,
        name=tool_names.get(call_id),
        is_error=get_opt_bool(block, "is_error", path) or False,
        cache_control=_cache_control(block, path),
    )


def _parse_assistant_content(content: str | list[JSONValue], path: str) -> Message:
    """Assistant content (a request's history or an upstream reply): text parts and tool calls."""
    if isinstance(content, str):
        return Message(role="assistant", parts=(TextPart(content),))
    parts: list[Part] = []
    calls: list[ToolCall] = []
    thinking: list[ThinkingPart] = []
    cache_control: JSONObject | None = None
    for j, item in enumerate(content):
        block_path = f"{path}[{j}]"
        block = as_object(item, block_path)
        kind = get_str(block, "type", block_path)
        if kind == "text":
            parts.append(TextPart(get_str(block, "text", block_path), _cache_control(block, block_path)))
        elif kind == "tool_use":
            arguments = dump_json(get_object(block, "input", block_path))
            calls.append(
                ToolCall(get_str(block, "id", block_path), get_str(block, "name", block_path), arguments)
            )
            cache_control = _cache_control(block, block_path) or cache_control
        elif kind == "thinking":
            text, signature = (
                get_str(block, "thinking", block_path),
                get_opt_str(block, "signature", block_path),
            )
            thinking.append(ThinkingPart(text=text, signature=signature))
        elif kind == "redacted_thinking":
            thinking.append(ThinkingPart(redacted_data=get_str(block, "data", block_path)))
        elif kind not in _SKIPPED_OUTPUT_BLOCKS:
            raise Malformed(f"{block_path}.type", f"names an unsupported content block type {kind!r}")
    return Message(
        role="assistant",
        parts=tuple(parts),
        tool_calls=tuple(calls),
        thinking=tuple(thinking),
        cache_control=cache_control,
    )


def _parse_tools(items: list[JSONValue] | None) -> tuple[Tool, ...]:
    if not items:
        return ()
    tools = []
    for i, item in enumerate(items):
        path = f"tools[{i}]"
        spec = as_object(item, path)
        if spec.get("input_schema") is None:
            continue  # a server tool (web search, code execution …): only Anthropic itself can run those
        tools.append(
            Tool(
                name=get_str(spec, "name", path),
                description=get_opt_str(spec, "description", path),
                parameters=get_object(spec, "input_schema", path),
                cache_control=_cache_control(spec, path),
            )
        )
    return tuple(tools)


def _parse_tool_choice(choice: JSONObject | None) -> tuple[ToolChoice | None, bool | None]:
    """Anthropic's tool_choice also carries the parallel-calls switch, returned second."""
    if choice is None:
        return None, None
    disable_parallel = get_opt_bool(choice, "disable_parallel_tool_use", "tool_choice")
    parallel = None if disable_parallel is None else not disable_parallel
    match get_str(choice, "type", "tool_choice"):
        case "auto":
            return ToolChoice("auto"), parallel
        case "any":
            return ToolChoice("required"), parallel
        case "tool":
            return ToolChoice("required", get_str(choice, "name", "tool_choice")), parallel
        case "none":
            return ToolChoice("none"), parallel
        case other:
            raise Malformed("tool_choice.type", f"names an unknown tool choice {other!r}")


def _parse_stop(items: list[JSONValue] | None) -> tuple[str, ...]:
    if not items:
        return ()
    stop = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise wrong(item, f"stop_sequences[{i}]", "a string")
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
    thinking_on = req.reasoning is not None and req.reasoning.enabled
    if req.reasoning is not None:
        body.update(_build_thinking(req.reasoning, req.max_tokens))
    if not thinking_on:  # Anthropic refuses temperature and top_p beside thinking
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


def _build_thinking(reasoning: Reasoning, max_tokens: int | None) -> JSONObject:
    """`thinking` (and the `max_tokens` it needs): Anthropic wants a budget of at least 1024 tokens
    and below `max_tokens`; a budget the client's `max_tokens` cannot hold is lowered to fit."""
    if not reasoning.enabled:
        return {"thinking": {"type": "disabled"}}
    budget = max(reasoning.budget(), MIN_THINKING_BUDGET)
    if max_tokens is None:
        max_tokens = budget + DEFAULT_MAX_TOKENS
    elif max_tokens <= MIN_THINKING_BUDGET:
        raise InvalidRequestError(
            f"max_tokens must be above {MIN_THINKING_BUDGET} when thinking is enabled for an Anthropic "
            f"model: its smallest thinking budget is {MIN_THINKING_BUDGET} tokens and counts within "
            "max_tokens.",
            param="max_tokens",
        )
    budget = min(budget, max_tokens - 1)
    return {"max_tokens": max_tokens, "thinking": {"type": "enabled", "budget_tokens": budget}}


def _build_system(messages: tuple[Message, ...], response_format: ResponseFormat | None) -> JSONValue:
    """A string, or text blocks when a system part carries `cache_control` (a string has no place for it)."""
    parts = [p for m in messages if m.role == "system" for p in m.parts if isinstance(p, TextPart) and p.text]
    instruction = _json_mode_instruction(response_format)
    if not any(p.cache_control for p in parts):
        texts = [message.text for message in messages if message.role == "system"]
        texts.append(instruction)
        return "\n\n".join(text for text in texts if text)
    blocks: list[JSONValue] = [_build_text(p) for p in parts]
    if instruction:
        blocks.append({"type": "text", "text": instruction})
    return blocks


def _build_text(part: TextPart) -> JSONObject:
    block: JSONObject = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _json_mode_instruction(response_format: ResponseFormat | None) -> str:
    """JSON mode as a system-prompt instruction: the base Messages API has no `response_format`."""
    if response_format is None or response_format.type == "text":
        return ""
    if response_format.schema is None:
        return _JSON_ONLY
    return f"{_JSON_ONLY} It must conform to this JSON Schema:\n{dump_json(response_format.schema)}"


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
    if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
        return blocks[0]["text"]
    return [*blocks]


def _build_blocks(message: Message) -> list[JSONObject]:
    if message.role == "tool":
        return [_build_tool_result(message)]
    if message.role == "user":
        return _build_parts(message.parts)
    blocks = _build_thinking_blocks(message.thinking)
    blocks.extend(_build_text(p) for p in message.parts if isinstance(p, TextPart) and p.text)
    blocks.extend(_build_tool_use(call) for call in message.tool_calls)
    if message.cache_control is not None and blocks:
        blocks[-1]["cache_control"] = message.cache_control
    return blocks


def _build_thinking_blocks(thinking: tuple[ThinkingPart, ...]) -> list[JSONObject]:
    """Thinking as the model sent it; unsigned thinking (not Anthropic's) is refused there, so dropped."""
    blocks: list[JSONObject] = []
    for part in thinking:
        if part.redacted_data is not None:
            blocks.append({"type": "redacted_thinking", "data": part.redacted_data})
        elif part.signature:
            blocks.append({"type": "thinking", "thinking": part.text, "signature": part.signature})
    return blocks


def _build_parts(parts: tuple[Part, ...]) -> list[JSONObject]:
    blocks: list[JSONObject] = []
    for part in parts:
        if isinstance(part, ImagePart):
            blocks.append(_build_image(part))
        elif part.text:
            blocks.append(_build_text(part))
    return blocks


def _build_image(image: ImagePart) -> JSONObject:
    if image.is_data_url:
        media_type, data = image.split_data_url()
        block: JSONObject = {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    else:
        block = {"type": "image", "source": {"type": "url", "url": image.url}}
    if image.cache_control is not None:
        block["cache_control"] = image.cache_control
    return block


def _build_tool_result(message: Message) -> JSONObject:
    block: JSONObject = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
    content = _build_parts(message.parts)
    if content:
        block["content"] = _collapse(content)
    if message.is_error:
        block["is_error"] = True
    if message.cache_control is not None:
        block["cache_control"] = message.cache_control
    return block


def _build_tool_use(call: ToolCall) -> JSONObject:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments_object(call.arguments)}


def _build_tool(tool: Tool) -> JSONObject:
    spec: JSONObject = {"name": tool.name}
    if tool.description is not None:
        spec["description"] = tool.description
    spec["input_schema"] = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    if tool.cache_control is not None:
        spec["cache_control"] = tool.cache_control
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
            id=get_str(body, "id"),
            model=get_str(body, "model"),
            message=_parse_assistant_content(get_list(body, "content"), "content"),
            finish_reason=parse_stop_reason(get_opt_str(body, "stop_reason")),
            usage=parse_usage(get_object(body, "usage"), "usage"),
        )
    except Malformed as exc:
        raise UpstreamConnectionError(f"malformed Anthropic reply: {exc.message}", provider=PROVIDER) from exc


def _render_thinking(part: ThinkingPart) -> JSONObject:
    """A thinking block for a client; unsigned thinking (another provider's) gets an empty signature,
    the SDK's type needing one, and is dropped should the client send it back to Anthropic."""
    if part.redacted_data is not None:
        return {"type": "redacted_thinking", "data": part.redacted_data}
    return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}


def render_chat_response(resp: ChatResponse) -> JSONObject:
    """The Message body an Anthropic client expects; image parts are dropped (replies hold no images)."""
    content: list[JSONValue] = [_render_thinking(part) for part in resp.message.thinking]
    content.extend({"type": "text", "text": p.text} for p in resp.message.parts if isinstance(p, TextPart))
    content.extend(_build_tool_use(call) for call in resp.message.tool_calls)
    return {
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": render_stop_reason(resp.finish_reason),
        "stop_sequence": None,
        "usage": render_usage(resp.usage),
    }
