"""Shared state in Redis: exact rate windows, budget holds, cache and spend ledger across replicas.

Every check-and-change is one Lua script (`store/_redis_scripts.py`), run with EVALSHA (loaded again
after a NOSCRIPT; sent by `store/_evalsha.py`, beneath redis-py's client layer), timed by Redis's own
clock: one round trip per operation, atomic across every process and replica, and immune to skewed
client clocks. The semantics are those of `store/memory.py`, and the same contract tests
(`tests/core/test_shared_state.py`) run against both.

URLs (`?timeout=` and `?prefix=` on any form; other options pass through to redis-py):

    redis://[user:password@]host:port/db            standalone
    rediss://[user:password@]host:port/db           TLS (`?ssl_cert_reqs=required&ssl_ca_certs=/path`)
    redis+sentinel://[user:password@]h1:p1,h2:p2/<service_name>[/db]   the master Sentinel names
    redis+cluster://[user:password@]h1:p1,h2:p2     Redis Cluster, from those startup nodes

- `timeout` (seconds, default 1) bounds each whole call, and the wait for a free connection:
  a hung Redis fails a call with `SharedStateUnavailableError` instead of hanging the request.
- `prefix` (default `ferryman`) starts every key, so several gateways can share one Redis.
- `max_connections` (default 64) caps this process's connections (per node, for a cluster).

Key layout, with `P` the prefix. Everything a script touches carries the one hash tag `{P}`, so in a
Cluster all rate-limit, budget and ledger state lives on one shard: the deliberate trade-off that lets
every multi-key check stay a single atomic script (that shard's throughput is the ceiling). The cache,
touched one key at a time, is left untagged so its bulk spreads over the shards.

    {P}:window:<key>            hash: total (of live units), span (longest window, us), seq
    {P}:window-entries:<key>    sorted set: '<amount>:<seq>' scored by the time it was counted
    {P}:ceiling:<key>           hash: committed, until (period end, us), held (sum of open holds), kept
    {P}:ceiling-holds:<key>     sorted set: '<amount>:<reservation id>' scored by when the hold lapses
    {P}:hold:<reservation id>   hash: amount, expires, state, and each ceiling's keys and period end
    {P}:ledger                  stream: one entry per request, fields `request_id` and `entry` (JSON)
    {P}:ledger:seen:<request id>  marker making `append` idempotent for LEDGER_SEEN_TTL
    P:cache:<key>               string with PX

Every key gets a PEXPIRE, so idle windows, lapsed holds and ended periods vanish by themselves; only
the ledger stream stays until its consumer (the SQL writer) trims what it has stored.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from redis.asyncio.cluster import RedisCluster

from ferryman.core.shared_state import (
    Admission,
    Ceiling,
    Hold,
    Reservations,
    SharedState,
    SpendEntry,
    Window,
    require_admissible,
)
from ferryman.errors import SharedStateUnavailableError
from ferryman.store import _redis_scripts as scripts
from ferryman.store._evalsha import Script, Scripts
from ferryman.store._redis_connect import REDIS_FAILURES, Connected, connect, parse_redis_url

LEDGER_STREAM_SUFFIX = "ledger"
"""The ledger stream is `{<prefix>}:ledger`; see `ledger_stream_key`."""
LEDGER_FIELD_REQUEST_ID = "request_id"
LEDGER_FIELD_ENTRY = "entry"
"""Each stream entry's fields: the request id, and the `SpendEntry` as JSON (`encode_spend_entry`)."""
LEDGER_SEEN_TTL = timedelta(days=7)
"""How long a request id is remembered to refuse a duplicate append; the SQL side is idempotent too."""
_LEDGER_PAGE = 500
_US = 1_000_000
_TEXTS_KEPT = 10_000  # windows and ceilings whose key names and arguments are kept formatted

Result = TypeVar("Result")


def ledger_stream_key(prefix: str) -> str:
    """The Redis stream a gateway with key `prefix` appends its spend to (for the ledger's consumer)."""
    return f"{{{prefix}}}:{LEDGER_STREAM_SUFFIX}"


