"""What only the Redis backend promises, beyond the shared contract (`tests/core/test_shared_state.py`).

Exact across OS processes, timed by Redis's clock rather than the caller's, one round trip per call,
and a Redis that is down, killed or hung fails a call within about `timeout` as
`SharedStateUnavailableError`, after which the backend recovers by itself. Failure tests use their own
throwaway `redis-server` (stopped by PID); the rest run on the session's Redis under a fresh prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from ferryman.core.shared_state import Admission, Ceiling, Hold, SharedState, SpendEntry, Window
from ferryman.errors import ConfigError, SharedStateUnavailableError
from ferryman.store import _evalsha
from ferryman.store import _redis_scripts as scripts
from ferryman.store._evalsha import pack
from ferryman.store._redis_connect import parse_redis_url
from ferryman.store.backends import open_shared_state
from ferryman.store.redis_state import (
    LEDGER_FIELD_ENTRY,
    LEDGER_FIELD_REQUEST_ID,
    decode_spend_entry,
    encode_spend_entry,
    encode_spend_line,
    ledger_stream_key,
)
from tests.processes import free_port
from tests.store.fixtures import throwaway_redis
from tests.store.redis_topologies import redis_tls

TIMEOUT = (
    0.25  # shorter than the 1 s default, passed explicitly so the bound the failure tests check is visible
)
CAUGHT_WITHIN = 4 * TIMEOUT  # a connect, a handshake read and the command read, with slack for a busy box


def spend(request_id: str) -> SpendEntry:
    return SpendEntry(
        request_id=request_id,
        at=datetime(2025, 6, 1, 12, 30, tzinfo=UTC),
        model="gpt-4o-mini",
        provider="openai",
        deployment="openai/gpt-4o-mini",
        key_id="key-1",
        team_id="team-a",
        end_user=None,
        input_tokens=10,
        output_tokens=5,
        cached_tokens=2,
        cost_usd=None,
        estimated=True,
    )


def with_options(url: str, **options: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@asynccontextmanager
async def opened(url: str, **options: object) -> AsyncIterator[SharedState]:
    state = await open_shared_state(with_options(url, **options))
    try:
        yield state
    finally:
        await state.close()


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh key prefix on the session's Redis, whose keys are deleted afterwards (never a flush)."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    async with raw_client(redis_url) as client:
        for pattern in (f"{{{name}}}:*", f"{name}:*"):
            async for key in client.scan_iter(match=pattern):
                await client.delete(key)


async def server_pid(url: str) -> int:
    async with raw_client(url) as client:
        return int((await client.info("server"))["process_id"])


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP the server for the block, and always SIGCONT it after: a hung Redis, then a healed one."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def fails_quickly(state: SharedState) -> float:
    """Seconds until a check fails as it must, with `SharedStateUnavailableError`."""
    started = time.monotonic()
    with pytest.raises(SharedStateUnavailableError) as caught:
        await state.counters.check_and_add([Window("rpm", 10, 60)], 1)
    assert caught.value.status == 503 and caught.value.code == "shared_state_unavailable"
    return time.monotonic() - started


# --- URLs ----------------------------------------------------------------------------------------------


def test_standalone_url_with_credentials_and_options() -> None:
    target = parse_redis_url(
        "redis://app:s%40cret@cache.internal:6380/2?timeout=1.5&prefix=gw&socket_keepalive=no"
    )
    assert (target.topology, target.hosts, target.db, target.tls) == (
        "standalone",
        (("cache.internal", 6380),),
        2,
        False,
    )
    assert (target.username, target.password, target.timeout, target.prefix) == ("app", "s@cret", 1.5, "gw")
    assert target.options == {"socket_keepalive": False}  # redis-py's own casting
    assert "s@cret" not in repr(target)


def test_tls_options_pass_through_to_redis_py() -> None:
    target = parse_redis_url("rediss://h/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem")
    assert (target.tls, target.hosts, target.timeout, target.prefix) == (
        True,
        (("h", 6379),),
        1.0,
        "ferryman",
    )
    assert target.options == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}


def test_sentinel_and_cluster_urls_name_several_hosts() -> None:
    sentinel = parse_redis_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3")
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (sentinel.service_name, sentinel.db, sentinel.password, sentinel.username) == (
        "mymaster",
        3,
        "pw",
        None,
    )
    cluster = parse_redis_url("redis+cluster://n1:7000,n2:7001?ssl=true&max_connections=8")
    assert (cluster.topology, cluster.hosts, cluster.tls, cluster.max_connections) == (
        "cluster",
        (("n1", 7000), ("n2", 7001)),
        True,
        8,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@a:1,b:2/0",  # several hosts on a standalone URL
        "redis+sentinel://:hunter2@s1:26379",  # no service name
        "redis+cluster://:hunter2@n1:7000/1",  # a cluster has only db 0
        "redis://:hunter2@h/zero",
        "redis://:hunter2@h/0?timeout=0",
        "redis://:hunter2@h/0?timeout=forever",
        "redis://:hunter2@h/0?prefix={gw}",  # braces would break the hash tag
        "redis://:hunter2@h/0?prefix=",
        "redis://:hunter2@h:notaport/0",
        "redis://:hunter2@:6379/0",
        "redis://:hunter2@h/0?socket_timeout=soon",  # redis-py's casting refuses it
    ],
)
async def test_bad_urls_are_config_errors_that_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await open_shared_state(url)
    [(path, message)] = caught.value.problems
    assert path == "redis_url"
    assert "hunter2" not in message


# --- keys ----------------------------------------------------------------------------------------------


async def test_every_key_is_tagged_expires_and_the_ledger_stream_keeps_its_contract(
    redis_url: str, prefix: str
) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        await state.counters.check_and_add([Window("rpm:key-1", 10, 60)], 1)
        await state.reservations.reserve("r1", [Ceiling("budget:team-a", 10, 3600)], 2, ttl=30)
        await state.cache.set("answer", b"42", ttl=60)
        assert await state.ledger.append(spend("req-1"))
    async with raw_client(redis_url) as client:
        names = sorted([key.decode() async for key in client.scan_iter(match=f"*{prefix}*")])
        tagged = [name for name in names if name != f"{prefix}:cache:answer"]
        assert f"{prefix}:cache:answer" in names
        assert len(tagged) == 7  # window, its entries, ceiling, its holds, the hold, the stream, seen-marker
        assert all(name.startswith(f"{{{prefix}}}:") for name in tagged)
        assert len({key_slot(name.encode()) for name in tagged}) == 1  # one Cluster slot for every script
        stream = ledger_stream_key(prefix)
        assert stream == f"{{{prefix}}}:ledger"
        for name in names:
            ttl = await client.pttl(name)
            assert ttl == -1 if name == stream else 0 < ttl <= 7 * 24 * 3600 * 1000, name
        [(_, fields)] = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
        assert set(fields) == {LEDGER_FIELD_REQUEST_ID.encode(), LEDGER_FIELD_ENTRY.encode()}
        assert fields[b"request_id"] == b"req-1"
        assert json.loads(fields[b"entry"])["at"] == "2025-06-01T12:30:00+00:00"
        assert decode_spend_entry(fields[b"entry"]) == spend("req-1")


def test_spend_entries_round_trip_through_json() -> None:
    entry = spend("req-2")
    assert decode_spend_entry(encode_spend_entry(entry)) == entry


def _stdlib_json(entry: SpendEntry) -> str:
    """An entry as releases before orjson wrote it (`json.dumps`, compact)."""
    fields = {name: getattr(entry, name) for name in json.loads(encode_spend_entry(spend("x")))}
    return json.dumps(fields | {"at": entry.at.isoformat()}, separators=(",", ":"))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cost_usd": None, "end_user": "zoë 漢字 😀\u2028", "key_id": None},  # non-ASCII: \u escapes before
        {"cost_usd": 1e-07, "estimated": True, "cache_write_tokens": 3, "reasoning_tokens": 2},
        {"cost_usd": 5e-324},
        {"cost_usd": float("inf")},  # orjson would write null (unpriced): written as json did
        {"input_tokens": 2**70, "cached_tokens": 2**64 + 1},  # past 64 bits: orjson refuses or rounds
        {"request_id": "lone \ud800 surrogate", "model": "nul \x00 inside"},
    ],
)
def test_spend_entries_read_the_same_by_every_release(changes: dict[str, object]) -> None:
    """Written by orjson, an entry reads the same with the stdlib reader of earlier releases (a replica
    not yet upgraded); written by `json.dumps` (a stream or journal left by one), it reads the same now."""
    entry = dataclasses.replace(spend("req-3"), **changes)  # type: ignore[arg-type]
    written = encode_spend_entry(entry)
    assert json.loads(written) == json.loads(_stdlib_json(entry))
    assert decode_spend_entry(written) == entry
    assert decode_spend_entry(_stdlib_json(entry)) == entry
    assert decode_spend_entry(_stdlib_json(entry).encode()) == entry
    assert encode_spend_line(entry) == (written + "\n").encode("utf-8", "surrogatepass")


async def test_idle_windows_vanish_by_themselves(redis_url: str, prefix: str) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        await state.counters.add([Window("burst", 10, 0.3)], 1)
        await asyncio.sleep(0.5)
    async with raw_client(redis_url) as client:
        assert [key async for key in client.scan_iter(match=f"*{prefix}*")] == []


# --- beyond the contract: long refusals, late settles ---------------------------------------------------


async def test_retry_after_pages_through_many_units(redis_url: str, prefix: str) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        window = Window("tpm", limit=300, seconds=2.0)
        counted = []  # when each group of units was counted: (start, end) on this process's clock
        for units in (200, 100):
            started = time.monotonic()
            for _ in range(units):
                await state.counters.add([window], 1)
            counted.append((started, time.monotonic()))
            await asyncio.sleep(0.3)  # the groups' times never overlap
        asked = time.monotonic()
        first_page = await state.counters.check_and_add([window], 100)  # the oldest 100 units free it
        second_page = await state.counters.check_and_add([window], 250)  # 200 old units and 50 newer ones

        def slides_out_within(group: int) -> tuple[float, float]:
            started, ended = counted[group]
            return window.seconds - (asked - started) - 0.05, window.seconds - (asked - ended) + 0.05

        low, high = slides_out_within(0)
        assert low <= first_page.retry_after <= high
        low, high = slides_out_within(1)
        assert low <= second_page.retry_after <= high


async def test_reserve_retry_after_pages_through_many_holds(redis_url: str, prefix: str) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        ceiling = Ceiling("budget", limit=2.0, ttl=60)
        for i in range(200):
            assert (
                await state.reservations.reserve(f"r{i}", [ceiling], 0.01, ttl=5 if i < 150 else 10)
            ).allowed
        sooner = await state.reservations.reserve("a", [ceiling], 1.4, ttl=1)  # 140 of the 150 short holds
        later = await state.reservations.reserve("b", [ceiling], 1.6, ttl=1)  # and 10 of the long ones
        assert sooner.retry_after == pytest.approx(5, abs=0.3)
        assert later.retry_after == pytest.approx(10, abs=0.3)


async def test_a_lost_restorable_level_stays_lost_until_restored(redis_url: str, prefix: str) -> None:
    """An evicted level hash is not recreated by a settle (it would hold that one cost and hide the rest),
    and the holds that outlived it are still counted once it is restored."""
    async with opened(redis_url, prefix=prefix) as state, raw_client(redis_url) as client:
        reservations = state.reservations
        budget = Ceiling("budget", limit=10, ttl=60, restorable=True)
        await reservations.restore(budget.key, 5, ttl=60, if_absent=True)
        assert (await reservations.reserve("in-flight", [budget], 2, ttl=30)).allowed
        assert (await reservations.reserve("settling", [budget], 1, ttl=30)).allowed
        await client.delete(f"{{{prefix}}}:ceiling:budget")  # evicted: its holds' set survives
        await reservations.settle("settling", 1)
        assert (await reservations.reserve("next", [budget], 1, ttl=30)).unknown == ("budget",)
        assert await reservations.restore(budget.key, 6, ttl=60, if_absent=True)  # from the ledger
        assert await reservations.level("budget") == (6, 2)
        assert not (await reservations.reserve("next", [budget], 2.5, ttl=30)).allowed  # 6 + 2 held + 2.5


async def test_a_late_settle_frees_the_id_and_an_ended_period_takes_nothing(
    redis_url: str, prefix: str
) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        reservations = state.reservations
        month = Ceiling("month", limit=10, ttl=60)
        await reservations.reserve("late", [month], 1, ttl=0.2)
        await asyncio.sleep(0.3)
        await reservations.settle("late", 2)  # committed, and the lapsed record is no longer needed
        assert (await reservations.reserve("late", [month], 1, ttl=5)).allowed
        assert await reservations.level("month") == (2, 1)
        brief = Ceiling("brief", limit=10, ttl=0.3)
        await reservations.reserve("slow", [brief], 1, ttl=0.2)
        await asyncio.sleep(0.4)
        await reservations.settle("slow", 5)  # too late: that ceiling's period is over
        assert await reservations.level("brief") == (0, 0)


async def test_an_admitted_hold_is_stored_as_reserve_stores_it(redis_url: str, prefix: str) -> None:
    async with opened(redis_url, prefix=prefix) as state, raw_client(redis_url) as client:
        ceilings = (Ceiling("parallel:key", 10, 60), Ceiling("parallel:team", 10, 60))
        admitted = await state.counters.admit(
            [(Window("rpm", 10, 60), 1)], Hold("admitted", ceilings, 1, 30), holds=state.reservations
        )
        assert admitted.allowed
        assert (await state.reservations.reserve("reserved", ceilings, 1, ttl=30)).allowed
        records = [
            cast(dict[bytes, bytes], await client.hgetall(f"{{{prefix}}}:hold:{name}"))
            for name in ("admitted", "reserved")
        ]
        assert records[0].keys() == records[1].keys()
        assert {k: v for k, v in records[0].items() if k not in (b"expires", b"period1", b"period2")} == {
            k: v for k, v in records[1].items() if k not in (b"expires", b"period1", b"period2")
        }
        for ceiling in ceilings:
            holds = await client.zrange(f"{{{prefix}}}:ceiling-holds:{ceiling.key}", 0, -1)
            assert sorted(holds) == [b"1:admitted", b"1:reserved"]
        names = [key.decode() async for key in client.scan_iter(match=f"*{prefix}*")]
        assert len({key_slot(name.encode()) for name in names}) == 1  # one Cluster slot for the script
        await state.reservations.release("admitted")
        assert await state.reservations.level("parallel:team") == (0, 1)


async def test_an_admission_holds_only_in_its_own_redis_state(redis_url: str, prefix: str) -> None:
    async with (
        opened(redis_url, prefix=prefix) as state,
        opened(redis_url, prefix=f"{prefix}-other") as other,
    ):
        hold = Hold("r", (Ceiling("parallel", 1, 60),), 1, 30)
        with pytest.raises(ValueError):
            await state.counters.admit([(Window("rpm", 1, 60), 1)], hold, holds=other.reservations)
        assert await state.counters.count(Window("rpm", 1, 60)) == 0


# --- one round trip, Redis's clock ---------------------------------------------------------------------


async def test_each_operation_is_one_round_trip(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[object] = []
    original = Connection.send_packed_command

    async def counting(self: Connection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        await original(self, command, check_health)  # type: ignore[arg-type]

    async with opened(redis_url, prefix=prefix) as state:
        window, ceiling = Window("rpm", 10, 60), Ceiling("budget", 10, 60)
        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "check_and_add": lambda: state.counters.check_and_add([window, Window("tpm", 100, 60)], 1),
            "add": lambda: state.counters.add([window], -1),
            "count": lambda: state.counters.count(window),
            "reserve": lambda: state.reservations.reserve(uuid.uuid4().hex, [ceiling], 1, ttl=5),
            "settle": lambda: state.reservations.settle("r", 1),
            "release": lambda: state.reservations.release("r"),
            "level": lambda: state.reservations.level(ceiling.key),
            "restore": lambda: state.reservations.restore(ceiling.key, 1, ttl=5),
            "admit": lambda: state.counters.admit(
                [(window, 1), (Window("tpm", 10_000, 60), 40)],  # requests and tokens, each its own amount
                Hold(
                    uuid.uuid4().hex,
                    (Ceiling("parallel:key", 10, 60), Ceiling("parallel:team", 10, 60)),
                    1,
                    5,
                ),
                holds=state.reservations,
            ),
            "finish": lambda: state.counters.finish(
                [(Window("tpm", 10_000, 60), 25), (Window("tpm-team", 10_000, 60), 25)],
                "slot-never-taken",
                holds=state.reservations,
            ),
            "cache.set": lambda: state.cache.set("k", b"v", ttl=5),
            "cache.get": lambda: state.cache.get("k"),
            "ledger.append": lambda: state.ledger.append(spend(f"{prefix}-rt")),
        }
        for operation in operations.values():  # connect and load every script first
            await operation()
        monkeypatch.setattr(Connection, "send_packed_command", counting)
        admit_sha = hashlib.sha1(scripts.ADMIT.encode(), usedforsecurity=False).hexdigest().encode()
        for name, operation in operations.items():
            sent.clear()
            await operation()
            assert len(sent) == 1, name
            if name == "admit":  # one script for every limit, not a pipeline or a transaction of several
                command = sent[0]  # one packed command, or redis-py's list of chunks
                packed = command if isinstance(command, bytes) else b"".join(cast(list[bytes], command))
                assert b"EVALSHA" in packed and admit_sha in packed


def count_writes(monkeypatch: pytest.MonkeyPatch, writes: list[bytes]) -> None:
    """Record in `writes` every packed write to Redis from now on (one per system call's worth)."""
    original = Connection.send_packed_command

    async def counting(self: Connection, command: bytes, check_health: bool = True) -> None:
        writes.append(command)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)


