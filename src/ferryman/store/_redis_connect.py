"""Redis URLs to redis-py clients (standalone or TLS, Sentinel, Cluster): short timeouts, no retries.

`parse_redis_url` reads the four URL forms (documented in `store.redis_state`) into a `RedisTarget`;
`connect` builds the client. Two choices hold for every topology:

- `timeout` (default 1 s) bounds every socket connect and read, so a hung Redis fails a request
  quickly instead of hanging it, and the core's fail-open or fail-closed policy decides what happens.
- redis-py's own retries are off: re-sending a script after a read timeout could apply it twice (the
  first one may have run), which would double-count a rate-limit unit or a budget hold. A failed call
  raises instead, and the next call simply opens a fresh connection, so the backend recovers by itself.

Any other query option passes through to redis-py with redis-py's own casting (`ssl_cert_reqs`,
`ssl_ca_certs`, `socket_keepalive`, `protocol`, …); `ssl=true` turns on TLS for Sentinel and Cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url, to_bool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ferryman.errors import ConfigError

Topology = Literal["standalone", "sentinel", "cluster"]
Client = Redis | RedisCluster

TOPOLOGIES: dict[str, Topology] = {
    "redis": "standalone",
    "rediss": "standalone",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}
DEFAULT_TIMEOUT = 1.0  # short next to any LLM call; 0.25 s timed out spuriously on a loaded 2-core box
DEFAULT_PREFIX = "ferryman"
DEFAULT_MAX_CONNECTIONS = 64
_DEFAULT_PORTS: dict[Topology, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
_CONFIG_PATH = "redis_url"

REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError)
"""What a call to Redis raises when Redis fails rather than the caller: redis-py's errors, socket errors
(a timeout's `TimeoutError` among them), and the `RuntimeError` uvloop raises when redis-py writes to a
transport that closed under it (a Redis killed mid-connect), which redis-py does not translate."""


def _problem(message: str) -> ConfigError:
    # Messages name hosts and options, never the URL itself: it may carry a password.
    return ConfigError([(_CONFIG_PATH, message)])


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL asks for; the password is kept out of `repr` (it ends up in logs)."""

    topology: Topology
    hosts: tuple[tuple[str, int], ...]
    tls: bool
    db: int = 0
    service_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    prefix: str = DEFAULT_PREFIX
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    options: dict[str, object] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisTarget:
    """Read one of the four URL forms; `ConfigError` (path `redis_url`) for anything else."""
    parts = urlsplit(url)
    topology = TOPOLOGIES.get(parts.scheme)
    if topology is None:
        raise _problem(f"unknown scheme {parts.scheme}://; known: {', '.join(TOPOLOGIES)}")
    userinfo, _, netloc = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = tuple(_host(entry, _DEFAULT_PORTS[topology]) for entry in netloc.split(","))
    if topology == "standalone" and len(hosts) != 1:
        raise _problem(
            f"{parts.scheme}:// takes one host; use redis+sentinel:// or redis+cluster:// for more"
        )
    service_name, db = _path(topology, unquote(parts.path))
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    timeout = _number(options.pop("timeout", str(DEFAULT_TIMEOUT)), "timeout")
    max_connections = int(
        _number(options.pop("max_connections", str(DEFAULT_MAX_CONNECTIONS)), "max_connections")
    )
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    if not prefix or "{" in prefix or "}" in prefix:
        raise _problem("prefix must be non-empty and free of braces: it becomes the keys' {hash tag}")
    tls = parts.scheme == "rediss" or bool(to_bool(options.pop("ssl", "")))
    return RedisTarget(
        topology=topology,
        hosts=hosts,
        tls=tls,
        db=db,
        service_name=service_name,
        username=unquote(username) or None,
        password=unquote(password) or None,
        timeout=timeout,
        prefix=prefix,
        max_connections=max_connections,
        options=_redis_py_options(options),
    )


def _host(entry: str, default_port: int) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{entry}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise _problem(f"bad host:port {entry!r}") from exc
    if not host:
        raise _problem("every host must be named (host:port)")
    return host, port or default_port


def _path(topology: Topology, path: str) -> tuple[str | None, int]:
    """`(service name, db)` from the path: `/db`, `/service[/db]` for Sentinel, nothing for Cluster."""
    segments = [segment for segment in path.split("/") if segment]
    if topology == "sentinel":
        if not 1 <= len(segments) <= 2:
            raise _problem("redis+sentinel:// needs the master's service name: /<service_name>[/db]")
        return segments[0], _db(segments[1:])
    db = _db(segments)
    if topology == "cluster" and db != 0:
        raise _problem("Redis Cluster has only database 0")
    return None, db


def _db(segments: list[str]) -> int:
    if not segments:
        return 0
    if len(segments) != 1 or not segments[0].isdigit():
        raise _problem("the database is one number: /<db>")
    return int(segments[0])


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise _problem(f"{name} must be a positive number")
    return value


def _redis_py_options(options: dict[str, str]) -> dict[str, object]:
    """The remaining query options, cast exactly as redis-py casts them in its own URLs."""
    if not options:
        return {}
    try:
        parsed: dict[str, object] = dict(parse_url("redis://localhost/?" + urlencode(options)))
    except ValueError as exc:
        raise _problem(str(exc)) from exc
    parsed.pop("host", None)
    return parsed


def _connection_options(target: RedisTarget, *, caller_times_out: bool = False) -> dict[str, Any]:
    """What every data connection gets, whatever the topology (keyword arguments for redis-py).

    `caller_times_out`: no socket timeout on reads and writes, because the caller bounds each whole
    call with one timer of its own. redis-py's socket timeout costs a task per send (`wait_for`) and a
    timer per read, about a fifth of a short call's CPU; a timed-out read still closes its connection.
    """
    return {
        "username": target.username,
        "password": target.password,
        "socket_timeout": None if caller_times_out else target.timeout,
        "socket_connect_timeout": target.timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": target.max_connections,
        **target.options,
    }


@dataclass(slots=True)
class Connected:
    """The client to run commands on, and what else must be closed with it (a Sentinel's own clients)."""

    client: Client
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        """Close the data connections, then the Sentinel connections."""
        try:
            await self.client.aclose()
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()


def connect_pubsub(target: RedisTarget) -> tuple[Redis, Sentinel | None]:
    """A plain client for publish / subscribe on `target`, whose reads may wait as long as a
    subscription lasts (no socket timeout): the master behind a Sentinel; on a Cluster, its first
    startup node (a PUBLISH reaches every node's subscribers, and redis-py's cluster client has no
    pub/sub); the server itself otherwise."""
    options: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": max(target.timeout, 1.0),
        "retry": Retry(NoBackoff(), 0),  # the invalidation bus retries (and reconnects) itself
        **target.options,
    }
    if target.topology == "sentinel":
        assert target.service_name is not None  # noqa: S101 - parse_redis_url requires it
        sentinel_options: dict[str, Any] = {"socket_connect_timeout": options["socket_connect_timeout"]}
        if target.tls:
            sentinel_options["ssl"] = True
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call, unused-ignore]
        return sentinel.master_for(target.service_name, db=target.db, ssl=target.tls, **options), sentinel
    host, port = target.hosts[0]
    return Redis(host=host, port=port, db=target.db, ssl=target.tls, **options), None


def connect(target: RedisTarget, *, caller_times_out: bool = False) -> Connected:
    """A client for `target`; no I/O happens until its first command. With `caller_times_out`, every
    call must be bounded by the caller (see `_connection_options`); connecting is bounded regardless."""
    options = _connection_options(target, caller_times_out=caller_times_out)
    if target.topology == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.hosts]
        return Connected(RedisCluster(startup_nodes=nodes, ssl=target.tls, **options))
    if target.topology == "sentinel":
        assert target.service_name is not None  # noqa: S101 - parse_redis_url requires it
        sentinel_options = {
            key: value
            for key, value in options.items()
            if key.startswith(("socket_", "ssl")) or key == "retry"
        }
        if target.tls:
            sentinel_options["ssl"] = True
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call, unused-ignore]
        master = sentinel.master_for(target.service_name, db=target.db, ssl=target.tls, **options)
        return Connected(master, sentinel)
    [(host, port)] = target.hosts
    return Connected(Redis(host=host, port=port, db=target.db, ssl=target.tls, **options))
