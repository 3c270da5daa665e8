"""The background writer from the Redis spend stream into SQL: acknowledged only once SQL has committed.

With Redis, a request's spend is durable once it is in the stream `{<prefix>}:ledger` (AOF on); this
feeder moves it into the SQL ledger. It reads as one consumer of the group `ferryman-ledger` (several
replicas share the work), writes a batch with `SqlLedger.append_many` (idempotent by request id), and
only after that commit acknowledges and deletes the batch's entries, in one MULTI. So:

- a feeder killed after reading, or after committing but before acknowledging, leaves its entries
  pending; another feeder claims them and writes them again, which inserts nothing twice. A running
  feeder renews a short lease (`{<prefix>}:ledger:consumer:<name>`, `lease` seconds); a consumer
  whose lease has lapsed and that has not touched the stream for as long is gone, and its entries are
  claimed at once. Entries idle for `reclaim_idle` are claimed whoever holds them (a consumer that
  keeps no lease, or one stuck): a restarted replica has a new consumer name, so without the lease a
  SIGKILLed replica's last batch would wait that long to reach SQL;
- while the database is down nothing is acknowledged: the batch stays pending, the feeder retries with
  backoff, and the backlog (the stream's length: acknowledged entries are deleted, so what remains is
  exactly what SQL has not taken yet, pending or not delivered) goes to `on_backlog`, the
  `ai_api_ledger_backlog` gauge;
- an entry that cannot be decoded (or holds a value SQL would refuse) would block its batch forever, so
  it moves to `{<prefix>}:ledger:dead` (with the reason) in the same MULTI that acknowledges the
  batch: kept for an operator, never dropped.

The stream's name and format belong to the producer, `store.redis_state` (`ledger_stream_key`,
`encode_spend_entry`); this module only reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import StreamIdT

from ferryman.core.shared_state import SpendEntry
from ferryman.errors import StoreUnavailableError
from ferryman.store._redis_connect import REDIS_FAILURES
from ferryman.store.redis_state import decode_spend_entry, ledger_stream_key

log = logging.getLogger("ferryman.store.ledger_feeder")
_WAIT_ON: tuple[type[Exception], ...] = (StoreUnavailableError, *REDIS_FAILURES)  # the database or Redis

GROUP = "ferryman-ledger"
GATHER_READS = 4  # a batch that does not fill at once is topped up this often within `batch_wait`
MAX_COUNT = 2**63 - 1  # BIGINT
MAX_COST_USD = 1e12  # NUMERIC(24, 12)

StreamEntry = tuple[str, dict[Any, Any] | None]  # id, fields (empty: deleted while pending)


def read_spend(raw: bytes) -> SpendEntry:
    """The spend in a stream entry's `entry` field (as `redis_state.encode_spend_entry` wrote it), if SQL
    can store it; ValueError naming what is wrong. Checked here because a value SQL refuses would fail
    its whole batch on every retry."""
    try:
        entry = decode_spend_entry(raw)
    except (KeyError, TypeError, ValueError) as exc:  # malformed JSON is a ValueError too
        raise ValueError(f"not a spend entry: {type(exc).__name__}: {exc}") from exc
    counts = (entry.input_tokens, entry.output_tokens, entry.cached_tokens)
    if max(*counts, entry.cache_write_tokens, entry.reasoning_tokens) > MAX_COUNT:
        raise ValueError("a token count past 2**63 - 1 (BIGINT)")
    if entry.cost_usd is not None and not (math.isfinite(entry.cost_usd) and entry.cost_usd < MAX_COST_USD):
        raise ValueError(f"cost_usd {entry.cost_usd!r} does not fit NUMERIC(24, 12)")
    return entry


class BatchLedger(Protocol):
    """Where the feeder writes: `SqlLedger` (idempotent by request id, durable when it returns)."""

    async def append_many(self, entries: Iterable[SpendEntry]) -> int:
        """Record the batch in one transaction; StoreUnavailableError when the database refuses it."""
        ...


@dataclass(frozen=True, slots=True)
class FeederSettings:
    """Timings and sizes; seconds throughout. `idle_block` must stay below the Redis client's socket
    timeout (a blocked read would otherwise time out)."""

    batch_size: int = 500
    # After the first entry, wait this long for more to fill the batch: a batch costs a transaction and
    # two rollup upserts whatever its size, so a second's worth costs far less than five of a fifth.
    # The entries are durable in the stream meanwhile; only SQL (reports) lags by as much.
    batch_wait: float = 1.0
    idle_block: float = 0.5  # a read with nothing to do waits this long for the first entry
    reclaim_idle: float = 60.0  # another consumer's pending entry this idle is taken over
    lease: float = 3.0  # renewed every lease / 3; a consumer without one, silent this long, is gone
    retry_initial: float = 0.2
    retry_max: float = 10.0
    close_timeout: float = 5.0  # how long `aclose` keeps writing what is left


def default_consumer() -> str:
    """This process's consumer name: unique per host and process, readable in `XINFO CONSUMERS`."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LedgerFeeder:
    """Moves spend from the Redis stream into SQL in the background; `start` once, `aclose` at the end."""

    def __init__(
        self,
        redis: Redis,
        ledger: BatchLedger,
        *,
        prefix: str = "ferryman",
        group: str = GROUP,
        consumer: str | None = None,
        settings: FeederSettings | None = None,
        on_backlog: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._ledger = ledger
        self.stream = ledger_stream_key(prefix)
        self.dead_letters = f"{self.stream}:dead"
        self.group = group
        self.consumer = consumer or default_consumer()
        self._settings = settings or FeederSettings()
        self._on_backlog = on_backlog
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._group_ready = False
        self._next_reclaim = 0.0
        self._next_lapse_check = 0.0

    def start(self) -> None:
        """Begin feeding in the background (it creates the consumer group itself, retrying until Redis
        answers, so a Redis that is down at start-up delays the feeder, not the gateway)."""
        self._task = asyncio.create_task(self._run(), name="ferryman-ledger-feeder")
        self._lease_task = asyncio.create_task(self._keep_lease(), name="ferryman-ledger-lease")

    async def aclose(self) -> None:
        """Stop, then write what can be written within `close_timeout`; the rest stays in the stream
        (pending or not delivered), for another replica or the next start."""
        self._stopping.set()
        try:
            async with asyncio.timeout(self._settings.close_timeout):
                if self._task is not None:
                    await asyncio.shield(self._task)  # its batch in flight, then it sees `_stopping`
                await self.drain()
        except _WAIT_ON as exc:
            log.warning("ledger feeder stopped with spend left in Redis (%s)", type(exc).__name__)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._release_lease()

    async def drain(self) -> int:
        """Write everything there is now (this consumer's pending entries, entries idle elsewhere, new
        ones) without waiting for more; returns how many entries were acknowledged."""
        await self._ensure_group()
        await self._reclaim()
        await self._claim_from_the_gone()
        done = 0
        while moved := await self._feed(block=False):
            done += moved
        await self.report_backlog()
        return done

    async def backlog(self) -> int:
        """Entries SQL has not taken yet: the stream's length, since acknowledged entries are deleted."""
        return int(await self._redis.xlen(self.stream))

    async def report_backlog(self) -> None:
        """Send the backlog to `on_backlog`."""
        if self._on_backlog is not None:
            self._on_backlog(await self.backlog())

    async def _run(self) -> None:
        delay = self._settings.retry_initial
        while not self._stopping.is_set():
            try:
                await self._ensure_group()
                now = asyncio.get_running_loop().time()
                if now >= self._next_reclaim:
                    await self._reclaim()
                if now >= self._next_lapse_check:
                    await self._claim_from_the_gone()
                if not await self._feed(block=True):
                    await self.report_backlog()  # idle: the gauge settles at 0
                delay = self._settings.retry_initial
            except _WAIT_ON as exc:
                log.warning("ledger feeder waiting %.1fs: %s", delay, type(exc).__name__)
                await self._report_backlog_if_possible()
                await self._pause(delay)
                delay = min(delay * 2, self._settings.retry_max)
            except Exception:  # a bug must not end the task: the entries stay pending, so retry
                log.exception("ledger feeder failed; retrying in %.1fs", delay)
                await self._pause(delay)
                delay = min(delay * 2, self._settings.retry_max)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when `aclose` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _report_backlog_if_possible(self) -> None:
        with contextlib.suppress(*REDIS_FAILURES):  # Redis down too: the gauge keeps its last value
            await self.report_backlog()

    async def _ensure_group(self) -> None:
        """Create the group (and the stream) if missing, reading from the stream's start, so entries
        appended before any feeder ran are not skipped."""
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _reclaim(self) -> None:
        """Take over entries other consumers (dead ones, most likely) have held for `reclaim_idle`."""
        idle_ms = int(self._settings.reclaim_idle * 1000)
        cursor = "0-0"
        for _ in range(100):  # a bounded pass; the next one continues
            reply = await self._redis.xautoclaim(
                self.stream, self.group, self.consumer, idle_ms, cursor, count=self._settings.batch_size
            )
            cursor = _text(reply[0])
            if reply[1]:
                log.info("ledger feeder claimed %d entries left pending by another consumer", len(reply[1]))
            if cursor == "0-0":
                break
        self._next_reclaim = asyncio.get_running_loop().time() + self._settings.reclaim_idle

    def _lease_key(self, consumer: str) -> str:
        return f"{self.stream}:consumer:{consumer}"

    async def _keep_lease(self) -> None:
        """Renew this consumer's lease while the feeder runs: the other replicas' sign that its pending
        entries are in hand. A renewal Redis misses only lets another feeder write them too (SQL
        inserts nothing twice), so failures are not fatal here."""
        key, lease_ms = self._lease_key(self.consumer), int(self._settings.lease * 1000)
        while not self._stopping.is_set():
            with contextlib.suppress(*REDIS_FAILURES):
                await self._redis.set(key, b"1", px=lease_ms)
            await self._pause(self._settings.lease / 3)

    async def _release_lease(self) -> None:
        """Stop renewing and drop the lease: what this feeder left pending goes to the others at once."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
            with contextlib.suppress(*REDIS_FAILURES):
                await self._redis.delete(self._lease_key(self.consumer))

    async def _claim_from_the_gone(self) -> None:
        """Take over the pending entries of consumers that are gone: no lease, and no command on the
        stream for a lease's length (a live feeder reads every `idle_block`). Only entries as idle are
        claimed, so two feeders finding the same gone consumer do not take them from each other."""
        lease_ms = int(self._settings.lease * 1000)
        consumers = await self._redis.xinfo_consumers(self.stream, self.group)
        for consumer in consumers:
            name = _text(consumer["name"])
            if name == self.consumer or not consumer["pending"] or int(consumer["idle"]) < lease_ms:
                continue
            if await self._redis.exists(self._lease_key(name)):
                continue
            held = await self._redis.xpending_range(
                self.stream, self.group, "-", "+", self._settings.batch_size, consumername=name
            )
            ids: list[StreamIdT] = [entry["message_id"] for entry in held]
            if ids and (
                claimed := await self._redis.xclaim(
                    self.stream, self.group, self.consumer, lease_ms, ids, justid=True
                )
            ):
                log.info("ledger feeder claimed %d entries left by %s, which is gone", len(claimed), name)
        self._next_lapse_check = asyncio.get_running_loop().time() + self._settings.lease / 3

    async def _feed(self, *, block: bool) -> int:
        """Write one batch, this consumer's pending entries first; returns how many were acknowledged."""
        try:
            entries = await self._read("0", self._settings.batch_size, None)
            if not entries:
                entries = await self._read_new(block=block)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted (a Redis without its AOF): start over
                self._group_ready = False
            raise
        if not entries:
            return 0
        spend, dead = _decode_batch(entries)
        await self._ledger.append_many(spend)
        await self._acknowledge([entry_id for entry_id, _ in entries], dead)
        await self.report_backlog()
        return len(entries)

    async def _read_new(self, *, block: bool) -> list[StreamEntry]:
        """New entries: block for the first, then gather more for `batch_wait` or until the batch is full.

        Gathering pauses, then takes whatever has arrived, about `GATHER_READS` times. It used to block
        on the stream for the rest of the wait, but a blocked read returns with the first entry that
        arrives: under steady traffic that was one round trip (and one reply to parse) per entry, more
        CPU than writing the entry to SQL. Without `block` (a drain) it takes what is there, no pause.
        """
        settings = self._settings
        entries = await self._read(">", settings.batch_size, settings.idle_block if block else None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.batch_wait
        step = settings.batch_wait / GATHER_READS
        while entries and len(entries) < settings.batch_size:
            left = deadline - loop.time()
            if block:
                if left <= 0 or self._stopping.is_set():
                    break
                await self._pause(min(step, left))  # `aclose` cuts it short: the batch goes now
            elif left <= 0:
                break
            more = await self._read(">", settings.batch_size - len(entries), None)
            if not more and not block:
                break
            entries += more
        return entries

    async def _read(self, start: str, count: int, block: float | None) -> list[StreamEntry]:
        # BLOCK 0 means forever in Redis: never ask for less than a millisecond.
        block_ms = None if block is None else max(1, int(block * 1000))
        reply = await self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
        )
        return [
            (_text(entry_id), fields)
            for _, stream_entries in _streams(reply)
            for entry_id, fields in stream_entries
        ]

    async def _acknowledge(self, entry_ids: Sequence[str], dead: Sequence[tuple[str, bytes, str]]) -> None:
        """After the SQL commit: dead letters kept, the batch acknowledged and deleted, all at once."""
        async with self._redis.pipeline(transaction=True) as multi:
            for entry_id, raw, reason in dead:
                multi.xadd(self.dead_letters, {"entry": raw, "error": reason, "source_id": entry_id})
            multi.xack(self.stream, self.group, *entry_ids)
            multi.xdel(self.stream, *entry_ids)
            await multi.execute()
        for entry_id, _, reason in dead:
            log.error(
                "spend entry %s could not be decoded (%s); kept in %s", entry_id, reason, self.dead_letters
            )


def _decode_batch(entries: Sequence[StreamEntry]) -> tuple[list[SpendEntry], list[tuple[str, bytes, str]]]:
    """The batch's spend, and its undecodable entries as (id, raw, reason). An entry deleted while it was
    pending comes back with no fields: it is in SQL already (it was deleted after its commit)."""
    spend: list[SpendEntry] = []
    dead: list[tuple[str, bytes, str]] = []
    for entry_id, fields in entries:
        if not fields:
            continue
        raw = _field(fields, "entry")
        try:
            spend.append(read_spend(raw))
        except ValueError as exc:
            dead.append((entry_id, raw, str(exc)[:500]))
    return spend, dead


def _streams(reply: Any) -> list[tuple[Any, list[tuple[Any, dict[Any, Any] | None]]]]:
    """XREADGROUP's reply as (stream, entries) pairs, whether redis-py parsed it as a list or (RESP3)
    as a dict."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else [tuple(pair) for pair in reply]


def _field(fields: dict[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
