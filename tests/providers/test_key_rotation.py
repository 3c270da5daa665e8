"""Every provider reads its deployment's key per request, so a rotated key applies to the next one."""

from __future__ import annotations

import pytest

from ferryman.core.canonical import ChatRequest, Message, TextPart
from ferryman.providers import create_provider
from ferryman.secret_refs import SecretReference, SecretValue
from ferryman.settings import Deployment
from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, FakeServer

OLD = "sk-rotate-old-0123456789"
NEW = "sk-rotate-new-9876543210"
UPSTREAMS: dict[str, tuple[type[FakeServer], str, str]] = {
    # dialect: (fake, upstream model, the header its key travels in)
    "openai": (FakeOpenAI, "gpt-4o-mini", "Authorization"),
    "azure": (FakeOpenAI, "gpt-4o-mini", "api-key"),
    "anthropic": (FakeAnthropic, "claude-haiku-4-5", "x-api-key"),
    "gemini": (FakeGemini, "gemini-2.5-flash", "x-goog-api-key"),
}


def deployment_for(dialect: str, fake: FakeServer, model: str, holder: SecretValue) -> Deployment:
    if dialect == "azure":
        config = {"provider": "openai", "api_base": fake.url, "api_version": "2024-10-21"}
    else:
        config = {"provider": dialect, "api_base": fake.base_url}
    return Deployment.model_validate({**config, "model": model, "api_key": holder})


def sent_key(fake: FakeServer, header: str) -> str:
    return fake.last_request.headers[header].removeprefix("Bearer ")


@pytest.mark.parametrize("dialect", sorted(UPSTREAMS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_replaced_key_is_sent_from_the_next_request_on(dialect: str, stream: bool) -> None:
    fake_type, model, header = UPSTREAMS[dialect]
    reference = SecretReference.parse("file:/run/secrets/key")
    assert reference is not None
    holder = SecretValue(OLD, reference)
    with fake_type() as fake:
        upstream = create_provider(deployment_for(dialect, fake, model, holder))
        request = ChatRequest(model, (Message("user", (TextPart("hi"),)),), stream=stream)
        try:
            for expected in (OLD, NEW):
                fake.api_key = expected  # the upstream accepts only the current key
                if stream:
                    async for _ in upstream.stream_chat(request):
                        pass
                else:
                    await upstream.chat(request)
                assert sent_key(fake, header) == expected
                holder.replace(NEW)
        finally:
            await upstream.aclose()
