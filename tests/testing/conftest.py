"""Fixtures for the fake-provider tests: one running fake per test, and official SDK clients aimed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def gemini_fake() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def openai_client(openai_fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=openai_fake.base_url, api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(anthropic_fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=anthropic_fake.base_url, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
def gemini_client(gemini_fake: FakeGemini) -> Iterator[genai.Client]:
    options = types.HttpOptions(base_url=gemini_fake.base_url)
    with genai.Client(api_key="gemini-test-key", http_options=options) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, for what the SDKs will not send (no key, no version header, raw bytes)."""
    async with aiohttp.ClientSession() as session:
        yield session
