"""Open circuits shared across replicas in Redis: the `SharedCircuits` that `BreakerSync` reads.

One hash, `{P}:breaker`, holds a field per open deployment whose value is when its circuit closes to
probes (Redis's own clock, in ms), so no replica's clock matters: the reading script answers with the
milliseconds left. A circuit that closes is deleted from it; a field whose time has passed is
ignored (and dropped by the next write), and the hash itself expires after the longest cooldown
written, so an idle fleet leaves nothing behind. Reads happen every `sync_interval_seconds` and
writes only at transitions — never on a request's path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ferryman.errors import SharedStateUnavailableError
from ferryman.store._redis_connect import REDIS_FAILURES, Connected, connect, parse_redis_url

BREAKER_SUFFIX = "breaker"

# KEYS[1] the hash. Returns a flat list: deployment, ms left, … (open circuits only).
_READ = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local open = {}
for i = 1, #fields, 2 do
  local left = tonumber(fields[i + 1]) - now
  if left > 0 then
    open[#open + 1] = fields[i]
    open[#open + 1] = tostring(left)
  end
end
return open
"""

# KEYS[1] the hash; ARGV: the number of opens, then (deployment, ms open) pairs, then closed names.
_WRITE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local opens = tonumber(ARGV[1])
local longest = 0
for i = 0, opens - 1 do
  local ms = tonumber(ARGV[3 + 2 * i])
  redis.call('HSET', KEYS[1], ARGV[2 + 2 * i], tostring(now + ms))
  if ms > longest then longest = ms end
end
for i = 2 + 2 * opens, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) <= now then redis.call('HDEL', KEYS[1], fields[i]) end
end
if longest > 0 and redis.call('PTTL', KEYS[1]) < longest then
  redis.call('PEXPIRE', KEYS[1], longest)
end
return 1
"""


class RedisCircuits:
    """`SharedCircuits` on Redis (any topology: one key, so one shard)."""

    def __init__(self, connected: Connected, prefix: str) -> None:
        self._connected = connected
        self._key = f"{{{prefix}}}:{BREAKER_SUFFIX}"
        client = connected.client
        self._read = client.register_script(_READ)
        self._write = client.register_script(_WRITE)

    @classmethod
    def open(cls, url: str, timeout: float = 0.5) -> RedisCircuits:
        """A client for `url` of its own (no I/O until the first call), with `timeout` per call."""
        target = parse_redis_url(url)
        target = dataclasses.replace(target, timeout=min(target.timeout, timeout), max_connections=2)
        return cls(connect(target), target.prefix)

    async def open_circuits(self) -> dict[str, float]:
        """Every open circuit and the seconds it stays open."""
        reply = await self._call(self._read, [])
        return {_text(reply[i]): int(reply[i + 1]) / 1000 for i in range(0, len(reply), 2)}

    async def publish(self, opens: Mapping[str, float], closes: set[str]) -> None:
        """Record `opens` (seconds each stays open) and drop `closes`, in one script."""
        args: list[str] = [str(len(opens))]
        for deployment, seconds in opens.items():
            args += [deployment, str(max(int(seconds * 1000), 1))]
        args += sorted(closes)
        await self._call(self._write, args)

    async def clear(self) -> None:
        """Forget every circuit (tests; an operator starting over)."""
        try:
            await self._connected.client.delete(self._key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def aclose(self) -> None:
        """Close the connections."""
        await self._connected.aclose()

    async def _call(self, script: Any, args: list[str]) -> Any:
        try:
            return await script(keys=[self._key], args=args)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> SharedStateUnavailableError:
    return SharedStateUnavailableError(f"Redis failed the circuit breaker's call ({type(exc).__name__}).")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
