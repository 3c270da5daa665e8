"""The pure parts of the fakes: reading prompts, planning replies, cutting text, inventing embeddings."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st

from ferryman.testing import Reply, ToolCallSpec, Usage
from ferryman.testing._turn import (
    Prompt,
    embedding_vector,
    float32_bytes,
    last_user_text,
    plan_turn,
    prompt_words,
    split_evenly,
)

PROMPT = Prompt(model="m", stream=False, last_user_text="hello world", word_count=2, body={})


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_split_evenly_keeps_every_character_in_at_most_n_non_empty_pieces(text, pieces):
    parts = split_evenly(text, pieces)

    assert "".join(parts) == text
    assert len(parts) <= pieces
    assert all(parts)
    assert len(parts) == min(pieces, len(text))


def test_split_evenly_balances_lengths():
    assert split_evenly("abcdefgh", 3) == ("ab", "cde", "fgh")


def test_default_plan_echoes_and_counts_words():
    turn = plan_turn(Reply(), PROMPT)

    assert turn.text == "echo: hello world"
    assert turn.finish == "stop"
    assert turn.usage == Usage(input_tokens=2, output_tokens=3)


def test_tool_call_plan_finishes_with_tool_calls_and_fragments_arguments():
    turn = plan_turn(Reply.tool_calls(ToolCallSpec("lookup", {"query": "two words"}), chunks=3), PROMPT)

    assert turn.text == ""
    assert turn.finish == "tool_calls"
    assert turn.tool_calls[0].arguments_json == '{"query":"two words"}'
    assert len(turn.tool_calls[0].pieces) == 3
    assert turn.usage.output_tokens == 3  # "lookup", '{"query":"two', 'words"}'


def test_scripted_usage_and_finish_win():
    usage = Usage(input_tokens=10, output_tokens=4)

    turn = plan_turn(Reply.text("x", finish="content_filter", usage=usage), PROMPT)

    assert (turn.finish, turn.usage) == ("content_filter", usage)
    assert usage.total_tokens == 14


def test_last_user_text_skips_tool_results_and_other_roles():
    anthropic_messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "question"}],
        },
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "18C"}]},
    ]

    assert last_user_text(anthropic_messages, content_key="content") == "first question"


def test_last_user_text_reads_gemini_parts_with_the_default_role():
    contents = [{"parts": [{"text": "no role given"}]}, {"role": "model", "parts": [{"text": "reply"}]}]

    assert last_user_text(contents, content_key="parts", default_role="user") == "no role given"
    assert last_user_text("not a list", content_key="parts") == ""


def test_prompt_words_counts_system_strings_and_nested_text():
    messages = [{"role": "user", "content": [{"type": "text", "text": "three little words"}]}]

    assert prompt_words("be brief", messages, None) == 5


def test_embedding_vector_is_a_deterministic_unit_vector():
    vector = embedding_vector("hello", 40)

    assert len(vector) == 40
    assert vector == embedding_vector("hello", 40)
    assert vector != embedding_vector("hellO", 40)
    assert math.isclose(math.sqrt(sum(value * value for value in vector)), 1.0, abs_tol=1e-4)


def test_float32_bytes_round_trip():
    vector = (0.5, -0.25, 1.0)

    assert struct.unpack("<3f", float32_bytes(vector)) == vector