def encode_spend_entry(entry: SpendEntry) -> str:
    """The JSON kept in the stream's `entry` field: every field by name, `at` as ISO 8601 with offset."""
    return _encode(entry, newline=False).decode()


def encode_spend_line(entry: SpendEntry) -> bytes:
    """The same JSON as one line of the embedded journal: UTF-8, ending in a newline."""
    return _encode(entry, newline=True)


def _encode(entry: SpendEntry, *, newline: bool) -> bytes:
    """Written by orjson, several times faster than `json` (this runs for every request). Its text
    differs from what `json.dumps` wrote only where JSON lets it (non-ASCII as UTF-8 rather than `\\u`
    escapes, some floats spelt otherwise: `1e-7` for `1e-07`), so every reader, old or new, reads the
    same entry. What orjson cannot write as `json` did still goes through `json`: an infinite cost
    (orjson would write `null`, which reads as unpriced), and what orjson refuses (an integer past 64
    bits, a string holding a lone surrogate)."""
    fields = _spend_fields(entry)
    cost = entry.cost_usd
    if cost is None or -math.inf < cost < math.inf:
        try:
            return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE if newline else 0)
        except orjson.JSONEncodeError:
            pass
    text = json.dumps(fields, separators=(",", ":"))  # ASCII: non-ASCII and surrogates are escaped
    return (text + "\n" if newline else text).encode()


def _spend_fields(entry: SpendEntry) -> dict[str, object]:
    return {
        "request_id": entry.request_id,
        "at": entry.at.isoformat(),
        "model": entry.model,
        "provider": entry.provider,
        "deployment": entry.deployment,
        "key_id": entry.key_id,
        "team_id": entry.team_id,
        "end_user": entry.end_user,
        "input_tokens": entry.input_tokens,
        "output_tokens": entry.output_tokens,
        "cached_tokens": entry.cached_tokens,
        "cache_write_tokens": entry.cache_write_tokens,
        "reasoning_tokens": entry.reasoning_tokens,
        "cost_usd": entry.cost_usd,
        "estimated": entry.estimated,
    }


_ORJSON_EXACT = 2.0**64
"""orjson reads an integer outside 64 bits as a float (so rounded); every number below it is exact."""


def decode_spend_entry(text: str | bytes) -> SpendEntry:
    """The `SpendEntry` that `encode_spend_entry` wrote (one written before an entry had cache writes
    and reasoning tokens reads them as 0), by any release.

    Read by orjson; what it refuses and `json` reads (`Infinity`, a lone surrogate, a byte order mark)
    is read by `json`, which then also raises what it always raised for malformed text. An entry with a
    number orjson may have rounded (an integer of 2**64 or more, far past what SQL stores) is read again
    by `json` too, so it decodes exactly as it always did.
    """
    try:
        fields = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _spend_from(json.loads(text))
    entry = _spend_from(fields)
    counts = (entry.input_tokens, entry.output_tokens, entry.cached_tokens)
    if max(*counts, entry.cache_write_tokens, entry.reasoning_tokens) < _ORJSON_EXACT and (
        entry.cost_usd is None or entry.cost_usd < _ORJSON_EXACT
    ):
        return entry
    return _spend_from(json.loads(text))


def _spend_from(fields: Any) -> SpendEntry:
    """The entry from its decoded JSON object (KeyError, TypeError or ValueError when it is not one)."""
    cost = fields["cost_usd"]
    return SpendEntry(
        request_id=str(fields["request_id"]),
        at=datetime.fromisoformat(fields["at"]),
        model=str(fields["model"]),
        provider=str(fields["provider"]),
        deployment=str(fields["deployment"]),
        key_id=_optional_str(fields["key_id"]),
        team_id=_optional_str(fields["team_id"]),
        end_user=_optional_str(fields["end_user"]),
        input_tokens=int(fields["input_tokens"]),
        output_tokens=int(fields["output_tokens"]),
        cached_tokens=int(fields["cached_tokens"]),
        cost_usd=None if cost is None else float(cost),
        estimated=bool(fields["estimated"]),
        cache_write_tokens=int(fields.get("cache_write_tokens", 0)),
        reasoning_tokens=int(fields.get("reasoning_tokens", 0)),
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: float) -> str:
    """A float as a script argument: `repr` round-trips exactly through Lua's `tonumber`."""
    return repr(float(value))


