"""What the core needs from an upstream: the interface providers implement, declared by its user."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import ClassVar, Protocol, TypeAlias

from ferryman.core.canonical import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamEvent,
)

StreamBatch: TypeAlias = Sequence[StreamEvent]
"""Events that arrived together (one socket read): relayed together, as one write to the client.
Never empty; a slow upstream's batches hold one event each, so batching never delays an event."""


class Upstream(Protocol):
    """One deployment's upstream, spoken in its own wire format (see `ferryman.providers`)."""

    name: ClassVar[str]
    """The provider name, as config files write it."""
    default_api_base: ClassVar[str]
    """Where the provider's public API lives, for deployments that give no `api_base`."""
    gen_ai_system: ClassVar[str]
    """The provider's `gen_ai.system` value in the OpenTelemetry GenAI conventions."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Send a chat request and return the whole answer."""
        ...

    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamBatch, None]:
        """Send a chat request and yield canonical events as the upstream streams them, in batches."""
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed texts."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...
