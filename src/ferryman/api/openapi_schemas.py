"""The JSON Schemas of the hot-path bodies (OpenAI, Anthropic, Gemini, probes), for `ferryman.api.openapi`.

Compact on purpose: the main fields of each format — those the gateway translates — with objects left
open to the rest (`additionalProperties` is not restricted: other fields are ignored, never refused).
Where a field's shape depends on another (a message's role, a response format's type) the variants are
spelled out with `oneOf`, so a fuzzer generating from these schemas produces bodies the gateway accepts.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
"""A JSON Schema (2020-12, as OpenAPI 3.1 uses) as plain JSON-ready data."""

Schemas = dict[str, Schema]


def component_schemas() -> Schemas:
    """Every schema the hot-path operations refer to, by component name (fresh objects on each call)."""
    return {
        **_error_schemas(),
        **_openai_chat_schemas(),
        **_openai_other_schemas(),
        **_anthropic_schemas(),
        **_gemini_schemas(),
        **_operations_schemas(),
    }


# --- Building blocks ---------------------------------------------------------------------------------


def typed(kind: str, description: str | None = None, **keywords: Any) -> Schema:
    """A schema of one JSON type."""
    schema: Schema = {"type": kind, **keywords}
    if description:
        schema["description"] = description
    return schema


def ref(name: str) -> Schema:
    """A reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema, description: str | None = None, **keywords: Any) -> Schema:
    """An array of `items`."""
    return typed("array", description, items=items, **keywords)


def obj(properties: Schema, *required: str, description: str | None = None) -> Schema:
    """An open object schema: fields not listed are accepted (ignored or forwarded, never refused)."""
    schema = typed("object", description, properties=properties)
    if required:
        schema["required"] = list(required)
    return schema


def nullable(schema: Schema) -> Schema:
    """`schema`, or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


def one_or_many(schema: Schema, description: str) -> Schema:
    """One `schema`, or an array of them (`stop`, `input`)."""
    return {"anyOf": [schema, array(schema)], "description": description}


def text_or(items: Schema, description: str) -> Schema:
    """A message's content: plain text, or a list of typed parts."""
    return {"anyOf": [typed("string"), array(items)], "description": description}


# --- Schemas by format -------------------------------------------------------------------------------


def _error_schemas() -> Schemas:
    return {
        "Error": obj(
            {
                "type": {"const": "error", "description": "Makes the same body valid for Anthropic clients."},
                "error": ref("ErrorObject"),
            },
            "error",
            description="Every error response, whichever format the request used.",
        ),
        "ErrorObject": obj(
            {
                "message": typed("string", "What went wrong, for people."),
                "type": typed("string", "invalid_request_error, authentication_error, permission_error, …"),
                "param": nullable(
                    typed("string", "The request field at fault, as a path (`messages[0].role`).")
                ),
                "code": nullable(typed("string", "Stable machine-readable reason (`model_not_found`, …).")),
            },
            "message",
            "type",
            "param",
            "code",
        ),
    }


def _openai_chat_schemas() -> Schemas:
    """Chat Completions: the fields the gateway translates (others are accepted and ignored)."""
    return {
        "ChatCompletionRequest": _chat_request(),
        "ChatMessage": _chat_message(),
        "ChatTextPart": obj({"type": {"const": "text"}, "text": typed("string")}, "type", "text"),
        "ChatImagePart": obj(
            {
                "type": {"const": "image_url"},
                "image_url": obj(
                    {"url": typed("string", "https: or data: URL."), "detail": typed("string")}, "url"
                ),
            },
            "type",
            "image_url",
        ),
        "ChatRefusalPart": obj({"type": {"const": "refusal"}, "refusal": typed("string")}, "type", "refusal"),
        "ChatToolCall": obj(
            {
                "id": typed("string"),
                "type": {"const": "function"},
                "function": obj(
                    {"name": typed("string"), "arguments": typed("string", "JSON text.")}, "name", "arguments"
                ),
            },
            "id",
            "function",
        ),
        "ChatTool": obj(
            {
                "type": {"const": "function"},
                "function": obj(
                    {
                        "name": typed("string"),
                        "description": typed("string"),
                        "parameters": typed("object"),
                        "strict": typed("boolean"),
                    },
                    "name",
                ),
            },
            "type",
            "function",
        ),
        "ChatCompletion": obj(
            {
                "id": typed("string"),
                "object": {"const": "chat.completion"},
                "created": typed("integer"),
                "model": typed("string"),
                "choices": array(ref("ChatChoice")),
                "usage": ref("ChatUsage"),
            },
            "id",
            "object",
            "created",
            "model",
            "choices",
        ),
        "ChatChoice": obj(
            {
                "index": typed("integer"),
                "message": obj(
                    {
                        "role": {"const": "assistant"},
                        "content": nullable(typed("string")),
                        "refusal": nullable(typed("string")),
                        "tool_calls": array(ref("ChatToolCall")),
                    },
                    "role",
                ),
                "finish_reason": typed("string", enum=["stop", "length", "tool_calls", "content_filter"]),
            },
            "index",
            "message",
            "finish_reason",
        ),
        "ChatUsage": obj(
            {
                "prompt_tokens": typed("integer"),
                "completion_tokens": typed("integer"),
                "total_tokens": typed("integer"),
                "prompt_tokens_details": obj({"cached_tokens": typed("integer")}),
            },
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ),
    }


