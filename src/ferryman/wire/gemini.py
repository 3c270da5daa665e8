"""Gemini wire codec: generateContent / streamGenerateContent JSON to and from the canonical types.

Gemini puts the model and the stream flag in the URL (`/v1beta/models/{model}:streamGenerateContent`),
so `parse_chat_request` takes them as arguments and `build_chat_request` leaves them out of the body.
The REST API speaks proto JSON, which accepts camelCase and snake_case field names alike (the official
Python SDK really sends `inlineData: {mime_type, data}` and `parameters_json_schema`), so requests are
read in both spellings and always built in camelCase.

Rules that keep round trips lossless:

- Tool-call ids: a `functionCall` without an id gets `call_<n>`, numbered in order within one request,
  response or stream. A `functionResponse` without an id answers the earliest unanswered call of the
  same name, which is how Gemini itself pairs them.
- Thought signatures: Gemini 3 rejects a replayed `functionCall` whose `thoughtSignature` is missing, and
  the canonical types have nowhere to keep it. So a signature rides inside the tool-call id, as
  `<id>__thought__<base64url signature>`, which every client echoes back verbatim; building splits it off
  again. For Gemini 3+ models, a model turn whose calls carry no signature (the history came from another
  provider) gets Google's documented `skip_thought_signature_validator` placeholder.
- Tool results: `functionResponse.response` must be an object. A result text that is a JSON object is sent
  as that object; any other text is wrapped as `{"result": text}` (`{"error": text}` for a failed call).
  Parsing unwraps a single-key `result` / `output` / `error` object with a string value, so texts that
  look like a wrapper are wrapped once more when built. (A JSON-object text comes back compacted.)
- Tool schemas and `responseSchema` in Gemini's OpenAPI dialect (`type: "OBJECT"`, `nullable`,
  `any_of`) become JSON Schema on parsing; building always sends `parametersJsonSchema` /
  `responseJsonSchema`, which take JSON Schema as other formats' clients wrote it.

Reasoning: `generationConfig.thinkingConfig` is `ChatRequest.reasoning` — `thinkingBudget` a budget
(0 off, -1 the model decides), `thinkingLevel` a level, `includeThoughts` whether the thoughts come
back; both a budget and a level is refused, as Gemini refuses it. It is built as `thinkingLevel` for
Gemini 3 and later and as `thinkingBudget` for older models, through the one effort <-> budget table
(docs/api.md). `thought: true` parts are `Message.thinking` (`ThinkingDelta`s in a stream), their
`thoughtSignature` kept; a signature on a text part stays on that `TextPart`, on a function call in
its tool-call id. Redacted thinking (Anthropic's) has no Gemini form and is dropped.

What Gemini cannot say, and how it degrades: system messages after the first turn become user text;
images in a tool result travel as extra parts beside the `functionResponse`; `ImagePart.detail`,
`parallel_tool_calls`, `user` and a JSON schema's `name` / `strict` are dropped; other tool kinds
(search, code execution), `safetySettings`, `cachedContent`, `topK` and penalties are ignored.
Non-image media (audio, PDF) ride in `ImagePart` data URLs, the only canonical media type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
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
    ToolChoiceMode,
    Usage,
)
from ferryman.errors import InvalidRequestError, UpstreamConnectionError
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_list,
    as_object,
    as_opt_str,
    as_str,
    get_list,
    get_opt_bool,
    get_opt_int,
    get_opt_list,
    get_opt_number,
    wrong,
)
from ferryman.wire._gemini_parts import (
    FINISH_TO_GEMINI,
    PLACEHOLDER_SIGNATURE,
    PROVIDER,
    SIGNATURE_SEPARATOR,
    CallIds,
    ParsedPart,
    build_part,
    candidate_parts,
    is_blocked,
    is_empty_text,
    model_parts,
    new_response_id,
    parse_finish_reason,
    parse_part,
    parse_usage,
    pick,
    render_usage,
    requires_signatures,
    split_signature,
    wrap_tool_result,
)
from ferryman.wire._gemini_schema import to_json_schema
from ferryman.wire._reasoning import gemini_budget, gemini_level, parse_gemini_level
from ferryman.wire.gemini_stream import StreamParser, StreamRenderer

__all__ = [
    "PLACEHOLDER_SIGNATURE",
    "PROVIDER",
    "SIGNATURE_SEPARATOR",
    "StreamParser",
    "StreamRenderer",
    "build_chat_request",
    "build_embedding_request",
    "parse_chat_request",
    "parse_chat_response",
    "parse_embedding_response",
    "render_chat_response",
    "split_signature",
]

_TOOL_MODES: Final[Mapping[str, ToolChoiceMode]] = MappingProxyType(
    {"AUTO": "auto", "VALIDATED": "auto", "NONE": "none", "ANY": "required"}
)


# --- Requests: parsing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GenerationConfig:
    """The canonical fields `generationConfig` carries."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None


