"""The in-process cache that keeps key lookups off the database: grants by key hash, with a TTL.

Known keys are kept for `ttl` seconds, unknown hashes for a shorter `negative_ttl` (so a key created on
another replica works quickly, and a stream of random guesses costs one query per guess at most every few
seconds). The cache is bounded; the oldest entries go first. Invalidation bumps a generation counter so a
lookup that raced a revocation cannot put the stale answer back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.store.records import KeyGrant


@dataclass(frozen=True, slots=True)
class CachedGrant:
    """A cache hit: the grant, or `None` when the hash is known not to exist."""

    grant: KeyGrant | None
    expires: float


class GrantCache:
    """Key hash → grant with positive and negative TTLs, bounded to `max_entries`."""

    def __init__(
        self,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl, self._negative_ttl, self._max = ttl, negative_ttl, max_entries
        self._clock = clock
        self._entries: OrderedDict[str, CachedGrant] = OrderedDict()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Changes on every invalidation; pass the value read before a lookup to `put`."""
        return self._generation

    def get(self, key_hash: str) -> CachedGrant | None:
        """The live entry for `key_hash`, or `None` on a miss."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key_hash]
            return None
        return entry

    def put(self, key_hash: str, grant: KeyGrant | None, generation: int) -> None:
        """Remember a lookup's answer, unless an invalidation happened since it started."""
        if generation != self._generation:
            return
        ttl = self._ttl if grant is not None else self._negative_ttl
        self._entries[key_hash] = CachedGrant(grant, self._clock() + ttl)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, key_hash: str) -> None:
        """Forget one key (revoked, rotated, changed)."""
        self._generation += 1
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        """Forget everything (a team changed, or notices may have been missed)."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
