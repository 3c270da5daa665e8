"""The fake providers' common machinery: a loopback server in its own thread, recording every request."""

from __future__ import annotations

import abc
import asyncio
import itertools
import json
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from ferryman.testing._delivery import Answer, Delivery, Dialect, deliver, error_response
from ferryman.testing._script import HttpError, Script
from ferryman.testing._turn import Prompt, Turn, plan_turn

_BODY_KEY = web.RequestKey("ferryman_testing_body", object)
_DELIVERY_KEY = web.RequestKey("ferryman_testing_delivery", Delivery)
_SHUTDOWN_TIMEOUT = 0.25  # in-flight slow replies are cancelled, not awaited, when a fake stops
_START_TIMEOUT = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadPrompt = Callable[[web.Request, dict[str, Any]], Prompt | HttpError]
Render = Callable[[Turn, Prompt], Answer]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it, so tests can assert what the gateway sent upstream.

    `connection` numbers the TCP connection the request came on (1 for the first the fake saw, counted
    over the fake's life), so requests that share a number were sent over one kept-alive connection.
    `delivery` tells how the answer went while and after it is sent: stream events sent, and whether the
    client hung up before the end (`delivery.client_disconnected`; `delivery.wait(t)` waits for the end).
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes
    connection: int = 0
    delivery: Delivery = field(default_factory=Delivery, compare=False, repr=False)

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream (a `stream` flag or Gemini's streaming method)."""
        if ":streamGenerateContent" in self.path:
            return True
        return isinstance(self.body, dict) and self.body.get("stream") is True


class FakeServer(abc.ABC):
    """One provider's fake: an aiohttp server on loopback, run by its own event loop in a thread.

    Running apart from the test's loop makes the same fake usable from sync tests, async tests and
    other processes alike, and keeps a blocking client in the test from starving the server.
    """

    provider: ClassVar[str]
    default_models: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] | None = None,
        embedding_dimensions: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.script = Script()
        self.ssl_context = ssl_context  # serve HTTPS with it (a test CA's certificate) instead of HTTP
        self.api_key = api_key
        self.models = tuple(models) if models is not None else self.default_models
        self.embedding_dimensions = embedding_dimensions
        self._host = host
        self._wanted_port = port
        self._port: int | None = None
        self._records: list[RecordedRequest] = []
        self._records_lock = threading.Lock()
        self._ids = itertools.count(1)
        # Touched by the server thread only; weak, so a closed connection's transport can be collected.
        self._connections: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._connection_numbers = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- what each provider supplies ---------------------------------------------------------------

    @property
    @abc.abstractmethod
    def base_url(self) -> str:
        """The URL to give the provider's SDK (and Ferryman's `api_base`)."""

    @property
    @abc.abstractmethod
    def _dialect(self) -> Dialect:
        """The provider's stream framing and error shapes."""

    @abc.abstractmethod
    def _routes(self) -> list[web.RouteDef]:
        """The provider's real paths, bound to this fake's handlers."""

    @abc.abstractmethod
    def _authenticate(self, request: web.Request) -> HttpError | None:
        """The provider's answer to a missing or wrong credential, or None when it would accept it."""

    def _unknown_route(self, request: web.Request, status: int) -> HttpError:
        """The provider's answer to a path or method it does not serve."""
        return HttpError(status, f"No route for {request.method} {request.path}")

    def _response_headers(self) -> Mapping[str, str]:
        """Headers the provider puts on every response (request ids and the like)."""
        return {}

    # -- address -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the fake listens on (chosen by the OS unless one was asked for)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running; use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        """`http://HOST:PORT` (`https://` with an `ssl_context`), with no path."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.port}"

    # -- recording ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy: later requests do not appear in it)."""
        with self._records_lock:
            return list(self._records)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request; LookupError when none arrived."""
        with self._records_lock:
            if not self._records:
                raise LookupError(f"{type(self).__name__} has received no request")
            return self._records[-1]

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._records_lock:
            self._records.clear()

    def reset(self) -> None:
        """Forget recorded requests and queued replies: a clean fake for the next test."""
        self.clear_requests()
        self.script.clear()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        ready = threading.Event()
        failures: list[Exception] = []
        self._thread = threading.Thread(
            target=self._run,
            args=(ready, failures),
            name=f"{type(self).__name__}:{self.provider}",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failures:
            self._thread.join(_START_TIMEOUT)
            self._thread = None
            cause = failures[0] if failures else None
            raise RuntimeError(
                f"{type(self).__name__} could not start on {self._host}:{self._wanted_port}"
            ) from cause
        return self

    def stop(self) -> None:
        """Stop serving, cut any reply still in flight and wait for the thread to end."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self, ready: threading.Event, failures: list[Exception]) -> None:
        try:
            asyncio.run(self._serve(ready))
        except Exception as exc:  # reported to start(), which raises it in the caller's thread
            failures.append(exc)
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        runner = web.AppRunner(
            self._build_app(), handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._wanted_port, ssl_context=self.ssl_context).start()
            self._port = int(runner.addresses[0][1])
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
            await self._abort_connections()

    async def _abort_connections(self) -> None:
        """Drop connections still open: a TLS one closed politely would wait for the client's
        `close_notify`, outlive this loop, and leak its socket."""
        for transport in list(self._connections):
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # also those closing: that is where a TLS close waits
        await asyncio.sleep(0)  # the aborts close their sockets on the next turn of the loop

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_authenticate], client_max_size=64 * 1024 * 1024)
        app.add_routes(self._routes())
        app.on_response_prepare.append(self._add_response_headers)
        return app

    # -- request handling --------------------------------------------------------------------------

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body = _parse_json(raw)
        request[_BODY_KEY] = body
        delivery = request[_DELIVERY_KEY] = self._remember(request, raw, body).delivery
        try:
            response = await self._answer(request, handler)
        except (asyncio.CancelledError, ConnectionError):
            # aiohttp cancels the handler (or a write fails) when the connection closes under it.
            stopping = self._stopping is not None and self._stopping.is_set()
            delivery.finish("stopped" if stopping else "disconnected")
            raise
        delivery.finish("complete")  # a scripted drop has already recorded itself, and stands
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self._authenticate(request)
        if refusal is not None:
            return error_response(self._dialect, refusal)
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            return error_response(self._dialect, self._unknown_route(request, exc.status))

    def _remember(self, request: web.Request, raw: bytes, body: Any) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=MultiDictProxy(MultiDict(request.query)),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            raw_body=raw,
            connection=self._connection_number(request),
        )
        with self._records_lock:
            self._records.append(record)
        return record

    def _connection_number(self, request: web.Request) -> int:
        """The number of the connection `request` came on, given in the order connections are first seen."""
        transport = request.transport
        if transport is None:  # the connection closed before its request was read to the end
            return 0
        number = self._connections.get(transport)
        if number is None:
            number = self._connections[transport] = next(self._connection_numbers)
        return number

    async def _add_response_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in self._response_headers().items():
            response.headers.setdefault(name, value)

    async def _model_call(
        self, request: web.Request, read: ReadPrompt, render: Render, dialect: Dialect | None = None
    ) -> web.StreamResponse:
        """The path of every generation or embedding call: validate, take a reply, render, deliver.

        Requests the provider itself would refuse (bad JSON, missing fields) are answered before the
        script is consulted, so a queued reply is never spent on them.
        """
        dialect = dialect or self._dialect
        body = self._request_body(request)
        if not isinstance(body, dict):
            return error_response(dialect, HttpError(400, "The request body is not a valid JSON object."))
        prompt = read(request, body)
        if isinstance(prompt, HttpError):
            return error_response(dialect, prompt)
        reply = self.script.take()
        answer = render(plan_turn(reply, prompt), prompt)
        return await deliver(request, reply, answer, dialect, request[_DELIVERY_KEY])

    @staticmethod
    def _request_body(request: web.Request) -> Any:
        """The request's JSON body as the recording middleware parsed it (None when not JSON)."""
        return request[_BODY_KEY]

    def _new_id(self, prefix: str) -> str:
        """A readable id, unique within this fake: `prefix` followed by a counter."""
        return f"{prefix}{next(self._ids):08d}"


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
