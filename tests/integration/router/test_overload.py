"""Overload is not failure: a tier at its concurrency limit, a tier that refuses with
RESOURCE_EXHAUSTED, and a request whose budget runs out while the tier answers others. The
router (in-process, the real embedder) in front of two scripted tiers on loopback: each call
does what its prompt says, and holds until the test lets it go. The breaker never opens on any
of it; requests move to the larger tier (escalation reason TIER_OVERLOADED), or, with none left,
end in RESOURCE_EXHAUSTED with a retry hint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, make_config
from tests.helpers.services import EMBEDDER_DIR, started
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.errors import RETRY_PUSHBACK_KEY
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.host import SERVER_OPTIONS, Host
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc


class Scripted(tier_grpc.TierServiceServicer):
    """`hold` (`hold-small`: at the small tier only): no token until released; `busy`: a
    token at once and another each time a `hold` call arrives, until released; `exhausted`:
    RESOURCE_EXHAUSTED (the small tier; the tiny one refuses everything); anything else:
    answered at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = asyncio.Event()
        self.holding = 0
        self.arrived = asyncio.Event()  # a `hold` call came in
        self.streaming = asyncio.Event()
        self.calls = 0

    async def Generate(
        self, request: tier_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        self.calls += 1
        prompt = request.messages[-1].content
        if (prompt == "exhausted" and self.name == "small") or self.name == "tiny":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the engine's queue is full")
        if prompt == "hold" or (prompt == "hold-small" and self.name == "small"):
            self.holding += 1
            self.arrived.set()
            await self.release.wait()
        if prompt == "busy":
            released = asyncio.ensure_future(self.release.wait())
            while not released.done():
                yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text=".", token_count=1))
                self.streaming.set()
                arrived = asyncio.ensure_future(self.arrived.wait())
                await asyncio.wait({arrived, released}, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
                self.arrived.clear()
        yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text=self.name, token_count=1))
        yield tier_pb.GenerateResponse(
            complete=tier_pb.GenerateComplete(
                completion_tokens=1, finish_reason=common_pb.FINISH_REASON_STOP
            )
        )


@pytest_asyncio.fixture
async def tiers() -> AsyncIterator[dict[str, tuple[Scripted, str]]]:
    servers, out = [], {}
    for name in ("tiny", "small", "large"):
        servicer = Scripted(name)
        server = grpc.aio.server(options=SERVER_OPTIONS)  # keepalive as a real tier's
        tier_grpc.add_TierServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        out[name] = (servicer, f"127.0.0.1:{port}")
    yield out
    for servicer, _ in out.values():
        servicer.release.set()
    for server in servers:
        await server.stop(0)


def router_data(tiers: dict[str, tuple[Scripted, str]], **escalation: Any) -> dict[str, Any]:
    return {
        "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR)},
        "tiers": [
            {"name": "small", "address": tiers["small"][1], "model": "s", "max_in_flight": 1},
            {"name": "large", "address": tiers["large"][1], "model": "l", "max_in_flight": 1},
        ],
        "circuit_breaker": {"failure_threshold": 2, "min_requests": 2, "cooldown_seconds": 600},
        "escalation": escalation,
    }


