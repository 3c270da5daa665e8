"""The OpenAPI document of the whole public API: FastAPI's generated part plus the hand-written hot path.

The hot-path routes (OpenAI, Anthropic and Gemini ingress, probes, metrics) are plain Starlette routes on
purpose — no per-request FastAPI dependency resolution — so FastAPI's generator cannot see them. Their
path items, shared error responses, parameters and security schemes are written here (their body
schemas in `openapi_schemas`) and merged into the generated document, which holds the admin API.
`tests/api/test_openapi.py` fails when a route is registered that this document does not describe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ferryman.api.openapi_schemas import array, component_schemas, obj, ref, typed
from ferryman.observability.metrics import CONTENT_TYPE

OpenAPIDocument = dict[str, Any]
"""An OpenAPI 3.1 document (or part of one) as plain JSON-ready data."""

_CLIENT_STATUSES = (400, 401, 403, 404, 413, 429, 502, 503, 504)
_SECURITY_SCHEMES = ("bearerAuth", "xApiKey", "googApiKey", "azureApiKey", "keyQuery")


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json` and `/docs`) return the merged document, built once."""
    generate = app.openapi

    def openapi() -> OpenAPIDocument:
        if app.openapi_schema is None:
            generated = generate()
            drop_422 = RequestValidationError in app.exception_handlers
            app.openapi_schema = merge_hot_path(generated, drop_422=drop_422)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise


def merge_hot_path(generated: OpenAPIDocument, *, drop_422: bool = False) -> OpenAPIDocument:
    """`generated` with the hot-path paths, components, tags and security added.

    `drop_422` removes FastAPI's generated 422 responses: when the app turns validation errors into
    our 400 (as `create_app` does), a 422 is never sent.
    """
    document = dict(generated)
    paths: OpenAPIDocument = {**hot_path_items()}
    for path, item in generated.get("paths", {}).items():
        paths.setdefault(path, {}).update(_without_422(item) if drop_422 else item)
    document["paths"] = paths
    document["components"] = _merged_components(generated.get("components", {}), hot_path_components())
    document["tags"] = [*_tags(), *generated.get("tags", [])]
    document["security"] = [{name: []} for name in _SECURITY_SCHEMES]
    info = dict(generated.get("info", {}))
    info.setdefault("description", _INFO_DESCRIPTION)
    document["info"] = info
    return document


def _without_422(item: OpenAPIDocument) -> OpenAPIDocument:
    cleaned: OpenAPIDocument = {}
    for method, operation in item.items():
        if isinstance(operation, dict) and "responses" in operation:
            responses = {code: r for code, r in operation["responses"].items() if code != "422"}
            operation = {**operation, "responses": responses}
        cleaned[method] = operation
    return cleaned


def _merged_components(generated: OpenAPIDocument, ours: OpenAPIDocument) -> OpenAPIDocument:
    """Both sets of components; a name defined differently by both is a bug, not something to hide."""
    merged = {section: dict(entries) for section, entries in generated.items()}
    for section, entries in ours.items():
        target = merged.setdefault(section, {})
        for name, value in entries.items():
            if name in target and target[name] != value:
                raise RuntimeError(f"OpenAPI component {section}.{name} is defined twice, differently")
            target[name] = value
    return merged


_INFO_DESCRIPTION = (
    "One endpoint in front of OpenAI, Anthropic and Gemini. Clients keep their official SDKs: "
    "OpenAI Chat Completions and Embeddings, Anthropic Messages and Gemini generateContent are accepted "
    "and routed to any configured provider. Every response carries `x-request-id`; every error is "
    'OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}`. See docs/api.md.'
)


def _tags() -> list[OpenAPIDocument]:
    return [
        {"name": "openai", "description": "OpenAI format: base URL `http://HOST:PORT/v1`."},
        {"name": "anthropic", "description": "Anthropic Messages format: base URL `http://HOST:PORT`."},
        {"name": "gemini", "description": "Gemini format: base URL `http://HOST:PORT`."},
        {"name": "operations", "description": "Probes and Prometheus metrics; no key needed."},
    ]


# --- Paths ------------------------------------------------------------------------------------------


