"""OpenAI Chat Completions upstreams: OpenAI itself and any OpenAI-compatible server.

`openai-compatible` covers vLLM, Ollama, Groq, LM Studio and the like (same paths, Bearer auth, any
base URL). A deployment with `api_version` set speaks the Azure OpenAI dialect instead: the model is a
deployment name in the path, the version goes in the query, and the key travels in `api-key`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import ClassVar
from urllib.parse import quote

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
)
from ferryman.core.upstream import StreamBatch
from ferryman.providers.base import HttpProvider
from ferryman.settings import Deployment
from ferryman.wire import openai as wire


class OpenAIProvider(HttpProvider):
    """A deployment reached through the OpenAI wire format."""

    name: ClassVar[str] = "openai"
    default_api_base: ClassVar[str] = "https://api.openai.com/v1"
    gen_ai_system: ClassVar[str] = "openai"
    # OpenAI's own API wants the newer field (its reasoning models reject `max_tokens`).
    max_tokens_field: ClassVar[wire.MaxTokensField] = "max_completion_tokens"

    def __init__(self, deployment: Deployment, *, propagate_trace: bool = False) -> None:
        super().__init__(deployment, propagate_trace=propagate_trace)
        self._static_headers = {"content-type": "application/json", **deployment.headers}

    @property
    def _headers(self) -> dict[str, str]:
        # Built per request: the key is read now, so a rotated one (docs/secrets.md) takes effect at once.
        headers = dict(self._static_headers)
        deployment = self.deployment
        key = deployment.api_key.get_secret_value() if deployment.api_key else None
        if key:
            if deployment.api_version:
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        return headers

    def url(self, endpoint: str) -> str:
        """The full URL of `endpoint` ("chat/completions", "embeddings") for this deployment."""
        deployment = self.deployment
        if deployment.api_version:
            path = f"/openai/deployments/{quote(deployment.model, safe='')}/{endpoint}"
            return f"{deployment.base_url}{path}?api-version={quote(deployment.api_version, safe='')}"
        return f"{deployment.base_url}/{endpoint}"

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One non-streamed chat completion."""
        body = wire.build_chat_request(
            replace(request, model=self.deployment.model, stream=False),
            max_tokens_field=self.max_tokens_field,
        )
        data = await self.post_json(self.url("chat/completions"), body, self._headers)
        return wire.parse_chat_response(data)

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """A streamed chat completion; the codec asks the upstream to include usage."""
        body = wire.build_chat_request(
            replace(request, model=self.deployment.model, stream=True), max_tokens_field=self.max_tokens_field
        )
        async for batch in self.stream_events(
            self.url("chat/completions"), body, self._headers, wire.StreamParser()
        ):
            yield batch

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embeddings through `/embeddings`."""
        body = wire.build_embedding_request(replace(request, model=self.deployment.model))
        data = await self.post_json(self.url("embeddings"), body, self._headers)
        return wire.parse_embedding_response(data)


class OpenAICompatibleProvider(OpenAIProvider):
    """The same wire format at any base URL (vLLM, Ollama, Groq, LM Studio…)."""

    name: ClassVar[str] = "openai-compatible"
    default_api_base: ClassVar[str] = ""  # required in config: there is no one public server
    # Ollama and LM Studio only understand the older field name.
    max_tokens_field: ClassVar[wire.MaxTokensField] = "max_tokens"
