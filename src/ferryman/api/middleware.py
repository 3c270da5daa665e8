"""Pure-ASGI middleware (no per-request task or body copy): request ids on every response, and the
last resort for an error nothing else handled."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferryman.api.errors import unexpected_error_response
from ferryman.observability.logging import request_id_var

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("ferryman.api")


@dataclass(slots=True)
class _Progress:
    """How far the response has gone out."""

    started: bool = False
    complete: bool = False

    def saw(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True


class RequestIdMiddleware:
    """Give each request an id (the client's `x-request-id` if sane), echo it, and log with it.

    It is also where an unhandled exception stops. Starlette's outermost layer (and a mounted app's)
    sends its 500 and then re-raises, and the server, seeing an exception after a response, drops the
    keep-alive connection without `Connection: close`, so the client's next request on it fails. Caught
    here, the error is logged once, answered with the generic 500 if nothing was sent yet, and the
    connection stays usable. Only a response cut short mid-body is left to the server to abort: closing
    the connection is the one way to tell that client its body is incomplete.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = _incoming_id(scope)
        request_id = client_id or f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # The spend ledger's key must be unique: a client may send the same id twice.
        state["spend_id"] = request_id if client_id is None else f"{client_id}#{uuid.uuid4().hex[:16]}"
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())
        progress = _Progress()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)
            progress.saw(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if progress.started and not progress.complete:
                raise
            log.exception("unhandled error")
            if not progress.started:
                await unexpected_error_response(request_id)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.match(text) else None
    return None
