"""Lua scripts sent straight down redis-py's connections: the limiter's and the ledger's hot path.

Every governed request runs one or two scripts, and redis-py's client layer costs more CPU per call
than the script itself: a deprecated-argument shim, a connection pool that takes a lock, polls the
socket and records observability counters on every checkout and return, a retry wrapper, command
packing one argument at a time, and the `Script` object's own checks — about 0.1 ms a call on a
loaded 2-core machine. `Scripts` keeps the parts worth keeping (redis-py's `Connection`, which
connects, authenticates, selects the database and parses replies, hiredis when installed) and drops
the rest:

- its own idle connections, taken and put back without a lock (one event loop; the caller's
  semaphore already caps how many are in flight);
- the EVALSHA command packed in one `join`;
- NOSCRIPT (a restarted or failed-over Redis) answered by loading the script on that connection and
  sending the call once more — safe, since a script that was not found did not run.

A failed exchange disconnects its connection (a half-read reply must never be read by the next call),
which then reconnects on its next use. There is no timeout here: the caller bounds each whole call.
A Redis Cluster keeps redis-py's client, which routes each call to the node owning its hash slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

Arg = str | bytes


def pack(args: Sequence[Arg]) -> bytes:
    """One RESP command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


class Scripts:
    """Runs registered scripts by EVALSHA over connections of its own (see the module docstring)."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        # None for a cluster: its calls go through redis-py, which knows which node owns which slot.
        self._pool: ConnectionPool | None = (
            None if isinstance(client, RedisCluster) else client.connection_pool
        )
        self._idle: list[AbstractConnection] = []

    def register(self, source: str) -> Script:
        """A callable for `source`, called as redis-py's scripts are: `script(keys=..., args=...)`."""
        return Script(self, source, self._client.register_script(source))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA `script`; NOSCRIPT loads it on the same connection and sends the call again."""
        if self._pool is None:
            return await script.fallback(keys=keys, args=args)
        command = pack(["EVALSHA", script.sha, str(len(keys)), *keys, *args])
        connection = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                reply = await _exchange(connection, command)
            except NoScriptError:
                await _exchange(connection, pack(["SCRIPT", "LOAD", script.source]))
                reply = await _exchange(connection, command)
        except ResponseError:  # an error reply, read in full: the connection is fine
            self._idle.append(connection)
            raise
        except BaseException:  # a socket error, or a cancellation mid-reply
            await connection.disconnect(nowait=True)
            self._idle.append(connection)  # reconnects on its next use
            raise
        self._idle.append(connection)
        return reply

    async def aclose(self) -> None:
        """Disconnect the idle connections (the caller lets calls in flight finish first)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


class Script:
    """One registered script: its source, its SHA1, and redis-py's own object (used on a Cluster)."""

    def __init__(self, runner: Scripts, source: str, fallback: AsyncScript) -> None:
        self._runner = runner
        self.source = source
        self.fallback = fallback
        self.sha: str = fallback.sha

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return await self._runner.run(self, keys, args)


async def _exchange(connection: AbstractConnection, command: bytes) -> Any:
    if not connection.is_connected:
        await connection.connect()  # type: ignore[no-untyped-call]
    await connection.send_packed_command(command, check_health=False)
    return await connection.read_response()
