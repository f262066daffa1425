"""Route end to end: the router in-process, two real vLLM tiers and the validator as processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.conftest import EMBEDDER_DIR, ServiceProcess
from tierroute.config import config_from_dict
from tierroute.router.server import RouterServer
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

pytestmark = pytest.mark.tier

SIMPLE = "What is the capital of France?"
COMPLEX = "Prove that there are infinitely many primes and explain each step of the proof."


def route_config(
    small: str,
    large: str,
    validator: str,
    *,
    small_max_tokens: int = 96,
    validation: str = "self_reported",
    **escalation: Any,
) -> dict[str, Any]:
    return {
        "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR)},
        "tiers": [
            {
                "name": "small",
                "address": small,
                "model": "smollm2",
                "validation": validation,
                "max_tokens": small_max_tokens,
                "temperature": 0.0,
            },
            {
                "name": "large",
                "address": large,
                "model": "smollm2",
                "max_tokens": 48,
                "temperature": 0.0,
            },
        ],
        "validator": {"address": validator},
        # Two CPU engines on two cores are slow under the concurrency test: a generous budget.
        "escalation": {"min_confidence": 0.05, "timeout_ms": 150_000, **escalation},
    }


@dataclass
class Routed:
    decision: pb.RoutingDecision
    chunks: list[pb.TokenChunk] = field(default_factory=list)
    escalations: list[pb.Escalation] = field(default_factory=list)
    summary: pb.RouteSummary | None = None
    order: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


async def route(address: str, **fields: Any) -> Routed:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        result: Routed | None = None
        async for event in stub.Route(pb.RouteRequest(**fields), timeout=300):
            kind = event.WhichOneof("event")
            if kind == "decision":
                assert result is None, "the decision must come first, once"
                result = Routed(event.decision)
            else:
                assert result is not None and result.summary is None, f"{kind} out of order"
                if kind == "chunk":
                    result.chunks.append(event.chunk)
                elif kind == "escalation":
                    result.escalations.append(event.escalation)
                else:
                    result.summary = event.summary
            result.order.append(kind)
    assert result is not None and result.summary is not None, "the stream ended without a summary"
    return result


@pytest_asyncio.fixture(scope="module")
async def suite(
    small_tier: ServiceProcess, large_tier: ServiceProcess, validator_process: ServiceProcess
) -> AsyncIterator[tuple[str, str, str]]:
    yield small_tier.address, large_tier.address, validator_process.address


async def started(data: dict[str, Any]) -> tuple[RouterServer, str]:
    server = RouterServer(config_from_dict(data))
    port = await server.start()
    await server.load()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="module")
async def router(suite: tuple[str, str, str]) -> AsyncIterator[str]:
    server, address = await started(route_config(*suite))
    yield address
    await server.stop(0)


async def test_simple_prompt_is_served_by_the_small_tier_after_validation(router: str) -> None:
    r = await route(router, prompt=SIMPLE)
    assert r.decision.tier == "small"
    assert not r.escalations
    assert r.summary is not None and r.summary.tier == "small" and not r.summary.escalated
    assert "Paris" in r.text
    assert not r.text.lstrip().startswith("{"), "the JSON envelope must not reach the client"
    assert all(c.tier == "small" for c in r.chunks)
    s = r.summary
    assert [a.tier for a in s.attempts] == ["small"] and s.attempts[0].delivered
    assert s.usage.completion_tokens == s.attempts[0].usage.completion_tokens > 0
    assert s.cost_usd > 0 and s.confidence >= 0.05
    assert s.latencies.validate_ms > 0 and s.latencies.generate_ms > 0
    assert s.latencies.total_ms >= s.latencies.time_to_first_token_ms > 0


async def test_complex_prompt_is_streamed_live_by_the_large_tier(router: str) -> None:
    r = await route(router, prompt=COMPLEX)
    assert r.decision.tier == "large"
    assert r.summary is not None and r.summary.tier == "large"
    assert len(r.chunks) > 1, "the large tier's answer should arrive as a live stream"
    assert r.order[0] == "decision" and r.order[-1] == "summary"
    assert r.summary.finish_reason in (tier_pb.FINISH_REASON_STOP, tier_pb.FINISH_REASON_LENGTH)


async def test_low_confidence_escalates_then_streams_the_large_tier(
    suite: tuple[str, str, str],
) -> None:
    # Forced: no real answer's geometric-mean token probability reaches 0.999.
    server, address = await started(
        route_config(*suite, validation="logprob", min_confidence=0.999)
    )
    try:
        r = await route(address, prompt=SIMPLE)
    finally:
        await server.stop(0)
    assert r.decision.tier == "small"
    assert len(r.escalations) == 1
    e = r.escalations[0]
    assert (e.from_tier, e.to_tier) == ("small", "large")
    assert e.reason == pb.ESCALATION_REASON_LOW_CONFIDENCE and e.confidence < 1.0
    first_chunk = r.order.index("chunk")
    assert r.order.index("escalation") < first_chunk, "no small-tier chunk may precede it"
    assert all(c.tier == "large" for c in r.chunks) and r.text
    s = r.summary
    assert s is not None and s.tier == "large" and s.escalated
    assert s.escalation_reason == pb.ESCALATION_REASON_LOW_CONFIDENCE
    assert [(a.tier, a.delivered) for a in s.attempts] == [("small", False), ("large", True)]
    assert s.usage.completion_tokens == sum(a.usage.completion_tokens for a in s.attempts)
    assert s.latencies.escalation_ms > 0


async def test_unparseable_small_answer_escalates(suite: tuple[str, str, str]) -> None:
    # Six tokens cannot hold the JSON envelope: the answer is cut and does not parse.
    server, address = await started(route_config(*suite, small_max_tokens=6))
    try:
        r = await route(address, prompt=SIMPLE)
    finally:
        await server.stop(0)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_PARSE_FAILURE]
    assert r.summary is not None and r.summary.tier == "large"


async def test_strict_latency_mode_never_escalates(suite: tuple[str, str, str]) -> None:
    server, address = await started(
        route_config(*suite, validation="logprob", min_confidence=0.999)
    )
    try:
        r = await route(address, prompt=SIMPLE, disable_escalation=True)
    finally:
        await server.stop(0)
    assert not r.escalations
    assert r.summary is not None and r.summary.tier == "small"
    assert [a.tier for a in r.summary.attempts] == ["small"]


async def test_forced_tier_skips_scoring(router: str) -> None:
    r = await route(router, prompt=SIMPLE, force_tier="large")
    assert r.decision.tier == "large"
    assert list(r.decision.reason_codes) == [pb.REASON_CODE_FORCED_TIER]
    assert r.summary is not None and r.summary.tier == "large"


async def test_unknown_forced_tier_is_invalid_argument(router: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await route(router, prompt=SIMPLE, force_tier="huge")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "force_tier 'huge' is not a tier (tiers: small, large)" in info.value.details()


async def test_unreachable_small_tier_fails_over_before_any_token(
    suite: tuple[str, str, str],
) -> None:
    _, large, validator = suite
    server, address = await started(route_config("127.0.0.1:9", large, validator))
    try:
        r = await route(address, prompt=SIMPLE)
    finally:
        await server.stop(0)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_TIER_FAILURE]
    assert r.summary is not None and r.summary.tier == "large"
    assert [(a.tier, a.delivered) for a in r.summary.attempts] == [
        ("small", False),
        ("large", True),
    ]


async def test_unreachable_validator_escalates_by_default(suite: tuple[str, str, str]) -> None:
    small, large, _ = suite
    server, address = await started(route_config(small, large, "127.0.0.1:9"))
    try:
        r = await route(address, prompt=SIMPLE)
    finally:
        await server.stop(0)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE]
    assert r.summary is not None and r.summary.tier == "large"


async def test_no_tier_reachable_is_unavailable(suite: tuple[str, str, str]) -> None:
    server, address = await started(route_config("127.0.0.1:9", "127.0.0.1:10", suite[2]))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await route(address, prompt=COMPLEX)
    finally:
        await server.stop(0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tier 'large' failed" in info.value.details()


async def test_sixteen_concurrent_routes_all_end_in_a_summary(router: str) -> None:
    prompts = [SIMPLE, COMPLEX, "Say hello in French.", "Explain recursion with an example."] * 4
    results = await asyncio.gather(*(route(router, prompt=p) for p in prompts))
    for r in results:
        assert r.summary is not None and r.text
        assert r.summary.tier in ("small", "large")


async def test_route_decision_matches_score(router: str) -> None:
    async with grpc.aio.insecure_channel(router) as channel:
        scored = await pb_grpc.RouterServiceStub(channel).Score(pb.ScoreRequest(prompt=COMPLEX))
    r = await route(router, prompt=COMPLEX)
    assert r.decision.tier == scored.decision.tier
    assert r.decision.complexity_score == pytest.approx(scored.decision.complexity_score)
    assert json.dumps(r.decision.category) == json.dumps(scored.decision.category)


async def test_cli_route_streams_the_answer_and_the_summary(router: str) -> None:
    from tests.test_cli import cli

    code, out, err = await cli("--address", router, "route", SIMPLE)
    assert code == 0, err
    assert "Paris" in out
    assert "[routed to small" in err and "[served by small" in err
    code, out, err = await cli("--address", router, "--json", "route", COMPLEX)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert next(iter(events[0])) == "decision" and next(iter(events[-1])) == "summary"
    assert events[-1]["summary"]["tier"] == "large"