def hot_path_items() -> OpenAPIDocument:
    """Path items for every Starlette route `create_app` registers, aliases included."""
    chat, embed, models, usage = _chat_completions(), _embeddings(), _list_models(), _usage()
    generate, stream = _generate_content(), _stream_generate_content()
    items: OpenAPIDocument = {
        "/v1/chat/completions": {"post": chat},
        "/v1/embeddings": {"post": embed},
        "/v1/models": {"get": models},
        "/v1/usage": {"get": usage},
        "/v1/messages": {"post": _messages()},
        "/v1beta/models/{model}:generateContent": {"post": generate},
        "/v1beta/models/{model}:streamGenerateContent": {"post": stream},
        **_operations_paths(),
        **_counting_and_embedding_paths(),
    }
    responses = _responses_paths()
    items.update(responses)
    for path, item in responses.items():  # the same without the `/v1` prefix
        items[path.removeprefix("/v1")] = {
            method: _alias(operation, path) for method, operation in item.items()
        }
    for path, method, operation, original in (
        ("/chat/completions", "post", chat, "/v1/chat/completions"),
        ("/embeddings", "post", embed, "/v1/embeddings"),
        ("/models", "get", models, "/v1/models"),
        ("/usage", "get", usage, "/v1/usage"),
        ("/v1/models/{model}:generateContent", "post", generate, "/v1beta/models/{model}:generateContent"),
        (
            "/v1/models/{model}:streamGenerateContent",
            "post",
            stream,
            "/v1beta/models/{model}:streamGenerateContent",
        ),
    ):
        items[path] = {method: _alias(operation, original)}
    return items


def _alias(operation: OpenAPIDocument, original: str) -> OpenAPIDocument:
    """The same operation under a second path, for SDKs and clients configured with the other prefix."""
    return {
        **operation,
        "operationId": operation["operationId"] + "Alias",
        "summary": operation["summary"] + " (alias)",
        "description": f"The same as `{original}`, for clients whose base URL uses this prefix.",
    }


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    *,
    request: str | None = None,
    success: OpenAPIDocument,
    parameters: Iterable[str] = (),
    errors: Iterable[int] = _CLIENT_STATUSES,
) -> OpenAPIDocument:
    """One authenticated operation: the shared parameters, headers and error responses filled in."""
    operation: OpenAPIDocument = {
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "parameters": [_param_ref(name) for name in (*parameters, "RequestId")],
        "responses": {
            "200": {"description": "Success.", "headers": _response_headers(), "content": success},
            **{str(status): _error_ref(status) for status in errors},
        },
    }
    if request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(request)}},
        }
    return operation


def _chat_completions() -> OpenAPIDocument:
    return _operation(
        "createChatCompletion",
        "openai",
        "Create a chat completion",
        "OpenAI Chat Completions, answered by whichever provider serves `model` (with fallbacks). With "
        "`stream: true` the answer is server-sent events: `data: {chat.completion.chunk}` per delta, then "
        "`data: [DONE]`; `stream_options.include_usage` adds a final chunk with `usage`. A failure after "
        'the stream began arrives as one `data: {"error": {…}}` event.',
        request="ChatCompletionRequest",
        success=_json_or_stream(
            "ChatCompletion", "`data: <chat.completion.chunk JSON>` events, then `data: [DONE]`."
        ),
    )


def _embeddings() -> OpenAPIDocument:
    return _operation(
        "createEmbedding",
        "openai",
        "Create embeddings",
        "OpenAI Embeddings for one string or a list of strings.",
        request="EmbeddingRequest",
        success=_json("EmbeddingList"),
    )


def _list_models() -> OpenAPIDocument:
    return _operation(
        "listModels",
        "openai",
        "List models",
        "The model names this gateway serves (the `name`s of the config's `models`).",
        success=_json("ModelList"),
        errors=(401, 503),
    )


