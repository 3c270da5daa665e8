"""Anthropic Messages API upstreams."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import ClassVar

from ferryman.core.canonical import ChatRequest, ChatResponse
from ferryman.core.upstream import StreamBatch
from ferryman.providers.base import HttpProvider
from ferryman.settings import Deployment
from ferryman.wire import anthropic as wire

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    """A deployment of a Claude model, reached through `/v1/messages`."""

    name: ClassVar[str] = "anthropic"
    default_api_base: ClassVar[str] = "https://api.anthropic.com"
    gen_ai_system: ClassVar[str] = "anthropic"

    def __init__(self, deployment: Deployment, *, propagate_trace: bool = False) -> None:
        super().__init__(deployment, propagate_trace=propagate_trace)
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        headers.update(deployment.headers)
        self._static_headers = headers
        self._url = f"{deployment.base_url}/v1/messages"

    @property
    def _headers(self) -> dict[str, str]:
        # Built per request: the key is read now, so a rotated one (docs/secrets.md) takes effect at once.
        key = self.deployment.api_key
        return {**self._static_headers, "x-api-key": key.get_secret_value()} if key else self._static_headers

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One non-streamed message."""
        body = wire.build_chat_request(replace(request, model=self.deployment.model, stream=False))
        return wire.parse_chat_response(await self.post_json(self._url, body, self._headers))

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """A streamed message; Anthropic always reports usage in its stream events."""
        body = wire.build_chat_request(replace(request, model=self.deployment.model, stream=True))
        async for batch in self.stream_events(self._url, body, self._headers, wire.StreamParser()):
            yield batch