async def test_calls_made_in_one_turn_share_one_write_and_each_gets_its_own_reply(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    async with opened(redis_url, prefix=prefix) as state:
        ceiling = Ceiling("budget", 5, 60)
        await state.reservations.level(ceiling.key)  # connected, scripts loaded
        count_writes(monkeypatch, writes)
        answers = await asyncio.gather(
            *(state.reservations.reserve(f"r{number}", [ceiling], 1, ttl=30) for number in range(8)),
            state.counters.check_and_add([Window("rpm", 3, 60)], 3),
        )
        assert len(writes) == 1  # nine scripts, one system call's worth of bytes
        assert [answer.allowed for answer in answers[:8]] == [True] * 5 + [False] * 3  # in call order
        assert answers[8].allowed
        assert await state.reservations.level(ceiling.key) == (0, 5)


async def test_calls_made_while_every_batch_is_out_wait_and_go_together_in_the_next(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    async with opened(redis_url, prefix=prefix, max_connections=2) as state:
        window = Window("rpm", 100, 60)
        await state.counters.count(window)  # connected, scripts loaded
        count_writes(monkeypatch, writes)
        held = asyncio.Event()
        original = _evalsha._round_trip

        async def slow(connection: Any, commands: list[bytes]) -> list[Any]:
            await held.wait()  # a slow Redis: every batch stays out until the test lets it answer
            return await original(connection, commands)

        monkeypatch.setattr(_evalsha, "_round_trip", slow)
        calls = []
        for _ in range(6):  # one call per turn of the loop, each its own batch while batches can go
            calls.append(asyncio.ensure_future(state.counters.check_and_add([window], 1)))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        assert writes == []  # two batches out (held), four calls waiting for one of them to come back
        held.set()
        left = [answer.remaining[0] for answer in await asyncio.gather(*calls)]
        assert sorted(left) == [94, 95, 96, 97, 98, 99]  # each counted once
        waited = left[2:]  # one batch, run in call order (batches on two connections may overtake)
        assert waited == sorted(waited, reverse=True) and waited[0] - waited[-1] == 3
        scripts = [write for write in writes if isinstance(write, bytes) and b"EVALSHA" in write]
        assert len(scripts) == 3  # the two held batches, then the four that waited, in one write


async def test_a_lazy_finish_rides_ahead_of_the_next_call_in_its_write(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    async with opened(redis_url, prefix=prefix) as state:
        window, ceiling = Window("rpm", 100, 60), Ceiling("parallel", 1, 60)
        first = Hold("first", (ceiling,), 1, 30)
        assert (await state.counters.admit([(window, 1)], first, holds=state.reservations)).allowed
        count_writes(monkeypatch, writes)
        monkeypatch.setattr(_evalsha, "LINGER", 30.0)  # long enough for a busy machine's next steps
        release = asyncio.ensure_future(
            state.counters.finish([], "first", holds=state.reservations, lazy=True)
        )
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert writes == [] and not release.done()  # lingering: no write of its own yet
        second = Hold("second", (ceiling,), 1, 30)
        admitted = await state.counters.admit([(window, 1)], second, holds=state.reservations)
        await release
        assert len(writes) == 1  # the release and the next admission: one write, one wake-up of Redis
        assert admitted.allowed  # the release ran first: the one slot was free again
        writes.clear()
        monkeypatch.setattr(_evalsha, "LINGER", 0.05)
        started = time.monotonic()  # with nothing to ride along with, it goes alone after the linger
        await asyncio.wait_for(state.counters.finish([], "second", holds=state.reservations, lazy=True), 5)
        assert time.monotonic() - started >= 0.05 and len(writes) == 1
        assert await state.reservations.level(ceiling.key) == (0, 0)


async def test_an_error_reply_in_a_batch_fails_only_its_own_call(redis_url: str, prefix: str) -> None:
    async with raw_client(redis_url) as client:
        await client.set(f"{{{prefix}}}:window:broken", "not a hash", px=60_000)
    async with opened(redis_url, prefix=prefix) as state:
        good, broken, after = await asyncio.gather(
            state.counters.check_and_add([Window("rpm", 10, 60)], 1),
            state.counters.check_and_add([Window("broken", 10, 60)], 1),
            state.counters.count(Window("rpm", 10, 60)),
            return_exceptions=True,
        )
    assert isinstance(broken, SharedStateUnavailableError)
    assert isinstance(good, Admission) and good.allowed
    assert after == 1


async def test_a_caller_that_stops_waiting_leaves_the_connection_in_step(redis_url: str, prefix: str) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        window = Window("rpm", 100, 60)
        await state.counters.count(window)
        for _ in range(5):  # each caller gives up after its call was sent, before its reply was read
            task = asyncio.ensure_future(state.counters.check_and_add([window], 1))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.3)  # abandoned batches still in flight land (or fail) meanwhile
        counted = await state.counters.count(window)
        assert 0 <= counted <= 5  # the abandoned calls ran or did not; either way, replies stay in step
        assert (await state.counters.check_and_add([window], 2)).remaining == (100 - counted - 2,)
        assert await state.counters.count(window) == counted + 2


async def test_scripts_flushed_from_redis_are_reloaded_once_for_a_whole_batch(
    redis_url: str, prefix: str
) -> None:
    async with opened(redis_url, prefix=prefix) as state:
        window = Window("rpm", 100, 60)
        await state.counters.count(window)
        async with raw_client(redis_url) as client:
            await client.script_flush()
        answers = await asyncio.gather(*(state.counters.check_and_add([window], 1) for _ in range(10)))
        assert all(answer.allowed for answer in answers)
        assert await state.counters.count(window) == 10


async def test_windows_and_holds_run_on_redis_time_not_the_callers(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skew = 10 * 365 * 24 * 3600.0  # ten years ahead: the event loop keeps its own monotonic clock
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    async with opened(redis_url, prefix=prefix) as state, raw_client(redis_url) as client:
        window = Window("rpm", limit=1, seconds=0.5)
        await state.counters.check_and_add([window], 1)
        await state.reservations.reserve("r1", [Ceiling("budget", 10, 60)], 1, ttl=30)
        seconds, micros = await client.time()
        redis_now = seconds + micros / 1e6
        entries = await client.zrange(f"{{{prefix}}}:window-entries:rpm", 0, -1, withscores=True)
        [(_, counted_at)] = cast(list[tuple[bytes, float]], entries)
        assert abs(counted_at / 1e6 - redis_now) < 5
        hold_expires = float(cast(bytes, await client.hget(f"{{{prefix}}}:hold:r1", "expires")))
        assert abs(hold_expires / 1e6 - (redis_now + 30)) < 5
        assert not (await state.counters.check_and_add([window], 1)).allowed
        await asyncio.sleep(0.6)  # half a second of Redis time later, the unit has slid out
        assert (await state.counters.check_and_add([window], 1)).allowed


# --- exact across processes ----------------------------------------------------------------------------

CONTENDER = """
import asyncio, sys
from ferryman.core.shared_state import Ceiling, Window
from ferryman.store.backends import open_shared_state

async def contend(url, kind, name):
    state = await open_shared_state(url)
    try:
        await state.counters.count(Window("warm-up", 1, 1))  # connected and scripts loaded before the start
        print("ready", flush=True)
        sys.stdin.readline()
        if kind == "window":
            window = Window("rpm", limit=100, seconds=60)
            calls = [state.counters.check_and_add([window], 1) for _ in range(100)]
        else:
            ceiling = Ceiling("budget", limit=2.0, ttl=60)  # exactly 20 holds of $0.10
            calls = [state.reservations.reserve(f"{name}-{i}", [ceiling], 0.1, ttl=30) for i in range(100)]
        answers = await asyncio.gather(*calls)
        print(sum(answer.allowed for answer in answers), flush=True)
    finally:
        await state.close()

asyncio.run(contend(*sys.argv[1:]))
"""


def contend_from_processes(url: str, kind: str, processes: int = 3) -> list[int]:
    """Start `processes` contenders, release them at once when all are ready, return what each got."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, url, kind, f"p{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return [int(child.communicate(timeout=30)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.parametrize("kind", ["window", "reservation"])
async def test_three_processes_never_overshoot_together(redis_url: str, prefix: str, kind: str) -> None:
    # A generous timeout: this test is about exactness, and three processes share two busy cores.
    url = with_options(redis_url, prefix=prefix, timeout=2)
    allowed = await asyncio.to_thread(contend_from_processes, url, kind)
    async with opened(url) as state:
        if kind == "window":
            assert sum(allowed) == 100
            assert await state.counters.count(Window("rpm", 100, 60)) == 100
        else:
            assert sum(allowed) == 20
            committed, held = await state.reservations.level("budget")
            assert committed == 0
            assert held == pytest.approx(2.0)


# --- Redis down, killed, hung --------------------------------------------------------------------------


async def test_a_redis_that_is_not_there_fails_fast() -> None:
    async with opened(f"redis://127.0.0.1:{free_port()}/0", timeout=TIMEOUT) as state:
        assert await fails_quickly(state) < CAUGHT_WITHIN
        with pytest.raises(SharedStateUnavailableError):
            await state.ledger.entries()


async def test_a_killed_redis_fails_every_call_then_heals_without_reopening() -> None:
    port = free_port()
    with throwaway_redis(port) as url:
        async with opened(url, prefix="killed", timeout=TIMEOUT) as state:
            window = Window("rpm", 10_000, 60)
            assert (await state.counters.check_and_add([window], 1)).allowed
            pid = await server_pid(url)

            killed = asyncio.Event()

            async def keep_calling() -> list[BaseException | object]:
                """Batches of concurrent calls, in flight as the server dies, and a few after."""
                results: list[BaseException | object] = []
                batches_after = 0
                while batches_after < 5:
                    batches_after += killed.is_set()
                    batch = [state.counters.check_and_add([window], 1) for _ in range(10)]
                    results += await asyncio.gather(*batch, return_exceptions=True)
                return results

            calling = asyncio.create_task(keep_calling())
            await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            killed.set()
            results = await calling
            failures = [result for result in results if isinstance(result, BaseException)]
            assert failures, "calls after the kill must fail"
            assert all(isinstance(failure, SharedStateUnavailableError) for failure in failures)
            assert await fails_quickly(state) < CAUGHT_WITHIN
            with throwaway_redis(port):  # back, empty, and without our scripts: NOSCRIPT reloads them
                assert (await state.counters.check_and_add([window], 1)).allowed
                assert await state.counters.count(window) == 1


async def test_a_hung_redis_fails_within_the_timeout_then_heals() -> None:
    with throwaway_redis() as url:
        async with opened(url, prefix="hung", timeout=TIMEOUT) as state:
            window = Window("rpm", 10, 60)
            assert (await state.counters.check_and_add([window], 1)).allowed
            with stopped(await server_pid(url)):
                assert await fails_quickly(state) < CAUGHT_WITHIN
                started = time.monotonic()
                answers = await asyncio.gather(
                    state.cache.get("k"),
                    state.reservations.level("b"),
                    state.ledger.entries(),
                    return_exceptions=True,
                )
                assert all(isinstance(answer, SharedStateUnavailableError) for answer in answers)
                assert time.monotonic() - started < CAUGHT_WITHIN
            assert (await state.counters.check_and_add([window], 1)).allowed


async def test_a_transport_closed_under_redis_py_is_a_shared_state_error(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop raises RuntimeError when redis-py writes to a transport that closed mid-connect (a Redis
    killed under load); redis-py lets it through, so the backend must translate it, or a fail-open
    limit turns the outage into a 500."""

    async def closed_under_us(self: Connection, *args: object, **kwargs: object) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    async with opened(redis_url, prefix=prefix) as state:
        monkeypatch.setattr(Connection, "connect", closed_under_us)
        with pytest.raises(SharedStateUnavailableError):
            await state.counters.check_and_add([Window("rpm", 10, 60)], 1)


async def test_calls_beyond_the_pool_wait_their_turn_but_not_forever() -> None:
    with throwaway_redis() as url:
        async with opened(url, prefix="pool", timeout=TIMEOUT, max_connections=2) as state:
            window = Window("rpm", 50, 60)
            answers = await asyncio.gather(*(state.counters.check_and_add([window], 1) for _ in range(50)))
            assert all(answer.allowed for answer in answers)
            async with raw_client(url) as client:
                assert len(await client.client_list()) <= 3  # our two and this one
            with stopped(await server_pid(url)):
                started = time.monotonic()
                counts = await asyncio.gather(
                    *(state.counters.count(window) for _ in range(6)), return_exceptions=True
                )
                assert all(isinstance(count, SharedStateUnavailableError) for count in counts)
                assert time.monotonic() - started < 2 * CAUGHT_WITHIN  # a wait for a slot, then a call


async def test_a_failing_script_is_a_shared_state_error(redis_url: str, prefix: str) -> None:
    async with raw_client(redis_url) as client:
        await client.set(f"{{{prefix}}}:window:rpm", "not a hash", px=60_000)
    async with opened(redis_url, prefix=prefix) as state:
        with pytest.raises(SharedStateUnavailableError) as caught:
            await state.counters.check_and_add([Window("rpm", 10, 60)], 1)
    assert "WRONGTYPE" not in caught.value.message


async def test_close_releases_every_connection() -> None:
    with throwaway_redis() as url:
        state = await open_shared_state(with_options(url, prefix="close"))
        await asyncio.gather(*(state.counters.count(Window("rpm", 1, 1)) for _ in range(10)))
        async with raw_client(url) as client:
            assert len(await client.client_list()) > 1
            await state.close()
            await asyncio.sleep(0.05)
            assert len(await client.client_list()) == 1  # this one


# --- TLS -----------------------------------------------------------------------------------------------


async def test_tls_verifies_the_server_and_serves_the_contract() -> None:
    with redis_tls() as url:
        async with opened(url, prefix="tls") as state:
            assert (await state.counters.check_and_add([Window("rpm", 1, 60)], 1)).allowed
            assert not (await state.counters.check_and_add([Window("rpm", 1, 60)], 1)).allowed
            assert await state.ledger.append(spend("req-tls"))
            assert [entry.request_id for entry in await state.ledger.entries()] == ["req-tls"]
        untrusted = (
            url.split("?")[0] + "?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt"
        )
        async with opened(untrusted, timeout=1) as state:
            with pytest.raises(SharedStateUnavailableError):
                await state.cache.get("k")


@pytest.mark.parametrize(
    "args",
    [
        ["EVALSHA", "0" * 40, "2", "{p}:a", "{p}:b", "1.5", ""],
        ["SET", "clé", b"\x00\r\n\xff", "日本"],  # text as UTF-8, bytes as they are, CRLF inside a value
    ],
)
def test_the_fast_path_packs_commands_byte_for_byte_as_redis_py_does(args: list[str | bytes]) -> None:
    assert pack(args) == b"".join(Connection().pack_command(*args))
