"""The shadow runner's budget, failure and shutdown paths, against a scripted tier servicer on
loopback that answers when told to (the faults a real engine does not show on cue; the real
tiers are in tests/integration/router/test_shadow.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest_asyncio
from prometheus_client import REGISTRY

from tierroute.core.config import config_from_dict
from tierroute.router.route.shadow import Comparison, Shadow
from tierroute.router.tiers.pool import TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc


class Scripted(tier_grpc.TierServiceServicer):
    """Answers "Paris." once `release` is set; fails with UNAVAILABLE while `fail` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.fail = False
        self.calls = 0
        self.started = asyncio.Event()

    async def Generate(
        self, request: tier_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        self.calls += 1
        self.started.set()
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "engine stopped")
        await self.release.wait()
        yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text="Paris."))
        yield tier_pb.GenerateResponse(complete=tier_pb.GenerateComplete(completion_tokens=2))


@pytest_asyncio.fixture
async def tier() -> AsyncIterator[tuple[Scripted, str]]:
    servicer = Scripted()
    server = grpc.aio.server()
    tier_grpc.add_TierServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.release.set()
    await server.stop(0)


class Results(list[Comparison | None]):
    """What `done` was called with; `ended` is set at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    def __call__(self, comparison: Comparison | None) -> None:
        self.append(comparison)
        self.ended.set()


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("tierroute_shadow_dropped_total", {"reason": reason}) or 0.0


def runner(address: str, **shadow: object) -> tuple[Shadow, TierPool]:
    cfg = config_from_dict(
        {
            "tiers": [
                {"name": "small", "address": "127.0.0.1:1", "model": "m"},
                {"name": "large", "address": address, "model": "m"},
            ],
            "shadow": {"fraction": 1.0, "yield_to": "large", **shadow},
        }
    )
    pool = TierPool(cfg)

    def never_embedded(texts: list[str]) -> np.ndarray:
        raise AssertionError("short answers are compared exactly")

    def ask(request: pb.RouteRequest, tier: str) -> tier_pb.GenerateRequest:
        return tier_pb.GenerateRequest(request_id=request.request_id)

    return Shadow(cfg, pool, ask, never_embedded), pool


async def test_beyond_its_budget_an_answer_is_not_shadowed_and_the_first_completes(
    tier: tuple[Scripted, str],
) -> None:
    servicer, address = tier
    shadow, pool = runner(address, max_in_flight=1)
    results = Results()
    budget = dropped("budget")
    request = pb.RouteRequest(request_id="one")
    assert shadow.offer(request, "paris", "small", 1.0, results)
    assert not shadow.offer(pb.RouteRequest(), "lyon", "small", 1.0, results)
    assert dropped("budget") == budget + 1
    # The large tier's own answers, and empty ones, are never offered.
    assert not shadow.offer(request, "paris", "large", 1.0, results)
    assert not shadow.offer(request, "", "small", 1.0, results)
    servicer.release.set()
    await results.ended.wait()
    assert results == [Comparison("large", "exact", 1.0, True, "0-2")]
    assert servicer.calls == 1
    await shadow.close()
    await pool.close()


async def test_a_failed_call_is_counted_and_compares_nothing(tier: tuple[Scripted, str]) -> None:
    servicer, address = tier
    servicer.fail = True
    shadow, pool = runner(address)
    results = Results()
    failed = dropped("failed")
    assert shadow.offer(pb.RouteRequest(), "paris", "small", 5.0, results)
    await results.ended.wait()
    assert results == [None] and dropped("failed") == failed + 1
    breaker = pool.breakers["large"]
    assert breaker.peek().value == "closed"  # a shadow failure never counts against the tier
    await shadow.close()
    await pool.close()


async def test_closing_cancels_shadow_calls_and_reports_each(tier: tuple[Scripted, str]) -> None:
    servicer, address = tier
    shadow, pool = runner(address, max_in_flight=2)
    results = Results()
    shutdown = dropped("shutdown")
    assert shadow.offer(pb.RouteRequest(), "paris", "small", 5.0, results)
    await servicer.started.wait()  # one call running, one task not yet started
    assert shadow.offer(pb.RouteRequest(), "paris", "small", 5.0, results)
    await shadow.close()
    assert results == [None, None] and dropped("shutdown") == shutdown + 2
    assert not shadow.offer(pb.RouteRequest(), "paris", "small", 5.0, results)
    await pool.close()


def test_off_at_fraction_zero_offers_nothing() -> None:
    shadow, _ = runner("127.0.0.1:2", fraction=0.0)
    assert not shadow.on
    assert not shadow.offer(pb.RouteRequest(), "paris", "small", 1.0, print)