def _chat_message() -> Schema:
    """One message; what it must carry depends on its role."""
    text = text_or(ref("ChatTextPart"), "Text, or a list of text parts.")
    user = text_or({"oneOf": [ref("ChatTextPart"), ref("ChatImagePart")]}, "Text, or text and image parts.")
    reply = text_or({"oneOf": [ref("ChatTextPart"), ref("ChatRefusalPart")]}, "Text, or text parts.")
    name = typed("string")
    return {
        "oneOf": [
            obj(
                {"role": typed("string", enum=["system", "developer"]), "content": text, "name": name},
                "role",
                "content",
            ),
            obj({"role": {"const": "user"}, "content": user, "name": name}, "role", "content"),
            obj(
                {
                    "role": {"const": "assistant"},
                    "content": nullable(reply),
                    "name": name,
                    "tool_calls": array(ref("ChatToolCall"), "The calls this turn made."),
                },
                "role",
            ),
            obj(
                {
                    "role": {"const": "tool"},
                    "content": text,
                    "tool_call_id": typed("string", "The call answered."),
                },
                "role",
                "content",
                "tool_call_id",
            ),
        ]
    }


def _chat_request() -> Schema:
    """The Chat Completions body."""
    return obj(
        {
            "model": typed("string", "A model name from the config."),
            "messages": array(ref("ChatMessage"), minItems=1),
            "stream": typed("boolean"),
            "stream_options": obj({"include_usage": typed("boolean")}),
            "max_completion_tokens": typed("integer", minimum=1),
            "max_tokens": typed("integer", "Legacy name of `max_completion_tokens`.", minimum=1),
            "temperature": typed("number", minimum=0, maximum=2),
            "top_p": typed("number", minimum=0, maximum=1),
            "n": typed("integer", "Only 1: the gateway returns one choice.", minimum=1, maximum=1),
            "stop": one_or_many(typed("string"), "Stop sequences."),
            "tools": array(ref("ChatTool")),
            "tool_choice": {
                "anyOf": [
                    typed("string", enum=["none", "auto", "required"]),
                    obj(
                        {
                            "type": {"const": "function"},
                            "function": obj({"name": typed("string")}, "name"),
                        },
                        "type",
                        "function",
                    ),
                ]
            },
            "parallel_tool_calls": typed("boolean"),
            "response_format": {
                "oneOf": [
                    obj({"type": typed("string", enum=["text", "json_object"])}, "type"),
                    obj(
                        {
                            "type": {"const": "json_schema"},
                            "json_schema": obj(
                                {
                                    "name": typed("string"),
                                    "schema": typed("object"),
                                    "strict": typed("boolean"),
                                },
                                "name",
                            ),
                        },
                        "type",
                        "json_schema",
                    ),
                ]
            },
            "seed": typed("integer"),
            "user": typed("string"),
            **_gateway_options(),
        },
        "model",
        "messages",
    )