async def route(address: str, prompt: str, **fields: Any) -> list[pb.RouteResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.RouterServiceStub(channel).Route(
            pb.RouteRequest(prompt=prompt, **fields), timeout=CALL_TIMEOUT_SECONDS
        )
        return [event async for event in call]


def overload(tier: str, what: str) -> float:
    labels = {"tier": tier, "what": what}
    return REGISTRY.get_sample_value("tierroute_tier_overload_total", labels) or 0.0


async def until(condition: Any) -> None:
    async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
        while not condition():  # noqa: ASYNC110 - the scripted tier's counters have no event
            await asyncio.sleep(0.01)


def breaker(server: Host, tier: str) -> str:
    return str(server.service.pool.breakers[tier].state.value)  # type: ignore[attr-defined]


async def test_a_tier_at_its_limit_spills_to_the_larger_one_and_its_breaker_stays_closed(
    tiers: dict[str, tuple[Scripted, str]],
) -> None:
    small, _ = tiers["small"]
    server, address = await started(host(make_config(router_data(tiers, queue_wait_ms=0))))
    try:
        held = asyncio.create_task(route(address, "hold", force_tier="small"))
        await until(lambda: small.holding == 1)  # the small tier's one place is taken
        spilled = overload("small", "spilled")
        for _ in range(3):
            events = await route(address, "hello", force_tier="small")
            (escalation,) = [e.escalation for e in events if e.HasField("escalation")]
            assert (escalation.from_tier, escalation.to_tier) == ("small", "large")
            assert escalation.reason == pb.ESCALATION_REASON_TIER_OVERLOADED
            summary = events[-1].summary
            assert summary.tier == "large" and summary.escalated
            assert summary.escalation_reason == pb.ESCALATION_REASON_TIER_OVERLOADED
            assert [(a.tier, a.delivered, a.escalation_reason) for a in summary.attempts] == [
                ("small", False, pb.ESCALATION_REASON_TIER_OVERLOADED),
                ("large", True, pb.ESCALATION_REASON_UNSPECIFIED),
            ]
        assert small.calls == 1, "the spilled requests never reached the small tier"
        assert overload("small", "spilled") == spilled + 3
        assert breaker(server, "small") == "closed"
        small.release.set()
        assert (await held)[-1].summary.tier == "small"
    finally:
        await server.stop(0)


async def test_the_last_tier_at_its_limit_refuses_with_a_retry_hint_after_the_wait(
    tiers: dict[str, tuple[Scripted, str]],
) -> None:
    large, _ = tiers["large"]
    # The subject is the wait's end: 1 ms after an escalation, against a call held until the
    # test lets it go (a first call to the large tier keeps the generous budget).
    data = router_data(tiers, escalation_timeout_ms=1)
    server, address = await started(host(make_config(data)))
    try:
        held = asyncio.create_task(route(address, "hold", force_tier="large"))
        await until(lambda: large.holding == 1)
        refused = overload("large", "refused")
        with pytest.raises(grpc.aio.AioRpcError) as info:  # small refuses, large is full
            await route(address, "exhausted", force_tier="small")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tier 'large' is at its concurrency limit (1 calls in flight" in (
            info.value.details() or ""
        )
        assert dict(info.value.trailing_metadata() or ())[RETRY_PUSHBACK_KEY] == "1000"
        assert overload("large", "refused") == refused + 1
        assert breaker(server, "large") == "closed"
        large.release.set()
        assert (await held)[-1].summary.tier == "large"
    finally:
        await server.stop(0)


async def test_a_tier_that_says_resource_exhausted_is_left_for_the_larger_one_not_failed(
    tiers: dict[str, tuple[Scripted, str]],
) -> None:
    server, address = await started(host(make_config(router_data(tiers))))
    try:
        before = overload("small", "tier_refused")
        for _ in range(4):  # twice the breaker's failure threshold
            events = await route(address, "exhausted", force_tier="small")
            summary = events[-1].summary
            assert summary.tier == "large"
            assert summary.escalation_reason == pb.ESCALATION_REASON_TIER_OVERLOADED
        assert overload("small", "tier_refused") == before + 4
        assert breaker(server, "small") == "closed"
    finally:
        await server.stop(0)


async def test_a_budget_spent_queued_in_a_busy_tier_is_overload_and_in_a_silent_one_failure(
    tiers: dict[str, tuple[Scripted, str]],
) -> None:
    small, _ = tiers["small"]
    # The budget is the subject: escalation_timeout_ms, for calls that reach the small tier
    # after the tiny one refused them; the stream that keeps the small tier busy is a first
    # call, under the generous budget. The budget only has to outlast a few steps of the event
    # loop: a held call reaches the small tier, which then sends the other stream a token,
    # which the router reads after the held call started: the tier was busy, not silent.
    data = router_data(tiers, escalation_timeout_ms=2000, max_retries=2)
    data["tiers"].insert(0, {"name": "tiny", "address": tiers["tiny"][1], "model": "t",
                             "max_score": 1.0})  # fmt: skip
    data["tiers"][1]["max_score"] = 5.0
    data["tiers"][1]["max_in_flight"] = 4
    server, address = await started(host(make_config(data)))
    try:
        busy = asyncio.create_task(route(address, "busy", force_tier="small"))
        await small.streaming.wait()
        before = overload("small", "queued_past_budget")
        for _ in range(3):
            events = await route(address, "hold-small", force_tier="tiny")
            summary = events[-1].summary
            assert [(a.tier, a.escalation_reason) for a in summary.attempts] == [
                ("tiny", pb.ESCALATION_REASON_TIER_OVERLOADED),
                ("small", pb.ESCALATION_REASON_TIER_OVERLOADED),
                ("large", pb.ESCALATION_REASON_UNSPECIFIED),
            ]
            assert summary.tier == "large"
        assert overload("small", "queued_past_budget") == before + 3
        assert breaker(server, "small") == "closed"
        small.release.set()
        await busy
        # Silent on every stream: the same budget spent is the tier's failure (and with the
        # busy stream's success, one failure in two calls opens its breaker).
        small.release.clear()
        events = await route(address, "hold-small", force_tier="tiny")
        summary = events[-1].summary
        assert [(a.tier, a.escalation_reason) for a in summary.attempts][1] == (
            "small",
            pb.ESCALATION_REASON_TIER_FAILURE,
        )
        assert summary.tier == "large"
        assert breaker(server, "small") == "open"
    finally:
        small.release.set()
        await server.stop(0)
