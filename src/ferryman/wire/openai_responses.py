"""The OpenAI Responses API (`/v1/responses`) as an ingress format, translated to and from canonical.

How Responses items map onto canonical messages:

- `instructions` is a leading system message; `developer` and `system` roles are system messages.
- `function_call` items are tool calls on an assistant message (consecutive ones share it), and
  `function_call_output` items are tool messages.
- `reasoning` items are `Message.thinking` on the assistant turn that follows them; the signature
  travels in `encrypted_content` (a redacted block's data with a `redacted:` prefix), so a client that
  sends the item back gives the provider its own seal, byte for byte.
- Hosted tools (web search, file search …), `file_id` images and input files have no canonical form:
  hosted tools are ignored as chat completions ignores them, the others are refused with a 400.
- Unknown top-level fields are ignored, as for chat completions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    Usage,
)
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_list,
    as_object,
    get_gateway_options,
    get_opt_bool,
    get_opt_int,
    get_opt_list,
    get_opt_number,
    get_opt_object,
    get_opt_str,
    get_str,
    wrong,
)
from ferryman.wire._reasoning import parse_effort

_REDACTED = "redacted:"
_ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "previous_response_id")


@dataclass(frozen=True, slots=True)
class ResponsesOptions:
    """The Responses fields the pipeline never sees: they steer storage and continuation."""

    store: bool
    previous_response_id: str | None
    has_instructions: bool


def parse_responses_request(body: JSONObject) -> ChatRequest:
    """Validate a client's Responses body; any problem is an InvalidRequestError naming the field."""
    try:
        return _parse_request(as_body(body))
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def responses_options(body: JSONObject) -> ResponsesOptions:
    """The storage fields of a body `parse_responses_request` accepted."""
    return ResponsesOptions(
        store=body.get("store") is not False,
        previous_response_id=get_opt_str(body, "previous_response_id"),
        has_instructions=bool(body.get("instructions")),
    )


def _parse_request(body: JSONObject) -> ChatRequest:
    get_opt_bool(body, "store")
    get_opt_str(body, "previous_response_id")
    _parse_metadata(body)
    instructions = get_opt_str(body, "instructions")
    system = (Message("system", (TextPart(instructions),)),) if instructions else ()
    fallbacks, timeout = get_gateway_options(body)
    return ChatRequest(
        model=get_str(body, "model"),
        messages=(*system, *parse_input(body.get("input"))),
        max_tokens=get_opt_int(body, "max_output_tokens", minimum=1, whole_floats=True),
        temperature=get_opt_number(body, "temperature", low=0.0, high=2.0),
        top_p=get_opt_number(body, "top_p", low=0.0, high=1.0),
        tools=_parse_tools(body),
        tool_choice=_parse_tool_choice(body),
        parallel_tool_calls=get_opt_bool(body, "parallel_tool_calls"),
        response_format=_parse_text_format(body),
        stream=get_opt_bool(body, "stream") or False,
        user=get_opt_str(body, "user"),
        reasoning=_parse_reasoning(body),
        fallbacks=fallbacks,
        timeout=timeout,
    )


def _parse_metadata(body: JSONObject) -> None:
    metadata = get_opt_object(body, "metadata")
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise wrong(value, f"metadata.{key}", "a string")


def parse_input(value: JSONValue) -> tuple[Message, ...]:
    """`input` as canonical messages: a string is one user message, a list is items in order."""
    if isinstance(value, str):
        return (Message("user", (TextPart(value),)),)
    items = as_list(value, "input")
    if not items:
        raise Malformed("input", "must contain at least one item")
    builder = _Conversation()
    for i, raw in enumerate(items):
        builder.add(as_object(raw, f"input[{i}]"), f"input[{i}]")
    return builder.finish()


