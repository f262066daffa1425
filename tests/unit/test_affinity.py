"""Conversation affinity (route/affinity.py): held to the larger of its tier and the one that
answered, shared through the metrics store, in memory when there is none or it fails."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.clock import Clock
from tierroute.router.route.affinity import Affinity
from tierroute.router.tiers.store import SqliteStore, StoreDown

ORDER = ["small", "medium", "large"]


async def test_a_conversation_moves_up_never_down_and_expires() -> None:
    clock = Clock(100.0)
    a = Affinity(60, ORDER, clock=clock)
    assert await a.held("c1") is None
    assert await a.hold("c1", None, "small") == "small"
    assert await a.hold("c1", "small", "large") == "large"  # escalated: up
    assert await a.hold("c1", "large", "medium") == "large"  # a failover answer: not down
    assert await a.held("c1") == "large"
    assert await a.held("c2") is None
    clock.now += 61
    assert await a.held("c1") is None


def test_the_held_tier_goes_first_only_when_the_score_chose_a_smaller_one() -> None:
    a = Affinity(60, ORDER)
    assert a.first(["small", "medium", "large"], "large") == (
        ["large", "small", "medium"],
        "conversation_affinity:large",
    )
    assert a.first(["large", "medium"], "medium") == (["large", "medium"], None)
    assert a.first(["small", "medium"], "large") == (
        ["small", "medium"],
        "conversation_affinity_excluded:large",
    )


async def test_routers_on_one_store_share_it_and_only_the_id_s_hash_is_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.sqlite"
    first = Affinity(60, ORDER, SqliteStore(path))
    second = Affinity(60, ORDER, SqliteStore(path))
    await first.hold("user-42/chat-7", None, "medium")
    assert await second.held("user-42/chat-7") == "medium"
    assert b"user-42" not in path.read_bytes()


class FailingStore(SqliteStore):
    def affinity(self, conversation: str) -> str | None:
        raise StoreDown("gone")

    def hold(self, conversation: str, tier: str, ttl_seconds: float) -> None:
        raise StoreDown("gone")


async def test_a_failing_store_leaves_each_router_its_memory(tmp_path: Path) -> None:
    a = Affinity(60, ORDER, FailingStore(tmp_path / "m.sqlite"))
    await a.hold("c", None, "medium")
    assert await a.held("c") == "medium"
