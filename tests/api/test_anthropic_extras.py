"""The Anthropic agents' surface through a real gateway: betas, prompt caching, thinking, end users.

The official `anthropic` SDK's beta client (`?beta=true` plus an `anthropic-beta` header) talks to the
gateway over loopback; the fakes record what reached each provider. An Anthropic upstream must get the
betas (less the model's deny list), the `cache_control` marks and the thinking config exactly, and the
client must get thinking blocks with their signatures and the cache usage back. OpenAI and Gemini
upstreams must get neither the betas nor `cache_control`, and still answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest

from ferryman.core.exchange import Exchange
from ferryman.core.pipeline import Answer, Outcome
from ferryman.testing import (
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    FakeServer,
    Reply,
    ThinkingSpec,
    ToolCallSpec,
    Usage,
)
from tests.conftest import RunningGateway, serve_gateway

MASTER = "sk-anthropic-extras-master"
ROUTES = {"anthropic": "claude-route", "openai": "gpt-route", "gemini": "gemini-route"}
DENIED = "files-api-2025-04-14"
BETAS = ["prompt-caching-2024-07-31", "interleaved-thinking-2025-05-14"]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA/+x==\n"  # opaque: padding, slashes and a newline must survive
EPHEMERAL = {"type": "ephemeral"}
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "Project instructions: keep answers short.", "cache_control": EPHEMERAL},
]
TOOLS: list[Any] = [
    {
        "name": name,
        "description": f"The {name} tool",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
    for name in ("Read", "Write", "Bash", "Grep")
]
TOOLS[-1] = {**TOOLS[-1], "cache_control": EPHEMERAL}
THINKING = {"type": "enabled", "budget_tokens": 2048}
USAGE = Usage(input_tokens=1200, output_tokens=30, cached_tokens=1000, cache_write_tokens=150)


@dataclass
class EndUsers:
    """A pipeline stage recording each exchange's end user."""

    name: str = "end-users"
    seen: list[str | None] = field(default_factory=list)

    async def enter(self, exchange: Exchange) -> Answer | None:
        return None

    async def exit(self, exchange: Exchange, outcome: Outcome) -> None:
        self.seen.append(exchange.caller.end_user)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeAnthropic() as fake_anthropic, FakeOpenAI() as fake_openai, FakeGemini() as fake_gemini:
        yield {"anthropic": fake_anthropic, "openai": fake_openai, "gemini": fake_gemini}


@pytest.fixture(scope="module")
def end_users() -> EndUsers:
    return EndUsers()


@pytest.fixture(scope="module")
def gateway(fakes: dict[str, FakeServer], end_users: EndUsers) -> Iterator[RunningGateway]:
    models = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4o-mini", "gemini": "gemini-2.5-flash"}
    config = {
        "master_key": MASTER,
        "retries": {"max_attempts_per_deployment": 1},
        "models": [
            {
                "name": ROUTES[provider],
                "deployments": [
                    {
                        "provider": provider,
                        "model": model,
                        "api_base": fakes[provider].base_url,
                        "api_key": "up",
                    }
                ],
                "anthropic_betas": {"deny": [DENIED]},
            }
            for provider, model in models.items()
        ],
    }
    with serve_gateway(config, stages=[end_users]) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_fakes(fakes: dict[str, FakeServer], end_users: EndUsers) -> None:
    for fake in fakes.values():
        fake.reset()
    end_users.seen.clear()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0) as sdk:
        yield sdk


def _cached_messages() -> list[Any]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is in a.py?", "cache_control": EPHEMERAL}],
        }
    ]


def _thinking_reply(text: str = "It holds one function.") -> Reply:
    return Reply.text(
        text, usage=USAGE, chunks=3, thinking=(ThinkingSpec("Read the file first.", SIGNATURE),)
    )


def _request(route: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": route,
        "max_tokens": 4096,
        "betas": [*BETAS, DENIED],
        "system": SYSTEM,
        "messages": _cached_messages(),
        "tools": TOOLS,
        "thinking": THINKING,
        **extra,
    }


def _assert_anthropic_saw_everything(fake: FakeServer) -> None:
    sent = fake.last_request
    assert sent.headers["anthropic-beta"] == ",".join(BETAS)  # the denied one held back
    assert sent.body["system"] == SYSTEM
    assert sent.body["messages"] == _cached_messages()
    assert sent.body["tools"] == TOOLS
    assert sent.body["thinking"] == THINKING
    assert sent.body["max_tokens"] == 4096


def _assert_cache_usage(usage: Any) -> None:
    assert usage.cache_read_input_tokens == 1000
    assert usage.cache_creation_input_tokens == 150
    assert usage.input_tokens == 50  # Anthropic counts the cached parts apart
    assert usage.output_tokens == 30


