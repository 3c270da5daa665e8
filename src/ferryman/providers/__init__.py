"""Upstream providers, chosen by name from one registry: adding a provider is one module and one line."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ferryman.core.upstream import Upstream

if TYPE_CHECKING:  # settings validates provider names against PROVIDERS, so it imports this module
    from ferryman.settings import Deployment

# Provider name (as written in config) → "module:class". Imported lazily, so a deployment of one
# provider never pays for importing the others. Everything else about a provider (its default base
# URL, its `gen_ai.system` name for traces) is a class attribute of its module's class.
PROVIDERS: dict[str, str] = {
    "openai": "ferryman.providers.openai:OpenAIProvider",
    "openai-compatible": "ferryman.providers.openai:OpenAICompatibleProvider",
    "anthropic": "ferryman.providers.anthropic:AnthropicProvider",
    "gemini": "ferryman.providers.gemini:GeminiProvider",
    "fake": "ferryman.providers.fake:FakeProvider",
}


def provider_class(name: str) -> type[Upstream]:
    """The class registered for provider `name` (imported on first use)."""
    module_name, _, class_name = PROVIDERS[name].partition(":")
    cls: type[Upstream] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_provider(deployment: Deployment, *, propagate_trace: bool = False) -> Upstream:
    """Instantiate the provider class registered for `deployment.provider`.

    With `propagate_trace`, HTTP providers send the current span's `traceparent` upstream.
    """
    cls: type[Any] = provider_class(deployment.provider)
    provider: Upstream = cls(deployment, propagate_trace=propagate_trace)
    return provider


__all__ = ["PROVIDERS", "create_provider", "provider_class"]
