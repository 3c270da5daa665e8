"""The inference routes' short way in: one dictionary look-up instead of Starlette's router.

Every request to a Starlette app passes its exception middleware (a `Request` built, the send wrapped
to track whether a response started), the router (each route's pattern tried in turn), the route's
own method check and `request_response` (another `Request`, another exception wrapper), before the
endpoint runs; and every message sent back passes those send wrappers again. Together that measured
about a tenth of a cache hit's in-process CPU. The inference endpoints need none of it: their paths
are fixed strings, they answer only POST, and they turn every `FerrymanError` into their format's
error themselves (what escapes is answered here by the same handler the exception middleware
would use). So `HotPaths` sits just inside the app's own middleware (request ids, forwarded headers,
the HTTPS policy, CORS, tracing all still apply) and hands an exact `POST` path straight to its
endpoint; everything else — another method, a path with parameters, a trailing slash, the admin API
— goes down the usual stack, unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryman.api.errors import handle_ferryman_error
from ferryman.errors import FerrymanError

Endpoint = Callable[[Request], Awaitable[Response]]


def hot_endpoints(routes: Iterable[BaseRoute]) -> dict[str, Endpoint]:
    """The POST-only routes with a fixed path (no parameters) and a coroutine endpoint, by path."""
    hot: dict[str, Endpoint] = {}
    for route in routes:
        if (
            isinstance(route, Route)
            and route.methods == {"POST"}
            and not route.param_convertors
            and inspect.iscoroutinefunction(route.endpoint)
            and route.path not in hot  # the router would answer with the first of two
        ):
            hot[route.path] = route.endpoint
    return hot


class HotPaths:
    """Sends an exact `POST` to a hot path to its endpoint; anything else to `app`."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        # Under a root path the router matches the path without it: leave such a mount to the router.
        if endpoint is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except FerrymanError as exc:
            response = await handle_ferryman_error(request, exc)
        await response(scope, receive, send)