class _Keys:
    """Every Redis key name, in one place (the scripts only use names they are given)."""

    def __init__(self, prefix: str) -> None:
        self.tag = f"{{{prefix}}}"
        self.prefix = prefix

    def window(self, key: str) -> tuple[str, str]:
        return f"{self.tag}:window:{key}", f"{self.tag}:window-entries:{key}"

    def ceiling(self, key: str) -> tuple[str, str]:
        return f"{self.tag}:ceiling:{key}", f"{self.tag}:ceiling-holds:{key}"

    def hold(self, reservation_id: str) -> str:
        return f"{self.tag}:hold:{reservation_id}"

    def ledger(self) -> str:
        return ledger_stream_key(self.prefix)

    def ledger_seen(self, request_id: str) -> str:
        return f"{self.tag}:ledger:seen:{request_id}"

    def cache(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"


class _Link:
    """The client, its scripts, and the one boundary where Redis failures become ours.

    The pool's size caps connections in use, so a burst waits (up to `timeout`) for a connection
    instead of failing on a full pool or opening hundreds of sockets: `Scripts` by the batches it has
    out, a semaphore by the calls in flight for the rest (redis-py's commands, a Cluster's scripts).
    """

    def __init__(self, connected: Connected, timeout: float, max_connections: int) -> None:
        self.connected = connected
        self.client = connected.client
        self._timeout = timeout
        self._gate = asyncio.Semaphore(max_connections)
        self._discovery = asyncio.Lock()
        self._cluster = isinstance(self.client, RedisCluster)
        # the hot path: EVALSHA without redis-py's client layer, capped by batches rather than calls
        self.scripts = Scripts(self.client, timeout, max_batches=max_connections)
        register = self.scripts.register
        self.windows = register(scripts.WINDOWS)
        self.reserve = register(scripts.RESERVE)
        self.admit = register(scripts.ADMIT)
        self.close_hold = register(scripts.CLOSE_HOLD)
        self.finish = register(scripts.FINISH)
        self.level = register(scripts.LEVEL)
        self.restore = register(scripts.RESTORE)
        self.ledger_append = register(scripts.LEDGER_APPEND)
        self.cache_get = register(scripts.CACHE_GET)
        self.cache_set = register(scripts.CACHE_SET)

    async def run(
        self, script: Script, keys: Sequence[str], args: Sequence[str | bytes], *, lazy: bool = False
    ) -> Any:
        """Run one script as `call` runs an operation, but without a timer of its own: `Scripts` bounds
        each batch's round trip by the same timeout (a timer per call cost more than the script).
        `lazy`: the caller does not hold anyone up waiting, so the call may join the next batch."""
        if self._cluster:
            return await self.call(lambda: script(keys=keys, args=args))
        try:
            return await script(keys=keys, args=args, lazy=lazy)
        except REDIS_FAILURES as exc:
            raise SharedStateUnavailableError(f"shared state (Redis) failed: {type(exc).__name__}") from exc

    async def call(self, operation: Callable[[], Awaitable[Result]]) -> Result:
        """Run one Redis operation; any Redis or socket failure raises `SharedStateUnavailableError`."""
        await self._acquire()
        try:
            async with asyncio.timeout(self._timeout):  # the client has no socket timeout: this is it
                if self._cluster:
                    # redis-py lets concurrent calls rediscover the cluster's layout together, and they
                    # close each other's connections; one at a time, the others find it done (a no-op).
                    async with self._discovery:
                        await self.client.initialize()
                return await operation()
        except REDIS_FAILURES as exc:
            # The class only: redis-py's messages may carry hosts, and a script error its source.
            raise SharedStateUnavailableError(f"shared state (Redis) failed: {type(exc).__name__}") from exc
        finally:
            self._gate.release()

    async def _acquire(self) -> None:
        """A place among the calls in flight, waiting at most `timeout` for one."""
        try:
            if self._gate.locked():
                async with asyncio.timeout(self._timeout):
                    await self._gate.acquire()
            else:
                await self._gate.acquire()
        except TimeoutError as exc:
            raise SharedStateUnavailableError("shared state busy: no Redis connection came free") from exc


def _admission(reply: list[object], keys: Sequence[str]) -> Admission:
    allowed, retry_after, refused, *remaining = reply
    return Admission(
        allowed=allowed == 1,
        retry_after=max(0.0, float(_text(retry_after))),
        refused_key=keys[int(_text(refused)) - 1] if refused else None,
        remaining=tuple(float(_text(value)) for value in remaining),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisWindowCounters:
    """Exact sliding windows: each unit kept with its Redis time in a sorted set, beside a running total.

    A call prunes what slid out (subtracting it from the total) and reads the total, so its cost is the
    expired units, not the window's size; only a shorter window sharing a key with a longer one sums
    its range. `admit` takes its hold in the `RedisReservations` opened with these counters (same
    client, same prefix), since that is what one script can reach atomically.
    """

    def __init__(self, link: _Link, keys: _Keys) -> None:
        self._link = link
        self._keys = keys
        # Each window's and ceiling's key names and fixed arguments, as the scripts take them: a
        # limited request passes the same few every time, and formatting them is most of a call's
        # Python. Bounded like every per-caller cache here.
        self._texts: dict[Window | Ceiling, tuple[str, str, str, str]] = {}

    def _texts_of(self, unit: Window | Ceiling) -> tuple[str, str, str, str]:
        """A window's series hash and entries keys, its limit and its length in microseconds; or a
        ceiling's level and holds keys, its limit and its holds' TTL in microseconds."""
        texts = self._texts.get(unit)
        if texts is None:
            if isinstance(unit, Window):
                (first, second), length = self._keys.window(unit.key), unit.seconds
            else:
                (first, second), length = self._keys.ceiling(unit.key), unit.ttl
            texts = (first, second, _number(unit.limit), _number(length * _US))
            if len(self._texts) >= _TEXTS_KEPT:
                self._texts.clear()
            self._texts[unit] = texts
        return texts

    async def check_and_add(self, windows: Sequence[Window], amount: float) -> Admission:
        if amount < 0:
            raise ValueError("check_and_add takes an amount >= 0; corrections go through add()")
        if not windows:
            return Admission(True)
        reply = await self._run("check", windows, amount)
        return _admission(reply, [window.key for window in windows])

    async def add(self, windows: Sequence[Window], amount: float) -> None:
        if windows:
            await self._run("add", windows, amount)

    async def count(self, window: Window) -> float:
        [used] = await self._run("count", [window], 0.0)
        return float(_text(used))

    async def admit(
        self,
        windows: Sequence[tuple[Window, float]],
        hold: Hold | None = None,
        *,
        holds: Reservations | None = None,
    ) -> Admission:
        """One ADMIT script: the windows' check-and-add and RESERVE's hold, under the same key names."""
        require_admissible(windows)
        if hold is not None and not self._shares_keys_with(holds):
            raise ValueError("a Redis admission takes its hold in the RedisReservations of the same state")
        if not windows and hold is None:
            return Admission(True)
        keys: list[str] = []
        args = [str(len(windows))]
        for window, amount in windows:
            hash_key, entries_key, limit, seconds = self._texts_of(window)
            keys += (hash_key, entries_key)
            args += (_number(amount), limit, seconds)
        names = [window.key for window, _ in windows]
        if hold is not None:
            keys.append(self._keys.hold(hold.reservation_id))
            args += [hold.reservation_id, _number(hold.amount), _number(hold.ttl * _US)]
            for ceiling in hold.ceilings:
                level_key, holds_key, limit, ttl = self._texts_of(ceiling)
                keys += (level_key, holds_key)
                args += (limit, ttl)
                names.append(ceiling.key)
        reply: list[object] = await self._link.run(self._link.admit, keys, args)
        if hold is not None and reply == [-1]:  # the script's answer for a hold whose id is known
            raise ValueError(f"reservation {hold.reservation_id!r} already exists")
        return _admission(reply, names)

    async def finish(
        self,
        windows: Sequence[tuple[Window, float]],
        release: str | None = None,
        *,
        holds: Reservations | None = None,
        lazy: bool = False,
    ) -> None:
        """One FINISH script: the windows' corrections and the release of an admitted hold; `lazy`
        sends it with the next script call (within `_evalsha.LINGER`), not in a round trip of its own."""
        if release is not None and not self._shares_keys_with(holds):
            raise ValueError("a Redis finish releases its hold in the RedisReservations of the same state")
        corrections = [(window, amount) for window, amount in windows if amount != 0]
        if not corrections and release is None:
            return
        keys: list[str] = []
        args = [str(len(corrections))]
        for window, amount in corrections:
            hash_key, entries_key, _, seconds = self._texts_of(window)
            keys += (hash_key, entries_key)
            args += (_number(amount), seconds)
        if release is not None:
            keys.append(self._keys.hold(release))
            args.append(release)
        await self._link.run(self._link.finish, keys, args, lazy=lazy)

    def _shares_keys_with(self, holds: Reservations | None) -> bool:
        """Whether `holds` reaches the same Redis under the same prefix: then its holds are this script's."""
        return (
            isinstance(holds, RedisReservations)
            and holds._link is self._link
            and holds._keys.tag == self._keys.tag
        )

    async def _run(self, mode: str, windows: Sequence[Window], amount: float) -> list[object]:
        keys = [name for window in windows for name in self._keys.window(window.key)]
        args = [mode, _number(amount)]
        for window in windows:
            args += [_number(window.limit), _number(window.seconds * _US)]
        reply: list[object] = await self._link.run(self._link.windows, keys, args)
        return reply


class RedisReservations:
    """Budget holds that lapse by themselves, beside committed totals that end with their period."""

    def __init__(self, link: _Link, keys: _Keys) -> None:
        self._link = link
        self._keys = keys

    async def reserve(
        self, reservation_id: str, ceilings: Sequence[Ceiling], amount: float, ttl: float
    ) -> Admission:
        if amount < 0 or not ttl > 0:
            raise ValueError("reserve takes an amount >= 0 and a ttl > 0")
        keys = [self._keys.hold(reservation_id)]
        args = [reservation_id, _number(amount), _number(ttl * _US)]
        for ceiling in ceilings:
            keys += self._keys.ceiling(ceiling.key)
            args += [_number(ceiling.limit), _number(ceiling.ttl * _US), "1" if ceiling.restorable else "0"]
        reply: list[object] = await self._link.run(self._link.reserve, keys, args)
        if reply == [-1]:
            raise ValueError(f"reservation {reservation_id!r} already exists")
        names = [ceiling.key for ceiling in ceilings]
        if reply and reply[0] == -2:  # restorable levels Redis does not hold: nothing was held
            unknown = tuple(dict.fromkeys(names[int(_text(index)) - 1] for index in reply[1:]))
            return Admission(False, refused_key=unknown[0], unknown=unknown)
        return _admission(reply, names)

    async def settle(self, reservation_id: str, actual: float) -> Mapping[str, float]:
        if actual < 0:
            raise ValueError("settle takes an actual cost >= 0")
        return await self._close(reservation_id, _number(actual))

    async def release(self, reservation_id: str) -> None:
        await self._close(reservation_id, "")

    async def level(self, key: str) -> tuple[float, float]:
        committed, held = await self._link.run(self._link.level, self._keys.ceiling(key), ())
        return float(_text(committed)), float(_text(held))

    async def restore(self, key: str, committed: float, ttl: float, *, if_absent: bool = False) -> bool:
        if not ttl > 0:
            raise ValueError("restore takes a ttl > 0")
        args = [_number(committed), _number(ttl * _US), "1" if if_absent else "0"]
        restored = await self._link.run(self._link.restore, self._keys.ceiling(key), args)
        return bool(restored == 1)

    async def _close(self, reservation_id: str, actual: str) -> dict[str, float]:
        """CLOSE_HOLD; the levels it reports, by ceiling key (their hashes are named by `_Keys.ceiling`)."""
        keys = [self._keys.hold(reservation_id)]
        after: list[object] = await self._link.run(self._link.close_hold, keys, [reservation_id, actual])
        prefix = self._keys.ceiling("")[0]
        return {
            _text(name).removeprefix(prefix): float(_text(committed))
            for name, committed in zip(after[::2], after[1::2], strict=True)
        }


class RedisCache:
    """Bytes by key with PX expiry; Redis's own `maxmemory` policy bounds it, not this class."""

    def __init__(self, link: _Link, keys: _Keys) -> None:
        self._link = link
        self._keys = keys

    async def get(self, key: str) -> bytes | None:
        value = await self._link.run(self._link.cache_get, [self._keys.cache(key)], [])
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("set takes a ttl > 0")
        ms = str(max(1, math.ceil(ttl * 1000)))
        await self._link.run(self._link.cache_set, [self._keys.cache(key)], [value, ms])

    async def delete(self, key: str) -> None:
        client, name = self._link.client, self._keys.cache(key)
        await self._link.call(lambda: client.delete(name))


class RedisLedger:
    """Spend appended to a Redis stream, idempotent by request id, for a consumer to copy into SQL.

    Durable as Redis is configured to be: run it with `appendonly yes` (and `appendfsync always` where
    a second of acknowledged spend matters) so a Redis restart loses nothing.
    """

    def __init__(self, link: _Link, keys: _Keys) -> None:
        self._link = link
        self._keys = keys

    async def append(self, entry: SpendEntry) -> bool:
        keys = [self._keys.ledger_seen(entry.request_id), self._keys.ledger()]
        ttl_ms = int(LEDGER_SEEN_TTL.total_seconds() * 1000)
        args = [entry.request_id, encode_spend_entry(entry), str(ttl_ms)]
        appended = await self._link.run(self._link.ledger_append, keys, args)
        return bool(appended == 1)

    async def entries(self, *, since: datetime | None = None) -> list[SpendEntry]:
        """Read the whole stream a page at a time: stream ids are Redis's append times, not `at`, so
        they cannot select by `since` (a slow request is appended well after it started)."""
        if since is not None and since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        found: list[SpendEntry] = []
        start = "-"
        while True:
            page = await self._page(start)
            for entry_id, text in page:
                entry = decode_spend_entry(text)
                if since is None or entry.at >= since:
                    found.append(entry)
                start = "(" + entry_id
            if len(page) < _LEDGER_PAGE:
                return sorted(found, key=lambda e: e.at)

    async def _page(self, start: str) -> list[tuple[str, bytes | str]]:
        """Up to `_LEDGER_PAGE` stream entries from `start` on, as (stream id, entry JSON)."""
        client, stream = self._link.client, self._keys.ledger()
        page = await self._link.call(lambda: client.xrange(stream, min=start, max="+", count=_LEDGER_PAGE))
        field = LEDGER_FIELD_ENTRY.encode()
        return [(_text(entry_id), (fields or {})[field]) for entry_id, fields in page or []]


async def open_redis_state(url: str) -> SharedState:
    """The four stores over one Redis client for `url` (any of the forms above); no I/O until first use.

    `ConfigError` (path `redis_url`) for a malformed URL; Redis being down shows on the first call.
    """
    target = parse_redis_url(url)
    link = _Link(connect(target, caller_times_out=True), target.timeout, target.max_connections)
    keys = _Keys(target.prefix)

    async def close() -> None:
        """Close the scripts' connections, the client's pool (and a Sentinel's own connections)."""
        await link.scripts.aclose()
        await link.connected.aclose()

    return SharedState(
        counters=RedisWindowCounters(link, keys),
        reservations=RedisReservations(link, keys),
        cache=RedisCache(link, keys),
        ledger=RedisLedger(link, keys),
        close=close,
    )