def parse_chat_request(body: JSONObject, *, model: str, stream: bool) -> ChatRequest:
    """Validate a Gemini client's body; `model` and `stream` come from the URL it was posted to."""
    try:
        return _parse_request(as_body(body), model, stream)
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def _parse_request(body: JSONObject, model: str, stream: bool) -> ChatRequest:
    if not isinstance(model, str) or not model:
        raise Malformed("model", "is required")
    config = _parse_generation_config(body)
    return ChatRequest(
        model=model,
        messages=_parse_system_instruction(body) + _parse_contents(body),
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop=config.stop,
        tools=_parse_tools(body),
        tool_choice=_parse_tool_config(body),
        response_format=config.response_format,
        stream=stream,
        seed=config.seed,
        reasoning=config.reasoning,
    )


def _parse_system_instruction(body: JSONObject) -> tuple[Message, ...]:
    """One system message per text part: Gemini's system field holds parts, not a single string."""
    system, key = pick(body, "systemInstruction", "system_instruction")
    if system is None:
        return ()
    if isinstance(system, str):  # not proto JSON, but some hand-written clients send it
        return (Message(role="system", parts=(TextPart(system),)),) if system else ()
    parts = as_list(as_object(system, key).get("parts"), f"{key}.parts")
    calls = CallIds()
    texts = (parse_part(part, f"{key}.parts", i, calls) for i, part in enumerate(parts))
    return tuple(Message(role="system", parts=(t,)) for t in texts if isinstance(t, TextPart))


def _parse_contents(body: JSONObject) -> tuple[Message, ...]:
    contents = as_list(body.get("contents"), "contents")
    if not contents:
        raise Malformed("contents", "must not be empty")
    calls = CallIds()
    messages: list[Message] = []
    for i, content in enumerate(contents):
        messages.extend(_parse_content(content, f"contents[{i}]", calls))
    return tuple(messages)


def _parse_content(content: JSONValue, param: str, calls: CallIds) -> list[Message]:
    content = as_object(content, param)
    role = content.get("role")
    parts = as_list(content.get("parts"), f"{param}.parts")
    parts_param = f"{param}.parts"
    items = [parse_part(part, parts_param, i, calls) for i, part in enumerate(parts)]
    if role == "model":
        return [_model_message(items, param)]
    if role is None or role == "user" or role == "function":  # role is optional; "function" is legacy
        return _user_messages(items, param)
    raise Malformed(f"{param}.role", "must be 'user' or 'model'")


def _model_message(items: Sequence[ParsedPart | None], param: str) -> Message:
    parts: list[Part] = []
    tool_calls: list[ToolCall] = []
    thinking: list[ThinkingPart] = []
    for item in items:
        if isinstance(item, ToolCall):
            tool_calls.append(item)
        elif isinstance(item, ThinkingPart):
            thinking.append(item)
        elif isinstance(item, Message):
            raise Malformed(f"{param}.parts", "of a model turn must not contain a functionResponse")
        elif item is not None:
            parts.append(item)
    return Message("assistant", tuple(parts), tuple(tool_calls), thinking=tuple(thinking))


def _user_messages(items: list[ParsedPart | None], param: str) -> list[Message]:
    """A user turn: each functionResponse becomes a tool message, runs of other parts user messages."""
    messages: list[Message] = []
    run: list[Part] = []
    for item in items:
        if isinstance(item, ToolCall):
            raise Malformed(f"{param}.parts", "of a user turn must not contain a functionCall")
        if isinstance(item, Message):
            if run:
                messages.append(Message(role="user", parts=tuple(run)))
                run = []
            messages.append(item)
        elif item is not None and not isinstance(item, ThinkingPart):  # only the model thinks
            run.append(item)
    if run:
        messages.append(Message(role="user", parts=tuple(run)))
    return messages


