"""The HTTPS policy at the edge: HSTS on answers given over HTTPS, and plain HTTP refused when required.

A request counts as HTTPS when the gateway served it over TLS itself, or when a trusted proxy said the
client used HTTPS (`ForwardedHeadersMiddleware` sets the scope's `scheme` before this runs). Under
`server.require_https` anything else is refused with 403 `https_required`, except the paths in
`server.plain_http_paths`: the kubelet calls its liveness and readiness probes over plain HTTP, and a
gateway that failed its own probes would be restarted in a loop. No redirect is offered: API clients
do not follow one for a POST, and the key would already have crossed the network in clear.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferryman.api.errors import error_response
from ferryman.errors import PermissionDeniedError


class HttpsPolicyMiddleware:
    """Add `Strict-Transport-Security` to HTTPS answers; refuse plain HTTP under `require_https`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        require_https: bool,
        hsts: str | None,
        plain_http_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.require_https = require_https
        self.hsts = (b"strict-transport-security", hsts.encode("latin-1")) if hsts else None
        self.plain_http_paths = frozenset(plain_http_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("scheme") == "https":
            await self.app(scope, receive, self._with_hsts(send))
            return
        if self.require_https and scope["path"] not in self.plain_http_paths:
            refusal = PermissionDeniedError(
                "This gateway accepts HTTPS only: call it with an https:// URL.", code="https_required"
            )
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _with_hsts(self, send: Send) -> Send:
        header = self.hsts
        if header is None:
            return send

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        return send_with_hsts