def _responses_paths() -> OpenAPIDocument:
    """The Responses API: create, then retrieve, list the input of, or delete a stored response."""
    response = {"application/json": {"schema": typed("object", "An OpenAI `response` object.")}}
    create = _operation(
        "createResponse",
        "openai",
        "Create a response",
        "OpenAI Responses, answered by whichever provider serves `model`. Stored per key (unless "
        "`store: false`) for `responses.ttl_seconds`, so `previous_response_id` continues it. With "
        "`stream: true` the answer is the Responses event stream, each event with a `sequence_number`.",
        success={**response, **_stream("`event: <type>` / `data: <event JSON>` pairs.")},
    )
    create["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": typed("object", "An OpenAI Responses request.")}},
    }

    def on_stored(operation_id: str, summary: str, description: str, schema: str) -> OpenAPIDocument:
        content = {"application/json": {"schema": typed("object", schema)}}
        return _operation(
            operation_id,
            "openai",
            summary,
            description,
            success=content,
            parameters=["ResponseId"],
            errors=(401, 404, 503),
        )

    return {
        "/v1/responses": {"post": create},
        "/v1/responses/{response_id}": {
            "get": on_stored("getResponse", "Retrieve a response", "A stored response.", "A `response`."),
            "delete": on_stored(
                "deleteResponse", "Delete a response", "Forget a stored response.", "`{id, deleted}`."
            ),
        },
        "/v1/responses/{response_id}/input_items": {
            "get": on_stored(
                "listInputItems",
                "List a response's input items",
                "The conversation a stored response answered (newest first; `order=asc` for oldest).",
                "A list of input items.",
            )
        },
    }


def _usage() -> OpenAPIDocument:
    return _operation(
        "getUsage",
        "openai",
        "The calling key's usage",
        "Spend, requests and tokens of the calling virtual key in its current daily and monthly "
        "windows; with budgets, also the budget, what open requests have reserved, and what remains.",
        success=_json("KeyUsage"),
        errors=(400, 401, 503),
    )


def _messages() -> OpenAPIDocument:
    return _operation(
        "createMessage",
        "anthropic",
        "Create a message",
        "Anthropic Messages, answered by whichever provider serves `model`; any `anthropic-version` is "
        "accepted. With `stream: true` the answer is Anthropic's named SSE events (`message_start`, "
        "`content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, "
        "`message_stop`); a failure after the stream began arrives as an `event: error`.",
        request="MessageRequest",
        parameters=("AnthropicVersion",),
        success=_json_or_stream("Message", "Named events: `event: <type>` then `data: <JSON>`."),
    )


def _generate_content() -> OpenAPIDocument:
    return _operation(
        "generateContent",
        "gemini",
        "Generate content",
        "Gemini generateContent for `model` (a Ferryman model name; a `models/` prefix is not needed).",
        request="GenerateContentRequest",
        parameters=("GeminiModel",),
        success=_json("GenerateContentResponse"),
    )


def _stream_generate_content() -> OpenAPIDocument:
    return _operation(
        "streamGenerateContent",
        "gemini",
        "Generate content, streamed",
        "Gemini streamGenerateContent, always answered as server-sent events (as with `alt=sse`): one "
        "`data: <GenerateContentResponse>` per chunk. A failure after the stream began arrives as "
        '`data: {"error": …}`.',
        request="GenerateContentRequest",
        parameters=("GeminiModel", "GeminiAlt"),
        success=_stream("`data: <GenerateContentResponse JSON>` events."),
    )


