"""OpenAI `chat.completion.chunk` streams: upstream chunks to canonical events, canonical events to SSE."""

from __future__ import annotations

import orjson

from ferryman.core.canonical import (
    Finish,
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
from ferryman.errors import UpstreamConnectionError
from ferryman.wire._fields import (
    Malformed,
    as_body,
    as_list,
    as_object,
    get_opt_int,
    get_opt_object,
    get_opt_str,
)
from ferryman.wire._openai_reply import (
    PROVIDER,
    parse_created,
    parse_finish_reason,
    parse_usage,
    render_finish_reason,
    render_usage,
    upstream_error,
)

_DONE = b"data: [DONE]\n\n"


class StreamParser:
    """Turns upstream `chat.completion.chunk`s into canonical stream events.

    OpenAI numbers streamed tool calls by `index` and sends their id and name only in the first fragment,
    so the parser remembers which calls it has announced; usage arrives in a last chunk with no choices
    (or, from some compatible servers, on every chunk), so it keeps the latest figures until it is sure.
    """

    __slots__ = ("_call_indices", "_finished", "_last_call_key", "_started", "_usage", "_usage_sent")

    def __init__(self) -> None:
        self._started = False
        self._finished = False
        self._usage: Usage | None = None
        self._usage_sent = False
        self._call_indices: dict[int | str, int] = {}
        self._last_call_key: int | str = 0

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Translate one chunk; `event` is unused (OpenAI names no SSE events)."""
        try:
            return self._feed(as_body(data))
        except Malformed as exc:
            raise upstream_error(exc) from None

    def finish(self) -> list[StreamEvent]:
        """Close the canonical stream: a Finish the upstream never sent, and usage not yet reported."""
        if not self._started:
            raise UpstreamConnectionError("the OpenAI stream ended before its first chunk", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("tool_calls" if self._call_indices else "stop"))
        if self._usage is not None and not self._usage_sent:
            self._usage_sent = True
            events.append(UsageReport(self._usage))
        return events

    def _feed(self, chunk: JSONObject) -> list[StreamEvent]:
        error = chunk.get("error")
        if error is not None:  # OpenAI reports mid-stream failures as a chunk holding only `error`
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamConnectionError(f"OpenAI stream failed: {message}", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            events.append(self._stream_start(chunk))
        choices = as_list(chunk.get("choices", []), "choices")
        for i, choice in enumerate(choices):
            path = f"choices[{i}]"
            self._read_choice(as_object(choice, path), path, events)
        if chunk.get("usage") is not None:
            self._usage = parse_usage(chunk)
            if not choices and not self._usage_sent:  # OpenAI's closing usage chunk: nothing follows it
                self._usage_sent = True
                events.append(UsageReport(self._usage))
        return events

    def _stream_start(self, chunk: JSONObject) -> StreamStart:
        return StreamStart(
            id=get_opt_str(chunk, "id") or "",
            model=get_opt_str(chunk, "model") or "",
            created=parse_created(chunk),
        )

    def _read_choice(self, choice: JSONObject, path: str, events: list[StreamEvent]) -> None:
        if choice.get("index", 0) != 0:
            return  # we never ask for more than one choice
        delta = get_opt_object(choice, "delta", path)
        if delta is not None:
            delta_path = f"{path}.delta"
            text = get_opt_str(delta, "content", delta_path) or get_opt_str(delta, "refusal", delta_path)
            if text:
                events.append(TextDelta(text))
            calls = delta.get("tool_calls")
            if calls is not None:
                for k, call in enumerate(as_list(calls, f"{delta_path}.tool_calls")):
                    call_path = f"{delta_path}.tool_calls[{k}]"
                    self._read_tool_call(as_object(call, call_path), call_path, events)
        reason = choice.get("finish_reason")
        if reason is not None and not self._finished:
            self._finished = True
            events.append(Finish(parse_finish_reason(reason, has_tool_calls=bool(self._call_indices))))

    def _read_tool_call(self, call: JSONObject, path: str, events: list[StreamEvent]) -> None:
        function = get_opt_object(call, "function", path) or {}
        call_id = get_opt_str(call, "id", path)
        key = self._call_key(call, call_id, path)
        index = self._call_indices.get(key)
        if index is None:
            index = self._call_indices[key] = len(self._call_indices)
            name = get_opt_str(function, "name", f"{path}.function") or ""
            events.append(ToolCallStart(index, call_id or f"call_{index}", name))
        arguments = get_opt_str(function, "arguments", f"{path}.function")
        if arguments:
            events.append(ToolCallDelta(index, arguments))

    def _call_key(self, call: JSONObject, call_id: str | None, path: str) -> int | str:
        # Some compatible servers omit `index`: then a fragment with an id starts a call and one
        # without continues the latest.
        if call.get("index") is None:
            key: int | str = call_id if call_id is not None else self._last_call_key
        else:
            key = get_opt_int(call, "index", path, minimum=0) or 0
        self._last_call_key = key
        return key


class StreamRenderer:
    """Renders canonical stream events as the `chat.completion.chunk` SSE frames OpenAI clients read.

    Usage goes in a final chunk with empty `choices`, after the finish chunk, as OpenAI sends it with
    `stream_options.include_usage`; a UsageReport that arrives before Finish is held until then.
    """

    __slots__ = ("_created", "_finished", "_id", "_include_usage", "_model", "_pending_usage")

    def __init__(self, model: str, *, include_usage: bool = True) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._finished = False
        self._pending_usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        """Frames for one canonical event (b"" when it has none of its own)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, ToolCallDelta):
            fragment: JSONValue = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [fragment]})
        if isinstance(event, ToolCallStart):
            function: JSONValue = {"name": event.name, "arguments": ""}
            start: JSONValue = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": function,
            }
            return self._chunk({"tool_calls": [start]})
        if isinstance(event, StreamStart):
            self._id, self._created = event.id, event.created
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, Finish):
            self._finished = True
            return self._chunk({}, render_finish_reason(event.reason)) + self._flush_usage()
        if isinstance(event, ThinkingDelta):
            return b""  # chat completions have no place for the model's reasoning
        self._pending_usage = event.usage
        return self._flush_usage() if self._finished else b""

    def close(self) -> bytes:
        """The usage chunk if it is still held, then OpenAI's `[DONE]` sentinel."""
        return self._flush_usage() + _DONE

    def _chunk(self, delta: JSONObject, finish_reason: str | None = None) -> bytes:
        choice: JSONObject = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._frame({"choices": [choice]})

    def _flush_usage(self) -> bytes:
        usage, self._pending_usage = self._pending_usage, None
        if usage is None or not self._include_usage:
            return b""
        return self._frame({"choices": [], "usage": render_usage(usage)})

    def _frame(self, fields: JSONObject) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        return b"data: " + orjson.dumps(chunk | fields) + b"\n\n"
