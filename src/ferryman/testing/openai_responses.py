"""`POST /v1/responses` for `FakeOpenAI`, in OpenAI's Responses wire format (whole or as its events).

Written apart from the gateway's own codec (`ferryman.wire.openai_responses`) on purpose: a fake that
shared it could not catch its mistakes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from ferryman.testing._delivery import Answer, Event, json_text
from ferryman.testing._script import HttpError, Usage
from ferryman.testing._turn import Prompt, Turn, last_user_text, prompt_words


def read_responses_request(request: web.Request, body: dict[str, Any]) -> Prompt | HttpError:
    """The prompt of a Responses body, or the 400 OpenAI sends for a missing field."""
    for field in ("model", "input"):
        if field not in body:
            message = f"Missing required parameter: '{field}'."
            error = {"message": message, "type": "invalid_request_error", "param": field, "code": None}
            return HttpError(400, body={"error": error})
    raw_input = body["input"]
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else raw_input
    return Prompt(
        model=str(body["model"]),
        stream=body.get("stream") is True,
        last_user_text=last_user_text(items, content_key="content", default_role="user"),
        word_count=prompt_words(body.get("instructions") or "", items),
        body=body,
    )


def render_responses_answer(turn: Turn, prompt: Prompt) -> Answer:
    """A whole `response`, or its event stream ending in `response.completed`."""
    response_id = f"resp_{uuid.uuid4().hex}"
    head = {"id": response_id, "object": "response", "created_at": int(time.time()), "model": prompt.model}
    output = _output(turn, response_id)
    whole = {
        **head,
        **_echo(prompt.body),
        "status": "completed",
        "output": output,
        "usage": _usage(turn.usage),
    }
    if not prompt.stream:
        return Answer(body=whole)
    return Answer(events=_events(turn, {**head, **_echo(prompt.body)}, output, whole))


def _output(turn: Turn, response_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if turn.text:
        items.append(_message(f"msg_{response_id[5:]}", turn.text))
    for index, call in enumerate(turn.tool_calls):
        call_id = call.spec.id or f"call_{response_id[5:13]}_{index}"
        items.append(
            _function_call(f"fc_{response_id[5:]}_{index}", call_id, call.spec.name, call.arguments_json)
        )
    return items


def _message(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [part] if text else [],
    }


def _function_call(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
    }


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _events(
    turn: Turn, head: dict[str, Any], output: list[dict[str, Any]], whole: dict[str, Any]
) -> tuple[Event, ...]:
    events: list[Event] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(Event(json_text({"type": kind, "sequence_number": len(events), **fields}), name=kind))

    pending = {**head, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    calls = iter(turn.tool_calls)
    for index, item in enumerate(output):
        if item["type"] == "message":
            emit(
                "response.output_item.added", output_index=index, item=_message(item["id"], "", "in_progress")
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            located = {"item_id": item["id"], "output_index": index, "content_index": 0}
            emit("response.content_part.added", **located, part=part)
            for piece in turn.text_pieces:
                emit("response.output_text.delta", **located, delta=piece, logprobs=[])
            emit("response.output_text.done", **located, text=turn.text, logprobs=[])
            emit("response.content_part.done", **located, part={**part, "text": turn.text})
        else:
            call = next(calls)
            started = _function_call(item["id"], item["call_id"], item["name"], "", "in_progress")
            emit("response.output_item.added", output_index=index, item=started)
            for piece in call.pieces:
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=whole)
    return tuple(events)