def _parse_generation_config(body: JSONObject) -> _GenerationConfig:
    config, key = pick(body, "generationConfig", "generation_config")
    if config is None:
        return _GenerationConfig()
    config = as_object(config, key)
    _, count_key = pick(config, "candidateCount", "candidate_count")
    if (get_opt_int(config, count_key, key, minimum=1, whole_floats=True) or 1) > 1:
        raise Malformed(f"{key}.{count_key}", "greater than 1 is not supported")
    _, top_p_key = pick(config, "topP", "top_p")
    _, max_key = pick(config, "maxOutputTokens", "max_output_tokens")
    return _GenerationConfig(
        max_tokens=get_opt_int(config, max_key, key, minimum=1, whole_floats=True),
        temperature=get_opt_number(config, "temperature", key),
        top_p=get_opt_number(config, top_p_key, key),
        stop=_parse_stop_sequences(config, key),
        seed=get_opt_int(config, "seed", key, minimum=-(2**31), whole_floats=True),
        response_format=_parse_response_format(config, key),
        reasoning=_parse_thinking_config(config, key),
    )


def _parse_thinking_config(config: JSONObject, param: str) -> Reasoning | None:
    thinking, key = pick(config, "thinkingConfig", "thinking_config")
    if thinking is None:
        return None
    path = f"{param}.{key}"
    thinking = as_object(thinking, path)
    _, budget_key = pick(thinking, "thinkingBudget", "thinking_budget")
    budget = get_opt_int(thinking, budget_key, path, minimum=-1, whole_floats=True)
    level, level_key = pick(thinking, "thinkingLevel", "thinking_level")
    effort = parse_gemini_level(level, f"{path}.{level_key}")
    if effort is not None and budget is not None:
        raise Malformed(f"{path}.{level_key}", f"cannot be set together with {budget_key}")
    _, include_key = pick(thinking, "includeThoughts", "include_thoughts")
    return Reasoning(
        effort=effort,
        budget_tokens=None if budget == -1 else budget,  # -1: the model decides, as with neither
        include_thoughts=get_opt_bool(thinking, include_key, path) or False,
    )


def _parse_stop_sequences(config: JSONObject, param: str) -> tuple[str, ...]:
    stop, key = pick(config, "stopSequences", "stop_sequences")
    if stop is None:
        return ()
    items = as_list(stop, f"{param}.{key}")
    return tuple(as_str(item, f"{param}.{key}[{i}]") for i, item in enumerate(items))


def _parse_response_format(config: JSONObject, param: str) -> ResponseFormat | None:
    mime_type, mime_key = pick(config, "responseMimeType", "response_mime_type")
    mime_type = as_opt_str(mime_type, f"{param}.{mime_key}")
    json_schema, key = pick(config, "responseJsonSchema", "response_json_schema")
    if json_schema is not None:
        return ResponseFormat(type="json_schema", schema=as_object(json_schema, f"{param}.{key}"))
    schema, key = pick(config, "responseSchema", "response_schema")
    if schema is not None:
        return ResponseFormat(type="json_schema", schema=to_json_schema(schema, f"{param}.{key}"))
    if mime_type == "application/json":
        return ResponseFormat(type="json_object")
    if mime_type == "text/plain":
        return ResponseFormat(type="text")
    return None


def _parse_tools(body: JSONObject) -> tuple[Tool, ...]:
    tools = body.get("tools")
    if tools is None:
        return ()
    parsed: list[Tool] = []
    for i, entry in enumerate(as_list(tools, "tools")):
        declarations, key = pick(
            as_object(entry, f"tools[{i}]"), "functionDeclarations", "function_declarations"
        )
        if declarations is None:
            continue  # search, code execution and other built-in tools have no canonical form
        for j, declaration in enumerate(as_list(declarations, f"tools[{i}].{key}")):
            parsed.append(_parse_declaration(declaration, f"tools[{i}].{key}[{j}]"))
    return tuple(parsed)


def _parse_declaration(declaration: JSONValue, param: str) -> Tool:
    declaration = as_object(declaration, param)
    name = as_str(declaration.get("name"), f"{param}.name")
    description = as_opt_str(declaration.get("description"), f"{param}.description")
    json_schema, key = pick(declaration, "parametersJsonSchema", "parameters_json_schema")
    if json_schema is not None:
        return Tool(name=name, description=description, parameters=as_object(json_schema, f"{param}.{key}"))
    schema = declaration.get("parameters")
    parameters = None if schema is None else to_json_schema(schema, f"{param}.parameters")
    return Tool(name=name, description=description, parameters=parameters)


