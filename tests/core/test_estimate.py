"""The input estimate: the characters rule by default, OpenAI's chat framing over a given counter."""

from __future__ import annotations

from ferryman.core.canonical import (
    ChatRequest,
    EmbeddingRequest,
    ImagePart,
    JSONObject,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
)
from ferryman.core.estimate import TokenCounter, estimate_input_tokens


class WordCounter:
    """A token per whitespace-separated word and 100 per image: easy to count by hand."""

    def count_text(self, text: str) -> int:
        return len(text.split())

    def count_image(self, image: ImagePart) -> int:
        return 100


WORDS: TokenCounter = WordCounter()


def chat(*messages: Message, tools: tuple[Tool, ...] = (), **fields: object) -> ChatRequest:
    return ChatRequest(model="m", messages=messages, tools=tools, **fields)  # type: ignore[arg-type]


def test_without_a_counter_the_characters_rule_is_unchanged() -> None:
    request = chat(Message(role="user", parts=(TextPart("x" * 400),)))
    assert estimate_input_tokens(request) == 400 // 4 + 4
    assert estimate_input_tokens(EmbeddingRequest(model="m", inputs=("a" * 40, "b" * 40))) == 20


def test_every_part_of_a_conversation_is_counted_with_openais_framing() -> None:
    request = chat(
        Message(role="system", parts=(TextPart("You are terse."),)),
        Message(role="user", parts=(TextPart("hello world"), ImagePart("https://x/cat.png")), name="ana"),
        Message(role="assistant", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
        Message(role="tool", parts=(TextPart("18 C"),), tool_call_id="c1", name="get_weather"),
        tools=(Tool("get_weather", "Current weather", {"type": "object"}),),
    )
    system = 3 + 1 + 3  # framing, role, "You are terse."
    user = 3 + 1 + 2 + 100 + 1 + 1  # framing, role, "hello world", the image, the name and its token
    assistant = 3 + 1 + 1 + 2  # framing, role, the tool's name, its two-word arguments
    tool = 3 + 1 + 2 + 1 + 1  # framing, role, "18 C", the name and its token
    definitions = 2  # the JSON of the tool has one space, in "Current weather"
    assert estimate_input_tokens(request, WORDS) == system + user + assistant + tool + 3 + definitions


def test_a_response_schema_is_read_by_the_model_so_it_is_counted() -> None:
    plain = chat(Message(role="user", parts=(TextPart("hi"),)))
    schema: JSONObject = {"type": "object", "description": "a city and its country"}
    structured = chat(*plain.messages, response_format=ResponseFormat("json_schema", schema=schema))
    assert estimate_input_tokens(structured, WORDS) - estimate_input_tokens(plain, WORDS) == 5


def test_embeddings_count_the_tokens_of_each_input_with_no_framing() -> None:
    request = EmbeddingRequest(model="m", inputs=("one two three", "four"))
    assert estimate_input_tokens(request, WORDS) == 4


def test_an_estimate_is_never_zero() -> None:
    assert estimate_input_tokens(EmbeddingRequest(model="m", inputs=("",)), WORDS) == 1
    assert estimate_input_tokens(EmbeddingRequest(model="m", inputs=("",))) == 1
