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
- every call made in the same event-loop turn sent together (pipelined): one write and one read on
  one connection for all of them. Under load most of a call's CPU is the system calls of its round
  trip, not the script, so fifty requests admitted in one turn cost one `send` instead of fifty. A
  lone call waits for no one: the batch goes out on the loop's next turn;
- at most `max_batches` batches out at once, each on a connection of its own: calls made while that
  many are out wait for one to come back and go together in the next. This caps the connections (a
  burst against a slow Redis queues instead of opening hundreds of sockets) without a permit per
  call, which a lazy call would hold through its linger;
- a call that nobody waits for (`lazy`: the rate-limit stage's exit, sent after the answer) lingers
  up to `LINGER` seconds for company: it goes out at the head of the next batch, so a request's
  release and the next request's admission share one write and one wake-up of Redis (in that
  order: the slot is free before the next admission is judged), and alone only once the linger ends;
- NOSCRIPT (a restarted or failed-over Redis) answered by loading the script on that connection and
  sending the calls that met it once more — safe, since a script that was not found did not run.

A batch runs in a task of its own, so a caller that is cancelled (its timeout, its client gone) only
stops waiting: the batch still reads every reply, and the connection stays in step. A failed batch
(a socket error, or no reply within `timeout`) disconnects its connection (a half-read reply must
never be read by the next call) and fails each of its calls; the connection reconnects on its next
use. A Redis Cluster keeps redis-py's client, which routes each call to the node owning its hash slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Arg = str | bytes
LINGER = 0.002  # seconds a lazy call waits for a batch to join: a slot comes back at most this late
_PACKED_KEPT = 4096  # arguments whose RESP encoding is kept (keys and limits repeat call after call)
_PACKED_LONGEST = 256  # bytes: longer arguments (a spend line, a cached answer) are never seen twice
_Call = tuple[bytes, "Script", "asyncio.Future[Any]"]  # packed command, script, its caller's future


_packed: dict[Arg, bytes] = {}


def pack(args: Sequence[Arg]) -> bytes:
    """One RESP command: an array of bulk strings.

    Short arguments' encodings are kept (up to `_PACKED_KEPT`, then started over): a request's key
    names, limits and window lengths are the previous request's, and a lookup costs a quarter of an
    encoding."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        packed = _packed.get(arg)
        if packed is None:
            data = arg.encode() if isinstance(arg, str) else arg
            packed = b"$%d\r\n%b\r\n" % (len(data), data)
            if len(data) <= _PACKED_LONGEST:
                if len(_packed) >= _PACKED_KEPT:
                    _packed.clear()
                _packed[arg] = packed
        parts.append(packed)
    return b"".join(parts)


class Scripts:
    """Runs registered scripts by EVALSHA over connections of its own (see the module docstring).

    `timeout` bounds each batch's whole round trip (None: unbounded), so a call waits at most twice
    that: for a batch to come back when `max_batches` are out, then for its own.
    """

    def __init__(
        self, client: Redis | RedisCluster, timeout: float | None = None, max_batches: int = 64
    ) -> None:
        self._client = client
        # None for a cluster: its calls go through redis-py, which knows which node owns which slot.
        self._pool: ConnectionPool | None = (
            None if isinstance(client, RedisCluster) else client.connection_pool
        )
        self._timeout = timeout
        self._max_batches = max_batches
        self._idle: list[AbstractConnection] = []
        self._queue: list[_Call] = []  # this turn's calls, sent together on the next
        self._lazy: list[_Call] = []  # calls nobody waits for, sent ahead of the next batch
        self._linger: asyncio.TimerHandle | None = None  # sends the lazy calls alone if no batch comes
        self._scheduled = False  # a batch task is started and has not yet taken the queues
        self._out = 0  # batches sent and not yet answered in full
        self._batches: set[asyncio.Task[None]] = set()  # in flight (asyncio keeps weak references)

    def register(self, source: str) -> Script:
        """A callable for `source`, called as redis-py's scripts are: `script(keys=..., args=...)`."""
        return Script(self, source, self._client.register_script(source))

    async def run(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], *, lazy: bool = False
    ) -> Any:
        """EVALSHA `script` in this turn's batch and wait for its reply; a `lazy` call (its caller does
        not hold up anyone by waiting) joins the next batch instead, or goes alone after `LINGER`."""
        if self._pool is None:
            return await script.fallback(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = (pack(["EVALSHA", script.sha, str(len(keys)), *keys, *args]), script, future)
        if lazy:
            self._lazy.append(call)
            if self._linger is None and not self._scheduled:
                self._linger = loop.call_later(LINGER, self._linger_ended)
        else:
            self._queue.append(call)
            self._schedule()  # the batch task starts on the next turn: this turn's calls join it
        return await future

    def _linger_ended(self) -> None:
        self._linger = None
        self._schedule()

    def _schedule(self) -> None:
        """Start a batch task unless one is started and has not yet taken the queued calls, or
        `max_batches` are out (the first to come back starts it)."""
        if self._scheduled or self._out >= self._max_batches or self._pool is None:
            return
        self._scheduled = True
        batch = asyncio.get_running_loop().create_task(self._send(self._pool))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)

    async def _send(self, pool: ConnectionPool) -> None:
        """One batch: every queued call in one write (the lazy ones first), their replies read in order
        on one connection."""
        calls, self._lazy, self._queue, self._scheduled = self._lazy + self._queue, [], [], False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if not calls:
            return
        self._out += 1
        try:
            await self._answer(pool, calls)
        finally:
            self._out -= 1
            if self._queue or self._lazy:  # made while this batch was out: they go now, together
                self._schedule()

    async def _answer(self, pool: ConnectionPool, calls: list[_Call]) -> None:
        """Send `calls` on one connection and settle each caller's future with its reply."""
        connection = self._idle.pop() if self._idle else pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._timeout):
                replies = await _round_trip(connection, [command for command, _, _ in calls])
                missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:  # load each missing script, then send its calls again, in one more write
                    sources = list(dict.fromkeys(calls[index][1].source for index in missing))
                    loads = [pack(["SCRIPT", "LOAD", source]) for source in sources]
                    again = await _round_trip(connection, loads + [calls[index][0] for index in missing])
                    for index, reply in zip(missing, again[len(loads) :], strict=True):
                        replies[index] = reply
        except BaseException as exc:  # a socket error, a timeout, or shutdown mid-reply
            await connection.disconnect(nowait=True)
            if isinstance(exc, RedisConnectionError | OSError):
                # The server closed this connection (restarted, failed over): the idle ones went with
                # it, and each would fail one more batch on its first use. They reconnect instead.
                for idle in self._idle:
                    await idle.disconnect(nowait=True)
            self._idle.append(connection)  # reconnects on its next use
            for _, _, future in calls:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._idle.append(connection)
        for (_, _, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Send the lingering calls, let batches in flight end, then disconnect the idle connections."""
        if self._lazy:
            self._schedule()
        while self._batches:  # a batch ending starts the next with what waited for it
            await asyncio.gather(*self._batches, return_exceptions=True)
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

    async def __call__(
        self, keys: Sequence[Arg] = (), args: Sequence[Arg] = (), *, lazy: bool = False
    ) -> Any:
        return await self._runner.run(self, keys, args, lazy=lazy)


async def _round_trip(connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
    """Send `commands` in one write and read one reply each; an error reply is returned, not raised
    (it was read in full, so the replies after it are still in step)."""
    if not connection.is_connected:
        await connection.connect()  # type: ignore[no-untyped-call]
    await connection.send_packed_command(b"".join(commands), check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies
