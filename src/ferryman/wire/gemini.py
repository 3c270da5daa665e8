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

What Gemini cannot say, and how it degrades: system messages after the first turn become user text;
images in a tool result travel as extra parts beside the `functionResponse`; `ImagePart.detail`,
`parallel_tool_calls`, `user` and a JSON schema's `name` / `strict` are dropped; thought parts are skipped;
other tool kinds (search, code execution), `safetySettings`, `cachedContent`, `topK` and penalties are
ignored. Non-image media (audio, PDF) ride in `ImagePart` data URLs, the only canonical media type.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

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

PROVIDER: Final = "gemini"
SIGNATURE_SEPARATOR: Final = "__thought__"
PLACEHOLDER_SIGNATURE: Final = "skip_thought_signature_validator"
_PLACEHOLDER_SIGNATURES: Final = frozenset({PLACEHOLDER_SIGNATURE, "context_engineering_is_the_way_to_go"})
_RESULT_KEYS: Final = frozenset({"result", "output", "error"})
_SIGNED_GENERATION = re.compile(r"gemini-(\d+)")

_FILTERED: Final = "SAFETY RECITATION BLOCKLIST PROHIBITED_CONTENT SPII IMAGE_SAFETY IMAGE_PROHIBITED_CONTENT"
_FAILED: Final = "MALFORMED_FUNCTION_CALL UNEXPECTED_TOOL_CALL TOO_MANY_TOOL_CALLS MISSING_THOUGHT_SIGNATURE"
_FINISH_FROM_GEMINI: Final[Mapping[str, FinishReason]] = MappingProxyType(
    {
        "STOP": "stop",
        "MAX_TOKENS": "length",
        **dict.fromkeys((*_FILTERED.split(), "IMAGE_RECITATION", "MODEL_ARMOR"), "content_filter"),
        **dict.fromkeys(
            (*_FAILED.split(), "MALFORMED_RESPONSE", "LANGUAGE", "OTHER", "IMAGE_OTHER", "NO_IMAGE"), "error"
        ),
    }
)
_FINISH_TO_GEMINI: Final[Mapping[FinishReason, str]] = MappingProxyType(
    {
        "stop": "STOP",
        "tool_calls": "STOP",
        "length": "MAX_TOKENS",
        "content_filter": "SAFETY",
        "error": "OTHER",
    }
)
_TOOL_MODES: Final[Mapping[str, ToolChoiceMode]] = MappingProxyType(
    {"AUTO": "auto", "VALIDATED": "auto", "NONE": "none", "ANY": "required"}
)
_IMAGE_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "gif": "image/gif",
        "webp": "image/webp",
        "heic": "image/heic",
        "heif": "image/heif",
        "pdf": "application/pdf",
    }
)
_SCHEMA_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "any_of": "anyOf",
        "max_items": "maxItems",
        "min_items": "minItems",
        "max_length": "maxLength",
        "min_length": "minLength",
        "max_properties": "maxProperties",
        "min_properties": "minProperties",
        "property_ordering": "propertyOrdering",
    }
)
_MAX_SCHEMA_DEPTH: Final = 64


# --- Field access ----------------------------------------------------------------------------------
# Validators raise InvalidRequestError naming the field; the upstream-facing entry points turn that
# into UpstreamConnectionError at their boundary, so one set of checks serves both directions.


def _pick(obj: JSONObject, camel: str, snake: str) -> tuple[JSONValue, str]:
    """Return a field in whichever spelling proto JSON allows (None when absent) and the key used."""
    value = obj.get(camel)
    if value is None and snake in obj:
        return obj[snake], snake
    return value, camel


def _fail(param: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param} {problem}", param=param)


def _as_object(value: JSONValue, param: str) -> JSONObject:
    if isinstance(value, dict):
        return value
    raise _fail(param, "must be an object")


def _as_list(value: JSONValue, param: str) -> list[JSONValue]:
    if isinstance(value, list):
        return value
    raise _fail(param, "must be an array")


def _optional_list(value: JSONValue, param: str) -> list[JSONValue]:
    return [] if value is None else _as_list(value, param)


def _as_str(value: JSONValue, param: str) -> str:
    if isinstance(value, str):
        return value
    raise _fail(param, "must be a string")


def _optional_str(value: JSONValue, param: str) -> str | None:
    return None if value is None else _as_str(value, param)


