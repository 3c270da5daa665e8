"""Gemini embedContent / batchEmbedContents ingress through google-genai, on each provider.

OpenAI and Gemini upstreams answer with vectors (the fakes derive them from the text alone, so the
gateway's relay can be checked value for value); Anthropic has no embeddings API, which is a clear 400.
Embeddings go through the pipeline, so they are charged and appear in `/v1/usage`.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer
from ferryman.testing._turn import embedding_vector
from tests.conftest import RunningGateway, serve_gateway

KEY = "fm-embed-all-models"
LIMITED = "fm-embed-openai-only"
PRICE = {"input_per_mtok": 100, "output_per_mtok": 0}
# google-genai treats a model named "gemini…" (but gemini-embedding-001) as multimodal and joins a list
# of contents into one, so the Gemini route is named otherwise.
ROUTE = {"openai": "openai-embed", "gemini": "google-embed", "anthropic": "claude-embed"}
UPSTREAM_MODEL = {
    "openai": "text-embedding-3-small",
    "gemini": "gemini-embedding-001",
    "anthropic": "claude-haiku-4-5",
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeOpenAI() as fake_openai, FakeAnthropic() as fake_anthropic, FakeGemini() as fake_gemini:
        yield {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer]) -> Iterator[RunningGateway]:
    models = [
        {
            "name": ROUTE[provider],
            "deployments": [
                {
                    "provider": provider,
                    "model": UPSTREAM_MODEL[provider],
                    "api_base": fake.base_url,
                    "api_key": f"up-{provider}",
                    "price": PRICE,
                }
            ],
        }
        for provider, fake in fakes.items()
    ]
    keys = [
        {"alias": "all", "key": KEY},
        {"alias": "openai-only", "key": LIMITED, "models": ["openai-embed"]},
    ]
    with serve_gateway({"models": models, "keys": keys}) as running:
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=gateway.url))


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_genai_sdk_embeds_one_content(provider: str, client: genai.Client) -> None:
    result = client.models.embed_content(model=ROUTE[provider], contents="the quick brown fox")
    assert result.embeddings is not None and len(result.embeddings) == 1
    assert result.embeddings[0].values == pytest.approx(
        list(embedding_vector("the quick brown fox", 16)), abs=1e-6
    )


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_genai_sdk_embeds_several_contents_with_a_dimension(
    provider: str, client: genai.Client, fakes: dict[str, FakeServer]
) -> None:
    texts = ["first text", "second text", "third"]
    result = client.models.embed_content(
        model=ROUTE[provider],
        contents=texts,
        config=gtypes.EmbedContentConfig(output_dimensionality=4, task_type="RETRIEVAL_DOCUMENT"),
    )
    assert result.embeddings is not None
    assert [e.values for e in result.embeddings] == [
        pytest.approx(list(embedding_vector(text, 4)), abs=1e-6) for text in texts
    ]
    sent = fakes[provider].last_request.body
    assert (
        sent.get("dimensions") if provider == "openai" else sent["requests"][0]["outputDimensionality"]
    ) == 4


def test_embeddings_on_an_anthropic_model_are_a_clear_400(client: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.embed_content(model="claude-embed", contents="hello")
    assert refused.value.code == 400
    assert "does not offer embeddings" in str(refused.value.message)


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_embed_content_is_answered_in_google_shape(version: str, gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/{version}/models/google-embed:embedContent",
        json={"content": {"parts": [{"text": "hello"}, {"text": "world"}]}, "taskType": "RETRIEVAL_QUERY"},
        headers={"x-goog-api-key": KEY},
    )
    assert response.status_code == 200
    assert response.json() == {"embedding": {"values": list(embedding_vector("hello\nworld", 16))}}


def test_embed_content_is_charged_and_appears_in_usage(gateway: RunningGateway) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    before = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["windows"]["daily"]
    response = httpx.post(
        gateway.url + "/v1beta/models/openai-embed:embedContent",
        json={"content": {"parts": [{"text": "charge me for these words"}]}},
        headers={"x-goog-api-key": KEY},
    )
    assert response.status_code == 200
    assert float(response.headers["x-ferryman-cost-usd"]) > 0
    after = httpx.get(gateway.url + "/v1/usage", headers=headers).json()["windows"]["daily"]
    assert after["requests"] == before["requests"] + 1
    assert after["spent_usd"] == pytest.approx(
        before["spent_usd"] + float(response.headers["x-ferryman-cost-usd"])
    )


def test_embeddings_refuse_a_bad_key_and_a_forbidden_model(gateway: RunningGateway) -> None:
    bad_key = genai.Client(api_key="fm-wrong", http_options=gtypes.HttpOptions(base_url=gateway.url))
    with pytest.raises(genai_errors.ClientError) as refused:
        bad_key.models.embed_content(model="google-embed", contents="hi")
    assert refused.value.code == 401 and refused.value.status == "UNAUTHENTICATED"
    limited = genai.Client(api_key=LIMITED, http_options=gtypes.HttpOptions(base_url=gateway.url))
    with pytest.raises(genai_errors.ClientError) as forbidden:
        limited.models.embed_content(model="google-embed", contents="hi")
    assert forbidden.value.code == 403


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (":embedContent", {"content": {"parts": "text"}}, "content.parts"),
        (":embedContent", {}, "content"),
        (":batchEmbedContents", {"requests": []}, "requests"),
        (
            ":batchEmbedContents",
            {"requests": [{"content": {"parts": [{"inlineData": {}}]}}]},
            "requests[0].content.parts[0].text",
        ),
        (
            ":batchEmbedContents",
            {"requests": [{"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}]},
            "requests[0].outputDimensionality",
        ),
    ],
)
def test_a_bad_embedding_body_is_a_400_naming_the_field(
    path: str, body: dict[str, object], param: str, gateway: RunningGateway
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1beta/models/google-embed{path}", json=body, headers={"x-goog-api-key": KEY}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["metadata"]["param"] == param and param in error["message"]
