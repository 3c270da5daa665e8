"""Chaos, bounded: one of a model's two upstream servers dies under steady load, and no client notices.

Two fake OpenAI servers on loopback serve one model; client threads (the official SDK, its own retries
off) keep requests in flight while one server is stopped mid-load, cutting its in-flight replies and
refusing new connections. The gateway's retries and its next deployment must absorb every failure:
the client error count is exactly zero. Short enough to run with every `make test`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai

from ferryman.testing import FakeOpenAI, Reply
from tests.api.fleet import FREE, openai_deployment
from tests.conftest import RunningGateway, serve_gateway

WORKERS = 8
BEFORE_KILL = 20  # replies the doomed upstream serves before it dies
AFTER_KILL = 50  # replies the survivor serves after it
PHASE_SECONDS = 30.0  # the bound on each phase; the counts end it long before on any machine


def deployment(fake: FakeOpenAI, name: str) -> dict[str, Any]:
    return openai_deployment(fake, FREE, name=name)


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PHASE_SECONDS
    while not done():
        assert time.monotonic() < deadline, "the load stalled"
        time.sleep(0.01)


def upstream_failures(gateway: RunningGateway) -> float:
    total = 0.0
    for line in gateway.metrics.render_latest().decode().splitlines():
        if line.startswith("ai_api_upstream_errors_total{"):
            total += float(line.split()[-1])
    return total


def test_killing_one_of_two_upstreams_under_load_costs_no_client_a_request() -> None:
    with FakeOpenAI() as doomed, FakeOpenAI() as survivor:
        for fake in (doomed, survivor):
            fake.script.set_default(Reply.echo(delay=0.03))  # slow enough that replies are in flight
        config = {
            "models": [{"name": "chat", "deployments": [deployment(doomed, "a"), deployment(survivor, "b")]}]
        }
        with serve_gateway(config) as gateway:
            outcomes: Counter[str] = Counter()
            errors: list[str] = []
            lock = threading.Lock()
            stop = threading.Event()

            def load(worker: int) -> None:
                with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        text = f"w{worker} n{n}"
                        try:
                            reply = client.chat.completions.create(
                                model="chat", messages=[{"role": "user", "content": text}], timeout=10
                            )
                            ok = reply.choices[0].message.content == f"echo: {text}"
                            with lock:
                                outcomes["ok" if ok else "wrong"] += 1
                        except openai.APIError as exc:
                            with lock:
                                outcomes["error"] += 1
                                errors.append(repr(exc))

            threads = [threading.Thread(target=load, args=(i,)) for i in range(WORKERS)]
            for thread in threads:
                thread.start()
            # Phases end on counts, not on time: a slow machine serves fewer requests a second, and the
            # test is about what the clients saw, not how many there were.
            try:
                wait_until(lambda: len(doomed.requests) >= BEFORE_KILL)
                served_by_doomed = len(doomed.requests)
                doomed.stop()
                killed_at = len(survivor.requests)
                wait_until(lambda: len(survivor.requests) >= killed_at + AFTER_KILL)
            finally:
                stop.set()
            for thread in threads:
                thread.join(timeout=15)
            assert not any(thread.is_alive() for thread in threads)
            failures_absorbed = upstream_failures(gateway)

    assert outcomes["error"] == 0, errors[:5]
    assert outcomes["wrong"] == 0
    assert outcomes["ok"] >= BEFORE_KILL + AFTER_KILL  # steady load, before and after the kill
    assert served_by_doomed >= BEFORE_KILL  # the doomed upstream had its share before it died
    assert len(survivor.requests) >= killed_at + AFTER_KILL  # and the survivor carried the load after
    assert failures_absorbed >= 1  # the kill did fail attempts: the gateway absorbed them
