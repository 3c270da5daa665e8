"""Reasoning in the OpenAI and Gemini codecs: one level/budget table, parsed and built both ways.

The Anthropic side is in test_anthropic.py, the Responses API's in test_openai_responses.py; these
check that the table reads the same from every direction and that each codec speaks its own spelling.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from google.genai import types as genai_types
from openai.types.chat import ChatCompletion

from ferryman.core.canonical import (
    EFFORT_BUDGETS,
    ChatRequest,
    ChatResponse,
    Finish,
    Message,
    Reasoning,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    Usage,
    UsageReport,
)
from ferryman.errors import InvalidRequestError
from ferryman.wire import gemini, openai

SIGNATURE = "Cv4BAdHtim8="
ANSWER = Message("assistant", (TextPart("Blue."),), thinking=(ThinkingPart("Rayleigh.", "sig-anthropic"),))


def ask(**reasoning: Any) -> ChatRequest:
    return ChatRequest(
        model="o4-mini", messages=(Message("user", (TextPart("hi"),)),), reasoning=Reasoning(**reasoning)
    )


# --- The table -------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
def test_a_level_and_its_budget_stand_for_each_other_both_ways(effort: Any) -> None:
    assert Reasoning(effort=effort).budget() == EFFORT_BUDGETS[effort]
    assert Reasoning(budget_tokens=EFFORT_BUDGETS[effort]).level() == effort


@pytest.mark.parametrize(
    ("budget", "level"),
    [(1, "minimal"), (1025, "low"), (8193, "high"), (31999, "high"), (10**6, "high"), (0, "none")],
)
def test_a_budget_reads_as_the_smallest_level_covering_it_never_past_high(budget: int, level: str) -> None:
    # xhigh and max are only sent when a client names them: older reasoning models refuse them.
    assert Reasoning(budget_tokens=budget).level() == level


# --- OpenAI Chat Completions -----------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high", "xhigh", "max"])
def test_openai_reasoning_effort_parses_and_builds_back_unchanged(effort: str) -> None:
    req = openai.parse_chat_request(
        {"model": "o4-mini", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    )
    assert req.reasoning == Reasoning(effort=effort)  # type: ignore[arg-type]
    assert openai.build_chat_request(req)["reasoning_effort"] == effort


def test_openai_null_reasoning_effort_is_no_setting() -> None:
    body: Any = {
        "model": "o4-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": None,
    }
    assert openai.parse_chat_request(body).reasoning is None


@pytest.mark.parametrize("value", ["extreme", "HIGH", 3, True])
def test_openai_bad_reasoning_effort_is_a_400_naming_it(value: Any) -> None:
    body: Any = {
        "model": "o4-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": value,
    }
    with pytest.raises(InvalidRequestError) as caught:
        openai.parse_chat_request(body)
    assert caught.value.param == "reasoning_effort" and caught.value.status == 400


@pytest.mark.parametrize(
    ("reasoning", "expected"),
    [
        ({"budget_tokens": 2048, "include_thoughts": True}, "low"),  # Anthropic's thinking
        ({"budget_tokens": 20000}, "high"),
        ({}, "medium"),  # Gemini's "the model decides"
        ({"effort": "none"}, "none"),  # an OpenAI client that named it
        ({"budget_tokens": 0}, None),  # another format's "off": pre-5.1 models refuse "none"
    ],
)
def test_openai_build_spells_any_setting_as_a_level(reasoning: dict[str, Any], expected: str | None) -> None:
    assert openai.build_chat_request(ask(**reasoning)).get("reasoning_effort") == expected


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1", "llama3.1:8b", "gpt-4o-2024-08-06"])
def test_openai_build_leaves_reasoning_effort_out_for_models_that_refuse_it(model: str) -> None:
    assert "reasoning_effort" not in openai.build_chat_request(
        ChatRequest(model, ask().messages, reasoning=Reasoning(effort="high"))
    )


@pytest.mark.parametrize(
    "model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5.1", "gpt-5-mini", "openai/gpt-oss-20b"]
)
def test_openai_build_sends_reasoning_effort_to_reasoning_models(model: str) -> None:
    body = openai.build_chat_request(ChatRequest(model, ask().messages, reasoning=Reasoning(effort="high")))
    assert body["reasoning_effort"] == "high"


def test_openai_reply_keeps_thinking_out_of_content_and_reports_reasoning_tokens() -> None:
    usage = Usage(input_tokens=5, output_tokens=50, reasoning_tokens=40)
    rendered = openai.render_chat_response(ChatResponse("r1", "m", ANSWER, "stop", usage))
    completion = ChatCompletion.model_validate(rendered)
    assert completion.choices[0].message.content == "Blue."
    assert "Rayleigh" not in orjson.dumps(rendered).decode()
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 40


def test_openai_stream_drops_thinking_deltas_and_reports_reasoning_tokens() -> None:
    renderer = openai.StreamRenderer("m")
    events = [
        StreamStart("r1", "m"),
        ThinkingDelta(0, "Rayleigh."),
        ThinkingDelta(0, signature="sig"),
        TextDelta("Blue."),
        Finish("stop"),
        UsageReport(Usage(5, 50, reasoning_tokens=40)),
    ]
    raw = b"".join(renderer.render(e) for e in events) + renderer.close()
    assert b"Rayleigh" not in raw and b"sig" not in raw
    assert b'"reasoning_tokens":40' in raw


# --- Gemini thinkingConfig -------------------------------------------------------------------------


def gemini_request(thinking: Any, model: str = "gemini-2.5-flash") -> ChatRequest:
    body: Any = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"thinkingConfig": thinking}}
    return gemini.parse_chat_request(body, model=model, stream=False)


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        (
            {"thinkingBudget": 4096, "includeThoughts": True},
            Reasoning(budget_tokens=4096, include_thoughts=True),
        ),
        ({"thinking_budget": 0}, Reasoning(budget_tokens=0)),
        ({"thinkingBudget": -1}, Reasoning()),  # the model decides
        ({"thinkingLevel": "LOW"}, Reasoning(effort="low")),
        (
            {"thinking_level": "high", "include_thoughts": True},
            Reasoning(effort="high", include_thoughts=True),
        ),
        ({"thinkingLevel": "XHIGH"}, Reasoning(effort="xhigh")),
        ({"thinkingLevel": "THINKING_LEVEL_UNSPECIFIED"}, Reasoning()),
        ({}, Reasoning()),
    ],
)
def test_gemini_thinking_config_parses_in_either_spelling(thinking: Any, expected: Reasoning) -> None:
    assert gemini_request(thinking).reasoning == expected


@pytest.mark.parametrize(
    ("thinking", "param"),
    [
        ({"thinkingBudget": 1024, "thinkingLevel": "LOW"}, "generationConfig.thinkingConfig.thinkingLevel"),
        ({"thinkingBudget": -2}, "generationConfig.thinkingConfig.thinkingBudget"),
        ({"thinkingBudget": "many"}, "generationConfig.thinkingConfig.thinkingBudget"),
        ({"thinkingLevel": "ULTRA"}, "generationConfig.thinkingConfig.thinkingLevel"),
        ({"includeThoughts": "yes"}, "generationConfig.thinkingConfig.includeThoughts"),
        ("on", "generationConfig.thinkingConfig"),
    ],
)
def test_gemini_bad_thinking_config_is_a_400_naming_the_field(thinking: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        gemini_request(thinking)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("reasoning", "model", "expected"),
    [
        (
            Reasoning(budget_tokens=4096, include_thoughts=True),
            "gemini-2.5-flash",
            {"thinkingBudget": 4096, "includeThoughts": True},
        ),
        (Reasoning(effort="low"), "gemini-2.5-pro", {"thinkingBudget": 2048}),
        (Reasoning(), "gemini-2.5-flash", {"thinkingBudget": -1}),
        (Reasoning(budget_tokens=0, include_thoughts=True), "gemini-2.5-flash", {"thinkingBudget": 0}),
        (Reasoning(budget_tokens=2048), "gemini-3-pro-preview", {"thinkingLevel": "LOW"}),
        (
            Reasoning(effort="max", include_thoughts=True),
            "gemini-3-flash",
            {"thinkingLevel": "XHIGH", "includeThoughts": True},
        ),
        (Reasoning(effort="none"), "gemini-3-flash", {"thinkingLevel": "MINIMAL"}),  # Gemini 3 cannot stop
        (Reasoning(include_thoughts=True), "gemini-3-pro-preview", {"includeThoughts": True}),
    ],
)
def test_gemini_build_speaks_budgets_to_2_5_and_levels_to_3(
    reasoning: Reasoning, model: str, expected: Any
) -> None:
    req = ChatRequest(model, (Message("user", (TextPart("hi"),)),), reasoning=reasoning)
    assert gemini.build_chat_request(req)["generationConfig"] == {"thinkingConfig": expected}


# --- Gemini thought parts and signatures ----------------------------------------------------------


def test_gemini_thought_parts_parse_to_thinking_and_signatures_stay_on_their_parts() -> None:
    reply: Any = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Rayleigh.", "thought": True},
                        {"text": "Blue.", "thoughtSignature": SIGNATURE},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "thoughtsTokenCount": 30},
    }
    resp = gemini.parse_chat_response(reply)
    assert resp.message == Message(
        "assistant", (TextPart("Blue.", signature=SIGNATURE),), thinking=(ThinkingPart("Rayleigh."),)
    )
    assert resp.usage == Usage(input_tokens=3, output_tokens=32, reasoning_tokens=30)
    assert (
        gemini.render_chat_response(resp)["candidates"][0]["content"]["parts"]
        == reply["candidates"][0]["content"]["parts"]
    )


def test_gemini_history_round_trips_thoughts_and_signatures_byte_for_byte() -> None:
    model_turn: Any = {
        "role": "model",
        "parts": [
            {"text": "Rayleigh.", "thought": True, "thoughtSignature": "c2lnLW9uLXRoZS10aG91Z2h0"},
            {"text": "Blue.", "thoughtSignature": SIGNATURE},
            {"text": "", "thoughtSignature": "ZW1wdHk="},
        ],
    }
    body: Any = {
        "contents": [
            {"role": "user", "parts": [{"text": "Why?"}]},
            model_turn,
            {"role": "user", "parts": [{"text": "Sure?"}]},
        ]
    }
    req = gemini.parse_chat_request(body, model="gemini-2.5-flash", stream=False)
    assert req.messages[1].thinking == (ThinkingPart("Rayleigh.", "c2lnLW9uLXRoZS10aG91Z2h0"),)
    assert gemini.build_chat_request(req)["contents"][1] == model_turn


def test_gemini_build_drops_redacted_thinking_and_keeps_other_providers_thinking_text() -> None:
    message = Message(
        "assistant",
        (TextPart("Blue."),),
        thinking=(ThinkingPart(redacted_data="xyz"), ThinkingPart("Rayleigh.")),
    )
    req = ChatRequest(
        "gemini-2.5-flash", (Message("user", (TextPart("hi"),)), message, Message("user", (TextPart("ok"),)))
    )
    assert gemini.build_chat_request(req)["contents"][1]["parts"] == [
        {"text": "Rayleigh.", "thought": True},
        {"text": "Blue."},
    ]


def test_gemini_thoughts_in_a_user_turn_are_ignored() -> None:
    body: Any = {
        "contents": [{"role": "user", "parts": [{"text": "pondering", "thought": True}, {"text": "hi"}]}]
    }
    assert gemini.parse_chat_request(body, model="g", stream=False).messages == (
        Message("user", (TextPart("hi"),)),
    )


def test_gemini_stream_thoughts_become_thinking_deltas_numbered_by_block() -> None:
    parser = gemini.StreamParser()
    chunks: list[Any] = [
        {"candidates": [{"content": {"parts": [{"text": "First ", "thought": True}]}}], "responseId": "r"},
        {"candidates": [{"content": {"parts": [{"text": "thought.", "thought": True}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "Blue."}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "Again.", "thought": True}]}}]},
        {
            "candidates": [
                {"content": {"parts": [{"text": "", "thoughtSignature": SIGNATURE}]}, "finishReason": "STOP"}
            ],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "thoughtsTokenCount": 9},
        },
    ]
    events = [e for chunk in chunks for e in parser.feed(None, chunk)] + parser.finish()
    assert events == [
        StreamStart("r", ""),
        ThinkingDelta(0, "First "),
        ThinkingDelta(0, "thought."),
        TextDelta("Blue."),
        ThinkingDelta(1, "Again."),
        TextDelta("", signature=SIGNATURE),
        Finish("stop"),
        UsageReport(Usage(1, 10, reasoning_tokens=9)),
    ]


def test_gemini_stream_renders_thinking_as_thought_parts_the_sdk_reads() -> None:
    renderer = gemini.StreamRenderer("gemini-2.5-flash")
    events = [
        StreamStart("r", "m"),
        ThinkingDelta(0, "Rayleigh."),
        ThinkingDelta(0, signature="c2ln"),
        ThinkingDelta(1, redacted_data="secret"),
        TextDelta("Blue."),
        TextDelta("", signature=SIGNATURE),
        Finish("stop"),
        UsageReport(Usage(1, 10, reasoning_tokens=9)),
    ]
    raw = b"".join(renderer.render(e) for e in events) + renderer.close()
    frames = [orjson.loads(f[len(b"data: ") :]) for f in raw.split(b"\n\n") if f]
    parts = [
        genai_types.GenerateContentResponse.model_validate(f).candidates[0].content.parts[0] for f in frames
    ]  # type: ignore[index,union-attr]
    assert [(p.text, p.thought, p.thought_signature) for p in parts] == [
        ("Rayleigh.", True, None),
        ("", True, base64.b64decode("c2ln")),
        ("Blue.", None, None),
        ("", None, base64.b64decode(SIGNATURE)),
        ("", None, None),  # the closing chunk
    ]
    assert b"secret" not in raw
