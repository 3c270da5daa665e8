"""The OpenAI `/v1/embeddings` wire format, translated to and from the canonical embedding types."""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Literal, TypeAlias

from ferryman.core.canonical import EmbeddingRequest, EmbeddingResponse, JSONObject, JSONValue
from ferryman.errors import InvalidRequestError
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_list,
    as_object,
    get_gateway_options,
    get_list,
    get_opt_int,
    get_opt_str,
    get_str,
)
from ferryman.wire._openai_reply import parse_usage, upstream_error

EmbeddingEncoding: TypeAlias = Literal["float", "base64"]


def parse_embedding_request(body: JSONObject) -> EmbeddingRequest:
    """Validate a client's `/v1/embeddings` body; token-array inputs are refused (param "input")."""
    try:
        return _parse_embedding_request(as_body(body))
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def _parse_embedding_request(body: JSONObject) -> EmbeddingRequest:
    embedding_encoding(body)
    fallbacks, timeout = get_gateway_options(body)
    return EmbeddingRequest(
        model=get_str(body, "model"),
        inputs=_parse_embedding_inputs(body),
        dimensions=get_opt_int(body, "dimensions", minimum=1, whole_floats=True),
        user=get_opt_str(body, "user"),
        fallbacks=fallbacks,
        timeout=timeout,
    )


def _parse_embedding_inputs(body: JSONObject) -> tuple[str, ...]:
    value = body.get("input")
    if isinstance(value, str):
        return (value,)
    inputs = get_list(body, "input")
    if not inputs:
        raise Malformed("input", "must not be empty")
    texts = tuple(item for item in inputs if isinstance(item, str))
    if len(texts) != len(inputs):
        # Token arrays would need the upstream's tokenizer to mean the same thing everywhere.
        raise Malformed("input", "must be strings; token arrays are not supported")
    return texts


def embedding_encoding(body: JSONObject) -> EmbeddingEncoding:
    """The `encoding_format` the client asked for; render the answer with it.

    The canonical request has no such field: the vectors are the same, only their spelling differs. The
    official SDK asks for "base64" unless told otherwise.
    """
    value = body.get("encoding_format")
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise InvalidRequestError("'encoding_format' must be float or base64", param="encoding_format")


def build_embedding_request(req: EmbeddingRequest) -> JSONObject:
    """Build the upstream `/v1/embeddings` body; always float vectors, which every server supports."""
    inputs: list[JSONValue] = list(req.inputs)
    body: JSONObject = {"model": req.model, "input": inputs, "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.user is not None:
        body["user"] = req.user
    return body


def parse_embedding_response(body: JSONObject) -> EmbeddingResponse:
    """Translate an upstream embeddings list, in input order; malformed is an UpstreamConnectionError."""
    try:
        return _parse_embedding_response(as_body(body))
    except Malformed as exc:
        raise upstream_error(exc) from None


def _parse_embedding_response(body: JSONObject) -> EmbeddingResponse:
    indexed = []
    for i, raw in enumerate(get_list(body, "data")):
        path = f"data[{i}]"
        item = as_object(raw, path)
        index = get_opt_int(item, "index", path, minimum=0)
        indexed.append(
            (i if index is None else index, _parse_vector(item.get("embedding"), f"{path}.embedding"))
        )
    indexed.sort(key=lambda pair: pair[0])
    return EmbeddingResponse(
        model=get_opt_str(body, "model") or "",
        vectors=tuple(vector for _, vector in indexed),
        usage=parse_usage(body),
    )


def _parse_vector(value: JSONValue, path: str) -> tuple[float, ...]:
    if isinstance(value, str):  # base64 of little-endian float32, should an upstream answer that way
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise Malformed(path, "is not valid base64") from None
        if len(raw) % 4:
            raise Malformed(path, "is not a whole number of float32 values")
        return struct.unpack(f"<{len(raw) // 4}f", raw)
    numbers = as_list(value, path)
    vector = tuple(float(x) for x in numbers if type(x) is float or type(x) is int)
    if len(vector) != len(numbers):
        raise Malformed(path, "must be an array of numbers")
    return vector


def render_embedding_response(
    resp: EmbeddingResponse, *, encoding_format: EmbeddingEncoding = "float"
) -> JSONObject:
    """Render the `list` of embeddings OpenAI clients expect, as floats or base64 float32 as they asked."""
    data: list[JSONValue] = [
        {"object": "embedding", "index": i, "embedding": _render_vector(vector, encoding_format)}
        for i, vector in enumerate(resp.vectors)
    ]
    usage: JSONObject = {"prompt_tokens": resp.usage.input_tokens, "total_tokens": resp.usage.total_tokens}
    return {"object": "list", "data": data, "model": resp.model, "usage": usage}


def _render_vector(vector: tuple[float, ...], encoding_format: EmbeddingEncoding) -> JSONValue:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)
