"""The grant cache: positive and negative TTLs, invalidation, races with invalidation, and its bound."""

from __future__ import annotations

from ferryman.store.cache import GrantCache
from ferryman.store.records import KeyGrant


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


GRANT = KeyGrant(key_id="k1", key_hash="h1", alias="a")


def test_known_keys_live_for_the_ttl_and_unknown_ones_shorter() -> None:
    clock = Clock()
    cache = GrantCache(ttl=30, negative_ttl=5, clock=clock)
    cache.put("h1", GRANT, cache.generation)
    cache.put("unknown", None, cache.generation)
    clock.now = 4.9
    hit, miss = cache.get("h1"), cache.get("unknown")
    assert hit is not None and hit.grant == GRANT
    assert miss is not None and miss.grant is None
    clock.now = 5.0
    assert cache.get("unknown") is None
    assert cache.get("h1") is not None
    clock.now = 30.0
    assert cache.get("h1") is None


def test_invalidate_and_clear() -> None:
    cache = GrantCache()
    cache.put("h1", GRANT, cache.generation)
    cache.put("h2", GRANT, cache.generation)
    cache.invalidate("h1")
    assert cache.get("h1") is None and cache.get("h2") is not None
    cache.clear()
    assert len(cache) == 0


def test_a_lookup_that_raced_an_invalidation_is_not_cached() -> None:
    cache = GrantCache()
    started = cache.generation
    cache.invalidate("h1")  # a revocation lands while the lookup is in flight
    cache.put("h1", GRANT, started)
    assert cache.get("h1") is None


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = GrantCache(max_entries=2)
    for name in ("a", "b", "c"):
        cache.put(name, None, cache.generation)
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None
