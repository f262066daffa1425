"""The routing cache: content-addressed, TTL-bounded, LRU-evicted routing decisions.

The key hashes the normalised prompt together with the embedder version, the scorer version and
the routing version (the score-to-tier mapping), so a new model, new reference prompts or a new
threshold can never be answered by a decision made under the old ones.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


def cache_key(text: str, *versions: str) -> str:
    digest = hashlib.sha256(text.encode())
    for version in versions:
        digest.update(b"\x00")
        digest.update(version.encode())
    return digest.hexdigest()


class TTLCache(Generic[V]):
    """A bounded LRU map whose entries expire `ttl_seconds` after they were stored."""

    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: V) -> None:
        if not self.enabled:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