def _counting_and_embedding_paths() -> OpenAPIDocument:
    """Token counting (never charged) and Gemini embeddings, each Gemini path under `/v1` as well."""
    text_content = obj({"parts": array(obj({"text": typed("string")}, "text"))}, "parts")
    embed_fields = {
        "content": text_content,
        "taskType": typed("string"),
        "outputDimensionality": typed("integer"),
    }
    count = _operation(
        "countMessageTokens",
        "anthropic",
        "Count a message's input tokens",
        "Anthropic count_tokens (`?beta=true` accepted): the body of a message without `max_tokens`. "
        "Counted by the upstream where it can (Anthropic, Gemini), else by the gateway's tokenizers; "
        "`x-ferryman-token-count` says which. Not charged and not recorded in the ledger.",
        parameters=("AnthropicVersion",),
        success={"application/json": {"schema": obj({"input_tokens": typed("integer")}, "input_tokens")}},
    )
    count["requestBody"] = {"required": True, "content": {"application/json": {"schema": typed("object")}}}
    gemini: OpenAPIDocument = {
        ":countTokens": _operation(
            "countTokens",
            "gemini",
            "Count tokens",
            "Gemini countTokens (`contents` or a whole `generateContentRequest`), counted as "
            "`/v1/messages/count_tokens` is. Not charged.",
            parameters=("GeminiModel",),
            success={"application/json": {"schema": obj({"totalTokens": typed("integer")}, "totalTokens")}},
        ),
        ":embedContent": _operation(
            "embedContent",
            "gemini",
            "Embed one content",
            "Gemini embedContent: the text parts of `content`, joined, embedded by whichever provider "
            "serves `model` (charged like `/v1/embeddings`).",
            parameters=("GeminiModel",),
            success={
                "application/json": {"schema": obj({"embedding": obj({"values": array(typed("number"))})})}
            },
        ),
        ":batchEmbedContents": _operation(
            "batchEmbedContents",
            "gemini",
            "Embed several contents",
            "Gemini batchEmbedContents: one vector per entry of `requests`, in order.",
            parameters=("GeminiModel",),
            success={
                "application/json": {
                    "schema": obj({"embeddings": array(obj({"values": array(typed("number"))}))})
                }
            },
        ),
    }
    gemini[":countTokens"]["requestBody"] = count["requestBody"]
    for method in (":embedContent", ":batchEmbedContents"):
        single = obj(embed_fields, "content")
        schema = single if method == ":embedContent" else obj({"requests": array(single)}, "requests")
        gemini[method]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    items: OpenAPIDocument = {"/v1/messages/count_tokens": {"post": count}}
    for method, operation in gemini.items():
        original = f"/v1beta/models/{{model}}{method}"
        items[original] = {"post": operation}
        items[f"/v1/models/{{model}}{method}"] = {"post": _alias(operation, original)}
    return items


def _operations_paths() -> OpenAPIDocument:
    """Probes and metrics: no key, so load balancers and Prometheus need no secret."""
    return {
        "/health": _probe(
            "health", "Health summary", "Version, uptime, stores and every deployment.", "Health"
        ),
        "/health/live": _probe(
            "liveness", "Liveness probe", "200 while the process answers at all.", drains=False
        ),
        "/health/ready": _probe(
            "readiness", "Readiness probe", "200 when ready; 503 while draining after SIGTERM."
        ),
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "Prometheus text exposition (`ai_api_requests_total`, …).",
                "security": [],
                "parameters": [_param_ref("RequestId")],
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "headers": _response_headers(),
                        "content": {CONTENT_TYPE.split(";")[0]: {"schema": typed("string")}},
                    }
                },
            }
        },
    }


def _probe(
    operation_id: str, summary: str, description: str, schema: str = "Status", *, drains: bool = True
) -> OpenAPIDocument:
    """A probe: 200, and 503 while the replica drains (`drains`) so load balancers stop sending to it."""
    responses = {"200": {"description": "Serving.", "headers": _response_headers(), "content": _json(schema)}}
    if drains:
        responses["503"] = {
            "description": "Draining.",
            "headers": _response_headers(),
            "content": _json(schema),
        }
    return {
        "get": {
            "tags": ["operations"],
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "security": [],
            "parameters": [_param_ref("RequestId")],
            "responses": responses,
        }
    }


# --- Building blocks ---------------------------------------------------------------------------------


def _param_ref(name: str) -> OpenAPIDocument:
    return {"$ref": f"#/components/parameters/{name}"}


def _json(schema: str) -> OpenAPIDocument:
    return {"application/json": {"schema": ref(schema)}}


def _stream(description: str) -> OpenAPIDocument:
    return {"text/event-stream": {"schema": typed("string", description)}}


def _json_or_stream(schema: str, stream_description: str) -> OpenAPIDocument:
    return {**_json(schema), **_stream(stream_description)}


def _response_headers() -> OpenAPIDocument:
    return {"x-request-id": {"$ref": "#/components/headers/RequestId"}}


