"""The Gemini `:embedContent` and `:batchEmbedContents` wire format, as a client sends it to Ferryman.

The upstream direction (Ferryman calling Gemini) lives in `ferryman.wire.gemini`; this module is the
ingress side: a client's body becomes a canonical `EmbeddingRequest`, and the canonical vectors are
rendered back in Google's shape. `taskType` and `title` are accepted and not forwarded: the canonical
request has no field for them, and a Gemini upstream embeds without them (its default task type).
"""

from __future__ import annotations

from ferryman.core.canonical import EmbeddingRequest, EmbeddingResponse, JSONObject, JSONValue
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_object,
    get_list,
    get_object,
    get_opt_int,
    get_opt_str,
)


def parse_embed_content(body: JSONObject, *, model: str) -> EmbeddingRequest:
    """Validate one `:embedContent` body; `model` comes from the path. 400s name the field."""
    try:
        body = as_body(body)
        text = _content_text(body, "")
        return EmbeddingRequest(model=model, inputs=(text,), dimensions=_dimensions(body, ""))
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def parse_batch_embed_contents(body: JSONObject, *, model: str) -> EmbeddingRequest:
    """Validate a `:batchEmbedContents` body: one input per entry of `requests`, all one model.

    The canonical request carries one `dimensions`, so entries asking for different
    `outputDimensionality` values are refused rather than silently given the first one's.
    """
    try:
        return _parse_batch(as_body(body), model)
    except Malformed as exc:
        raise exc.as_invalid_request() from None


def _parse_batch(body: JSONObject, model: str) -> EmbeddingRequest:
    entries = get_list(body, "requests")
    if not entries:
        raise Malformed("requests", "must not be empty")
    texts: list[str] = []
    dimensions: set[int | None] = set()
    for index, entry in enumerate(entries):
        prefix = f"requests[{index}]"
        item = as_object(entry, prefix)
        _check_entry_model(item, prefix, model)
        texts.append(_content_text(item, prefix))
        dimensions.add(_dimensions(item, prefix))
    if len(dimensions) > 1:
        raise Malformed("requests", "must all ask for the same outputDimensionality")
    return EmbeddingRequest(model=model, inputs=tuple(texts), dimensions=dimensions.pop())


def _check_entry_model(item: JSONObject, prefix: str, model: str) -> None:
    """Google requires each entry's `model` to match the path's; absent is fine (the SDK sends it)."""
    named = get_opt_str(item, "model", prefix)
    if named is not None and named.removeprefix("models/") != model.removeprefix("models/"):
        raise Malformed(f"{prefix}.model", f"must be models/{model}, the model in the path")


def _content_text(item: JSONObject, prefix: str) -> str:
    """The text parts of `content`, joined with newlines; a content with no text is refused."""
    content = get_object(item, "content", prefix)
    path = f"{prefix}.content" if prefix else "content"
    parts = get_list(content, "parts", path)
    texts = [_part_text(part, f"{path}.parts[{i}]") for i, part in enumerate(parts)]
    if not any(texts):
        raise Malformed(f"{path}.parts", "must hold at least one text part")
    return "\n".join(text for text in texts if text)


def _part_text(part: JSONValue, path: str) -> str:
    """A part's text; other kinds (inline data, files) have no meaning to a text embedding model."""
    value = as_object(part, path)
    text = get_opt_str(value, "text", path)
    if text is None:
        raise Malformed(f"{path}.text", "is required: only text parts can be embedded")
    return text


def _dimensions(item: JSONObject, prefix: str) -> int | None:
    return get_opt_int(item, "outputDimensionality", prefix, minimum=1, whole_floats=True)


def render_embed_content(response: EmbeddingResponse, body: JSONObject) -> JSONObject:
    """`{"embedding": {"values": [...]}}`, the answer to one `:embedContent`."""
    return {"embedding": _embedding(response.vectors[0])}


def render_batch_embed_contents(response: EmbeddingResponse, body: JSONObject) -> JSONObject:
    """`{"embeddings": [{"values": [...]}, ...]}`, in request order."""
    return {"embeddings": [_embedding(vector) for vector in response.vectors]}


def _embedding(vector: tuple[float, ...]) -> JSONObject:
    values: list[JSONValue] = list(vector)
    return {"values": values}


__all__ = [
    "parse_batch_embed_contents",
    "parse_embed_content",
    "render_batch_embed_contents",
    "render_embed_content",
]
