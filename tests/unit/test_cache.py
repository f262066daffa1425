"""The routing cache's TTL and LRU bounds, with an injected clock."""

from __future__ import annotations

from tests.helpers.clock import Clock
from tierroute.router.scoring.cache import TTLCache, cache_key


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock(0.0)
    cache: TTLCache[str] = TTLCache(10, ttl_seconds=5, clock=clock)
    cache.put("k", "v")
    clock.now = 4.9
    assert cache.get("k") == "v"
    clock.now = 5.0
    assert cache.get("k") is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted() -> None:
    cache: TTLCache[int] = TTLCache(2, ttl_seconds=60)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3


def test_zero_ttl_disables_the_cache() -> None:
    cache: TTLCache[int] = TTLCache(2, ttl_seconds=0)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_key_depends_on_every_version() -> None:
    base = cache_key("prompt", "emb1", "scorer1", "route1")
    assert base == cache_key("prompt", "emb1", "scorer1", "route1")
    assert base != cache_key("prompt", "emb2", "scorer1", "route1")
    assert base != cache_key("prompt", "emb1", "scorer2", "route1")
    assert base != cache_key("prompt", "emb1", "scorer1", "route2")
    assert base != cache_key("prompt!", "emb1", "scorer1", "route1")