_ERROR_RESPONSES: tuple[tuple[int, str, str], ...] = (
    (
        400,
        "BadRequest",
        "The body is not JSON, not an object, or a field is missing or mistyped (`param` names it).",
    ),
    (
        401,
        "Unauthorized",
        "No key, or a key that is unknown, expired, blocked or revoked (one message for all).",
    ),
    (403, "Forbidden", "The key may not use this model (`code: model_not_allowed`)."),
    (404, "NotFound", "No such model (`code: model_not_found`)."),
    (413, "PayloadTooLarge", "The body is larger than `server.max_body_bytes`."),
    (
        429,
        "TooManyRequests",
        "A rate limit or budget, or the upstream's own limit; retry after `Retry-After` seconds.",
    ),
    (
        502,
        "BadGateway",
        "Every deployment failed: upstream error, refused gateway credentials, or unreachable.",
    ),
    (
        503,
        "ServiceUnavailable",
        "The key store cannot be reached to check a key not in the cache; retry shortly.",
    ),
    (504, "GatewayTimeout", "The upstream did not answer in time."),
)


def _error_ref(status: int) -> OpenAPIDocument:
    name = next(name for code, name, _ in _ERROR_RESPONSES if code == status)
    return {"$ref": f"#/components/responses/{name}"}


# --- Components -----------------------------------------------------------------------------------------


def hot_path_components() -> OpenAPIDocument:
    """Schemas, shared responses, parameters, headers and security schemes the hot-path items refer to."""
    return {
        "schemas": component_schemas(),
        "responses": _error_responses(),
        "parameters": _parameters(),
        "headers": _headers(),
        "securitySchemes": _security_schemes(),
    }


def _error_responses() -> OpenAPIDocument:
    responses: OpenAPIDocument = {}
    for status, name, description in _ERROR_RESPONSES:
        headers = _response_headers()
        if status in (429, 502, 503):
            headers["retry-after"] = {"$ref": "#/components/headers/RetryAfter"}
        responses[name] = {"description": description, "headers": headers, "content": _json("Error")}
    return responses


def _parameters() -> OpenAPIDocument:
    return {
        "RequestId": {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "description": "Your id for this request (1-128 of `A-Za-z0-9._:-`); otherwise one is made up.",
            "schema": typed("string"),
        },
        "AnthropicVersion": {
            "name": "anthropic-version",
            "in": "header",
            "required": False,
            "description": "Sent by Anthropic SDKs; any version is accepted.",
            "schema": typed("string", examples=["2023-06-01"]),
        },
        "GeminiModel": {
            "name": "model",
            "in": "path",
            "required": True,
            "description": "A model name from the config (`GET /v1/models`).",
            "schema": typed("string"),
        },
        "ResponseId": {
            "name": "response_id",
            "in": "path",
            "required": True,
            "description": "A `resp_…` id this key created.",
            "schema": typed("string"),
        },
        "GeminiAlt": {
            "name": "alt",
            "in": "query",
            "required": False,
            "description": "Sent by the Gemini SDK; the answer is server-sent events either way.",
            "schema": typed("string", enum=["sse"]),
        },
    }


def _headers() -> OpenAPIDocument:
    return {
        "RequestId": {
            "description": "This request's id: yours if you sent a valid `x-request-id`, else `req_<hex>`. "
            "It is on the request's log line; quote it when reporting a problem.",
            "schema": typed("string"),
        },
        "RetryAfter": {
            "description": "Seconds to wait before retrying.",
            "schema": typed("integer", minimum=0),
        },
    }


def _security_schemes() -> OpenAPIDocument:
    """Where a key may be sent: each official SDK's way is accepted on every route."""
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "OpenAI and recent Anthropic SDKs.",
        },
        "xApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "Anthropic SDKs.",
        },
        "googApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-goog-api-key",
            "description": "Google Gen AI SDK.",
        },
        "azureApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "api-key",
            "description": "Azure OpenAI clients.",
        },
        "keyQuery": {"type": "apiKey", "in": "query", "name": "key", "description": "Gemini REST `?key=`."},
    }
