"""Fixtures shared by every test layer: a real gateway on a real loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider

from ferryman.api.app import create_app
from ferryman.core.pipeline import Stage
from ferryman.observability.metrics import Metrics
from ferryman.settings import settings_from_mapping
from tests.store.fixtures import database_url, postgres_admin, postgres_database, redis_url  # noqa: F401 - shared fixtures


class RunningGateway:
    """A gateway served by uvicorn in a background thread; `url` is its base URL."""

    def __init__(self, server: uvicorn.Server, metrics: Metrics) -> None:
        self.server = server
        self.metrics = metrics
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> Any:
        """The app's `AppState`, for assertions on its internals."""
        return self.server.config.app.state.ferryman


@contextmanager
def serve_gateway(
    config: dict[str, Any], tracer_provider: TracerProvider | None = None, stages: Sequence[Stage] = ()
) -> Iterator[RunningGateway]:
    """Start a gateway for `config` (a config mapping) on a free port; stop it on exit.

    With neither `database_url` nor `data_dir` in `config`, the embedded database is kept in memory, so
    tests never write into the working directory; `stages` are extra pipeline stages (probes).
    """
    if "database_url" not in config and "data_dir" not in config:
        config = {**config, "data_dir": ":memory:"}
    metrics = Metrics.create()
    app = create_app(
        settings_from_mapping(config), metrics=metrics, tracer_provider=tracer_provider, extra_stages=stages
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, loop="asyncio", log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    try:
        yield RunningGateway(server, metrics)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[dict[str, Any]], RunningGateway]]:
    """Start gateways for configs; all are stopped at the end of the test."""
    stack: list[Any] = []

    def start(config: dict[str, Any]) -> RunningGateway:
        context = serve_gateway(config)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
