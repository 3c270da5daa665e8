"""Gemini parts, tool-call ids and reply pieces that requests, whole replies and streams share."""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

import orjson

from ferryman.core.canonical import (
    FinishReason,
    ImagePart,
    JSONObject,
    JSONValue,
    Message,
    Part,
    TextPart,
    ThinkingPart,
    ToolCall,
    Usage,
)
from ferryman.wire._fields import (
    Malformed,
    as_list,
    as_object,
    as_opt_str,
    as_str,
    get_opt_int,
    load_object,
    wrong,
)

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

FINISH_TO_GEMINI: Final[Mapping[FinishReason, str]] = MappingProxyType(
    {
        "stop": "STOP",
        "tool_calls": "STOP",
        "length": "MAX_TOKENS",
        "content_filter": "SAFETY",
        "error": "OTHER",
    }
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


# --- Field spellings and JSON text -----------------------------------------------------------------


def pick(obj: JSONObject, camel: str, snake: str) -> tuple[JSONValue, str]:
    """Return a field in whichever spelling proto JSON allows (None when absent) and the key used."""
    value = obj.get(camel)
    if value is None and snake in obj:
        return obj[snake], snake
    return value, camel


def dump_json(value: JSONValue, param: str) -> str:
    """Compact JSON text; what orjson cannot encode (integers past 64 bits) Gemini cannot take either."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # integers past 64 bits, absurd nesting
        raise Malformed(param, "cannot be encoded as JSON") from exc


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


def requires_signatures(model: str) -> bool:
    """Gemini 3 and later refuse replayed function calls without a thought signature."""
    match = _SIGNED_GENERATION.search(model)
    return match is not None and int(match.group(1)) >= 3


class CallIds:
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

ParsedPart = TextPart | ImagePart | ToolCall | Message | ThinkingPart

_SIGNATURE_KEYS: Final = ("thoughtSignature", "thought_signature")


def parse_part(part: JSONValue, parts_param: str, index: int, calls: CallIds) -> ParsedPart | None:
    """Part `index` of a parts array; None for parts with no canonical form (empty unsigned text).

    A `thought: true` part is a ThinkingPart; a `thoughtSignature` stays on the part it came with
    (a thought, a text or a function call). Plain text, by far the most common part, is checked
    before any field path is formatted.
    """
    if isinstance(part, dict):
        text = part.get("text")
        if isinstance(text, str) and "thought" not in part and not any(k in part for k in _SIGNATURE_KEYS):
            return TextPart(text) if text else None
    param = f"{parts_param}[{index}]"
    part = as_object(part, param)
    text = part.get("text")
    if text is not None:
        return _parse_text_part(part, as_str(text, f"{param}.text"), param)
    return _parse_non_text_part(part, param, calls)


def _parse_text_part(part: JSONObject, text: str, param: str) -> TextPart | ThinkingPart | None:
    signature, key = pick(part, *_SIGNATURE_KEYS)
    signature = as_opt_str(signature, f"{param}.{key}") or None
    thought = part.get("thought")
    if thought is not None and not isinstance(thought, bool):
        raise wrong(thought, f"{param}.thought", "a boolean")
    if not text and signature is None:
        return None
    if thought:
        return ThinkingPart(text=text, signature=signature)
    return TextPart(text, signature=signature)


def _parse_non_text_part(part: JSONObject, param: str, calls: CallIds) -> ParsedPart | None:
    inline, key = pick(part, "inlineData", "inline_data")
    if inline is not None:
        return _parse_inline_data(inline, f"{param}.{key}")
    file_data, key = pick(part, "fileData", "file_data")
    if file_data is not None:
        uri, uri_key = pick(as_object(file_data, f"{param}.{key}"), "fileUri", "file_uri")
        return ImagePart(as_str(uri, f"{param}.{key}.{uri_key}"))
    call, key = pick(part, "functionCall", "function_call")
    if call is not None:
        signature, sig_key = pick(part, "thoughtSignature", "thought_signature")
        return _parse_function_call(
            call, f"{param}.{key}", as_opt_str(signature, f"{param}.{sig_key}"), calls
        )
    result, key = pick(part, "functionResponse", "function_response")
    if result is not None:
        return _parse_function_response(result, f"{param}.{key}", calls)
    return None


def _parse_inline_data(inline: JSONValue, param: str) -> ImagePart:
    inline = as_object(inline, param)
    mime_type, mime_key = pick(inline, "mimeType", "mime_type")
    mime_type = as_str(mime_type, f"{param}.{mime_key}")
    data = as_str(inline.get("data"), f"{param}.data")
    return ImagePart(f"data:{mime_type};base64,{data}")


def _parse_function_call(call: JSONValue, param: str, signature: str | None, calls: CallIds) -> ToolCall:
    call = as_object(call, param)
    name = as_str(call.get("name"), f"{param}.name")
    args = call.get("args")
    arguments = "{}" if args is None else dump_json(as_object(args, f"{param}.args"), f"{param}.args")
    call_id = calls.for_call(as_opt_str(call.get("id"), f"{param}.id"), name, signature)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _parse_function_response(result: JSONValue, param: str, calls: CallIds) -> Message:
    result = as_object(result, param)
    name = as_str(result.get("name"), f"{param}.name")
    response = result.get("response")
    response = {} if response is None else as_object(response, f"{param}.response")
    text, is_error = _unwrap_tool_result(response, f"{param}.response")
    call_id = calls.for_result(as_opt_str(result.get("id"), f"{param}.id"), name)
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
    return dump_json(response, param), False


def wrap_tool_result(text: str, is_error: bool) -> JSONObject:
    """Canonical tool text as the object `functionResponse.response` must be (see module docs)."""
    if not is_error:
        parsed = load_object(text)
        if parsed is not None and not _is_wrapper(parsed):
            return parsed
    return {"error" if is_error else "result": text}


def _guess_media_type(url: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _IMAGE_TYPES.get(extension, "image/jpeg")


def build_part(part: Part) -> JSONObject:
    """A text or media part as Gemini spells it: data URLs inline, other URLs as `fileData`; a text
    part's thought signature goes back on it."""
    if isinstance(part, TextPart):
        if part.signature is None:
            return {"text": part.text}
        return {"text": part.text, "thoughtSignature": part.signature}
    if part.is_data_url:
        media_type, data = part.split_data_url()
        return {"inlineData": {"mimeType": media_type, "data": data}}
    return {"fileData": {"mimeType": _guess_media_type(part.url), "fileUri": part.url}}


def _arguments_object(arguments: str) -> JSONObject:
    """Tool-call arguments as the object Gemini requires; text that is no JSON object is kept, wrapped."""
    if not arguments.strip():
        return {}
    parsed = load_object(arguments)
    return parsed if parsed is not None else {"arguments": arguments}


def build_function_call(call: ToolCall) -> JSONObject:
    """A canonical tool call as a `functionCall` part, its thought signature split back off the id."""
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


def build_thought(thought: ThinkingPart) -> JSONObject | None:
    """A thinking block as a `thought: true` part with its signature; None for a redacted block
    (Anthropic's encrypted reasoning, which Gemini cannot read) or an empty one."""
    if thought.redacted_data is not None or not (thought.text or thought.signature):
        return None
    part: JSONObject = {"text": thought.text, "thought": True}
    if thought.signature:
        part["thoughtSignature"] = thought.signature
    return part


def model_parts(message: Message, *, sign: bool) -> list[JSONValue]:
    """An assistant message as Gemini parts: thoughts, then text and media, then function calls;
    `sign` adds the placeholder signature to the calls when none is known."""
    thoughts = (build_thought(t) for t in message.thinking)
    parts: list[JSONValue] = [t for t in thoughts if t is not None]
    parts.extend(build_part(p) for p in message.parts if not is_empty_text(p))
    calls = [build_function_call(call) for call in message.tool_calls]
    if sign and calls and not any("thoughtSignature" in call for call in calls):
        calls[0]["thoughtSignature"] = PLACEHOLDER_SIGNATURE
    parts.extend(calls)
    return parts


def is_empty_text(part: Part) -> bool:
    """Gemini refuses empty text parts, so builders skip them (unless one carries a signature, as
    Gemini's own last stream chunk does)."""
    return isinstance(part, TextPart) and not part.text and part.signature is None


# --- Reply pieces (whole replies and streams) ------------------------------------------------------


def candidate_parts(candidate: JSONObject, param: str, calls: CallIds) -> Iterable[ParsedPart]:
    """The canonical items of a candidate's parts, skipping those with no canonical form."""
    content = candidate.get("content")
    if content is None:
        return ()
    parts = as_object(content, f"{param}.content").get("parts")
    if parts is None:
        return ()
    parts = as_list(parts, f"{param}.content.parts")
    parts_param = f"{param}.content.parts"
    parsed = (parse_part(part, parts_param, i, calls) for i, part in enumerate(parts))
    return [item for item in parsed if item is not None]


def parse_finish_reason(raw: str | None, has_tool_calls: bool) -> FinishReason:
    """STOP means tool_calls when the model called functions; unknown future reasons read as stop."""
    reason = _FINISH_FROM_GEMINI.get(raw or "STOP", "stop")
    return "tool_calls" if reason == "stop" and has_tool_calls else reason


def is_blocked(body: JSONObject) -> bool:
    """Whether a reply without candidates is Gemini refusing the prompt (a content filter, not a fault)."""
    feedback = body.get("promptFeedback")
    if not isinstance(feedback, dict):
        return False
    reason = feedback.get("blockReason")
    return isinstance(reason, str) and reason != "BLOCKED_REASON_UNSPECIFIED"


def _token_count(usage: JSONObject, key: str, param: str) -> int:
    return get_opt_int(usage, key, param, minimum=0, whole_floats=True) or 0


def parse_usage(value: JSONValue, param: str) -> Usage | None:
    """Thinking tokens are billed as output and tool-use prompt tokens as input, so they count there.

    Gemini counts cached content inside `promptTokenCount` (as the canonical Usage does) but thoughts
    apart from `candidatesTokenCount`, so the thoughts are added to the output and kept as its
    reasoning part.
    """
    if value is None:
        return None
    usage = as_object(value, param)
    thoughts = _token_count(usage, "thoughtsTokenCount", param)
    return Usage(
        input_tokens=_token_count(usage, "promptTokenCount", param)
        + _token_count(usage, "toolUsePromptTokenCount", param),
        output_tokens=_token_count(usage, "candidatesTokenCount", param) + thoughts,
        cached_tokens=_token_count(usage, "cachedContentTokenCount", param),
        reasoning_tokens=thoughts,
    )


def new_response_id() -> str:
    """An id for replies that carry no `responseId`: canonical responses always have one."""
    return f"gemini-{uuid.uuid4().hex}"


def render_usage(usage: Usage) -> JSONObject:
    """Canonical usage as `usageMetadata`, for whole replies and the last stream chunk.

    Reasoning goes back out of the candidates into `thoughtsTokenCount`, as Gemini reports it. Gemini
    has no field for cache writes: they stay inside `promptTokenCount`.
    """
    rendered: JSONObject = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": max(usage.output_tokens - usage.reasoning_tokens, 0),
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_tokens:
        rendered["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        rendered["thoughtsTokenCount"] = usage.reasoning_tokens
    return rendered
