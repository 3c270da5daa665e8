"""Upstream providers, chosen by name from one registry: adding a provider is one module and one line."""

from __future__ import annotations

import importlib

from ferryman.core.upstream import Upstream
from ferryman.settings import Deployment

# Provider name (as written in config) → "module:class". Imported lazily, so a deployment of one
# provider never pays for importing the others.
PROVIDERS: dict[str, str] = {
    "openai": "ferryman.providers.openai:OpenAIProvider",
    "openai-compatible": "ferryman.providers.openai:OpenAICompatibleProvider",
    "anthropic": "ferryman.providers.anthropic:AnthropicProvider",
    "gemini": "ferryman.providers.gemini:GeminiProvider",
    "fake": "ferryman.providers.fake:FakeProvider",
}


def create_provider(deployment: Deployment, *, propagate_trace: bool = False) -> Upstream:
    """Instantiate the provider class registered for `deployment.provider`.

    With `propagate_trace`, HTTP providers send the current span's `traceparent` upstream.
    """
    module_name, _, class_name = PROVIDERS[deployment.provider].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Upstream = cls(deployment, propagate_trace=propagate_trace)
    return provider


__all__ = ["PROVIDERS", "create_provider"]
