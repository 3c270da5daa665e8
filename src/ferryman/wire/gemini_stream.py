"""Gemini `streamGenerateContent?alt=sse` streams: upstream chunks to canonical events, and back to SSE."""

from __future__ import annotations

import orjson

from ferryman.core.canonical import (
    Finish,
    FinishReason,
    JSONObject,
    JSONValue,
    Message,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from ferryman.errors import UpstreamConnectionError
from ferryman.wire._fields import Malformed, as_body, as_object, as_opt_str, get_opt_list
from ferryman.wire._gemini_parts import (
    FINISH_TO_GEMINI,
    PROVIDER,
    CallIds,
    build_function_call,
    build_thought,
    candidate_parts,
    is_blocked,
    new_response_id,
    parse_finish_reason,
    parse_usage,
    render_usage,
)


class StreamParser:
    """Turns Gemini's SSE chunks (each a whole GenerateContentResponse) into canonical stream events.

    Function calls arrive whole, so each becomes a ToolCallStart plus one ToolCallDelta. Thought parts
    are ThinkingDeltas: consecutive ones are one thinking block, and a thought after other output starts
    the next. Usage repeats, cumulatively, in every chunk: the last one seen is reported once, when the
    finish reason arrives.
    """

    __slots__ = (
        "_calls",
        "_finished",
        "_in_thought",
        "_started",
        "_thought_count",
        "_tool_count",
        "_usage",
        "_usage_sent",
    )

    def __init__(self) -> None:
        self._calls = CallIds()
        self._thought_count = 0
        self._in_thought = False
        self._started = False
        self._finished = False
        self._tool_count = 0
        self._usage: Usage | None = None
        self._usage_sent = False

    def feed(self, event: str | None, data: JSONObject) -> list[StreamEvent]:
        """Events for one upstream chunk; Gemini sends no `event:` names, so `event` is ignored."""
        try:
            return self._feed(data)
        except Malformed as exc:
            raise UpstreamConnectionError(
                f"malformed Gemini stream: {exc.message}", provider=PROVIDER
            ) from None

    def finish(self) -> list[StreamEvent]:
        """What the stream still owes when the upstream closes it: Finish, then the usage."""
        if not self._started:
            raise UpstreamConnectionError("Gemini stream ended before any response", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._finished:
            self._finished = True
            events.append(Finish("tool_calls" if self._tool_count else "stop"))
        events.extend(self._owed_usage())
        return events

    def _feed(self, data: JSONObject) -> list[StreamEvent]:
        data = as_body(data)
        if "error" in data:
            raise UpstreamConnectionError(f"Gemini stream error: {_error_message(data)}", provider=PROVIDER)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            response_id = as_opt_str(data.get("responseId"), "responseId") or new_response_id()
            events.append(
                StreamStart(id=response_id, model=as_opt_str(data.get("modelVersion"), "modelVersion") or "")
            )
        self._usage = parse_usage(data.get("usageMetadata"), "usageMetadata") or self._usage
        candidates = get_opt_list(data, "candidates")
        if candidates and not self._finished:
            self._feed_candidate(as_object(candidates[0], "candidates[0]"), events)
        elif not candidates and not self._finished and is_blocked(data):
            self._finished = True
            events.append(Finish("content_filter"))
        if self._finished:
            events.extend(self._owed_usage())
        return events

    def _feed_candidate(self, candidate: JSONObject, events: list[StreamEvent]) -> None:
        for item in candidate_parts(candidate, "candidates[0]", self._calls):
            if isinstance(item, ThinkingPart):
                if not self._in_thought:
                    self._in_thought = True
                    self._thought_count += 1
                events.append(ThinkingDelta(self._thought_count - 1, item.text, item.signature))
                continue
            self._in_thought = False
            if isinstance(item, TextPart):
                events.append(TextDelta(item.text, item.signature))
            elif isinstance(item, ToolCall):
                events.append(ToolCallStart(index=self._tool_count, id=item.id, name=item.name))
                events.append(ToolCallDelta(index=self._tool_count, arguments=item.arguments))
                self._tool_count += 1
            elif isinstance(item, Message):
                raise Malformed("candidates[0].content.parts", "must not contain a functionResponse")
            # Generated images have no canonical stream event; they are dropped from streams.
        raw_finish = as_opt_str(candidate.get("finishReason"), "candidates[0].finishReason")
        if raw_finish is not None and raw_finish != "FINISH_REASON_UNSPECIFIED":
            self._finished = True
            events.append(Finish(parse_finish_reason(raw_finish, self._tool_count > 0)))

    def _owed_usage(self) -> list[StreamEvent]:
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [UsageReport(self._usage)]


def _error_message(data: JSONObject) -> str:
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else "unknown error"


class _PendingCall:
    """A tool call being streamed to a Gemini client, which can only receive it whole."""

    __slots__ = ("fragments", "id", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.fragments: list[str] = []


class StreamRenderer:
    """Canonical stream events as Gemini SSE chunks for a client of `streamGenerateContent?alt=sse`.

    Text and thoughts go out as they come (thoughts as `thought: true` parts, signatures on the part
    they came with; redacted thinking has no Gemini form and is dropped). Tool calls are held until the
    stream finishes, because a Gemini `functionCall` carries its arguments as one object; they go out
    in the last chunk, together with the finish reason and usage (held back until both are known, or
    until `close`).
    """

    __slots__ = ("_calls", "_done", "_finish", "_model", "_response_id", "_usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._response_id = ""
        self._calls: dict[int, _PendingCall] = {}
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def render(self, event: StreamEvent) -> bytes:
        """Zero or one `data:` frame for `event`."""
        if self._done:
            return b""
        if isinstance(event, TextDelta):
            if event.signature is not None:
                return self._frame([{"text": event.text, "thoughtSignature": event.signature}])
            return self._frame([{"text": event.text}]) if event.text else b""
        if isinstance(event, ThinkingDelta):
            thought = build_thought(ThinkingPart(event.text, event.signature, event.redacted_data))
            return b"" if thought is None else self._frame([thought])
        if isinstance(event, StreamStart):
            self._response_id = event.id
        elif isinstance(event, ToolCallStart):
            self._calls[event.index] = _PendingCall(event.id, event.name)
        elif isinstance(event, ToolCallDelta):
            self._calls.setdefault(event.index, _PendingCall(f"call_{event.index}", "")).fragments.append(
                event.arguments
            )
        elif isinstance(event, Finish):
            self._finish = event.reason
            return self._last_frame() if self._usage is not None else b""
        elif isinstance(event, UsageReport):
            self._usage = event.usage
            return self._last_frame() if self._finish is not None else b""
        return b""

    def close(self) -> bytes:
        """The last chunk, if the finish reason or usage never arrived to trigger it."""
        return b"" if self._done else self._last_frame()

    def _last_frame(self) -> bytes:
        self._done = True
        calls = [self._calls[index] for index in sorted(self._calls)]
        parts: list[JSONValue] = [
            build_function_call(ToolCall(id=c.id, name=c.name, arguments="".join(c.fragments))) for c in calls
        ]
        finish = self._finish or ("tool_calls" if calls else "stop")
        extra: JSONObject = {} if self._usage is None else {"usageMetadata": render_usage(self._usage)}
        # An empty text part mirrors what Gemini itself sends in a final chunk with nothing else to say.
        return self._frame(parts or [{"text": ""}], FINISH_TO_GEMINI[finish], extra)

    def _frame(
        self, parts: list[JSONValue], finish: str | None = None, extra: JSONObject | None = None
    ) -> bytes:
        candidate: JSONObject = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        chunk: JSONObject = {"candidates": [candidate], **(extra or {})}
        chunk["modelVersion"] = self._model
        chunk["responseId"] = self._response_id
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
