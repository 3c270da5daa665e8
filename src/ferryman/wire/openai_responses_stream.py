"""Canonical stream events as the Responses API's SSE event sequence, numbered by `sequence_number`.

The openai SDK's stream helper checks the sequence strictly (each item added before its deltas and
done before `response.completed`, the same ids throughout), so each output item is opened when its
first event arrives and closed when the next kind begins or the stream ends.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ferryman.core.canonical import (
    Finish,
    FinishReason,
    JSONObject,
    JSONValue,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.errors import FerrymanError
from ferryman.wire.openai_responses import (
    item_ids,
    render_function_call,
    render_message,
    render_reasoning,
    render_response_object,
)


class ResponsesStreamRenderer:
    """Renders one response's stream; `on_thinking` receives each finished thinking block."""

    def __init__(
        self,
        response_id: str,
        created_at: int,
        model: str,
        echo: JSONObject,
        on_thinking: Callable[[ThinkingPart], None] = lambda part: None,
    ) -> None:
        self._id, self._created_at, self._model, self._echo = response_id, created_at, model, echo
        self._on_thinking = on_thinking
        self._msg_id, self._rs_id, self._fc_id = item_ids(response_id)
        self._sequence = 0
        self._started = False
        self._output: list[JSONValue] = []  # finished items
        self._open: str | None = None  # "text", "thinking" or "call"
        self._text: list[str] = []
        self._thinking = ThinkingPart()
        self._thinking_count = 0
        self._call: ToolCall | None = None
        self._call_index = 0
        self._reason: FinishReason = "stop"
        self._usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        """SSE frames for one canonical event."""
        frames = b"" if self._started else self._start()
        if isinstance(event, TextDelta):
            frames += self._text_delta(event.text)
        elif isinstance(event, ThinkingDelta):
            frames += self._thinking_delta(event)
        elif isinstance(event, ToolCallStart):
            frames += self._close_item() + self._call_start(event)
        elif isinstance(event, ToolCallDelta):
            frames += self._call_delta(event.arguments)
        elif isinstance(event, Finish):
            self._reason = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return frames

    def close(self) -> bytes:
        """Close what is open and send the whole response."""
        frames = (b"" if self._started else self._start()) + self._close_item()
        incomplete = self._reason == "length"
        response = self._response("incomplete" if incomplete else "completed", incomplete=incomplete)
        kind = "response.incomplete" if incomplete else "response.completed"
        return frames + self._event(kind, {"response": response})

    def render_error(self, exc: FerrymanError) -> bytes:
        """A failure mid-stream: the `error` event, then `response.failed`."""
        frames = b"" if self._started else self._start()
        error: JSONObject = {"code": exc.code or exc.type, "message": str(exc), "param": exc.param}
        frames += self._event("error", dict(error))
        response = self._response("failed")
        response["error"] = {"code": "server_error", "message": str(exc)}
        return frames + self._event("response.failed", {"response": response})

    def _start(self) -> bytes:
        self._started = True
        response = self._response("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def _response(self, status: str, *, incomplete: bool = False) -> JSONObject:
        usage = self._usage if status != "in_progress" else None
        return render_response_object(
            self._id,
            self._created_at,
            self._model,
            self._echo,
            status=status,
            output=list(self._output) if status != "in_progress" else [],
            usage=usage,
            incomplete=incomplete,
        )

    def _text_delta(self, text: str) -> bytes:
        frames = b""
        if self._open != "text":
            frames += self._close_item()
            self._open = "text"
            self._text = []
            frames += self._added(render_message("", self._msg_id, "in_progress") | {"content": []})
            part: JSONObject = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            frames += self._event("response.content_part.added", self._at_text(part=part))
        self._text.append(text)
        return frames + self._event("response.output_text.delta", self._at_text(delta=text, logprobs=[]))

    def _thinking_delta(self, event: ThinkingDelta) -> bytes:
        frames = b""
        if self._open != "thinking":
            frames += self._close_item()
            self._open = "thinking"
            self._thinking = ThinkingPart()
            item = render_reasoning(ThinkingPart(), self._reasoning_id()) | {"status": "in_progress"}
            frames += self._added(item)
        previous = self._thinking
        self._thinking = ThinkingPart(
            previous.text + event.text,
            event.signature if event.signature is not None else previous.signature,
            event.redacted_data if event.redacted_data is not None else previous.redacted_data,
        )
        return frames

    def _call_start(self, event: ToolCallStart) -> bytes:
        self._open = "call"
        self._call = ToolCall(event.id, event.name, "")
        return self._added(render_function_call(self._call, self._call_id(), "in_progress"))

    def _call_delta(self, arguments: str) -> bytes:
        if self._call is None:
            return b""
        call = self._call
        self._call = ToolCall(call.id, call.name, call.arguments + arguments)
        return self._event(
            "response.function_call_arguments.delta", self._at(self._call_id(), delta=arguments)
        )

    def _close_item(self) -> bytes:
        kind, self._open = self._open, None
        if kind == "text":
            text = "".join(self._text)
            part: JSONObject = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            frames = self._event("response.output_text.done", self._at_text(text=text, logprobs=[]))
            frames += self._event("response.content_part.done", self._at_text(part=part))
            return frames + self._done(render_message(text, self._msg_id))
        if kind == "thinking":
            item = render_reasoning(self._thinking, self._reasoning_id())
            self._on_thinking(self._thinking)
            self._thinking_count += 1
            return self._done(item)
        if kind == "call" and self._call is not None:
            call, item_id = self._call, self._call_id()
            self._call, self._call_index = None, self._call_index + 1
            frames = self._event(
                "response.function_call_arguments.done",
                {"item_id": item_id, "output_index": len(self._output), "arguments": call.arguments},
            )
            return frames + self._done(render_function_call(call, item_id))
        return b""

    def _reasoning_id(self) -> str:
        return f"{self._rs_id}_{self._thinking_count}"

    def _call_id(self) -> str:
        return f"{self._fc_id}_{self._call_index}"

    def _at(self, item_id: str, **fields: JSONValue) -> JSONObject:
        """Fields locating an event in the open output item."""
        located: JSONObject = {"item_id": item_id, "output_index": len(self._output)}
        return located | fields

    def _at_text(self, **fields: JSONValue) -> JSONObject:
        """Fields locating an event in the open message's text, always its content part 0."""
        return self._at(self._msg_id, content_index=0, **fields)

    def _added(self, item: JSONObject) -> bytes:
        return self._event("response.output_item.added", {"output_index": len(self._output), "item": item})

    def _done(self, item: JSONObject) -> bytes:
        frames = self._event("response.output_item.done", {"output_index": len(self._output), "item": item})
        self._output.append(item)
        return frames

    def _event(self, kind: str, fields: JSONObject) -> bytes:
        payload: JSONObject = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
