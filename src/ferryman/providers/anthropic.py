"""Anthropic Messages API upstreams."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import ClassVar

from ferryman.core.canonical import ChatRequest, ChatResponse
from ferryman.core.upstream import StreamBatch
from ferryman.errors import UpstreamConnectionError
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

    def _headers_for(self, request: ChatRequest) -> Mapping[str, str]:
        """The headers, with the client's betas that this deployment's `anthropic_betas` permits.

        Filtered here, the one place a request meets its deployment: the betas are an Anthropic
        matter, so every other provider simply never sends them."""
        betas = self.deployment.anthropic_betas.permit(request.betas)
        if not betas:
            return self._headers
        return {**self._headers, "anthropic-beta": ",".join(betas)}

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One non-streamed message."""
        body = wire.build_chat_request(replace(request, model=self.deployment.model, stream=False))
        return wire.parse_chat_response(await self.post_json(self._url, body, self._headers_for(request)))

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """A streamed message; Anthropic always reports usage in its stream events."""
        body = wire.build_chat_request(replace(request, model=self.deployment.model, stream=True))
        headers = self._headers_for(request)
        async for batch in self.stream_events(self._url, body, headers, wire.StreamParser()):
            yield batch

    async def count_tokens(self, request: ChatRequest) -> int | None:
        """`/v1/messages/count_tokens`, free at Anthropic, with the betas `chat` would send.

        The body is the Messages request minus what count_tokens refuses (max_tokens, stream,
        sampling settings): only the fields that make up the prompt are sent."""
        body = wire.build_chat_request(replace(request, model=self.deployment.model, stream=False))
        counted = {key: value for key, value in body.items() if key in _COUNTED_FIELDS}
        data = await self.post_json(f"{self._url}/count_tokens", counted, self._headers_for(request))
        tokens = data.get("input_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise UpstreamConnectionError(
                "anthropic sent a count_tokens reply without input_tokens",
                provider=self.name,
                code="upstream_malformed",
            )
        return tokens


# What Anthropic's count_tokens accepts of a Messages body (it refuses max_tokens and sampling fields).
_COUNTED_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
