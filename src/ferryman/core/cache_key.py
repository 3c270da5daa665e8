"""The response cache's key: a SHA-256 of the canonical request's answer-shaping fields, under a scope.

Two requests share a key exactly when a model would be asked the same thing: the model, the messages,
the tools and tool choice, the sampling parameters (temperature, top_p, max_tokens, stop, seed), the
parallel-tool-calls flag and the response format. What only shapes the delivery is left out — the
`stream` flag (a stream can be answered from a whole answer and the other way round), the end user, the
client's fallbacks and timeout — and so is the wire format the request arrived in, since every format
is parsed to the same canonical request.

The serialisation is one `orjson.dumps` of a small list built from the canonical fields, keys sorted so
that JSON schemas written in another key order still match; one SHA-256 of that is the key.
"""

from __future__ import annotations

import hashlib

import orjson

from ferryman.core.canonical import ChatRequest, ImagePart, JSONValue, Message, Part

KEY_VERSION = 1  # bumped whenever the serialisation changes, so old entries stop matching


def cache_key(scope: str, request: ChatRequest) -> str:
    """`response:<scope>:<sha256 of the request's answer-shaping fields>`."""
    digest = hashlib.sha256(fingerprint(request)).hexdigest()
    return f"response:{scope}:{digest}"


def fingerprint(request: ChatRequest) -> bytes:
    """The canonical serialisation the key hashes (see the module docstring)."""
    choice = request.tool_choice
    response_format = request.response_format
    fields: list[JSONValue] = [
        KEY_VERSION,
        request.model,
        [_message(message) for message in request.messages],
        request.max_tokens,
        _number(request.temperature),
        _number(request.top_p),
        list(request.stop),
        request.seed,
        [[tool.name, tool.description, tool.parameters] for tool in request.tools],
        [choice.mode, choice.name] if choice is not None else None,
        request.parallel_tool_calls,
        (
            [response_format.type, response_format.schema, response_format.name, response_format.strict]
            if response_format is not None
            else None
        ),
    ]
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def _message(message: Message) -> JSONValue:
    return [
        message.role,
        [_part(part) for part in message.parts],
        [[call.id, call.name, call.arguments] for call in message.tool_calls],
        message.tool_call_id,
        message.name,
        message.is_error,
    ]


def _part(part: Part) -> JSONValue:
    if isinstance(part, ImagePart):
        return [part.url, part.detail]
    return part.text


def _number(value: float | None) -> float | None:
    """`0` and `0.0` are one temperature: JSON parsers hand back either."""
    return float(value) if value is not None else None
