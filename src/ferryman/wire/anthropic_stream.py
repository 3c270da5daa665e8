"""Anthropic Messages API streams: upstream SSE events to canonical events, and canonical events to SSE."""

from __future__ import annotations

import uuid

import orjson

from ferryman.core.canonical import (
    Finish,
    FinishReason,
    JSONObject,
    JSONValue,
    StreamEvent,
    StreamStart,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.errors import UpstreamConnectionError, UpstreamStatusError
from ferryman.wire._anthropic_reply import (
    PROVIDER,
    dump_json,
    parse_stop_reason,
    parse_usage,
    render_stop_reason,
    render_usage,
)
from ferryman.wire._fields import Malformed, get_int, get_object, get_opt_object, get_opt_str, get_str


class StreamParser:
    """Turns one upstream stream's named SSE events into canonical stream events.

    Anthropic numbers content blocks (text, thinking and tool use alike) while canonical tool calls and
    thinking blocks each count from 0, and splits usage between `message_start` (input) and
    `message_delta` (output): both need state.
    """

    __slots__ = (
        "_finished",
        "_started",
        "_thinking_blocks",
        "_tool_blocks",
        "_usage",
        "_usage_sent",
        "_with_args",
    )

    def __init__(self) -> None:
        self._started = False
        self._finished = False
        self._usage: JSONObject | None = None
        self._usage_sent = False
        self._tool_blocks: dict[int, int] = {}  # Anthropic block index -> canonical tool-call index
        self._with_args: set[int] = set()  # tool blocks that have streamed some arguments
        self._thinking_blocks: dict[int, int] = {}  # Anthropic block index -> canonical thinking index

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Translate one SSE event; raises UpstreamStatusError on an `error` event."""
        if not isinstance(data, dict):
            raise UpstreamConnectionError("Anthropic stream event is not a JSON object", provider=PROVIDER)
        try:
            return self._dispatch(data.get("type", event), data)
        except Malformed as exc:
            raise _malformed_stream(exc) from exc

    def finish(self) -> list[StreamEvent]:
        """What is still owed when the upstream stream ends: Finish, and usage not yet reported."""
        if not self._started:
            raise UpstreamConnectionError("Anthropic stream ended before message_start", provider=PROVIDER)
        try:
            return self._settle()
        except Malformed as exc:  # usage counts are only checked once they are all in
            raise _malformed_stream(exc) from exc

    def _dispatch(self, kind: JSONValue, data: JSONObject) -> list[StreamEvent]:
        match kind:
            case "message_start":
                return self._on_message_start(get_object(data, "message"))
            case "error":
                raise _stream_error(data)
            case (
                "content_block_start"
                | "content_block_delta"
                | "content_block_stop"
                | "message_delta"
                | "message_stop"
            ) if not self._started:
                raise Malformed("type", f"is {kind} before message_start")
            case "content_block_delta":
                return self._on_block_delta(get_int(data, "index"), get_object(data, "delta"))
            case "content_block_start":
                return self._on_block_start(get_int(data, "index"), get_object(data, "content_block"))
            case "content_block_stop":
                return self._on_block_stop(get_int(data, "index"))
            case "message_delta":
                return self._on_message_delta(data)
            case "message_stop":
                return self._settle()
            case _:
                return []  # ping, and event types added after this was written

    def _on_message_start(self, message: JSONObject) -> list[StreamEvent]:
        start = StreamStart(id=get_str(message, "id", "message"), model=get_str(message, "model", "message"))
        usage = get_opt_object(message, "usage", "message")
        if self._started:
            return []
        self._started = True
        if usage is not None:
            self._usage = dict(usage)
        return [start]

    def _on_block_start(self, index: int, block: JSONObject) -> list[StreamEvent]:
        kind = get_str(block, "type", "content_block")
        if kind == "text":
            text = get_opt_str(block, "text", "content_block")
            return [TextDelta(text)] if text else []
        if kind in ("thinking", "redacted_thinking"):
            return self._on_thinking_start(index, kind, block)
        if kind != "tool_use":
            return []  # server tool blocks have no canonical form
        tool_index = len(self._tool_blocks)
        start = ToolCallStart(
            tool_index, get_str(block, "id", "content_block"), get_str(block, "name", "content_block")
        )
        self._tool_blocks[index] = tool_index
        initial = block.get("input")
        if isinstance(initial, dict) and initial:  # Anthropic sends {} here; a full input is taken whole
            self._with_args.add(index)
            return [start, ToolCallDelta(tool_index, dump_json(initial))]
        return [start]

    def _on_thinking_start(self, index: int, kind: str, block: JSONObject) -> list[StreamEvent]:
        thinking_index = self._thinking_blocks[index] = len(self._thinking_blocks)
        if kind == "redacted_thinking":  # arrives whole: it has no deltas
            return [ThinkingDelta(thinking_index, redacted_data=get_str(block, "data", "content_block"))]
        text = get_opt_str(block, "thinking", "content_block")
        signature = get_opt_str(block, "signature", "content_block")
        if not text and not signature:  # the usual empty opening
            return []
        return [ThinkingDelta(thinking_index, text or "", signature or None)]

    def _on_thinking_delta(self, index: int, kind: str, delta: JSONObject) -> list[StreamEvent]:
        thinking_index = self._thinking_blocks.get(index)
        if thinking_index is None:
            raise Malformed("delta.type", f"is {kind} outside a thinking block")
        if kind == "signature_delta":
            return [ThinkingDelta(thinking_index, signature=get_str(delta, "signature", "delta"))]
        text = get_str(delta, "thinking", "delta")
        return [ThinkingDelta(thinking_index, text)] if text else []

    def _on_block_delta(self, index: int, delta: JSONObject) -> list[StreamEvent]:
        kind = get_str(delta, "type", "delta")
        if kind == "text_delta":
            text = get_str(delta, "text", "delta")
            return [TextDelta(text)] if text else []
        if kind in ("thinking_delta", "signature_delta"):
            return self._on_thinking_delta(index, kind, delta)
        if kind != "input_json_delta":
            return []  # citation deltas have no canonical form
        fragment = get_str(delta, "partial_json", "delta")
        tool_index = self._tool_blocks.get(index)
        if tool_index is None or not fragment:  # a server tool's input, or the usual empty first fragment
            return []
        self._with_args.add(index)
        return [ToolCallDelta(tool_index, fragment)]

    def _on_block_stop(self, index: int) -> list[StreamEvent]:
        tool_index = self._tool_blocks.get(index)
        if tool_index is None or index in self._with_args:
            return []
        self._with_args.add(index)
        # A call without parameters streams no fragment; canonical arguments must still be a JSON object.
        return [ToolCallDelta(tool_index, "{}")]

    def _on_message_delta(self, data: JSONObject) -> list[StreamEvent]:
        delta = get_opt_object(data, "delta") or {}
        stop_reason = get_opt_str(delta, "stop_reason", "delta")
        usage = get_opt_object(data, "usage")
        events: list[StreamEvent] = []
        if stop_reason is not None and not self._finished:
            self._finished = True
            events.append(Finish(parse_stop_reason(stop_reason)))
        if usage is not None:
            # message_delta counts are cumulative and win; fields it omits keep their message_start value
            self._usage = {**(self._usage or {}), **{k: v for k, v in usage.items() if v is not None}}
            events.extend(self._owed_usage())
        return events

    def _settle(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("stop"))
        events.extend(self._owed_usage())
        return events

    def _owed_usage(self) -> list[StreamEvent]:
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [UsageReport(parse_usage(self._usage, "usage"))]


def _malformed_stream(exc: Malformed) -> UpstreamConnectionError:
    return UpstreamConnectionError(f"malformed Anthropic stream event: {exc.message}", provider=PROVIDER)


def _stream_error(data: JSONObject) -> UpstreamStatusError:
    """An in-stream `error` event; Anthropic's `overloaded_error` is its HTTP 529."""
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    detail = error.get("message") if isinstance(error, dict) else None
    message = (
        f"Anthropic stream error ({kind}): {detail}" if isinstance(detail, str) else "Anthropic stream error"
    )
    status = 529 if kind == "overloaded_error" else 500
    return UpstreamStatusError(message, provider=PROVIDER, upstream_status=status)


def _frame(name: bytes, payload: JSONObject) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class StreamRenderer:
    """Renders canonical stream events as the Messages API SSE sequence the `anthropic` SDK accumulates.

    Anthropic streams content blocks one at a time; a new text, thinking block or tool call closes the
    open block. If a source interleaves the argument fragments of parallel calls (or thinking blocks), a
    late fragment is sent to its (already stopped) block's index, where the SDK still accumulates it.
    `message_delta` must carry both the stop reason and the usage, so whichever of Finish and
    UsageReport comes first waits for the other, or for close().
    """

    __slots__ = (
        "_ended",
        "_model",
        "_next_block",
        "_open_block",
        "_reason",
        "_started",
        "_text_open",
        "_thinking_blocks",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._ended = False
        self._next_block = 0
        self._open_block: int | None = None
        self._text_open = False
        self._tool_blocks: dict[int, int] = {}  # canonical tool-call index -> Anthropic block index
        self._thinking_blocks: dict[int, int] = {}  # canonical thinking index -> Anthropic block index
        self._reason: FinishReason | None = None
        self._usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        """Zero or more complete SSE frames for `event` (b"" once the message has ended)."""
        if self._ended:
            return b""
        if isinstance(event, TextDelta):
            return self._render_text(event.text)
        if isinstance(event, ToolCallDelta):
            return self._render_arguments(event)
        if isinstance(event, ToolCallStart):
            return self._render_tool_start(event)
        if isinstance(event, StreamStart):
            return self._render_start(event.id)
        if isinstance(event, Finish):
            self._reason = event.reason
            return self._close_block() + self._end_when_complete()
        if isinstance(event, ThinkingDelta):
            return self._render_thinking(event)
        self._usage = event.usage
        return self._end_when_complete()

    def close(self) -> bytes:
        """Ends the message if Finish or usage never came: Anthropic clients wait for message_stop."""
        if self._ended:
            return b""
        return self._close_block() + self._render_end()

    def _render_start(self, message_id: str | None) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: JSONObject = {
            "id": message_id or f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # the real counts are only known at the end; they travel in message_delta, which the SDK trusts
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame(b"message_start", {"type": "message_start", "message": message})

    def _render_text(self, text: str) -> bytes:
        if not text:
            return b""
        frames = b""
        if not self._text_open:
            frames = self._render_start(None) + self._open(True, {"type": "text", "text": ""})
        delta: JSONObject = {"type": "text_delta", "text": text}
        return frames + _frame(
            b"content_block_delta", {"type": "content_block_delta", "index": self._open_block, "delta": delta}
        )

    def _render_thinking(self, event: ThinkingDelta) -> bytes:
        """A thinking block opens at its first fragment; a redacted one comes whole, in its opening."""
        frames = b""
        block = self._thinking_blocks.get(event.index)
        if block is None:
            frames = self._render_start(None)
            block = self._thinking_blocks[event.index] = self._next_block
            opening: JSONObject = (
                {"type": "redacted_thinking", "data": event.redacted_data}
                if event.redacted_data is not None
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            frames += self._open(False, opening)
        deltas: list[JSONObject] = []
        if event.text:
            deltas.append({"type": "thinking_delta", "thinking": event.text})
        if event.signature:
            deltas.append({"type": "signature_delta", "signature": event.signature})
        for delta in deltas:
            payload: JSONObject = {"type": "content_block_delta", "index": block, "delta": delta}
            frames += _frame(b"content_block_delta", payload)
        return frames

    def _render_tool_start(self, event: ToolCallStart) -> bytes:
        frames = self._render_start(None)
        self._tool_blocks[event.index] = self._next_block
        return frames + self._open(
            False, {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
        )

    def _render_arguments(self, event: ToolCallDelta) -> bytes:
        block = self._tool_blocks.get(event.index)
        if block is None or not event.arguments:
            return b""  # fragments of a call that never started cannot be placed
        delta: JSONObject = {"type": "input_json_delta", "partial_json": event.arguments}
        return _frame(b"content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta})

    def _open(self, is_text: bool, block: JSONObject) -> bytes:
        frames = self._close_block()
        self._open_block, self._text_open = self._next_block, is_text
        self._next_block += 1
        payload: JSONObject = {
            "type": "content_block_start",
            "index": self._open_block,
            "content_block": block,
        }
        return frames + _frame(b"content_block_start", payload)

    def _close_block(self) -> bytes:
        if self._open_block is None:
            return b""
        index, self._open_block, self._text_open = self._open_block, None, False
        return _frame(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _end_when_complete(self) -> bytes:
        if self._reason is None or self._usage is None:
            return b""
        return self._render_end()

    def _render_end(self) -> bytes:
        frames = self._render_start(None)
        self._ended = True
        delta: JSONObject = {"stop_reason": render_stop_reason(self._reason or "stop"), "stop_sequence": None}
        usage = render_usage(self._usage or Usage())
        frames += _frame(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return frames + _frame(b"message_stop", {"type": "message_stop"})
