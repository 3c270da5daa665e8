"""The Gemini embedContent / batchEmbedContents ingress codec: bodies in, canonical requests out, and back."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.core.canonical import EmbeddingRequest, EmbeddingResponse
from ferryman.errors import InvalidRequestError
from ferryman.wire.gemini_embeddings import (
    parse_batch_embed_contents,
    parse_embed_content,
    render_batch_embed_contents,
    render_embed_content,
)


def test_embed_content_joins_the_text_parts_and_reads_the_dimension() -> None:
    body: dict[str, Any] = {
        "model": "models/embed",
        "content": {"role": "user", "parts": [{"text": "hello"}, {"text": "world"}]},
        "taskType": "RETRIEVAL_QUERY",
        "title": "ignored",
        "outputDimensionality": 256.0,  # proto JSON may write an integer as a whole float
    }
    assert parse_embed_content(body, model="embed") == EmbeddingRequest(
        model="embed", inputs=("hello\nworld",), dimensions=256
    )


def test_batch_embed_contents_keeps_one_input_per_request_in_order() -> None:
    body: dict[str, Any] = {
        "requests": [
            {"model": "models/embed", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
            {"content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8},
        ]
    }
    assert parse_batch_embed_contents(body, model="embed") == EmbeddingRequest(
        model="embed", inputs=("a", "b"), dimensions=8
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "content"),
        ({"content": "text"}, "content"),
        ({"content": {"parts": []}}, "content.parts"),
        ({"content": {"parts": [{"text": ""}]}}, "content.parts"),
        ({"content": {"parts": [{"inlineData": {"data": "AA=="}}]}}, "content.parts[0].text"),
        ({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}, "outputDimensionality"),
        ({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": True}, "outputDimensionality"),
    ],
)
def test_a_bad_embed_content_body_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_embed_content(body, model="embed")
    assert refused.value.param == param
    assert param in refused.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "requests"),
        ({"requests": []}, "requests"),
        ({"requests": ["text"]}, "requests[0]"),
        (
            {"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]},
            "requests[0].model",
        ),
        (
            {"requests": [{"content": {"parts": [{"text": "a"}]}}, {"content": {}}]},
            "requests[1].content.parts",
        ),
        (
            {
                "requests": [
                    {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
                    {"content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8},
                ]
            },
            "requests",
        ),
    ],
)
def test_a_bad_batch_body_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_batch_embed_contents(body, model="embed")
    assert refused.value.param == param


def test_vectors_are_rendered_in_google_shape() -> None:
    response = EmbeddingResponse(model="embed", vectors=((0.5, -0.5), (1.0, 0.0)))
    assert render_embed_content(response, {}) == {"embedding": {"values": [0.5, -0.5]}}
    assert render_batch_embed_contents(response, {}) == {
        "embeddings": [{"values": [0.5, -0.5]}, {"values": [1.0, 0.0]}]
    }