def _parse_tool_config(body: JSONObject) -> ToolChoice | None:
    config, key = pick(body, "toolConfig", "tool_config")
    if config is None:
        return None
    calling, calling_key = pick(as_object(config, key), "functionCallingConfig", "function_calling_config")
    if calling is None:
        return None
    param = f"{key}.{calling_key}"
    calling = as_object(calling, param)
    mode = as_opt_str(calling.get("mode"), f"{param}.mode")
    if mode is None or mode.upper() == "MODE_UNSPECIFIED":
        return None
    canonical_mode = _TOOL_MODES.get(mode.upper())
    if canonical_mode is None:
        raise Malformed(f"{param}.mode", "must be one of AUTO, ANY, NONE, VALIDATED")
    names, names_key = pick(calling, "allowedFunctionNames", "allowed_function_names")
    names = [] if names is None else as_list(names, f"{param}.{names_key}")
    if canonical_mode == "required" and len(names) == 1:
        return ToolChoice(mode="required", name=as_str(names[0], f"{param}.{names_key}[0]"))
    # Several allowed names cannot be expressed canonically: then any function may be called.
    return ToolChoice(mode=canonical_mode)


# --- Requests: building ----------------------------------------------------------------------------


def build_chat_request(req: ChatRequest) -> JSONObject:
    """The generateContent body for `req`; the provider puts the model and `alt=sse` in the URL."""
    leading = 0
    while leading < len(req.messages) and req.messages[leading].role == "system":
        leading += 1
    body: JSONObject = _build_turns(req, leading)
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_build_declaration(tool) for tool in req.tools]}]
    if req.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _build_calling_config(req.tool_choice)}
    config = _build_generation_config(req)
    if config:
        body["generationConfig"] = config
    return body


def _build_turns(req: ChatRequest, leading: int) -> JSONObject:
    """`contents` and `systemInstruction` for the conversation.

    A conversation of system messages alone becomes one user turn: Gemini refuses an empty `contents`,
    where OpenAI accepts a system-only conversation.
    """
    contents = _build_contents(req.messages, leading, sign=requires_signatures(req.model))
    system_parts: list[JSONValue] = [{"text": m.text} for m in req.messages[:leading] if m.text]
    if not system_parts:
        return {"contents": contents}
    if not contents:
        return {"contents": [{"role": "user", "parts": system_parts}]}
    return {"contents": contents, "systemInstruction": {"parts": system_parts}}


def _build_contents(messages: tuple[Message, ...], start: int, *, sign: bool) -> list[JSONValue]:
    """Messages as alternating user / model contents; consecutive same-role turns are merged."""
    call_names: dict[str, str] = {}
    turns: list[tuple[str, list[JSONValue]]] = []
    for index in range(start, len(messages)):
        message = messages[index]
        if message.role == "assistant":
            call_names.update((call.id, call.name) for call in message.tool_calls)
            role, parts = "model", model_parts(message, sign=sign)
        elif message.role == "tool":
            role, parts = "user", _tool_result_parts(message, index, call_names)
        else:  # user, and system messages after the first turn, which Gemini has no place for
            role, parts = "user", [build_part(p) for p in message.parts if not is_empty_text(p)]
        if not parts:
            continue  # Gemini refuses a content without parts
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, parts))
    return [{"role": role, "parts": parts} for role, parts in turns]


def _tool_result_parts(message: Message, index: int, call_names: Mapping[str, str]) -> list[JSONValue]:
    call_id = message.tool_call_id or ""
    name = message.name or call_names.get(call_id)
    if name is None:
        param = f"messages[{index}].tool_call_id"
        raise InvalidRequestError(f"'{param}' does not match any earlier tool call", param=param)
    result: JSONObject = {"name": name, "response": wrap_tool_result(message.text, message.is_error)}
    if call_id:
        result["id"] = split_signature(call_id)[0]
    parts: list[JSONValue] = [{"functionResponse": result}]
    # Gemini's functionResponse holds no images; they travel as parts of the same user turn.
    parts.extend(build_part(p) for p in message.parts if isinstance(p, ImagePart))
    return parts


def _build_declaration(tool: Tool) -> JSONObject:
    declaration: JSONObject = {"name": tool.name}
    if tool.description is not None:
        declaration["description"] = tool.description
    if tool.parameters is not None:
        declaration["parametersJsonSchema"] = tool.parameters
    return declaration


def _build_calling_config(choice: ToolChoice) -> JSONObject:
    if choice.name is not None:
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _build_generation_config(req: ChatRequest) -> JSONObject:
    config: JSONObject = {}
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.stop:
        config["stopSequences"] = list(req.stop)
    if req.seed is not None:
        config["seed"] = req.seed
    response_format = req.response_format
    if response_format is not None:
        config["responseMimeType"] = "text/plain" if response_format.type == "text" else "application/json"
        if response_format.type == "json_schema" and response_format.schema is not None:
            config["responseJsonSchema"] = response_format.schema
    if req.reasoning is not None:
        config["thinkingConfig"] = _build_thinking_config(req.reasoning, req.model)
    return config