class _Conversation:
    """Folds Responses items into messages: calls and reasoning join the assistant turn they belong to."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.thinking: list[ThinkingPart] = []
        self.names_by_call_id: dict[str, str] = {}

    def add(self, item: JSONObject, path: str) -> None:
        kind = item.get("type", "message")
        if kind == "message":
            self._add_message(item, path)
        elif kind == "function_call":
            call = ToolCall(
                id=get_str(item, "call_id", path),
                name=get_str(item, "name", path),
                arguments=get_str(item, "arguments", path),
            )
            self.names_by_call_id[call.id] = call.name
            self._add_to_assistant(tool_calls=(call,))
        elif kind == "function_call_output":
            call_id = get_str(item, "call_id", path)
            parts = _parse_content(item.get("output"), f"{path}.output")
            self._append(
                Message("tool", parts, tool_call_id=call_id, name=self.names_by_call_id.get(call_id))
            )
        elif kind == "reasoning":
            self.thinking.append(_parse_reasoning_item(item, path))
        else:
            raise Malformed(
                f"{path}.type", "must be message, function_call, function_call_output or reasoning"
            )

    def finish(self) -> tuple[Message, ...]:
        if self.thinking:  # reasoning with no turn after it: keep it on an empty assistant turn
            self._add_to_assistant()
        return tuple(self.messages)

    def _add_message(self, item: JSONObject, path: str) -> None:
        role = item.get("role")
        parts = _parse_content(item.get("content"), f"{path}.content")
        if role == "user":
            self._append(Message("user", parts))
        elif role in ("system", "developer"):
            self._append(Message("system", tuple(p for p in parts if isinstance(p, TextPart))))
        elif role == "assistant":
            self._add_to_assistant(parts=parts, new_turn=True)
        else:
            raise Malformed(f"{path}.role", "must be user, assistant, system or developer")

    def _add_to_assistant(
        self, parts: tuple[Part, ...] = (), tool_calls: tuple[ToolCall, ...] = (), *, new_turn: bool = False
    ) -> None:
        last = self.messages[-1] if self.messages else None
        thinking = tuple(self.thinking)
        self.thinking = []
        if last is not None and last.role == "assistant" and not (new_turn and last.parts) and not thinking:
            self.messages[-1] = replace(
                last, parts=last.parts + parts, tool_calls=last.tool_calls + tool_calls
            )
            return
        self.messages.append(Message("assistant", parts, tool_calls=tool_calls, thinking=thinking))

    def _append(self, message: Message) -> None:
        if self.thinking:
            self._add_to_assistant()
        self.messages.append(message)


def _parse_content(value: JSONValue, path: str) -> tuple[Part, ...]:
    if isinstance(value, str):
        return (TextPart(value),) if value else ()
    parts = as_list(value, path)
    return tuple(_parse_part(as_object(raw, f"{path}[{j}]"), f"{path}[{j}]") for j, raw in enumerate(parts))


def _parse_part(part: JSONObject, path: str) -> Part:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return TextPart(get_str(part, "text", path))
    if kind == "refusal":
        return TextPart(get_str(part, "refusal", path))
    if kind == "input_image":
        url = get_opt_str(part, "image_url", path)
        if url is None:
            raise Malformed(f"{path}.image_url", "is required (file_id images are not supported)")
        return ImagePart(url=url, detail=get_opt_str(part, "detail", path))
    raise Malformed(f"{path}.type", "must be input_text, output_text, refusal or input_image")


def _parse_reasoning_item(item: JSONObject, path: str) -> ThinkingPart:
    texts = []
    for k, raw in enumerate(get_opt_list(item, "summary", path) or ()):
        texts.append(get_str(as_object(raw, f"{path}.summary[{k}]"), "text", f"{path}.summary[{k}]"))
    sealed = get_opt_str(item, "encrypted_content", path)
    if sealed is not None and sealed.startswith(_REDACTED):
        return ThinkingPart(redacted_data=sealed.removeprefix(_REDACTED))
    return ThinkingPart(text="".join(texts), signature=sealed)


def _parse_tools(body: JSONObject) -> tuple[Tool, ...]:
    tools = []
    for i, raw in enumerate(get_opt_list(body, "tools") or ()):
        path = f"tools[{i}]"
        tool = as_object(raw, path)
        if get_str(tool, "type", path) != "function":
            continue  # hosted tools (web search, file search …) have no canonical form
        get_opt_bool(tool, "strict", path)  # validated, then dropped: no canonical home
        tools.append(
            Tool(
                name=get_str(tool, "name", path),
                description=get_opt_str(tool, "description", path),
                parameters=get_opt_object(tool, "parameters", path),
            )
        )
    return tuple(tools)


def _parse_tool_choice(body: JSONObject) -> ToolChoice | None:
    value = body.get("tool_choice")
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return ToolChoice(mode=value)  # type: ignore[arg-type]  # narrowed by the membership test
    choice = as_object(value, "tool_choice") if not isinstance(value, str) else None
    if choice is None or choice.get("type") != "function":
        raise Malformed("tool_choice", "must be auto, none, required or {type: function, name}")
    return ToolChoice(mode="required", name=get_str(choice, "name", "tool_choice"))


def _parse_text_format(body: JSONObject) -> ResponseFormat | None:
    text = get_opt_object(body, "text")
    spec = get_opt_object(text, "format", "text") if text is not None else None
    if spec is None:
        return None
    kind = spec.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)  # type: ignore[arg-type]  # narrowed by the membership test
    if kind != "json_schema":
        raise Malformed("text.format.type", "must be text, json_object or json_schema")
    return ResponseFormat(
        type="json_schema",
        name=get_str(spec, "name", "text.format"),
        schema=get_opt_object(spec, "schema", "text.format"),
        strict=get_opt_bool(spec, "strict", "text.format"),
    )


def _parse_reasoning(body: JSONObject) -> Reasoning | None:
    reasoning = get_opt_object(body, "reasoning")
    if reasoning is None:
        return None
    return Reasoning(effort=parse_effort(reasoning.get("effort"), "reasoning.effort"))


# --- Rendering ---------------------------------------------------------------------------------------


def request_echo(body: JSONObject) -> JSONObject:
    """The request fields a Responses object repeats back, as the client sent them."""
    echo: JSONObject = {key: body.get(key) for key in _ECHOED}
    echo["metadata"] = body.get("metadata") or {}
    echo["parallel_tool_calls"] = body.get("parallel_tool_calls") is not False
    echo["tool_choice"] = body.get("tool_choice") or "auto"
    echo["tools"] = body.get("tools") or []
    echo["temperature"] = body.get("temperature", 1.0)
    echo["top_p"] = body.get("top_p", 1.0)
    echo["store"] = body.get("store") is not False
    echo["text"] = body.get("text") or {"format": {"type": "text"}}
    echo["reasoning"] = body.get("reasoning") or {"effort": None, "summary": None}
    echo["user"] = body.get("user")
    return echo


def item_ids(response_id: str) -> tuple[str, str, str]:
    """Stable item id prefixes (message, reasoning, function call) for one response, so a stream's
    items and the stored response's keep the same ids."""
    suffix = response_id.removeprefix("resp_")
    return f"msg_{suffix}", f"rs_{suffix}", f"fc_{suffix}"


