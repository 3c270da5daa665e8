"""Throwaway Redis topologies for tests: a 3-master Cluster, a Sentinel-watched master, TLS, on loopback.

Each is a context manager that starts its own `redis-server` processes on free ports in a temporary
directory and stops them by PID (SIGTERM, then SIGKILL), never by name, so nothing else on the machine is
touched; the session-scoped fixtures below wrap them. Multi-process gateway tests can use the context
managers directly: they yield the URL a gateway's `redis_url` takes.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from tests.processes import free_port
from tests.store.fixtures import reachable

SENTINEL_SERVICE = "ferryman"
START_TIMEOUT = 15.0  # seconds for a topology to come up on a loaded machine


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


@contextmanager
def redis_process(
    port: int, *arguments: str, directory: Path, plain_port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """One `redis-server` listening on 127.0.0.1:`port` with extra `arguments`, running in `directory`;
    `plain_port` overrides the port for plain connections (0 for none, when `port` is a TLS port)."""
    if shutil.which("redis-server") is None:
        pytest.fail("no redis-server found: run scripts/install-test-services.sh")
    plain = port if plain_port is None else plain_port
    command = ["redis-server", *arguments, "--port", str(plain), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    log = (directory / f"redis-{port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: process.poll() is None and reachable("127.0.0.1", port), f"redis-server on {port}")
        yield process
    finally:
        stop_by_pid(process)
        log.close()


def stop_by_pid(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (SIGCONT first, in case a test left it stopped), SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _answers(port: int, check: Callable[[Redis], bool]) -> bool:
    client = Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return check(client)
    except RedisError:
        return False
    finally:
        client.close()


def _cluster_formed(masters: int) -> Callable[[Redis], bool]:
    def check(client: Redis) -> bool:
        info = client.cluster("INFO")  # redis-py parses it into a dict of strings
        return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == masters

    return check


def _form_cluster(ports: list[int], bus_ports: list[int]) -> None:
    """Give each node its share of the 16384 slots and introduce them, as `redis-cli --cluster create`
    would, but in a handful of commands instead of its polling loops (which took over 15 s under load)."""
    share = 16384 // len(ports)
    for index, port in enumerate(ports):
        first, last = index * share, 16383 if index == len(ports) - 1 else (index + 1) * share - 1
        with Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)  # distinct: no epoch collision
    with Redis(host="127.0.0.1", port=ports[0], socket_timeout=5) as client:
        for port, bus_port in zip(ports[1:], bus_ports[1:], strict=True):
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` masters and no replicas; yields `redis+cluster://h:p,h:p,h:p`.

    Each node's bus port is a free port of its own (`--cluster-port`), not port + 10000, which may be
    taken or out of range.
    """
    directory = Path(tempfile.mkdtemp(prefix="ferryman-redis-cluster-"))
    ports = [free_port() for _ in range(masters)]
    bus_ports = [free_port() for _ in range(masters)]
    try:
        with ExitStack() as stack:
            for port, bus_port in zip(ports, bus_ports, strict=True):
                arguments = ["--cluster-enabled", "yes", "--cluster-port", str(bus_port)]
                arguments += ["--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "5000"]
                stack.enter_context(redis_process(port, *arguments, directory=directory))
            _form_cluster(ports, bus_ports)
            formed = _cluster_formed(masters)
            for port in ports:
                _wait_for(functools.partial(_answers, port, formed), f"a formed cluster on {port}", 60.0)
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _sentinel_sees_master(master_port: int) -> Callable[[Redis], bool]:
    def check(client: Redis) -> bool:
        address = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        return isinstance(address, tuple) and int(address[1]) == master_port

    return check


@contextmanager
def redis_sentinel() -> Iterator[str]:
    """One master and one Sentinel monitoring it as `ferryman`; yields `redis+sentinel://h:p/ferryman`.

    The Sentinel rewrites its config file as it runs, so the file lives in the topology's own directory.
    """
    directory = Path(tempfile.mkdtemp(prefix="ferryman-redis-sentinel-"))
    master_port, sentinel_port = free_port(), free_port()
    config = directory / "sentinel.conf"
    config.write_text(
        f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 5000\n"
    )
    try:
        with ExitStack() as stack:
            stack.enter_context(redis_process(master_port, directory=directory))
            stack.enter_context(redis_process(sentinel_port, str(config), "--sentinel", directory=directory))
            _wait_for(
                lambda: _answers(sentinel_port, _sentinel_sees_master(master_port)),
                "sentinel seeing its master",
            )
            yield f"redis+sentinel://127.0.0.1:{sentinel_port}/{SENTINEL_SERVICE}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def redis_tls() -> Iterator[str]:
    """A TLS-only Redis with a fresh self-signed certificate for 127.0.0.1; yields a `rediss://` URL
    that verifies it (`ssl_cert_reqs=required&ssl_ca_certs=<the certificate>`)."""
    directory = Path(tempfile.mkdtemp(prefix="ferryman-redis-tls-"))
    cert, key, port = directory / "cert.pem", directory / "key.pem", free_port()
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    arguments = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    arguments += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    try:
        # The plain port is turned off (0) after the TLS port: only TLS is served.
        with redis_process(port, *arguments, directory=directory, plain_port=0):
            yield f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A throwaway 3-master Redis Cluster for the whole run."""
    with redis_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def redis_sentinel_url() -> Iterator[str]:
    """A throwaway Sentinel-watched Redis for the whole run."""
    with redis_sentinel() as url:
        yield url
