"""Route end to end: the router in-process, two real vLLM tiers and the validator as processes."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import pytest_asyncio
import yaml
from prometheus_client import REGISTRY

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, generous, make_config
from tests.helpers.otlp import OTLPReceiver
from tests.helpers.services import (
    EMBEDDER_DIR,
    ServiceProcess,
    start_service,
    start_tier,
    tracing_env,
)
from tests.helpers.services import started as started_host
from tests.helpers.tools import cli
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.router.route.state import PARTIAL_SUMMARY_KEY
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.host import Host
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

pytestmark = pytest.mark.tier

SIMPLE = "What is the capital of France?"
COMPLEX = "Prove that there are infinitely many primes and explain each step of the proof."
# Tokens of a small-tier answer judged before it streams (commit: prefix).
PREFIX_TOKENS = 4


def route_config(
    small: str,
    large: str,
    validator: str,
    *,
    small_max_tokens: int = 96,
    validation: str = "self_reported",
    breaker: dict[str, Any] | None = None,
    commit: str = "full",
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
                "commit": commit,
                "commit_prefix_tokens": PREFIX_TOKENS,
                "max_tokens": small_max_tokens,
                "temperature": 0.0,
                "engine_args": {"max_model_len": 2048},  # what the tier processes run
            },
            {
                "name": "large",
                "address": large,
                "model": "smollm2",
                "max_tokens": 48,
                "temperature": 0.0,
                "engine_args": {"max_model_len": 2048},
            },
        ],
        "validator": {"address": validator},
        # Budgets: tests/helpers/budgets.py's, which no loaded machine reaches (`started`).
        "escalation": {"min_confidence": 0.05, **escalation},
        "circuit_breaker": breaker or {},
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
        async for event in stub.Route(pb.RouteRequest(**fields), timeout=CALL_TIMEOUT_SECONDS):
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


def escalated_on_low_confidence(r: Routed) -> pb.RouteSummary:
    """The summary of a route whose small-tier answer was escalated for low confidence before
    any of it was sent, and answered by the large tier."""
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_LOW_CONFIDENCE]
    assert r.order.index("escalation") < r.order.index("chunk")
    assert all(c.tier == "large" for c in r.chunks) and r.text
    s = r.summary
    assert s is not None and s.tier == "large" and s.escalated
    return s


@pytest_asyncio.fixture(scope="module")
async def suite(
    small_tier: ServiceProcess, large_tier: ServiceProcess, validator_process: ServiceProcess
) -> AsyncIterator[tuple[str, str, str]]:
    yield small_tier.address, large_tier.address, validator_process.address


async def started(data: dict[str, Any]) -> tuple[Host, str]:
    return await started_host(host(make_config(data)))


async def route_once(data: dict[str, Any], **fields: Any) -> Routed:
    """One Route through a router of its own, started on `data` and stopped after."""
    server, address = await started(data)
    try:
        return await route(address, **fields)
    finally:
        await server.stop(0)


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
    assert s.attempts[0].judged_tokens == s.usage.completion_tokens  # held and judged whole
    assert s.cost_usd > 0 and s.confidence >= 0.05
    assert s.latencies.validate_ms > 0 and s.latencies.generate_ms > 0
    assert s.latencies.total_ms >= s.latencies.time_to_first_token_ms > 0


async def test_complex_prompt_is_streamed_live_by_the_large_tier(router: str) -> None:
    r = await route(router, prompt=COMPLEX)
    assert r.decision.tier == "large"
    assert r.summary is not None and r.summary.tier == "large"
    assert r.summary.attempts[0].judged_tokens == 0  # streamed live, not validated
    assert len(r.chunks) > 1, "the large tier's answer should arrive as a live stream"
    assert r.order[0] == "decision" and r.order[-1] == "summary"
    assert r.summary.finish_reason in (common_pb.FINISH_REASON_STOP, common_pb.FINISH_REASON_LENGTH)


async def test_low_confidence_escalates_then_streams_the_large_tier(
    suite: tuple[str, str, str],
) -> None:
    # Forced: no real answer's geometric-mean token probability reaches 0.999.
    r = await route_once(
        route_config(*suite, validation="logprob", min_confidence=0.999), prompt=SIMPLE
    )
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


async def test_a_prefix_that_clears_the_bar_is_committed_and_the_rest_streams_live(
    suite: tuple[str, str, str],
) -> None:
    data = route_config(*suite, validation="logprob", commit="prefix", min_confidence=0.05)
    long = "Name five European capitals and say one thing about each."
    r = await route_once(data, prompt=long, sampling={"max_tokens": 48})
    assert r.decision.tier == "small" and not r.escalations
    # Held whole, the answer would be one chunk after the validator; committed on its first
    # tokens, the prefix is one chunk and the rest follows live.
    assert len(r.chunks) > 2 and all(c.tier == "small" for c in r.chunks), r.chunks
    s = r.summary
    assert s is not None and s.tier == "small" and not s.escalated
    assert s.attempts[0].validation == pb.VALIDATION_STATUS_PASSED
    assert s.usage.completion_tokens > PREFIX_TOKENS
    # committed on a prefix (of 4 tokens, or a multiple of 4 if a shorter one was too close)
    judged = s.attempts[0].judged_tokens
    assert PREFIX_TOKENS <= judged < s.usage.completion_tokens
    assert s.latencies.validate_ms > 0


async def test_a_prefix_below_the_bar_escalates_before_anything_is_sent(
    suite: tuple[str, str, str],
) -> None:
    data = route_config(*suite, validation="logprob", commit="prefix", min_confidence=0.999)
    data["tiers"][0]["commit_prefix_margin"] = 0.0  # the first prefix decides, however close
    r = await route_once(data, prompt=SIMPLE, sampling={"max_tokens": 48})
    assert r.decision.tier == "small"
    s = escalated_on_low_confidence(r)
    small = s.attempts[0]
    assert (small.tier, small.delivered) == ("small", False)
    # The small tier's call was cancelled at its prefix, not left to finish its 48 tokens.
    assert PREFIX_TOKENS <= small.usage.completion_tokens < 48
    assert small.finish_reason == common_pb.FINISH_REASON_UNSPECIFIED
    assert small.judged_tokens == small.usage.completion_tokens


async def test_prefixes_too_close_to_call_leave_the_decision_to_the_whole_answer(
    suite: tuple[str, str, str],
) -> None:
    # The same request as above, but no prefix is clear of the bar by 10 standard errors of
    # its mean log-probability: the validator says UNDECIDED at every 4 tokens, and the
    # small answer is judged whole (escalated, as by commit: full) before anything is sent.
    data = route_config(*suite, validation="logprob", commit="prefix", min_confidence=0.999)
    data["tiers"][0]["commit_prefix_margin"] = 10.0
    r = await route_once(data, prompt=SIMPLE, sampling={"max_tokens": 48})
    s = escalated_on_low_confidence(r)
    small = s.attempts[0]
    assert (small.tier, small.delivered) == ("small", False)
    # generated to its end (a stop or the 48 tokens), then judged whole
    assert small.finish_reason in (common_pb.FINISH_REASON_STOP, common_pb.FINISH_REASON_LENGTH)
    assert small.usage.completion_tokens > PREFIX_TOKENS
    assert small.judged_tokens == small.usage.completion_tokens


class ScriptedTokens(tier_grpc.TierServiceServicer):
    """A small tier whose answer carries chosen log-probabilities (a real engine's are not
    chosen on cue): four tokens whose mean is too close to a bar of 0.5 to call, then eight
    confident ones."""

    LOGPROBS = (-0.4, -1.0, -0.4, -1.0) + (-0.01,) * 8

    async def Generate(
        self, request: tier_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        assert request.logprobs, "a logprob-validated tier is asked for its log-probabilities"
        for i, logprob in enumerate(self.LOGPROBS):
            token = f" t{i}"
            yield tier_pb.GenerateResponse(
                chunk=tier_pb.GenerateChunk(
                    text=token, logprobs=[common_pb.TokenLogprob(token=token, logprob=logprob)]
                )
            )
        yield tier_pb.GenerateResponse(
            complete=tier_pb.GenerateComplete(
                completion_tokens=len(self.LOGPROBS),
                finish_reason=common_pb.FINISH_REASON_STOP,
            )
        )


async def test_a_prefix_too_close_to_call_is_judged_again_and_committed_on_a_longer_one(
    suite: tuple[str, str, str],
) -> None:
    server = grpc.aio.server()
    tier_grpc.add_TierServiceServicer_to_server(ScriptedTokens(), server)
    small = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        _, large, validator = suite
        data = route_config(
            small, large, validator, validation="logprob", commit="prefix", min_confidence=0.5
        )
        r = await route_once(data, prompt=SIMPLE)
    finally:
        await server.stop(0)
    assert r.decision.tier == "small" and not r.escalations
    # undecided at 4 tokens, committed at 8: those 8 in one chunk, the other 4 live
    assert [c.text for c in r.chunks] == ["".join(f" t{i}" for i in range(8))] + [
        f" t{i}" for i in range(8, 12)
    ]
    s = r.summary
    assert s is not None and s.tier == "small" and not s.escalated
    (attempt,) = s.attempts
    assert attempt.delivered and attempt.validation == pb.VALIDATION_STATUS_PASSED
    assert attempt.judged_tokens == 2 * PREFIX_TOKENS
    assert s.confidence == pytest.approx(math.exp(sum(ScriptedTokens.LOGPROBS[:8]) / 8), abs=1e-3)


async def test_a_hedge_that_loses_is_cancelled_when_the_small_answer_is_committed(
    suite: tuple[str, str, str],
) -> None:
    large = suite[1]
    data = route_config(*suite, validation="logprob", commit="prefix", min_confidence=0.05)
    data["tiers"][0]["hedge_margin"] = 10.0  # every score: the large tier races the small one
    long = "Name five European capitals and say one thing about each."
    r = await route_once(data, prompt=long, sampling={"max_tokens": 200})
    assert r.decision.tier == "small" and not r.escalations
    assert r.chunks and all(c.tier == "small" for c in r.chunks)
    s = r.summary
    assert s is not None and s.tier == "small" and not s.escalated
    assert [(a.tier, a.delivered, a.hedged) for a in s.attempts] == [
        ("small", True, False),
        ("large", False, True),
    ]
    hedge = s.attempts[1]
    # Stopped at the small tier's commit (its first tokens judged), long before 200 tokens;
    # what it generated until then is charged.
    assert hedge.usage.completion_tokens < 200
    assert s.cost_usd == pytest.approx(sum(a.cost_usd for a in s.attempts))
    async with grpc.aio.insecure_channel(large) as channel:
        describe = tier_grpc.TierServiceStub(channel).Describe
        assert await active_requests(describe, until=lambda n: n == 0) == 0


async def test_a_hedge_answers_when_the_small_answer_is_escalated(
    suite: tuple[str, str, str],
) -> None:
    data = route_config(*suite, validation="logprob", commit="prefix", min_confidence=0.999)
    data["tiers"][0]["hedge_margin"] = 10.0
    r = await route_once(data, prompt=SIMPLE, sampling={"max_tokens": 48})
    s = escalated_on_low_confidence(r)
    assert "Paris" in r.text
    # One call to the large tier: the hedge, started with the small one, served the answer.
    assert [(a.tier, a.delivered, a.hedged) for a in s.attempts] == [
        ("small", False, False),
        ("large", True, True),
    ]


async def test_unparseable_small_answer_escalates(suite: tuple[str, str, str]) -> None:
    # Six tokens cannot hold the JSON envelope: the answer is cut and does not parse.
    r = await route_once(route_config(*suite, small_max_tokens=6), prompt=SIMPLE)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_PARSE_FAILURE]
    assert r.summary is not None and r.summary.tier == "large"


async def test_strict_latency_mode_never_escalates(suite: tuple[str, str, str]) -> None:
    r = await route_once(
        route_config(*suite, validation="logprob", min_confidence=0.999),
        prompt=SIMPLE,
        disable_escalation=True,
    )
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


def routes_total(code: str) -> float:
    labels = {"tier": "", "code": code}
    return REGISTRY.get_sample_value("tierroute_routes_total", labels) or 0.0


async def test_every_refused_route_is_counted_in_routes_total(router: str) -> None:
    """Refused before anything was decided (an empty prompt, bad sampling): counted as the
    RPC counter counts them, with no tier."""
    before = routes_total("INVALID_ARGUMENT")
    for fields in ({"prompt": ""}, {"prompt": SIMPLE, "sampling": {"temperature": -1}}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await route(router, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert routes_total("INVALID_ARGUMENT") == before + 2


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"max_tokens": 10**9}, "the most a request may ask for is 2048"),
        ({"temperature": -1}, "sampling.temperature is -1; use 0 to 2"),
        ({"temperature": float("nan")}, "sampling.temperature is nan"),
        ({"temperature": 100}, "sampling.temperature is 100"),
        ({"top_p": 0}, "sampling.top_p is 0"),
        ({"stop": ["x", ""]}, "empty string"),
    ],
)
async def test_a_bad_request_is_refused_at_the_door_before_any_tier_is_called(
    router: str, sampling: dict[str, Any], message: str
) -> None:
    events = []
    async with grpc.aio.insecure_channel(router) as channel:
        call = pb_grpc.RouterServiceStub(channel).Route(
            pb.RouteRequest(prompt=SIMPLE, sampling=common_pb.SamplingParams(**sampling)),
            timeout=60,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in call:
                events.append(event.WhichOneof("event"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert events == [], "refused before a decision, so before any tier was called"


async def test_a_client_error_from_a_tier_is_not_an_escalation(
    suite: tuple[str, str, str],
) -> None:
    # Within the router's own limit, but the prompt and max_tokens together overflow the
    # small tier's context: the tier says INVALID_ARGUMENT; no failover to the large tier.
    data = route_config(*suite, validation="none", breaker={"failure_threshold": 1})
    server, address = await started(data)
    events = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.RouterServiceStub(channel).Route(
                pb.RouteRequest(
                    prompt=COMPLEX * 8,
                    force_tier="small",
                    sampling=common_pb.SamplingParams(max_tokens=2040),
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for event in call:
                    events.append(event.WhichOneof("event"))
        assert events == ["decision"], "no escalation, no failover"
        breaker = server.service.pool.breakers["small"]  # type: ignore[attr-defined]
        assert breaker.state.value == "closed", "a client's mistake is not the tier's failure"
    finally:
        await server.stop(0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not fit" in (info.value.details() or "")


async def test_unreachable_small_tier_fails_over_before_any_token(
    suite: tuple[str, str, str],
) -> None:
    _, large, validator = suite
    r = await route_once(route_config("127.0.0.1:9", large, validator), prompt=SIMPLE)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_TIER_FAILURE]
    assert r.summary is not None and r.summary.tier == "large"
    assert [(a.tier, a.delivered) for a in r.summary.attempts] == [
        ("small", False),
        ("large", True),
    ]


async def test_unreachable_validator_escalates_by_default(suite: tuple[str, str, str]) -> None:
    small, large, _ = suite
    r = await route_once(route_config(small, large, "127.0.0.1:9"), prompt=SIMPLE)
    assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE]
    assert r.summary is not None and r.summary.tier == "large"
    assert r.summary.attempts[0].validation == pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
    assert r.summary.validation == pb.VALIDATION_STATUS_NOT_VALIDATED


async def test_unreachable_validator_can_deliver_unvalidated(suite: tuple[str, str, str]) -> None:
    small, large, _ = suite
    r = await route_once(
        route_config(small, large, "127.0.0.1:9", on_validator_unavailable="deliver"), prompt=SIMPLE
    )
    assert not r.escalations
    assert r.summary is not None and r.summary.tier == "small" and not r.summary.escalated
    assert r.summary.validation == pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
    assert "Paris" in r.text
    assert not r.text.lstrip().startswith("{"), "the JSON envelope is unwrapped even so"


async def test_a_validator_that_is_down_is_not_asked_and_its_tiers_are_passed_over(
    suite: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    small, large, _ = suite
    data = route_config(
        small, large, "127.0.0.1:9", breaker={"failure_threshold": 1, "cooldown_seconds": 600}
    )
    server, address = await started(data)
    try:
        # The first request finds the validator down: the small answer is wasted, and the
        # validator's breaker opens.
        first = await route(address, prompt=SIMPLE)
        judge = server.service.judge  # type: ignore[attr-defined]
        assert judge.down, "one failure opens the validator's breaker here"
        # From then on the router stops asking it, and small-bound requests go straight to
        # the next tier instead of generating an answer nobody can judge.
        with caplog.at_level("WARNING", logger="tierroute.router.route.flow"):
            second = await route(address, prompt=SIMPLE, bypass_cache=True)
    finally:
        await server.stop(0)
    assert [e.reason for e in first.escalations] == [pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE]
    assert [a.tier for a in first.summary.attempts] == ["small", "large"]  # type: ignore[union-attr]
    assert second.decision.tier == "large"
    assert pb.REASON_CODE_VALIDATOR_UNAVAILABLE in second.decision.reason_codes
    assert not second.escalations
    assert [a.tier for a in second.summary.attempts] == ["large"]  # type: ignore[union-attr]
    assert "the validator is down: passing over small" in caplog.text


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

    code, out, err = await cli("--address", router, "route", SIMPLE)
    assert code == 0, err
    assert "Paris" in out
    assert "[routed to small" in err and "[served by small" in err
    code, out, err = await cli("--address", router, "--json", "route", COMPLEX)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert next(iter(events[0])) == "decision" and next(iter(events[-1])) == "summary"
    assert events[-1]["summary"]["tier"] == "large"


async def active_requests(describe: Any, until: Any, timeout: float = 60) -> int:  # noqa: ASYNC109
    """The tier's Describe.active_requests, polled until `until(count)` holds (or `timeout`
    seconds pass: then the last count)."""
    deadline = time.monotonic() + timeout
    while True:
        active = int((await describe(tier_pb.DescribeRequest(), timeout=10)).active_requests)
        if until(active) or time.monotonic() > deadline:
            return active
        await asyncio.sleep(0.05)  # polling for the event, not standing in for it


@pytest.mark.parametrize(
    ("validation", "fields", "events"),
    [
        # Streamed live: cancelled after the decision and three chunks.
        ("none", {"prompt": COMPLEX, "force_tier": "small"}, 4),
        # Validated: cancelled after the decision, while the (long) answer is still held back.
        ("logprob", {"prompt": COMPLEX, "force_tier": "small"}, 1),
    ],
)
async def test_cancelling_a_route_cancels_the_tiers_generation(
    suite: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
    validation: str,
    fields: dict[str, str],
    events: int,
) -> None:
    small, large, validator = suite
    server, address = await started(route_config(small, large, validator, validation=validation))
    try:
        async with (
            grpc.aio.insecure_channel(address) as channel,
            grpc.aio.insecure_channel(small) as tier_channel,
        ):
            describe = tier_grpc.TierServiceStub(tier_channel).Describe
            call = pb_grpc.RouterServiceStub(channel).Route(
                pb.RouteRequest(**fields, sampling=common_pb.SamplingParams(max_tokens=400)),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            seen = []
            async for event in call:
                seen.append(event.WhichOneof("event"))
                if len(seen) == events:
                    break
            during = await active_requests(describe, until=lambda n: n >= 1)
            call.cancel()
            after = await active_requests(describe, until=lambda n: n == 0)
            # The router has finished unwinding the cancelled Route.
            await server.wait_idle()
    finally:
        await server.stop(0)
    assert seen[0] == "decision" and seen[1:] == ["chunk"] * (events - 1)
    assert during >= 1, "the tier should be generating while the Route streams"
    assert after == 0, "the tier still generates for a Route its client cancelled"
    unexpected = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert not unexpected, unexpected[0].getMessage()


def kill_tree(process: ServiceProcess) -> list[psutil.Process]:
    """SIGKILL a tier: a crash, with no chance to drain. Its reaper takes the engine's
    processes down with it (runtime/reaper.py); returns them, for `reap`."""
    root = psutil.Process(process.process.pid)
    children = root.children(recursive=True)
    root.kill()
    return children


async def reap(orphans: list[psutil.Process]) -> None:
    """Wait for a killed tier's engine processes to be gone; kill any survivor."""
    _, alive = await asyncio.to_thread(psutil.wait_procs, orphans, timeout=60)
    for survivor in alive:
        survivor.kill()