def render_reasoning(part: ThinkingPart, item_id: str) -> JSONObject:
    """A thinking block as a reasoning output item."""
    sealed = _REDACTED + part.redacted_data if part.redacted_data is not None else part.signature
    summary: list[JSONValue] = [{"type": "summary_text", "text": part.text}] if part.text else []
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": summary,
        "encrypted_content": sealed,
        "status": "completed",
    }


def render_message(text: str, item_id: str, status: str = "completed") -> JSONObject:
    """Assistant text as a message output item."""
    content: list[JSONValue] = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def render_function_call(call: ToolCall, item_id: str, status: str = "completed") -> JSONObject:
    """A tool call as a function_call output item."""
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def render_output(message: Message, response_id: str) -> list[JSONValue]:
    """An assistant message as Responses output items: reasoning, then text, then calls."""
    msg_id, rs_id, fc_id = item_ids(response_id)
    output: list[JSONValue] = [render_reasoning(t, f"{rs_id}_{i}") for i, t in enumerate(message.thinking)]
    if message.text:
        output.append(render_message(message.text, msg_id))
    output += [render_function_call(c, f"{fc_id}_{i}") for i, c in enumerate(message.tool_calls)]
    return output


def render_usage(usage: Usage) -> JSONObject:
    """Canonical usage in the Responses shape (its parts sit inside the totals, as canonical's do)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def render_response_object(
    response_id: str,
    created_at: int,
    model: str,
    echo: JSONObject,
    *,
    status: str,
    output: list[JSONValue],
    usage: Usage | None,
    incomplete: bool = False,
) -> JSONObject:
    """The `response` object around its output items."""
    rendered: JSONObject = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": model,
        "output": output,
        "usage": render_usage(usage) if usage is not None else None,
        **echo,
    }
    return rendered


def render_response(
    response: ChatResponse, response_id: str, created_at: int, echo: JSONObject
) -> JSONObject:
    """A whole canonical answer as a completed (or, cut short, incomplete) `response`."""
    incomplete = response.finish_reason == "length"
    return render_response_object(
        response_id,
        created_at,
        response.model,
        echo,
        status="incomplete" if incomplete else "completed",
        output=render_output(response.message, response_id),
        usage=response.usage,
        incomplete=incomplete,
    )


def render_input_item(message: Message, index: int) -> list[JSONValue]:
    """A canonical input message as the Responses items it came from (for `input_items`)."""
    items: list[JSONValue] = []
    if message.role == "tool":
        item: JSONObject = {"type": "function_call_output", "id": f"fco_{index}", "status": "completed"}
        item["call_id"] = message.tool_call_id or ""
        item["output"] = message.text
        return [item]
    if message.role == "assistant":
        for j, thought in enumerate(message.thinking):
            items.append(render_reasoning(thought, f"rs_in_{index}_{j}"))
    if message.parts or not message.tool_calls:
        kind = "output_text" if message.role == "assistant" else "input_text"
        content: list[JSONValue] = [
            {"type": kind, "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "input_image", "image_url": p.url, "detail": p.detail or "auto"}
            for p in message.parts
        ]
        if kind == "output_text":
            content = [{**c, "annotations": []} for c in content if isinstance(c, dict)]
        message_id = f"msg_in_{index}"
        items.append(
            {
                "type": "message",
                "id": message_id,
                "role": message.role,
                "status": "completed",
                "content": content,
            }
        )
    for j, call in enumerate(message.tool_calls):
        items.append(render_function_call(call, f"fc_in_{index}_{j}"))
    return items
