"""Conversation affinity: the turns of one conversation stay on one tier.

A Route may name its conversation (RouteRequest.conversation_id; over HTTP the header
`x-tierroute-conversation`, or the body's `user`). After each turn the conversation is held,
for `router.affinity_ttl_seconds` from that turn, to the larger of the tier it was held to and
the tier that answered: an escalation moves it up, and nothing moves it down. The next turn
tries that tier first when the score chose a smaller one (reason
`conversation_affinity:<tier>`); when that tier is outside the request's bounds it says so
(`conversation_affinity_excluded:<tier>`), and an open breaker shows as `circuit_open:<tier>`.

The hold lives in the metrics store (router.metrics_store), so router replicas share it; the
id is kept as its SHA-256. Without a store, or while it fails, each router holds its own in
memory (at most MEMORY_KEPT conversations, the oldest dropped first).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from tierroute.router.tiers.store import Store, StoreDown

logger = logging.getLogger(__name__)

MEMORY_KEPT = 100_000
AFFINITY = "conversation_affinity"
AFFINITY_EXCLUDED = "conversation_affinity_excluded"


class Affinity:
    def __init__(
        self,
        ttl_seconds: float,
        order: list[str],
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.order = order
        self.store = store
        self.clock = clock
        self._memory: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @property
    def on(self) -> bool:
        return self.ttl > 0

    @staticmethod
    def key(conversation: str) -> str:
        return hashlib.sha256(conversation.encode()).hexdigest()

    async def held(self, conversation: str) -> str | None:
        """The tier the conversation is held to (None: a new or expired one)."""
        key = self.key(conversation)
        if self.store is not None:
            try:
                tier = await asyncio.to_thread(self.store.affinity, key)
            except StoreDown as exc:
                logger.debug("affinity from memory: the store failed: %s", exc)
            else:
                if tier in self.order:
                    return tier
        kept = self._memory.get(key)
        if kept is None or kept[1] <= self.clock():
            return None
        return kept[0]

    async def hold(self, conversation: str, held: str | None, answered: str) -> str:
        """After a turn: hold the conversation to the larger of `held` and `answered`."""
        tier = answered
        if held in self.order and answered in self.order:
            tier = max(held, answered, key=self.order.index)
        key = self.key(conversation)
        self._memory[key] = (tier, self.clock() + self.ttl)
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_KEPT:
            self._memory.popitem(last=False)
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.hold, key, tier, self.ttl)
            except StoreDown as exc:
                logger.debug("affinity kept in memory only: the store failed: %s", exc)
        return tier

    def first(self, ranking: list[str], held: str) -> tuple[list[str], str | None]:
        """The ranking with the held tier first when the score chose a smaller one, and the
        reason (None when the ranking already starts at or above it)."""
        if held not in ranking:
            return ranking, f"{AFFINITY_EXCLUDED}:{held}"
        if ranking and self.order.index(held) > self.order.index(ranking[0]):
            return [held, *(t for t in ranking if t != held)], f"{AFFINITY}:{held}"
        return ranking, None