def _build_thinking_config(reasoning: Reasoning, model: str) -> JSONObject:
    """`thinkingLevel` for Gemini 3+ (the generations that also require signatures), whose budgets are
    deprecated; `thinkingBudget` for 2.5, which has no levels. A level or budget the client never named
    is left to the model (Gemini 3's default, Gemini 2.5's -1)."""
    thinking: JSONObject = {}
    if not requires_signatures(model):
        thinking["thinkingBudget"] = gemini_budget(reasoning)
    elif reasoning.effort is not None or reasoning.budget_tokens is not None:
        thinking["thinkingLevel"] = gemini_level(reasoning)
    if reasoning.include_thoughts and reasoning.enabled:
        thinking["includeThoughts"] = True
    return thinking


# --- Responses -------------------------------------------------------------------------------------


def parse_chat_response(body: JSONObject) -> ChatResponse:
    """An upstream generateContent reply as canonical; a malformed one is the upstream's failure."""
    try:
        return _parse_response(body)
    except Malformed as exc:
        raise UpstreamConnectionError(f"malformed Gemini reply: {exc.message}", provider=PROVIDER) from None


def _parse_response(body: JSONObject) -> ChatResponse:
    body = as_body(body)
    usage = parse_usage(body.get("usageMetadata"), "usageMetadata") or Usage()
    candidates = get_opt_list(body, "candidates")
    if candidates:
        message, finish = _parse_candidate(candidates[0], "candidates[0]")
    elif is_blocked(body):
        message, finish = Message(role="assistant"), "content_filter"
    else:
        raise Malformed("candidates", "is empty and the prompt was not blocked")
    return ChatResponse(
        id=as_opt_str(body.get("responseId"), "responseId") or new_response_id(),
        model=as_opt_str(body.get("modelVersion"), "modelVersion") or "",
        message=message,
        finish_reason=finish,
        usage=usage,
    )


def _parse_candidate(candidate: JSONValue, param: str) -> tuple[Message, FinishReason]:
    candidate = as_object(candidate, param)
    items = list(candidate_parts(candidate, param, CallIds()))
    if any(isinstance(item, Message) for item in items):
        raise Malformed(f"{param}.content.parts", "must not contain a functionResponse")
    message = _model_message(items, param)
    raw_finish = as_opt_str(candidate.get("finishReason"), f"{param}.finishReason")
    return message, parse_finish_reason(raw_finish, bool(message.tool_calls))


def render_chat_response(resp: ChatResponse) -> JSONObject:
    """A canonical answer as the GenerateContentResponse a Gemini client expects."""
    candidate: JSONObject = {
        "content": _render_content(model_parts(resp.message, sign=False)),
        "finishReason": FINISH_TO_GEMINI[resp.finish_reason],
        "index": 0,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": render_usage(resp.usage),
        "modelVersion": resp.model,
        "responseId": resp.id,
    }


def _render_content(parts: list[JSONValue]) -> JSONObject:
    return {"role": "model", "parts": parts} if parts else {"role": "model"}


# --- Embeddings ------------------------------------------------------------------------------------


def build_embedding_request(req: EmbeddingRequest, *, model: str) -> JSONObject:
    """The batchEmbedContents body: one request per input, each naming the model."""
    name = model if model.startswith("models/") else f"models/{model}"
    requests: list[JSONValue] = []
    for text in req.inputs:
        entry: JSONObject = {"model": name, "content": {"parts": [{"text": text}]}}
        if req.dimensions is not None:
            entry["outputDimensionality"] = req.dimensions
        requests.append(entry)
    return {"requests": requests}


def parse_embedding_response(body: JSONObject, *, model: str) -> EmbeddingResponse:
    """batchEmbedContents' vectors, in input order; Gemini reports no token usage for them."""
    try:
        embeddings = get_list(as_body(body), "embeddings")
        vectors = tuple(_parse_vector(e, f"embeddings[{i}]") for i, e in enumerate(embeddings))
    except Malformed as exc:
        raise UpstreamConnectionError(f"malformed Gemini reply: {exc.message}", provider=PROVIDER) from None
    return EmbeddingResponse(model=model, vectors=vectors)


def _parse_vector(embedding: JSONValue, param: str) -> tuple[float, ...]:
    values = as_list(as_object(embedding, param).get("values"), f"{param}.values")
    if all(type(v) is float for v in values):  # the usual case, checked at C speed
        return tuple(values)  # type: ignore[arg-type]
    return tuple(_as_number(v, f"{param}.values[{i}]") for i, v in enumerate(values))


def _as_number(value: JSONValue, param: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= 1e300:
        return float(value)
    raise wrong(value, param, "a number")
