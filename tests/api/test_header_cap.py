"""The request head is capped in the served process: a huge header gets 431 and a closed connection,
while ordinary requests on the same kind of keep-alive connection are untouched."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import gateway_process

CAP = 16 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    config = {
        "server": {"max_header_bytes": CAP},
        "models": [{"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}],
    }
    with gateway_process(config, Path(tmp_path_factory.mktemp("header-cap"))) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def send(address: tuple[str, int], head: bytes) -> tuple[bytes, bool]:
    """Send one request head on a fresh connection; the server's answer, and whether it then closed."""
    with socket.create_connection(address, timeout=10) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-send: the answer is still readable
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if received.endswith(b"ok") or received.endswith(b"}"):
                    return received, False  # a complete answer, and the connection still open
        except ConnectionResetError:
            pass
        return received, True


def probe(header: bytes = b"") -> bytes:
    return b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n" + header + b"\r\n"


def test_ordinary_heads_are_served_on_one_keep_alive_connection(gateway: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*gateway, timeout=10)
    for headers in ({}, {"X-Pad": "a" * (CAP // 2)}, {}):
        connection.request("GET", "/health/live", headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close
    connection.close()


@pytest.mark.parametrize("size", [CAP + 1024, 4 * 1024 * 1024], ids=["just-over", "megabytes"])
def test_a_head_over_the_cap_is_431_and_the_connection_closes(gateway: tuple[str, int], size: int) -> None:
    answered, closed = send(gateway, probe(b"X-Big: " + b"a" * size + b"\r\n") + probe())
    assert answered.startswith(b"HTTP/1.1 431 "), answered[:200]
    assert b"connection: close" in answered.lower() and closed
    assert b"200 OK" not in answered  # nothing after the refusal was served


def test_many_small_headers_count_together(gateway: tuple[str, int]) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(CAP // 100 + 10))
    answered, closed = send(gateway, probe(headers))
    assert answered.startswith(b"HTTP/1.1 431 ") and closed


def test_a_long_url_counts_too(gateway: tuple[str, int]) -> None:
    answered, closed = send(
        gateway, b"GET /health/live?" + b"q" * (CAP + 10) + b" HTTP/1.1\r\nHost: g\r\n\r\n"
    )
    assert answered.startswith(b"HTTP/1.1 431 ") and closed


def test_every_worker_process_keeps_the_cap(tmp_path: Path) -> None:
    """uvicorn pickles its config into each worker: the cap must travel with it."""
    config = {
        "server": {"max_header_bytes": CAP},
        "models": [{"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}],
    }
    with gateway_process(config, tmp_path, workers=2) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        for _ in range(4):  # connections land on either worker
            answered, _closed = send((host, int(port)), probe(b"X-Big: " + b"a" * (2 * CAP) + b"\r\n"))
            assert answered.startswith(b"HTTP/1.1 431 ")
            assert send((host, int(port)), probe())[0].startswith(b"HTTP/1.1 200 ")