def _openai_other_schemas() -> Schemas:
    return {
        "EmbeddingRequest": obj(
            {
                "model": typed("string", "A model name from the config."),
                "input": one_or_many(typed("string"), "A string or a non-empty list of strings."),
                "encoding_format": typed("string", enum=["float", "base64"]),
                "dimensions": typed("integer", minimum=1),
                "user": typed("string"),
                **_gateway_options(),
            },
            "model",
            "input",
        ),
        "EmbeddingList": obj(
            {
                "object": {"const": "list"},
                "model": typed("string"),
                "data": array(
                    obj(
                        {
                            "object": {"const": "embedding"},
                            "index": typed("integer"),
                            "embedding": {
                                "anyOf": [
                                    array(typed("number")),
                                    typed("string", "Base64 of float32 values."),
                                ]
                            },
                        },
                        "index",
                        "embedding",
                    )
                ),
                "usage": obj({"prompt_tokens": typed("integer"), "total_tokens": typed("integer")}),
            },
            "object",
            "data",
        ),
        "KeyUsage": obj(
            {
                "object": {"const": "usage"},
                "key": obj({"id": typed("string"), "alias": typed("string")}),
                "windows": obj(
                    {
                        period: obj(
                            {
                                "start": typed("string", format="date-time"),
                                "resets_at": typed("string", format="date-time"),
                                "spent_usd": nullable(typed("number")),
                                "budget_usd": nullable(typed("number")),
                                "reserved_usd": typed("number"),
                                "remaining_usd": typed("number"),
                                "requests": nullable(typed("integer")),
                                "input_tokens": nullable(typed("integer")),
                                "output_tokens": nullable(typed("integer")),
                                "unpriced_requests": nullable(typed("integer")),
                            },
                            "start",
                            "resets_at",
                            "spent_usd",
                        )
                        for period in ("daily", "monthly")
                    }
                ),
            },
            "object",
            "key",
            "windows",
        ),
        "ModelList": obj(
            {
                "object": {"const": "list"},
                "data": array(
                    obj(
                        {
                            "id": typed("string"),
                            "object": {"const": "model"},
                            "created": typed("integer"),
                            "owned_by": typed("string"),
                        },
                        "id",
                        "object",
                    )
                ),
            },
            "object",
            "data",
        ),
    }


def _anthropic_schemas() -> Schemas:
    """Messages: the fields the gateway translates."""
    return {
        "MessageRequest": _message_request(),
        "ContentBlock": obj(
            {
                "type": typed("string", enum=["text", "image", "tool_use", "tool_result"]),
                "text": typed("string"),
                "source": obj(
                    {
                        "type": typed("string", enum=["base64", "url"]),
                        "media_type": typed("string"),
                        "data": typed("string"),
                        "url": typed("string"),
                    },
                    "type",
                ),
                "id": typed("string"),
                "name": typed("string"),
                "input": typed("object"),
                "tool_use_id": typed("string"),
                "content": text_or(ref("ContentBlock"), "A tool result: text or blocks."),
                "is_error": typed("boolean"),
            },
            "type",
        ),
        "Message": obj(
            {
                "id": typed("string"),
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "model": typed("string"),
                "content": array(ref("ContentBlock")),
                "stop_reason": nullable(
                    typed("string", enum=["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"])
                ),
                "stop_sequence": nullable(typed("string")),
                "usage": obj(
                    {
                        "input_tokens": typed("integer"),
                        "output_tokens": typed("integer"),
                        "cache_read_input_tokens": typed("integer"),
                        "cache_creation_input_tokens": typed("integer"),
                    },
                    "input_tokens",
                    "output_tokens",
                ),
            },
            "id",
            "type",
            "role",
            "model",
            "content",
            "usage",
        ),
    }


def _message_request() -> Schema:
    """The Messages body."""
    return obj(
        {
            "model": typed("string", "A model name from the config."),
            "max_tokens": typed("integer", minimum=1),
            "messages": array(
                obj(
                    {
                        "role": typed("string", enum=["user", "assistant"]),
                        "content": text_or(ref("ContentBlock"), "Text, or a list of blocks."),
                    },
                    "role",
                    "content",
                ),
                minItems=1,
            ),
            "system": text_or(ref("ContentBlock"), "Text, or a list of text blocks."),
            "stream": typed("boolean"),
            "temperature": typed("number", minimum=0, maximum=1),
            "top_p": typed("number", minimum=0, maximum=1),
            "stop_sequences": array(typed("string")),
            "tools": array(
                obj(
                    {
                        "name": typed("string"),
                        "description": typed("string"),
                        "input_schema": typed("object"),
                    },
                    "name",
                    "input_schema",
                )
            ),
            "tool_choice": obj(
                {
                    "type": typed("string", enum=["auto", "any", "tool", "none"]),
                    "name": typed("string"),
                    "disable_parallel_tool_use": typed("boolean"),
                },
                "type",
            ),
            "metadata": obj({"user_id": typed("string")}),
        },
        "model",
        "max_tokens",
        "messages",
    )


