"""FakeGemini driven by the official google-genai SDK: the fake must speak the Gemini API's wire format."""

from __future__ import annotations

import json

import pytest
from google import genai
from google.genai import errors, types

from ferryman.testing import FakeGemini, Reply, ThinkingSpec, ToolCallSpec, Usage

MODEL = "gemini-2.5-flash"
PROMPT = "What is the weather in Paris?"


def test_default_reply_echoes_with_usage_metadata(gemini_fake, gemini_client):
    config = types.GenerateContentConfig(system_instruction="Be terse.")

    response = gemini_client.models.generate_content(model=MODEL, contents=PROMPT, config=config)

    assert response.text == f"echo: {PROMPT}"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 8
    assert response.usage_metadata.candidates_token_count == 7
    assert response.usage_metadata.total_token_count == 15
    assert response.model_version == MODEL


def test_request_is_recorded_with_key_header_and_system_instruction(gemini_fake, gemini_client):
    config = types.GenerateContentConfig(system_instruction="Be terse.")
    gemini_client.models.generate_content(model=MODEL, contents=PROMPT, config=config)

    request = gemini_fake.last_request
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == "gemini-test-key"
    assert request.body["systemInstruction"]["parts"] == [{"text": "Be terse."}]
    assert request.body["contents"] == [{"role": "user", "parts": [{"text": PROMPT}]}]


def test_v1beta_path_is_served(gemini_fake):
    options = types.HttpOptions(base_url=gemini_fake.base_url, api_version="v1beta")
    with genai.Client(api_key="k", http_options=options) as client:
        response = client.models.generate_content(model=MODEL, contents=PROMPT)

    assert response.text == f"echo: {PROMPT}"
    assert gemini_fake.last_request.path == f"/v1beta/models/{MODEL}:generateContent"


def test_usage_reports_cached_and_thinking_tokens_apart(gemini_fake, gemini_client):
    usage = Usage(input_tokens=500, output_tokens=80, cached_tokens=400, reasoning_tokens=30)
    gemini_fake.script.reply(Reply.text("thought about it", usage=usage, finish="length"))

    response = gemini_client.models.generate_content(model=MODEL, contents=PROMPT)

    metadata = response.usage_metadata
    assert metadata is not None
    assert metadata.prompt_token_count == 500
    assert metadata.cached_content_token_count == 400
    assert metadata.candidates_token_count == 50
    assert metadata.thoughts_token_count == 30
    assert metadata.total_token_count == 580
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


def test_sse_stream_sends_one_response_per_chunk_with_usage_last(gemini_fake, gemini_client):
    gemini_fake.script.reply(Reply.text("alpha beta gamma delta", chunks=4))

    chunks = list(gemini_client.models.generate_content_stream(model=MODEL, contents=PROMPT))

    assert "".join(chunk.text or "" for chunk in chunks) == "alpha beta gamma delta"
    assert len(chunks) == 4
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[0].candidates is not None
    assert chunks[0].candidates[0].finish_reason is None
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    assert chunks[0].usage_metadata is not None
    assert chunks[0].usage_metadata.candidates_token_count is None
    request = gemini_fake.last_request
    assert request.path.endswith(":streamGenerateContent")
    assert request.query["alt"] == "sse"
    assert request.stream is True


async def test_sse_frames_end_with_crlf_pairs(gemini_fake, http):
    url = f"{gemini_fake.base_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    async with http.post(url, json=body, headers={"x-goog-api-key": "k"}) as response:
        raw = (await response.read()).decode()
        assert response.headers["Content-Type"].startswith("text/event-stream")

    frames = raw.split("\r\n\r\n")
    assert frames[-1] == ""
    assert json.loads(frames[0].removeprefix("data: "))["candidates"][0]["content"]["role"] == "model"


async def test_stream_without_alt_sse_is_a_streamed_json_array(gemini_fake, http):
    gemini_fake.script.reply(Reply.text("one two", chunks=2))
    url = f"{gemini_fake.base_url}/v1beta/models/{MODEL}:streamGenerateContent?key=k"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with http.post(url, json=body) as response:
        assert response.status == 200
        chunks = json.loads(await response.read())

    assert [chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks] == ["one", " two"]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_function_calls_without_stream(gemini_fake, gemini_client):
    calls = (ToolCallSpec("get_weather", {"city": "Paris"}), ToolCallSpec("get_time", {"tz": "CET"}))
    gemini_fake.script.reply(Reply.tool_calls(*calls))

    response = gemini_client.models.generate_content(model=MODEL, contents=PROMPT)

    assert response.function_calls is not None
    assert [(call.name, call.args) for call in response.function_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "CET"}),
    ]
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


def test_streamed_function_calls_arrive_whole(gemini_fake, gemini_client):
    gemini_fake.script.reply(
        Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Paris"}), text="Checking")
    )

    chunks = list(gemini_client.models.generate_content_stream(model=MODEL, contents=PROMPT))

    calls = [call for chunk in chunks for call in chunk.function_calls or []]
    assert [(call.name, call.args) for call in calls] == [("get_weather", {"city": "Paris"})]
    assert "".join(chunk.text or "" for chunk in chunks if not chunk.function_calls) == "Checking"


