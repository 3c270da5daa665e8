"""The admin API on a port of its own: `/admin` is answered only there, and only `/admin` (and the
probes) is answered there, so the public listener can face the internet while the admin one stays on
a private interface. Both listeners belong to one server (one app, one state), so the admin API still
sees the same keys, budgets and circuits as the traffic it governs.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ferryman.api.errors import error_response
from ferryman.errors import NotFoundError

_ADMIN_PREFIXES = ("/admin",)
_SHARED_PREFIXES = ("/health",)  # the kubelet probes either port


class AdminPortMiddleware:
    """404 (ours, as for any unknown path) for admin paths on the public port, and for everything but
    admin paths and the probes on the admin port."""

    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        server = scope.get("server")
        on_admin_port = server is not None and server[1] == self.admin_port
        is_admin = path == "/admin" or path.startswith("/admin/")
        if is_admin == on_admin_port or path.startswith(_SHARED_PREFIXES):
            await self.app(scope, receive, send)
            return
        where = "the public port" if is_admin else "the admin port"
        refused = NotFoundError(f"No route {path} on {where}.", code="route_not_found")
        await error_response(refused)(scope, receive, send)