def _gemini_schemas() -> Schemas:
    """generateContent: the fields the gateway translates, in Google's camelCase JSON."""
    mime_and_data = {"mimeType": typed("string"), "data": typed("string", "Base64.")}
    return {
        "GenerateContentRequest": _generate_request(),
        "Content": obj(
            {
                "role": typed("string", enum=["user", "model"]),
                "parts": array(
                    obj(
                        {
                            "text": typed("string"),
                            "inlineData": obj(mime_and_data, "mimeType", "data"),
                            "fileData": obj(
                                {"mimeType": typed("string"), "fileUri": typed("string")}, "fileUri"
                            ),
                            "functionCall": obj(
                                {"id": typed("string"), "name": typed("string"), "args": typed("object")},
                                "name",
                            ),
                            "functionResponse": obj(
                                {"id": typed("string"), "name": typed("string"), "response": typed("object")},
                                "name",
                            ),
                        }
                    )
                ),
            }
        ),
        "GenerateContentResponse": obj(
            {
                "candidates": array(
                    obj(
                        {
                            "content": ref("Content"),
                            "finishReason": typed("string"),
                            "index": typed("integer"),
                        },
                        "content",
                    )
                ),
                "usageMetadata": obj(
                    {
                        "promptTokenCount": typed("integer"),
                        "candidatesTokenCount": typed("integer"),
                        "totalTokenCount": typed("integer"),
                    }
                ),
                "modelVersion": typed("string"),
                "responseId": typed("string"),
            },
            "candidates",
        ),
    }


def _generate_request() -> Schema:
    """The generateContent body (both methods)."""
    return obj(
        {
            "contents": array(ref("Content"), minItems=1),
            "systemInstruction": ref("Content"),
            "generationConfig": obj(
                {
                    "temperature": typed("number", minimum=0, maximum=2),
                    "topP": typed("number", minimum=0, maximum=1),
                    "maxOutputTokens": typed("integer", minimum=1),
                    "stopSequences": array(typed("string")),
                    "responseMimeType": typed("string", examples=["application/json"]),
                    "responseSchema": typed("object"),
                    "seed": typed("integer"),
                }
            ),
            "tools": array(
                obj(
                    {
                        "functionDeclarations": array(
                            obj(
                                {
                                    "name": typed("string"),
                                    "description": typed("string"),
                                    "parameters": typed("object"),
                                },
                                "name",
                            )
                        )
                    }
                )
            ),
            "toolConfig": obj(
                {
                    "functionCallingConfig": obj(
                        {
                            "mode": typed("string", enum=["AUTO", "ANY", "NONE"]),
                            "allowedFunctionNames": array(typed("string")),
                        }
                    )
                }
            ),
        },
        "contents",
    )


def _operations_schemas() -> Schemas:
    return {
        "Status": obj({"status": typed("string", enum=["ok", "ready", "draining"])}, "status"),
        "Health": obj(
            {
                "status": typed("string", enum=["ok", "degraded", "unready", "draining"]),
                "version": typed("string"),
                "uptime_seconds": typed("number"),
                "redis": typed("string"),
                "database": typed("string"),
                "rate_limits": typed(
                    "string",
                    enum=[
                        "in-process",
                        "shared",
                        "local share (Redis unreachable)",
                        "refusing (Redis unreachable)",
                    ],
                ),
                "invalidation": nullable(
                    obj(
                        {
                            "backend": typed("string"),
                            "degraded": typed("boolean"),
                            "last_failure_at": nullable(typed("string", format="date-time")),
                            "last_error": nullable(typed("string")),
                            "key_cache_ttl_seconds": typed("number"),
                        },
                        description="Whether key changes made here reach the other replicas.",
                    )
                ),
                "auth": typed("string"),
                "deployments": array(
                    obj(
                        {
                            "model": typed("string"),
                            "deployment": typed("string"),
                            "provider": typed("string"),
                            "state": typed("string"),
                        }
                    )
                ),
            },
            "status",
            "version",
        ),
    }


def _gateway_options() -> Schemas:
    """The fields Ferryman reads from an OpenAI body itself (chat and embeddings); never sent upstream."""
    return {
        "fallbacks": array(
            typed("string"),
            "Ferryman: fallback models, in order, instead of the configured ones; not sent upstream.",
            maxItems=8,
        ),
        "timeout": typed(
            "number",
            "Ferryman: seconds for the whole request; may shorten the model's timeout.",
            exclusiveMinimum=0,
            maximum=86400,
        ),
    }