def test_beta_request_reaches_anthropic_whole_and_thinking_and_cache_usage_come_back(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    fakes["anthropic"].script.reply(_thinking_reply())
    message = client.beta.messages.create(**_request(ROUTES["anthropic"]))
    _assert_anthropic_saw_everything(fakes["anthropic"])
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Read the file first."
    assert message.content[0].signature == SIGNATURE
    _assert_cache_usage(message.usage)


def test_streamed_beta_request_brings_thinking_deltas_and_the_signature_intact(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    fakes["anthropic"].script.reply(_thinking_reply())
    with client.beta.messages.stream(**_request(ROUTES["anthropic"])) as stream:
        kinds = {event.type for event in stream}
        message = stream.get_final_message()
    assert {"thinking", "signature"} <= kinds  # the SDK's own thinking and signature events
    _assert_anthropic_saw_everything(fakes["anthropic"])
    assert fakes["anthropic"].last_request.body["stream"] is True
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == "Read the file first."
    assert message.content[0].signature == SIGNATURE
    assert message.content[1].text == "It holds one function."
    _assert_cache_usage(message.usage)


def test_a_second_turn_sends_the_thinking_block_back_unchanged(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    fakes["anthropic"].script.reply(_thinking_reply())
    first = client.beta.messages.create(**_request(ROUTES["anthropic"]))
    history = [block.to_dict() for block in first.content]
    follow_up = [
        *_cached_messages(),
        {"role": "assistant", "content": history},
        {"role": "user", "content": "And b.py?"},
    ]
    client.beta.messages.create(**_request(ROUTES["anthropic"], messages=follow_up))
    sent = fakes["anthropic"].last_request.body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": "Read the file first.", "signature": SIGNATURE}
    assert sent[1] == {"type": "text", "text": "It holds one function."}


def test_redacted_thinking_reaches_the_client_and_goes_back_intact(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    redacted = ThinkingSpec(redacted_data="EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFB")
    fakes["anthropic"].script.reply(Reply.text("Fine.", thinking=(redacted,)))
    with client.beta.messages.stream(**_request(ROUTES["anthropic"])) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "redacted_thinking"
    assert message.content[0].data == redacted.redacted_data
    follow_up = [
        *_cached_messages(),
        {"role": "assistant", "content": [block.to_dict() for block in message.content]},
        {"role": "user", "content": "Go on."},
    ]
    client.beta.messages.create(**_request(ROUTES["anthropic"], messages=follow_up))
    sent = fakes["anthropic"].last_request.body["messages"][1]["content"][0]
    assert sent == {"type": "redacted_thinking", "data": redacted.redacted_data}


def test_only_a_denied_beta_sends_no_beta_header(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    client.beta.messages.create(
        model=ROUTES["anthropic"], max_tokens=64, betas=[DENIED], messages=[{"role": "user", "content": "hi"}]
    )
    assert "anthropic-beta" not in fakes["anthropic"].last_request.headers


@pytest.mark.parametrize("provider", ["openai", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_other_providers_answer_without_betas_or_cache_control(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer], provider: str, stream: bool
) -> None:
    fakes[provider].script.reply(Reply.text("It holds one function.", chunks=3))
    if stream:
        with client.beta.messages.stream(**_request(ROUTES[provider])) as events:
            message = events.get_final_message()
    else:
        message = client.beta.messages.create(**_request(ROUTES[provider]))
    assert message.content[-1].text == "It holds one function."
    sent = fakes[provider].last_request
    assert "anthropic-beta" not in sent.headers
    assert b"cache_control" not in sent.raw_body
    assert b"ephemeral" not in sent.raw_body


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_a_claude_code_session_passes_through_to_each_provider(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer], end_users: EndUsers, provider: str
) -> None:
    """Claude Code's shape: `?beta=true`, cached system blocks, several tools, `metadata.user_id`,
    streamed with thinking on; a tool call, then the tool result sent back with the turn's thinking."""
    user_id = "user_3f2a_account_9c1d_session_77e0"
    thinking = (ThinkingSpec("I should read it.", SIGNATURE),)
    fakes[provider].script.reply(
        Reply.tool_calls(ToolCallSpec("Read", {"path": "a.py"}), text="Reading.", thinking=thinking),
        Reply.text("a.py defines main().", chunks=4, thinking=thinking),
    )
    request = _request(ROUTES[provider], metadata={"user_id": user_id})
    with client.beta.messages.stream(**request) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert (call.name, call.input) == ("Read", {"path": "a.py"})
    if provider == "anthropic":
        assert first.content[0].type == "thinking"
        assert first.content[0].signature == SIGNATURE
    messages = [
        *_cached_messages(),
        {"role": "assistant", "content": [block.to_dict() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "def main(): ..."}],
        },
    ]
    with client.beta.messages.stream(**{**request, "messages": messages}) as stream:
        second = stream.get_final_message()
    assert second.content[-1].type == "text"
    assert second.content[-1].text == "a.py defines main()."
    assert second.stop_reason == "end_turn"
    assert end_users.seen == [user_id, user_id]  # metadata.user_id is the end user
    sent = fakes[provider].last_request
    if provider == "anthropic":
        assert sent.body["metadata"] == {"user_id": user_id}
        assert sent.body["messages"][1]["content"][0]["signature"] == SIGNATURE
    else:
        assert "anthropic-beta" not in sent.headers


def test_a_bad_thinking_config_is_a_400_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.messages.create(**_request(ROUTES["anthropic"], thinking={"type": "enabled"}))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "thinking.budget_tokens" in body["error"]["message"]


def test_thinking_for_a_max_tokens_too_small_is_a_400_naming_max_tokens(
    client: anthropic.Anthropic, fakes: dict[str, FakeServer]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.messages.create(**_request(ROUTES["anthropic"], max_tokens=512))
    assert "max_tokens" in str(caught.value)
    assert not fakes["anthropic"].requests  # refused before reaching the provider
