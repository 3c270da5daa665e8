"""Running `ferryman serve` as a real process, the way operators run it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway_process(
    config: dict[str, Any], tmp_path: Path, *, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start `ferryman serve` for `config`; yield the process and its base URL; stop it by PID.

    With neither `database_url` nor `data_dir`, the embedded database goes in `tmp_path`, never the cwd.
    """
    if "database_url" not in config and "data_dir" not in config:
        config = {**config, "data_dir": str(tmp_path / f"data-{free_port()}")}
    config = stopping_at_once(config)
    path = tmp_path / f"config-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [sys.executable, "-m", "ferryman.cli", "serve", "--config", str(path), "--port", str(port)]
    command += ["--workers", str(workers)]
    log = (tmp_path / f"gateway-{port}.log").open("wb")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, so worker processes are stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, timeout=20.0 * workers)  # each worker imports and loads on its own
        yield process, url
    finally:
        stop_process_group(process)
        log.close()


def stopping_at_once(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with no pause between SIGTERM and draining, unless it sets one: the default (5 s, for
    the load balancer to stop routing to the pod) would add 5 s to the stop of every test's gateway."""
    server = config.get("server", {})
    return {**config, "server": {"shutdown_delay_seconds": 0, **server}}


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and its workers, then SIGKILL whatever is left after a few seconds.

    Killing only the supervisor would orphan its uvicorn workers, still bound to the port.
    """
    group = process.pid  # start_new_session made it the group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # any worker that outlived its supervisor


def wait_until_live(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("gateway did not become live")
