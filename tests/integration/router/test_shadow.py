"""Shadow mode against real vLLM tiers: the router in-process, the session's two tier processes
(SmolLM2-135M each). Every answer the small tier delivers is offered (shadow.fraction 1); what
is compared lands in the routing log as a label `calibrate --from-log` reads, and in the
metrics; a live call preempts a shadow call; a busy or unreachable large tier is never asked,
and costs the user's answer nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, ServiceProcess
from tests.helpers.services import started as started_host
from tests.integration.router.test_route import Routed, route
from tierroute.router.route.log_reader import read_labels
from tierroute.router.scoring.embedder import Embedder
from tierroute.router.service import RouterService, host
from tierroute.runtime.host import Host

pytestmark = pytest.mark.tier

PROMPTS = [
    "Say hello in French.",
    "What is 2 + 3? Answer with the number only.",
    "Name the capital of Italy.",
    "Give me a synonym for happy.",
]
LONG = "Write a long story about a lighthouse keeper and a storm, in many paragraphs."
DROP_REASONS = ("budget", "busy", "preempted", "tier_down", "failed", "shutdown")


def shadow_config(small: str, large: str, log: Path, **shadow: Any) -> dict[str, Any]:
    """Both tiers greedy with the same token budget; every prompt scores below the small tier's
    bound, so the small tier answers (live, unvalidated) and every answer is offered."""
    tier = {
        "model": "smollm2",
        "validation": "none",
        "max_tokens": 32,
        "temperature": 0.0,
        "engine_args": {"max_model_len": 2048},
    }
    return {
        "router": {
            "listen": "127.0.0.1:0",
            "model": str(EMBEDDER_DIR),
            "complexity_threshold": 9.9,
            "routing_log": str(log),
            "routing_log_prompts": True,
        },
        "tiers": [
            {"name": "small", "address": small, **tier},
            {"name": "large", "address": large, **tier},
        ],
        "escalation": {},
        "shadow": {"fraction": 1.0, "yield_to": "any", **shadow},
    }


def counted() -> dict[str, float]:
    """The shadow counters of this process's registry, by outcome."""

    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    out = {
        f"agreed_{a}": sum(
            value("tierroute_shadow_comparisons_total", {"band": b, "agreed": a})
            for b in ("0-2", "2-4", "4-6", "6-8", "8-10", "unscored")
        )
        for a in ("true", "false")
    }
    for reason in DROP_REASONS:
        out[reason] = value("tierroute_shadow_dropped_total", {"reason": reason})
    return out


def moved(before: dict[str, float]) -> dict[str, float]:
    now = counted()
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


