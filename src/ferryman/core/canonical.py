"""The canonical chat request, response and stream events every wire format translates to and from.

Each ingress format (OpenAI, Anthropic, Gemini) is parsed into these types, and each provider adapter
builds its upstream body from them; so N formats need 2N translations instead of N². The types are
frozen and slotted: they are created once per request and never mutated, and `dataclasses.replace`
makes the rare modified copy (a deployment's upstream model name, say).

Conventions that every codec keeps:

- System prompts are `Message(role="system")` entries, in order. Formats with a single system field
  (Anthropic, Gemini) join consecutive leading system messages with blank lines.
- Tool-call arguments and tool JSON schemas stay as the client sent them: arguments as a JSON *string*
  (OpenAI's convention, and the only lossless one for streamed fragments), schemas as parsed JSON.
- A tool result is a `Message(role="tool")` carrying `tool_call_id`; its content is the parts.
- Images are `ImagePart`s holding either a `data:` URL or an http(s) URL, exactly as received.
- Reasoning the model shows (Anthropic thinking blocks, Gemini thought parts) is `Message.thinking` on
  assistant turns, and `ThinkingDelta`s in a stream. Its signatures are opaque and go back to the
  provider that made them byte for byte; a format with no place for them drops them, never rewrites them.
- `cache_control` (Anthropic's prompt-cache breakpoints) rides on the parts and tools it was set on, as
  received; only the Anthropic codec renders it, every other format ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """Plain text inside a message; `cache_control` as an Anthropic client set it on this block.

    `signature` is a Gemini `thoughtSignature` that came on this text part (Gemini 3 seals its
    reasoning on the answer's last part): opaque, rendered only by the Gemini codec, on this part.
    """

    text: str
    cache_control: JSONObject | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image, as a `data:<media type>;base64,…` URL or an http(s) URL.

    `detail` is OpenAI's resolution hint ("low", "high", "auto"); other formats ignore it.
    """

    url: str
    detail: str | None = None
    cache_control: JSONObject | None = None

    @property
    def is_data_url(self) -> bool:
        """True when the image bytes travel inline rather than by reference."""
        return self.url.startswith("data:")

    def split_data_url(self) -> tuple[str, str]:
        """Return `(media_type, base64_data)` of a data URL; raises ValueError on any other URL."""
        if not self.is_data_url:
            raise ValueError("not a data URL")
        header, _, data = self.url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "application/octet-stream"
        return media_type, data


Part: TypeAlias = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ThinkingPart:
    """One block of the model's visible reasoning, kept so the next turn can send it back intact.

    `signature` is Anthropic's seal over the thinking (Gemini's `thoughtSignature` likewise); a
    redacted block has no text, only the provider's encrypted `redacted_data`. Both are opaque: passed
    back unchanged to the provider family that made them, dropped for any other.
    """

    text: str = ""
    signature: str | None = None
    redacted_data: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; `arguments` is a JSON-encoded object as a string."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation.

    `tool_calls` only on assistant messages; `tool_call_id` (and optionally `name`, the called
    function's name, which Gemini requires) only on tool messages.
    """

    role: Role
    parts: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False
    thinking: tuple[ThinkingPart, ...] = ()  # assistant turns only; it came before the text
    cache_control: JSONObject | None = None  # on the block a part cannot carry (a tool result)

    @property
    def text(self) -> str:
        """The concatenated text parts, for formats and logs that want a plain string."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its JSON Schema as the client sent it."""

    name: str
    description: str | None = None
    parameters: JSONObject | None = None
    cache_control: JSONObject | None = None


ToolChoiceMode = Literal["auto", "none", "required"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """How the model must use tools: a mode, or one named function (`mode="required"`, `name=…`)."""

    mode: ToolChoiceMode = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: free text, any JSON object, or JSON matching `schema`."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: JSONObject | None = None
    name: str | None = None
    strict: bool | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]

# The one table of how an effort level and a token budget stand for each other, for formats that speak
# the other one: Anthropic's thinking and Gemini 2.5's thinkingBudget take tokens, OpenAI's
# reasoning_effort and Gemini 3's thinkingLevel a level. Level -> budget reads the row; budget -> level
# takes the smallest level whose budget covers it, up to "high": "xhigh" and "max" are taken only by
# name, since only the newest OpenAI models accept them. Anthropic's smallest budget is 1024 tokens
# (its codec raises smaller ones); docs/api.md shows the table.
EFFORT_BUDGETS: dict[ReasoningEffort, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 65536,
}
_LEVELS_BY_BUDGET: tuple[ReasoningEffort, ...] = ("minimal", "low", "medium")


@dataclass(frozen=True, slots=True)
class Reasoning:
    """How much the model should think: a level, a token budget, or both as the client sent them.

    `effort="none"` (or `budget_tokens=0`) asks for no thinking. `include_thoughts` is whether the
    client wants the reasoning itself back (Anthropic always returns it when thinking is on; Gemini
    only with `includeThoughts`; OpenAI's chat completions never).
    """

    effort: ReasoningEffort | None = None
    budget_tokens: int | None = None
    include_thoughts: bool = False

    @property
    def enabled(self) -> bool:
        """False when the client asked for no thinking at all."""
        return self.effort != "none" and self.budget_tokens != 0

    def budget(self) -> int:
        """The budget in tokens: the client's, or its level's (medium when it named neither)."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        if self.effort is None or self.effort == "medium":
            return EFFORT_BUDGETS["medium"]
        return 0 if self.effort == "none" else EFFORT_BUDGETS[self.effort]

    def level(self) -> ReasoningEffort:
        """The level: the client's, or the smallest whose budget covers the client's budget."""
        if self.effort is not None:
            return self.effort
        budget = self.budget()
        if budget == 0:
            return "none"
        for effort in _LEVELS_BY_BUDGET:
            if budget <= EFFORT_BUDGETS[effort]:
                return effort
        return "high"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, independent of the format it arrived in."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    user: str | None = None
    seed: int | None = None
    reasoning: Reasoning | None = None
    # Anthropic beta features the client asked for (`anthropic-beta`), before the model's allow / deny
    # list: sent only to Anthropic upstreams, dropped for every other provider.
    betas: tuple[str, ...] = ()
    # Gateway options, never sent upstream (see core/fallbacks.py and core/timeouts.py): the models to
    # fall back to (None: the configured ones) and the client's own timeout in seconds.
    fallbacks: tuple[str, ...] | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, split the way providers bill them.

    The parts are *inside* the totals, never added to them: `cached_tokens` (read from a prompt cache)
    and `cache_write_tokens` (written to one, which Anthropic bills above the input rate) are parts of
    `input_tokens`; `reasoning_tokens` (thinking the client never sees, billed as output) is part of
    `output_tokens`. So `input_tokens` and `output_tokens` mean the same in every wire format, and each
    codec moves the parts in or out of its provider's own fields. New fields go at the end: many call
    sites build a Usage positionally (`Usage(3, 2)`).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output, the figure most dashboards and budgets count."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A complete (non-streamed) answer: one assistant message, why it stopped, and what it used."""

    id: str
    model: str
    message: Message
    finish_reason: FinishReason
    usage: Usage
    created: int = 0


# --- Streaming -----------------------------------------------------------------------------------
# A provider stream is parsed into this sequence:
#   StreamStart, then any mix of ThinkingDelta / TextDelta / ToolCallStart / ToolCallDelta, then
#   Finish (exactly once), and UsageReport (at most once; before or after Finish).
# Tool calls are numbered by `index` in the order they started, from 0.


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The stream's first event: the response id and the model that answers."""

    id: str
    model: str
    created: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of assistant text; `signature` as on `TextPart` (a Gemini stream may send it on an
    empty text part of its own)."""

    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A new tool call begins; its arguments follow as `ToolCallDelta`s with the same index."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of the JSON arguments of tool call `index`."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """A fragment of thinking block `index` (numbered from 0, apart from tool calls): text, its
    signature (which arrives last, whole), or a redacted block's data (whole, in one event)."""

    index: int
    text: str = ""
    signature: str | None = None
    redacted_data: str | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """The model stopped, for this reason."""

    reason: FinishReason


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Token usage of the whole stream."""

    usage: Usage


StreamEvent: TypeAlias = (
    StreamStart | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | Finish | UsageReport
)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts to embed with `model`."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    user: str | None = None
    fallbacks: tuple[str, ...] | None = None  # gateway options, as on ChatRequest
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    """One vector per input, in input order."""

    model: str
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage = field(default_factory=Usage)