async def test_a_tier_killed_mid_stream_then_failover_then_its_circuit_opens(
    suite: tuple[str, str, str], tmp_path: Path
) -> None:
    _, large, validator = suite
    doomed = start_tier(tmp_path / "doomed.log")
    server, address = await started(
        route_config(
            doomed.address,
            large,
            validator,
            validation="none",
            breaker={"failure_threshold": 2, "cooldown_seconds": 600},
        )
    )
    orphans: list[psutil.Process] = []
    try:
        # 1. Killed while its answer streams: UNAVAILABLE, saying how much was delivered.
        received = ""
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.RouterServiceStub(channel).Route(
                pb.RouteRequest(
                    prompt=COMPLEX,
                    force_tier="small",
                    sampling=common_pb.SamplingParams(max_tokens=400),
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for event in call:
                    received += event.chunk.text
                    if len(received) > 20 and doomed.process.poll() is None:
                        orphans = kill_tree(doomed)
            trailing = dict(await call.trailing_metadata())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details()
        assert f"{len(received)} characters into its answer" in details, details
        assert "the answer is incomplete" in details
        assert "the partial summary is in the trailing metadata" in details  # gRPC's own note
        partial = pb.RouteSummary.FromString(trailing[PARTIAL_SUMMARY_KEY])
        assert partial.tier == "", "nothing was delivered in full"
        assert [(a.tier, a.escalation_reason) for a in partial.attempts] == [
            ("small", pb.ESCALATION_REASON_TIER_FAILURE)
        ]

        # 2. A simple prompt for the dead small tier fails over to the large one.
        r = await route(address, prompt=SIMPLE)
        assert r.decision.tier in ("small", "large")
        assert r.summary is not None and r.summary.tier == "large" and r.text
        if r.decision.tier == "small":  # tried and failed before any token
            assert [e.reason for e in r.escalations] == [pb.ESCALATION_REASON_TIER_FAILURE]
        else:  # its channel already known to be down
            assert pb.REASON_CODE_TIER_UNAVAILABLE in r.decision.reason_codes

        # 3. Two failures opened its breaker: it is passed over without being tried.
        breaker = server.service.pool.breakers["small"]  # type: ignore[attr-defined]
        assert breaker.state.value == "open"
        r = await route(address, prompt=SIMPLE)
        assert r.decision.tier == "large"
        assert pb.REASON_CODE_CIRCUIT_OPEN in r.decision.reason_codes
        assert not r.escalations and [a.tier for a in r.summary.attempts] == ["large"]  # type: ignore[union-attr]
    finally:
        await server.stop(0)
        doomed.stop()
        await reap(orphans)


async def test_one_trace_spans_router_tiers_and_validator(
    suite: tuple[str, str, str], otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    config = tmp_path / "router.yaml"
    # Forced low confidence: the trace holds Generate (small), Validate, then Generate (large).
    config.write_text(
        yaml.safe_dump(generous(route_config(*suite, validation="logprob", min_confidence=0.999)))
    )
    router = start_service(
        ["tierroute.router", "--config", str(config)],
        tmp_path / "router.log",
        env=tracing_env(otlp_receiver),
    )
    try:
        r = await route(router.address, prompt=SIMPLE, request_id="trace-test-1")
    finally:
        assert router.stop() == 0
    assert r.escalations and r.summary is not None and r.summary.tier == "large"

    roots = await asyncio.to_thread(
        otlp_receiver.wait_for,
        lambda s: s.service == "tierroute-router" and s.name.endswith("RouterService/Route"),
    )
    assert len(roots) == 1
    root = roots[0]
    trace_id = root.trace_id

    def spans() -> list[Any]:
        return [s for s in otlp_receiver.spans if s.trace_id == trace_id]

    # Spans arrive from five processes, each on its own export schedule.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        services = {s.service for s in spans()}
        if {"tierroute-tier-small", "tierroute-tier-large", "tierroute-validator"} <= services:
            break
        await asyncio.sleep(0.2)
    found = spans()
    by_id = {s.span_id: s for s in found}
    assert root.parent_span_id == "" and root.kind == 2  # SERVER, the trace's root
    assert root.attributes["tierroute.tier"] == "large"
    assert root.attributes["tierroute.escalated"] is True
    assert root.attributes["tierroute.decision.tier"] == "small"
    assert root.attributes["gen_ai.usage.output_tokens"] > 0

    (score,) = [s for s in found if s.name == "score"]
    assert score.parent_span_id == root.span_id
    clients = [s for s in found if s.kind == 3 and s.service == "tierroute-router"]
    # Exports arrive in batches, not in call order: compare as sorted lists.
    assert sorted((c.name.rsplit("/", 1)[1], c.attributes["tierroute.tier"]) for c in clients) == [
        ("Generate", "large"),
        ("Generate", "small"),
        ("Validate", "small"),
    ]
    assert all(c.parent_span_id == root.span_id for c in clients)
    servers = {s.service: s for s in found if s.kind == 2 and s.service != "tierroute-router"}
    for service, tier in (("tierroute-tier-small", "small"), ("tierroute-tier-large", "large")):
        parent = by_id[servers[service].parent_span_id]
        assert parent.kind == 3 and parent.attributes["tierroute.tier"] == tier
        assert parent.name.endswith("TierService/Generate")
    validate_parent = by_id[servers["tierroute-validator"].parent_span_id]
    assert validate_parent.name.endswith("ValidatorService/Validate")
    # vLLM's own span (the small tier exports it) hangs under the tier's server span.
    assert any(s.parent_span_id == servers["tierroute-tier-small"].span_id for s in found)