def test_scripted_errors_raise_client_and_server_errors(gemini_fake, gemini_client):
    gemini_fake.script.reply(Reply.error(429), Reply.error(503))

    with pytest.raises(errors.ClientError) as rate_limited:
        gemini_client.models.generate_content(model=MODEL, contents=PROMPT)
    with pytest.raises(errors.ServerError) as overloaded:
        gemini_client.models.generate_content(model=MODEL, contents=PROMPT)

    assert (rate_limited.value.code, rate_limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert (overloaded.value.code, overloaded.value.status) == (503, "UNAVAILABLE")


def test_error_mid_stream_is_an_error_object_in_the_stream(gemini_fake, gemini_client):
    gemini_fake.script.reply(Reply.error(500, "boom", after_chunks=1))

    received = []
    with pytest.raises(errors.ServerError, match="boom"):
        for chunk in gemini_client.models.generate_content_stream(model=MODEL, contents=PROMPT):
            received.append(chunk)

    assert len(received) == 1


def test_wrong_key_is_a_400_api_key_invalid():
    with FakeGemini(api_key="right") as fake:
        options = types.HttpOptions(base_url=fake.base_url)
        with genai.Client(api_key="wrong", http_options=options) as client:
            with pytest.raises(errors.ClientError) as caught:
                client.models.generate_content(model=MODEL, contents=PROMPT)

    assert caught.value.code == 400
    assert "API key not valid" in (caught.value.message or "")
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_missing_key_is_a_403_permission_denied(gemini_fake, http):
    async with http.post(
        f"{gemini_fake.base_url}/v1beta/models/{MODEL}:generateContent", json={}
    ) as response:
        assert response.status == 403
        error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")


async def test_key_in_query_string_is_accepted(gemini_fake, http):
    url = f"{gemini_fake.base_url}/v1beta/models/{MODEL}:generateContent?key=abc"
    async with http.post(url, json={"contents": [{"parts": [{"text": "hi there"}]}]}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["candidates"][0]["content"]["parts"] == [{"text": "echo: hi there"}]
    assert gemini_fake.last_request.query["key"] == "abc"


def test_invalid_role_is_rejected(gemini_client):
    contents = [types.Content(role="assistant", parts=[types.Part(text="hi")])]

    with pytest.raises(errors.ClientError, match="valid role"):
        gemini_client.models.generate_content(model=MODEL, contents=contents)


def test_batch_embeddings_honour_output_dimensionality(gemini_fake, gemini_client):
    config = types.EmbedContentConfig(output_dimensionality=8)

    result = gemini_client.models.embed_content(
        model="gemini-embedding-001", contents=["a b", "c"], config=config
    )
    again = gemini_client.models.embed_content(model="gemini-embedding-001", contents=["a b"], config=config)

    assert result.embeddings is not None
    assert again.embeddings is not None
    assert [len(embedding.values or []) for embedding in result.embeddings] == [8, 8]
    assert result.embeddings[0].values == again.embeddings[0].values
    assert gemini_fake.last_request.path.endswith(":batchEmbedContents")


async def test_single_embed_content(gemini_fake, http):
    url = f"{gemini_fake.base_url}/v1beta/models/gemini-embedding-001:embedContent"
    body = {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3}
    async with http.post(url, json=body, headers={"x-goog-api-key": "k"}) as response:
        result = await response.json()

    assert len(result["embedding"]["values"]) == 3


def test_count_tokens_and_model_list(gemini_fake, gemini_client):
    counted = gemini_client.models.count_tokens(model=MODEL, contents="three words here")
    names = [model.name for model in gemini_client.models.list()]

    assert counted.total_tokens == 3
    assert names == ["models/gemini-2.5-flash", "models/gemini-2.5-pro", "models/gemini-embedding-001"]
    assert gemini_fake.script.pending == 0


THOUGHTFUL = Reply.text("Sunny.", thinking=(ThinkingSpec("Check the forecast.", "c2lnbmVk"),))


@pytest.mark.parametrize("include", [True, False])
def test_thoughts_are_shown_only_on_include_thoughts_and_the_answer_is_always_sealed(
    gemini_fake, gemini_client, include
):
    gemini_fake.script.reply(THOUGHTFUL)
    thinking = types.ThinkingConfig(include_thoughts=include, thinking_budget=1024)
    config = types.GenerateContentConfig(thinking_config=thinking)

    response = gemini_client.models.generate_content(model=MODEL, contents=PROMPT, config=config)

    assert response.candidates and response.candidates[0].content
    parts = response.candidates[0].content.parts or []
    assert [(p.text, bool(p.thought)) for p in parts] == [("Check the forecast.", True)] * include + [
        ("Sunny.", False)
    ]
    assert parts[-1].thought_signature == b"signed"
    # recorded as sent: google-genai spells the thinkingConfig's fields in snake_case
    assert gemini_fake.last_request.body["generationConfig"]["thinkingConfig"] == {
        "include_thoughts": include,
        "thinking_budget": 1024,
    }


def test_streamed_thoughts_come_first_and_the_signature_last_on_its_own_part(gemini_fake, gemini_client):
    gemini_fake.script.reply(THOUGHTFUL)
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))

    chunks = list(gemini_client.models.generate_content_stream(model=MODEL, contents=PROMPT, config=config))

    parts = [
        p
        for c in chunks
        if c.candidates and c.candidates[0].content
        for p in c.candidates[0].content.parts or []
    ]
    assert [(p.text, bool(p.thought), p.thought_signature) for p in parts] == [
        ("Check the forecast.", True, None),
        ("Sunny.", False, None),
        ("", False, b"signed"),
    ]


def test_a_thinking_budget_and_level_together_are_refused(gemini_fake, gemini_client):
    thinking = types.ThinkingConfig(thinking_budget=1024, thinking_level=types.ThinkingLevel.LOW)
    with pytest.raises(errors.ClientError) as refused:
        gemini_client.models.generate_content(
            model=MODEL, contents=PROMPT, config=types.GenerateContentConfig(thinking_config=thinking)
        )
    assert refused.value.code == 400
