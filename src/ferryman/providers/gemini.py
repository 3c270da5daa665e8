"""Google Gemini API upstreams (generateContent, streamGenerateContent, batchEmbedContents)."""

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
    Usage,
)
from ferryman.core.upstream import StreamBatch
from ferryman.errors import UpstreamConnectionError
from ferryman.providers.base import HttpProvider
from ferryman.settings import Deployment
from ferryman.wire import gemini as wire


class GeminiProvider(HttpProvider):
    """A deployment of a Gemini model; the model and the method travel in the URL."""

    name: ClassVar[str] = "gemini"
    default_api_base: ClassVar[str] = "https://generativelanguage.googleapis.com"
    gen_ai_system: ClassVar[str] = "gcp.gemini"

    def __init__(self, deployment: Deployment, *, propagate_trace: bool = False) -> None:
        super().__init__(deployment, propagate_trace=propagate_trace)
        self._static_headers = {"content-type": "application/json", **deployment.headers}
        self._model_url = f"{deployment.base_url}/v1beta/models/{quote(deployment.model, safe='')}"

    @property
    def _headers(self) -> dict[str, str]:
        # Built per request: the key is read now, so a rotated one (docs/secrets.md) takes effect at once.
        key = self.deployment.api_key
        if not key:
            return self._static_headers
        return {**self._static_headers, "x-goog-api-key": key.get_secret_value()}

    def _upstream(self, request: ChatRequest) -> ChatRequest:
        """The request as this deployment's model: the body depends on it (Gemini 3 takes thinking
        levels and needs signatures, 2.5 takes budgets), though the model travels in the URL."""
        return replace(request, model=self.deployment.model)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One generateContent call."""
        body = wire.build_chat_request(self._upstream(request))
        data = await self.post_json(f"{self._model_url}:generateContent", body, self._headers)
        return wire.parse_chat_response(data)

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """streamGenerateContent as server-sent events; every chunk carries cumulative usage."""
        url = f"{self._model_url}:streamGenerateContent?alt=sse"
        body = wire.build_chat_request(self._upstream(request))
        async for batch in self.stream_events(url, body, self._headers, wire.StreamParser()):
            yield batch

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embeddings through batchEmbedContents, one request per input text."""
        body = wire.build_embedding_request(request, model=self.deployment.model)
        data = await self.post_json(f"{self._model_url}:batchEmbedContents", body, self._headers)
        response = wire.parse_embedding_response(data, model=self.deployment.model)
        if response.usage.input_tokens == 0:
            # Gemini reports no token counts for embeddings; estimate them so the cost is never $0.
            estimate = sum(max(len(text) // 4, 1) for text in request.inputs)
            response = replace(response, usage=Usage(input_tokens=estimate))
        return response

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """`:countTokens` (free at Google), given the whole generateContent request so that the
        system instruction and tools are counted as well as the contents."""
        body = wire.build_chat_request(self._upstream(request))
        nested = {"model": f"models/{self.deployment.model}", **body}
        data = await self.post_json(
            f"{self._model_url}:countTokens", {"generateContentRequest": nested}, self._headers
        )
        tokens = data.get("totalTokens", 0)  # proto JSON omits a zero
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise UpstreamConnectionError(
                "gemini sent a countTokens reply without totalTokens",
                provider=self.name,
                code="upstream_malformed",
            )
        return tokens