async def until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:  # noqa: ASYNC109
    """Wait for `condition` (a state the router reaches), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:g} s: {what}")
        await asyncio.sleep(0.02)


async def with_router(
    data: dict[str, Any], body: Callable[[str, RouterService], Awaitable[None]]
) -> None:
    server: Host
    server, address = await started_host(host(make_config(data)))
    try:
        service = server.service
        assert isinstance(service, RouterService)
        await body(address, service)
    finally:
        await server.stop(0)  # closes the routing log: every row written


def rows(log: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(log) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM routes ORDER BY id")]


def answered(result: Routed, tier: str) -> None:
    assert result.summary is not None and result.summary.tier == tier, result.summary
    assert result.text and result.summary.finish_reason


async def test_the_small_tier_s_answers_are_compared_with_the_large_tier_s_and_teach_labels(
    small_tier: ServiceProcess, large_tier: ServiceProcess, tmp_path: Path
) -> None:
    log = tmp_path / "log.sqlite"
    before = counted()

    async def body(address: str, service: RouterService) -> None:
        for i, prompt in enumerate(PROMPTS, 1):
            answered(await route(address, prompt=prompt, request_id=f"r{i}"), "small")
            # The next request only once this one's shadow comparison is done: a live call
            # would preempt it (yield_to any).
            await until(
                lambda i=i: sum(moved(before).values()) >= i and service.flow.shadow.in_flight == 0,
                f"shadow comparison {i} done",
            )

    await with_router(shadow_config(small_tier.address, large_tier.address, log), body)
    changes = moved(before)
    compared = changes.get("agreed_true", 0) + changes.get("agreed_false", 0)
    assert compared == len(PROMPTS), changes  # one tier call at a time: nothing dropped
    recorded = rows(log)
    assert [r["request_id"] for r in recorded] == ["r1", "r2", "r3", "r4"]
    for r in recorded:
        assert r["final_tier"] == "small" and r["shadow_tier"] == "large", r
        assert r["shadow_method"] in ("exact", "embedding")
        assert 0.0 <= r["shadow_similarity"] <= 1.0 + 1e-6
        assert r["shadow_agreed"] == int(r["shadow_similarity"] >= 0.8)
    # The same model, greedy, the same budget: the two tiers mostly answer alike (a near-tie
    # may flip a token between two engines' kernels, so not all of them need to).
    assert sum(r["shadow_agreed"] for r in recorded) >= len(PROMPTS) // 2, recorded
    print(
        {r["request_id"]: (r["shadow_method"], round(r["shadow_similarity"], 3)) for r in recorded}
    )
    embedder = Embedder(EMBEDDER_DIR, max_tokens=256)
    labels = read_labels(log, "small", recorded[0]["embedder_version"], embedder.dimension)
    assert labels.from_shadow == len(PROMPTS)
    assert labels.needed_larger.tolist() == [1.0 - r["shadow_agreed"] for r in recorded]


async def test_a_live_call_preempts_a_shadow_call_and_a_busy_machine_is_not_shadowed(
    small_tier: ServiceProcess, large_tier: ServiceProcess, tmp_path: Path
) -> None:
    log = tmp_path / "log.sqlite"
    before = counted()
    data = shadow_config(small_tier.address, large_tier.address, log)

    async def body(address: str, service: RouterService) -> None:
        shadow = service.flow.shadow
        # 1. A long answer, then its shadow call runs on the large tier...
        long = {"prompt": LONG, "request_id": "long", "sampling": {"max_tokens": 200}}
        answered(await route(address, **long), "small")
        await until(lambda: shadow.in_flight == 1, "the long answer's shadow call started")
        # ...until a live call starts: it is cancelled, the live answer is whole.
        answered(await route(address, prompt=PROMPTS[0], request_id="live"), "small")
        assert moved(before).get("preempted") == 1, moved(before)
        await until(lambda: shadow.in_flight == 0, "the live answer's shadow call done")
        # 2. Two at once: whichever ends first is not shadowed while the other is live.
        both = await asyncio.gather(
            route(address, prompt=PROMPTS[1], request_id="a"),
            route(address, prompt=PROMPTS[2], request_id="b"),
        )
        for result in both:
            answered(result, "small")
        await until(lambda: shadow.in_flight == 0, "the last shadow call done")

    await with_router(data, body)
    changes = moved(before)
    assert changes.get("preempted") == 1 and changes.get("busy", 0) >= 1, changes
    by_id = {r["request_id"]: r for r in rows(log)}
    assert set(by_id) == {"long", "live", "a", "b"}  # every row kept, shadowed or not
    assert by_id["long"]["shadow_tier"] == "" and by_id["long"]["shadow_agreed"] is None
    assert by_id["live"]["shadow_tier"] == "large"


async def test_an_unreachable_large_tier_costs_the_user_nothing(
    small_tier: ServiceProcess, tmp_path: Path
) -> None:
    log = tmp_path / "log.sqlite"
    before = counted()
    data = shadow_config(small_tier.address, "127.0.0.1:1", log)  # nothing listens there

    async def body(address: str, service: RouterService) -> None:
        for i, prompt in enumerate(PROMPTS[:2]):
            answered(await route(address, prompt=prompt, request_id=f"r{i}"), "small")
            await until(
                lambda i=i: moved(before).get("tier_down", 0) + moved(before).get("failed", 0) > i,
                "the shadow call given up",
            )

    await with_router(data, body)
    changes = moved(before)
    assert not changes.get("agreed_true") and not changes.get("agreed_false"), changes
    recorded = rows(log)
    assert [r["status"] for r in recorded] == ["OK", "OK"]
    assert all(r["shadow_tier"] == "" for r in recorded)