def _optional_float(value: JSONValue, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        if abs(value) <= 1e300:  # also keeps float() of a huge JSON integer from overflowing
            return float(value)
    raise _fail(param, "must be a number")


def _optional_int(value: JSONValue, param: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)  # proto JSON accepts 100.0 for an integer field
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= minimum:
            return value
        raise _fail(param, f"must be at least {minimum}")
    raise _fail(param, "must be an integer")


def _dump_json(value: JSONValue, param: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # integers past 64 bits, absurd nesting
        raise _fail(param, "cannot be encoded as JSON") from exc


def _load_object(text: str) -> JSONObject | None:
    """The JSON object `text` encodes, or None when it is anything else."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


# --- Tool-call ids and thought signatures ----------------------------------------------------------


def _attach_signature(call_id: str, signature: str | None) -> str:
    if not signature or signature in _PLACEHOLDER_SIGNATURES:
        return call_id
    # base64url keeps the id inside [A-Za-z0-9_-], the alphabet Anthropic requires of tool-use ids.
    urlsafe = signature.replace("+", "-").replace("/", "_").rstrip("=")
    return f"{call_id}{SIGNATURE_SEPARATOR}{urlsafe}"


def split_signature(call_id: str) -> tuple[str, str | None]:
    """Split a canonical tool-call id into Gemini's own id and the thought signature it carries."""
    base, separator, urlsafe = call_id.partition(SIGNATURE_SEPARATOR)
    if not separator or not urlsafe:
        return call_id, None
    padding = "=" * (-len(urlsafe) % 4)
    return base, urlsafe.replace("-", "+").replace("_", "/") + padding


def _requires_signatures(model: str) -> bool:
    """Gemini 3 and later refuse replayed function calls without a thought signature."""
    match = _SIGNED_GENERATION.search(model)
    return match is not None and int(match.group(1)) >= 3


class _CallIds:
    """Gives function calls ids and pairs function responses with them while one parse walks a body."""

    __slots__ = ("_by_gemini_id", "_count", "_unanswered")

    def __init__(self) -> None:
        self._count = 0
        self._by_gemini_id: dict[str, str] = {}
        self._unanswered: dict[str, deque[str]] = {}

    def for_call(self, gemini_id: str | None, name: str, signature: str | None) -> str:
        """The canonical id of a new call: Gemini's id (or `call_<n>`) plus its signature."""
        base = gemini_id or f"call_{self._count}"
        self._count += 1
        call_id = _attach_signature(base, signature)
        self._by_gemini_id[base] = call_id
        self._unanswered.setdefault(name, deque()).append(call_id)
        return call_id

    def for_result(self, gemini_id: str | None, name: str) -> str:
        """The canonical id of the call a response answers: by id if given, else the oldest of that name."""
        waiting = self._unanswered.get(name)
        if gemini_id:
            call_id = self._by_gemini_id.get(gemini_id, gemini_id)
            if waiting and call_id in waiting:
                waiting.remove(call_id)
            return call_id
        if waiting:
            return waiting.popleft()
        self._count += 1
        return f"call_{self._count - 1}"


# --- Parts (shared by requests, responses and streams) ---------------------------------------------

_ParsedPart = TextPart | ImagePart | ToolCall | Message


def _parse_part(part: JSONValue, parts_param: str, index: int, calls: _CallIds) -> _ParsedPart | None:
    """Part `index` of a parts array; None for parts with no canonical form (thoughts, empty text).

    Text, by far the most common part, is checked before any field path is formatted.
    """
    if isinstance(part, dict):
        text = part.get("text")
        if isinstance(text, str) and part.get("thought") is not True:
            return TextPart(text) if text else None
    param = f"{parts_param}[{index}]"
    part = _as_object(part, param)
    if part.get("thought") is True:
        return None
    if "text" in part and part["text"] is not None:
        raise _fail(f"{param}.text", "must be a string")
    return _parse_non_text_part(part, param, calls)


def _parse_non_text_part(part: JSONObject, param: str, calls: _CallIds) -> _ParsedPart | None:
    inline, key = _pick(part, "inlineData", "inline_data")
    if inline is not None:
        return _parse_inline_data(inline, f"{param}.{key}")
    file_data, key = _pick(part, "fileData", "file_data")
    if file_data is not None:
        uri, uri_key = _pick(_as_object(file_data, f"{param}.{key}"), "fileUri", "file_uri")
        return ImagePart(_as_str(uri, f"{param}.{key}.{uri_key}"))
    call, key = _pick(part, "functionCall", "function_call")
    if call is not None:
        signature, sig_key = _pick(part, "thoughtSignature", "thought_signature")
        return _parse_function_call(
            call, f"{param}.{key}", _optional_str(signature, f"{param}.{sig_key}"), calls
        )
    result, key = _pick(part, "functionResponse", "function_response")
    if result is not None:
        return _parse_function_response(result, f"{param}.{key}", calls)
    return None


def _parse_inline_data(inline: JSONValue, param: str) -> ImagePart:
    inline = _as_object(inline, param)
    mime_type, mime_key = _pick(inline, "mimeType", "mime_type")
    mime_type = _as_str(mime_type, f"{param}.{mime_key}")
    data = _as_str(inline.get("data"), f"{param}.data")
    return ImagePart(f"data:{mime_type};base64,{data}")


def _parse_function_call(call: JSONValue, param: str, signature: str | None, calls: _CallIds) -> ToolCall:
    call = _as_object(call, param)
    name = _as_str(call.get("name"), f"{param}.name")
    args = call.get("args")
    arguments = "{}" if args is None else _dump_json(_as_object(args, f"{param}.args"), f"{param}.args")
    call_id = calls.for_call(_optional_str(call.get("id"), f"{param}.id"), name, signature)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _parse_function_response(result: JSONValue, param: str, calls: _CallIds) -> Message:
    result = _as_object(result, param)
    name = _as_str(result.get("name"), f"{param}.name")
    response = result.get("response")
    response = {} if response is None else _as_object(response, f"{param}.response")
    text, is_error = _unwrap_tool_result(response, f"{param}.response")
    call_id = calls.for_result(_optional_str(result.get("id"), f"{param}.id"), name)
    return Message(role="tool", parts=(TextPart(text),), tool_call_id=call_id, name=name, is_error=is_error)


def _is_wrapper(response: JSONObject) -> bool:
    if len(response) != 1:
        return False
    key, value = next(iter(response.items()))
    return key in _RESULT_KEYS and isinstance(value, str)


def _unwrap_tool_result(response: JSONObject, param: str) -> tuple[str, bool]:
    """A function response as canonical tool text and whether it reports an error (see module docs)."""
    if _is_wrapper(response):
        key, value = next(iter(response.items()))
        return str(value), key == "error"
    return _dump_json(response, param), False


def _wrap_tool_result(text: str, is_error: bool) -> JSONObject:
    """Canonical tool text as the object `functionResponse.response` must be (see module docs)."""
    if not is_error:
        parsed = _load_object(text)
        if parsed is not None and not _is_wrapper(parsed):
            return parsed
    return {"error" if is_error else "result": text}


def _guess_media_type(url: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _IMAGE_TYPES.get(extension, "image/jpeg")


def _build_part(part: Part) -> JSONObject:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if part.is_data_url:
        media_type, data = part.split_data_url()
        return {"inlineData": {"mimeType": media_type, "data": data}}
    return {"fileData": {"mimeType": _guess_media_type(part.url), "fileUri": part.url}}


def _arguments_object(arguments: str) -> JSONObject:
    """Tool-call arguments as the object Gemini requires; text that is no JSON object is kept, wrapped."""
    if not arguments.strip():
        return {}
    parsed = _load_object(arguments)
    return parsed if parsed is not None else {"arguments": arguments}


def _build_function_call(call: ToolCall) -> JSONObject:
    gemini_id, signature = split_signature(call.id)
    function_call: JSONObject = {
        "id": gemini_id,
        "name": call.name,
        "args": _arguments_object(call.arguments),
    }
    part: JSONObject = {"functionCall": function_call}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _model_parts(message: Message, *, sign: bool) -> list[JSONValue]:
    """An assistant message as Gemini parts; `sign` adds the placeholder signature when none is known."""
    parts: list[JSONValue] = [_build_part(p) for p in message.parts if not _is_empty_text(p)]
    calls = [_build_function_call(call) for call in message.tool_calls]
    if sign and calls and not any("thoughtSignature" in call for call in calls):
        calls[0]["thoughtSignature"] = PLACEHOLDER_SIGNATURE
    parts.extend(calls)
    return parts


def _is_empty_text(part: Part) -> bool:
    return isinstance(part, TextPart) and not part.text


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


def parse_chat_request(body: JSONObject, *, model: str, stream: bool) -> ChatRequest:
    """Validate a Gemini client's body; `model` and `stream` come from the URL it was posted to."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model is required", param="model")
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
    )


def _parse_system_instruction(body: JSONObject) -> tuple[Message, ...]:
    """One system message per text part: Gemini's system field holds parts, not a single string."""
    system, key = _pick(body, "systemInstruction", "system_instruction")
    if system is None:
        return ()
    if isinstance(system, str):  # not proto JSON, but some hand-written clients send it
        return (Message(role="system", parts=(TextPart(system),)),) if system else ()
    parts = _as_list(_as_object(system, key).get("parts"), f"{key}.parts")
    calls = _CallIds()
    texts = (_parse_part(part, f"{key}.parts", i, calls) for i, part in enumerate(parts))
    return tuple(Message(role="system", parts=(t,)) for t in texts if isinstance(t, TextPart))


def _parse_contents(body: JSONObject) -> tuple[Message, ...]:
    contents = _as_list(body.get("contents"), "contents")
    if not contents:
        raise _fail("contents", "must not be empty")
    calls = _CallIds()
    messages: list[Message] = []
    for i, content in enumerate(contents):
        messages.extend(_parse_content(content, f"contents[{i}]", calls))
    return tuple(messages)


def _parse_content(content: JSONValue, param: str, calls: _CallIds) -> list[Message]:
    content = _as_object(content, param)
    role = content.get("role")
    parts = _as_list(content.get("parts"), f"{param}.parts")
    parts_param = f"{param}.parts"
    items = [_parse_part(part, parts_param, i, calls) for i, part in enumerate(parts)]
    if role == "model":
        return [_model_message(items, param)]
    if role is None or role == "user" or role == "function":  # role is optional; "function" is legacy
        return _user_messages(items, param)
    raise _fail(f"{param}.role", "must be 'user' or 'model'")


def _model_message(items: list[_ParsedPart | None], param: str) -> Message:
    parts: list[Part] = []
    tool_calls: list[ToolCall] = []
    for item in items:
        if isinstance(item, ToolCall):
            tool_calls.append(item)
        elif isinstance(item, Message):
            raise _fail(f"{param}.parts", "of a model turn must not contain a functionResponse")
        elif item is not None:
            parts.append(item)
    return Message(role="assistant", parts=tuple(parts), tool_calls=tuple(tool_calls))


def _user_messages(items: list[_ParsedPart | None], param: str) -> list[Message]:
    """A user turn: each functionResponse becomes a tool message, runs of other parts user messages."""
    messages: list[Message] = []
    run: list[Part] = []
    for item in items:
        if isinstance(item, ToolCall):
            raise _fail(f"{param}.parts", "of a user turn must not contain a functionCall")
        if isinstance(item, Message):
            if run:
                messages.append(Message(role="user", parts=tuple(run)))
                run = []
            messages.append(item)
        elif item is not None:
            run.append(item)
    if run:
        messages.append(Message(role="user", parts=tuple(run)))
    return messages


def _parse_generation_config(body: JSONObject) -> _GenerationConfig:
    config, key = _pick(body, "generationConfig", "generation_config")
    if config is None:
        return _GenerationConfig()
    config = _as_object(config, key)
    count, count_key = _pick(config, "candidateCount", "candidate_count")
    if (_optional_int(count, f"{key}.{count_key}", minimum=1) or 1) > 1:
        raise _fail(f"{key}.{count_key}", "greater than 1 is not supported")
    top_p, top_p_key = _pick(config, "topP", "top_p")
    max_tokens, max_key = _pick(config, "maxOutputTokens", "max_output_tokens")
    return _GenerationConfig(
        max_tokens=_optional_int(max_tokens, f"{key}.{max_key}", minimum=1),
        temperature=_optional_float(config.get("temperature"), f"{key}.temperature"),
        top_p=_optional_float(top_p, f"{key}.{top_p_key}"),
        stop=_parse_stop_sequences(config, key),
        seed=_optional_int(config.get("seed"), f"{key}.seed", minimum=-(2**31)),
        response_format=_parse_response_format(config, key),
    )


def _parse_stop_sequences(config: JSONObject, param: str) -> tuple[str, ...]:
    stop, key = _pick(config, "stopSequences", "stop_sequences")
    if stop is None:
        return ()
    items = _as_list(stop, f"{param}.{key}")
    return tuple(_as_str(item, f"{param}.{key}[{i}]") for i, item in enumerate(items))


def _parse_response_format(config: JSONObject, param: str) -> ResponseFormat | None:
    mime_type, mime_key = _pick(config, "responseMimeType", "response_mime_type")
    mime_type = _optional_str(mime_type, f"{param}.{mime_key}")
    json_schema, key = _pick(config, "responseJsonSchema", "response_json_schema")
    if json_schema is not None:
        return ResponseFormat(type="json_schema", schema=_as_object(json_schema, f"{param}.{key}"))
    schema, key = _pick(config, "responseSchema", "response_schema")
    if schema is not None:
        return ResponseFormat(type="json_schema", schema=_to_json_schema(schema, f"{param}.{key}"))
    if mime_type == "application/json":
        return ResponseFormat(type="json_object")
    if mime_type == "text/plain":
        return ResponseFormat(type="text")
    return None


def _to_json_schema(schema: JSONValue, param: str, depth: int = 0) -> JSONObject:
    """Gemini's OpenAPI-dialect Schema as JSON Schema: lower-case types, `nullable` folded, camelCase."""
    schema = _as_object(schema, param)
    if depth > _MAX_SCHEMA_DEPTH:
        raise _fail(param, "is nested too deeply")
    converted: JSONObject = {}
    for raw_key, value in schema.items():
        key = _SCHEMA_KEYS.get(raw_key, raw_key)
        if key == "type" and isinstance(value, str):
            converted[key] = value.lower()
        elif key == "items":
            converted[key] = _to_json_schema(value, f"{param}.{raw_key}", depth + 1)
        elif key == "anyOf":
            options = _as_list(value, f"{param}.{raw_key}")
            converted[key] = [
                _to_json_schema(o, f"{param}.{raw_key}[{i}]", depth + 1) for i, o in enumerate(options)
            ]
        elif key == "properties":
            fields = _as_object(value, f"{param}.{raw_key}")
            converted[key] = {
                n: _to_json_schema(s, f"{param}.{raw_key}.{n}", depth + 1) for n, s in fields.items()
            }
        elif key != "nullable":
            converted[key] = value
    if schema.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


def _parse_tools(body: JSONObject) -> tuple[Tool, ...]:
    tools = body.get("tools")
    if tools is None:
        return ()
    parsed: list[Tool] = []
    for i, entry in enumerate(_as_list(tools, "tools")):
        declarations, key = _pick(
            _as_object(entry, f"tools[{i}]"), "functionDeclarations", "function_declarations"
        )
        if declarations is None:
            continue  # search, code execution and other built-in tools have no canonical form
        for j, declaration in enumerate(_as_list(declarations, f"tools[{i}].{key}")):
            parsed.append(_parse_declaration(declaration, f"tools[{i}].{key}[{j}]"))
    return tuple(parsed)


def _parse_declaration(declaration: JSONValue, param: str) -> Tool:
    declaration = _as_object(declaration, param)
    name = _as_str(declaration.get("name"), f"{param}.name")
    description = _optional_str(declaration.get("description"), f"{param}.description")
    json_schema, key = _pick(declaration, "parametersJsonSchema", "parameters_json_schema")
    if json_schema is not None:
        return Tool(name=name, description=description, parameters=_as_object(json_schema, f"{param}.{key}"))
    schema = declaration.get("parameters")
    parameters = None if schema is None else _to_json_schema(schema, f"{param}.parameters")
    return Tool(name=name, description=description, parameters=parameters)


def _parse_tool_config(body: JSONObject) -> ToolChoice | None:
    config, key = _pick(body, "toolConfig", "tool_config")
    if config is None:
        return None
    calling, calling_key = _pick(_as_object(config, key), "functionCallingConfig", "function_calling_config")
    if calling is None:
        return None
    param = f"{key}.{calling_key}"
    calling = _as_object(calling, param)
    mode = _optional_str(calling.get("mode"), f"{param}.mode")
    if mode is None or mode.upper() == "MODE_UNSPECIFIED":
        return None
    canonical_mode = _TOOL_MODES.get(mode.upper())
    if canonical_mode is None:
        raise _fail(f"{param}.mode", "must be one of AUTO, ANY, NONE, VALIDATED")
    names, names_key = _pick(calling, "allowedFunctionNames", "allowed_function_names")
    names = [] if names is None else _as_list(names, f"{param}.{names_key}")
    if canonical_mode == "required" and len(names) == 1:
        return ToolChoice(mode="required", name=_as_str(names[0], f"{param}.{names_key}[0]"))
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
    contents = _build_contents(req.messages, leading, sign=_requires_signatures(req.model))
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
            role, parts = "model", _model_parts(message, sign=sign)
        elif message.role == "tool":
            role, parts = "user", _tool_result_parts(message, index, call_names)
        else:  # user, and system messages after the first turn, which Gemini has no place for
            role, parts = "user", [_build_part(p) for p in message.parts if not _is_empty_text(p)]
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
        raise _fail(f"messages[{index}].tool_call_id", "does not match any earlier tool call")
    result: JSONObject = {"name": name, "response": _wrap_tool_result(message.text, message.is_error)}
    if call_id:
        result["id"] = split_signature(call_id)[0]
    parts: list[JSONValue] = [{"functionResponse": result}]
    # Gemini's functionResponse holds no images; they travel as parts of the same user turn.
    parts.extend(_build_part(p) for p in message.parts if isinstance(p, ImagePart))
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
    return config


# --- Responses -------------------------------------------------------------------------------------


def parse_chat_response(body: JSONObject) -> ChatResponse:
    """An upstream generateContent reply as canonical; a malformed one is the upstream's failure."""
    try:
        return _parse_response(body)
    except InvalidRequestError as exc:
        raise UpstreamConnectionError(f"malformed Gemini reply: {exc.message}", provider=PROVIDER) from exc


def _parse_response(body: JSONObject) -> ChatResponse:
    body = _as_object(body, "reply")
    usage = _parse_usage(body.get("usageMetadata"), "usageMetadata") or Usage()
    candidates = _optional_list(body.get("candidates"), "candidates")
    if candidates:
        message, finish = _parse_candidate(candidates[0], "candidates[0]")
    elif _is_blocked(body):
        message, finish = Message(role="assistant"), "content_filter"
    else:
        raise _fail("candidates", "is empty and the prompt was not blocked")
    return ChatResponse(
        id=_optional_str(body.get("responseId"), "responseId") or _new_response_id(),
        model=_optional_str(body.get("modelVersion"), "modelVersion") or "",
        message=message,
        finish_reason=finish,
        usage=usage,
    )


def _candidate_parts(candidate: JSONObject, param: str, calls: _CallIds) -> Iterable[_ParsedPart]:
    content = candidate.get("content")
    if content is None:
        return ()
    parts = _as_object(content, f"{param}.content").get("parts")
    if parts is None:
        return ()
    parts = _as_list(parts, f"{param}.content.parts")
    parts_param = f"{param}.content.parts"
    parsed = (_parse_part(part, parts_param, i, calls) for i, part in enumerate(parts))
    return [item for item in parsed if item is not None]


def _parse_candidate(candidate: JSONValue, param: str) -> tuple[Message, FinishReason]:
    candidate = _as_object(candidate, param)
    parts: list[Part] = []
    tool_calls: list[ToolCall] = []
    for item in _candidate_parts(candidate, param, _CallIds()):
        if isinstance(item, ToolCall):
            tool_calls.append(item)
        elif isinstance(item, Message):
            raise _fail(f"{param}.content.parts", "must not contain a functionResponse")
        else:
            parts.append(item)
    raw_finish = _optional_str(candidate.get("finishReason"), f"{param}.finishReason")
    finish = _finish_reason(raw_finish, bool(tool_calls))
    return Message(role="assistant", parts=tuple(parts), tool_calls=tuple(tool_calls)), finish


def _finish_reason(raw: str | None, has_tool_calls: bool) -> FinishReason:
    """STOP means tool_calls when the model called functions; unknown future reasons read as stop."""
    reason = _FINISH_FROM_GEMINI.get(raw or "STOP", "stop")
    return "tool_calls" if reason == "stop" and has_tool_calls else reason


def _is_blocked(body: JSONObject) -> bool:
    feedback = body.get("promptFeedback")
    if not isinstance(feedback, dict):
        return False
    reason = feedback.get("blockReason")
    return isinstance(reason, str) and reason != "BLOCKED_REASON_UNSPECIFIED"


def _token_count(usage: JSONObject, key: str, param: str) -> int:
    return _optional_int(usage.get(key), f"{param}.{key}", minimum=0) or 0


def _parse_usage(value: JSONValue, param: str) -> Usage | None:
    """Thinking tokens are billed as output and tool-use prompt tokens as input, so they count there."""
    if value is None:
        return None
    usage = _as_object(value, param)
    return Usage(
        input_tokens=_token_count(usage, "promptTokenCount", param)
        + _token_count(usage, "toolUsePromptTokenCount", param),
        output_tokens=_token_count(usage, "candidatesTokenCount", param)
        + _token_count(usage, "thoughtsTokenCount", param),
        cached_tokens=_token_count(usage, "cachedContentTokenCount", param),
    )


def _new_response_id() -> str:
    return f"gemini-{uuid.uuid4().hex}"


def render_chat_response(resp: ChatResponse) -> JSONObject:
    """A canonical answer as the GenerateContentResponse a Gemini client expects."""
    candidate: JSONObject = {
        "content": _render_content(_model_parts(resp.message, sign=False)),
        "finishReason": _FINISH_TO_GEMINI[resp.finish_reason],
        "index": 0,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": _render_usage(resp.usage),
        "modelVersion": resp.model,
        "responseId": resp.id,
    }


def _render_content(parts: list[JSONValue]) -> JSONObject:
    return {"role": "model", "parts": parts} if parts else {"role": "model"}


def _render_usage(usage: Usage) -> JSONObject:
    rendered: JSONObject = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_tokens:
        rendered["cachedContentTokenCount"] = usage.cached_tokens
    return rendered


# --- Streams ---------------------------------------------------------------------------------------


class StreamParser:
    """Turns Gemini's SSE chunks (each a whole GenerateContentResponse) into canonical stream events.

    Function calls arrive whole, so each becomes a ToolCallStart plus one ToolCallDelta. Usage repeats,
    cumulatively, in every chunk: the last one seen is reported once, when the finish reason arrives.
    """

    __slots__ = ("_calls", "_finished", "_started", "_tool_count", "_usage", "_usage_sent")

    def __init__(self) -> None:
        self._calls = _CallIds()
        self._started = False
        self._finished = False
        self._tool_count = 0
        self._usage: Usage | None = None
        self._usage_sent = False

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Events for one upstream chunk; Gemini sends no `event:` names, so `event` is ignored."""
        try:
            return self._feed(data)
        except InvalidRequestError as exc:
            raise UpstreamConnectionError(
                f"malformed Gemini stream: {exc.message}", provider=PROVIDER
            ) from exc

    def finish(self) -> list[StreamEvent]:
        """What the stream still owes when the upstream closes it: Finish, then the usage."""
        if not self._started:
            raise UpstreamConnectionError("Gemini stream ended before any response", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("tool_calls" if self._tool_count else "stop"))
        events.extend(self._owed_usage())
        return events

    def _feed(self, data: JSONObject) -> list[StreamEvent]:
        data = _as_object(data, "chunk")
        if "error" in data:
            raise UpstreamConnectionError(f"Gemini stream error: {_error_message(data)}", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            response_id = _optional_str(data.get("responseId"), "responseId") or _new_response_id()
            events.append(
                StreamStart(
                    id=response_id, model=_optional_str(data.get("modelVersion"), "modelVersion") or ""
                )
            )
        self._usage = _parse_usage(data.get("usageMetadata"), "usageMetadata") or self._usage
        candidates = _optional_list(data.get("candidates"), "candidates")
        if candidates and not self._finished:
            self._feed_candidate(_as_object(candidates[0], "candidates[0]"), events)
        elif not candidates and not self._finished and _is_blocked(data):
            self._finished = True
            events.append(Finish("content_filter"))
        if self._finished:
            events.extend(self._owed_usage())
        return events

    def _feed_candidate(self, candidate: JSONObject, events: list[StreamEvent]) -> None:
        for item in _candidate_parts(candidate, "candidates[0]", self._calls):
            if isinstance(item, TextPart):
                events.append(TextDelta(item.text))
            elif isinstance(item, ToolCall):
                events.append(ToolCallStart(index=self._tool_count, id=item.id, name=item.name))
                events.append(ToolCallDelta(index=self._tool_count, arguments=item.arguments))
                self._tool_count += 1
            elif isinstance(item, Message):
                raise _fail("candidates[0].content.parts", "must not contain a functionResponse")
            # Generated images have no canonical stream event; they are dropped from streams.
        raw_finish = _optional_str(candidate.get("finishReason"), "candidates[0].finishReason")
        if raw_finish is not None and raw_finish != "FINISH_REASON_UNSPECIFIED":
            self._finished = True
            events.append(Finish(_finish_reason(raw_finish, self._tool_count > 0)))

    def _owed_usage(self) -> list[StreamEvent]:
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [UsageReport(self._usage)]


def _error_message(data: JSONObject) -> str:
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else "unknown error"


class _PendingCall:
    """A tool call being streamed to a Gemini client, which can only receive it whole."""

    __slots__ = ("fragments", "id", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.fragments: list[str] = []


class StreamRenderer:
    """Canonical stream events as Gemini SSE chunks for a client of `streamGenerateContent?alt=sse`.

    Text goes out as it comes. Tool calls are held until the stream finishes, because a Gemini
    `functionCall` carries its arguments as one object; they go out in the last chunk, together with
    the finish reason and usage (held back until both are known, or until `close`).
    """

    __slots__ = ("_calls", "_done", "_finish", "_model", "_response_id", "_usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._response_id = ""
        self._calls: dict[int, _PendingCall] = {}
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def render(self, event: StreamEvent) -> bytes:
        """Zero or one `data:` frame for `event`."""
        if self._done:
            return b""
        if isinstance(event, TextDelta):
            return self._frame([{"text": event.text}]) if event.text else b""
        if isinstance(event, StreamStart):
            self._response_id = event.id
        elif isinstance(event, ToolCallStart):
            self._calls[event.index] = _PendingCall(event.id, event.name)
        elif isinstance(event, ToolCallDelta):
            self._calls.setdefault(event.index, _PendingCall(f"call_{event.index}", "")).fragments.append(
                event.arguments
            )
        elif isinstance(event, Finish):
            self._finish = event.reason
            return self._last_frame() if self._usage is not None else b""
        elif isinstance(event, UsageReport):
            self._usage = event.usage
            return self._last_frame() if self._finish is not None else b""
        return b""

    def close(self) -> bytes:
        """The last chunk, if the finish reason or usage never arrived to trigger it."""
        return b"" if self._done else self._last_frame()

    def _last_frame(self) -> bytes:
        self._done = True
        calls = [self._calls[index] for index in sorted(self._calls)]
        parts: list[JSONValue] = [
            _build_function_call(ToolCall(id=c.id, name=c.name, arguments="".join(c.fragments)))
            for c in calls
        ]
        finish = self._finish or ("tool_calls" if calls else "stop")
        extra: JSONObject = {} if self._usage is None else {"usageMetadata": _render_usage(self._usage)}
        # An empty text part mirrors what Gemini itself sends in a final chunk with nothing else to say.
        return self._frame(parts or [{"text": ""}], _FINISH_TO_GEMINI[finish], extra)

    def _frame(
        self, parts: list[JSONValue], finish: str | None = None, extra: JSONObject | None = None
    ) -> bytes:
        candidate: JSONObject = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        chunk: JSONObject = {"candidates": [candidate], **(extra or {})}
        chunk["modelVersion"] = self._model
        chunk["responseId"] = self._response_id
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


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
        embeddings = _as_list(_as_object(body, "reply").get("embeddings"), "embeddings")
        vectors = tuple(_parse_vector(e, f"embeddings[{i}]") for i, e in enumerate(embeddings))
    except InvalidRequestError as exc:
        raise UpstreamConnectionError(f"malformed Gemini reply: {exc.message}", provider=PROVIDER) from exc
    return EmbeddingResponse(model=model, vectors=vectors)


def _parse_vector(embedding: JSONValue, param: str) -> tuple[float, ...]:
    values = _as_list(_as_object(embedding, param).get("values"), f"{param}.values")
    if all(type(v) is float for v in values):  # the usual case, checked at C speed
        return tuple(values)  # type: ignore[arg-type]
    return tuple(_as_number(v, f"{param}.values[{i}]") for i, v in enumerate(values))


def _as_number(value: JSONValue, param: str) -> float:
    number = _optional_float(value, param)
    if number is None:
        raise _fail(param, "must be a number")
    return number
