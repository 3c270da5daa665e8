"""The inference routes' short way in (`api/hot_paths.py`): exact POSTs go straight to their endpoint,
everything else down Starlette's usual stack, and an error that escapes an endpoint keeps its shape."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ferryman.api.hot_paths import HotPaths, hot_endpoints
from ferryman.errors import InvalidRequestError


async def chat(request: Request) -> Response:
    return JSONResponse({"served_by": "hot", "path": request.url.path})


async def refuse(request: Request) -> Response:
    raise InvalidRequestError("bad body", code="bad_body")


async def listing(request: Request) -> Response:
    return JSONResponse({})


ROUTES = [
    Route("/v1/chat/completions", chat, methods=["POST"]),
    Route("/v1/refuse", refuse, methods=["POST"]),
    Route("/v1/models", listing, methods=["GET"]),
    Route("/v1/responses/{response_id}", listing, methods=["GET", "DELETE"]),
    Route("/v1beta/models/{model}:generateContent", chat, methods=["POST"]),
]


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"served_by": "router"})(scope, receive, send)


async def call(app: HotPaths, method: str, path: str, root_path: str = "") -> tuple[int, dict[str, object]]:
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_only_fixed_post_paths_are_hot() -> None:
    assert sorted(hot_endpoints(ROUTES)) == ["/v1/chat/completions", "/v1/refuse"]


async def test_an_exact_post_skips_the_router_and_anything_else_takes_it() -> None:
    app = HotPaths(fallback, hot_endpoints(ROUTES))
    assert await call(app, "POST", "/v1/chat/completions") == (
        200,
        {"served_by": "hot", "path": "/v1/chat/completions"},
    )
    for method, path, root in [
        ("GET", "/v1/chat/completions", ""),  # the router's 405
        ("POST", "/v1/chat/completions/", ""),  # the router's slash redirect
        ("POST", "/v1beta/models/gemini:generateContent", ""),  # a path with parameters
        ("POST", "/gw/v1/chat/completions", "/gw"),  # mounted under a root path
    ]:
        assert await call(app, method, path, root) == (200, {"served_by": "router"}), (method, path)


async def test_an_error_escaping_a_hot_endpoint_is_answered_in_the_error_shape() -> None:
    status, body = await call(HotPaths(fallback, hot_endpoints(ROUTES)), "POST", "/v1/refuse")
    assert status == 400
    assert body["error"] == {
        "message": "bad body",
        "type": "invalid_request_error",
        "param": None,
        "code": "bad_body",
    }
