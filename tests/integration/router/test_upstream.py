"""Tiers anywhere: vLLM's own OpenAI-compatible server (started with an API key) as a tier
beside our tier service, the router in-process: streaming, validation by log-probabilities and
escalation in both directions, a refused API key, cancellation that stops the upstream's work,
a request longer than the upstream's window moved to a tier with a larger one, and an upstream
killed mid-answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, make_config
from tests.helpers.services import EMBEDDER_DIR, ServiceProcess
from tests.helpers.services import started as started_host
from tests.helpers.upstream import SERVED_MODEL, Upstream, start_upstream
from tierroute.router.service import host
from tierroute.router.tiers import bench
from tierroute.router.tiers.measured import TTFT_MS
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.host import Host

pytestmark = pytest.mark.tier

KEY = "sk-tierroute-test-upstream"
KEY_ENV = "TIERROUTE_TEST_UPSTREAM_KEY"
WRONG_KEY_ENV = "TIERROUTE_TEST_WRONG_KEY"
SIMPLE = "What is the capital of France?"
# The upstream's model window, half of our tier's (2048): a request between the two fits ours only.
UPSTREAM_WINDOW = 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    server = start_upstream(tmp_path_factory.mktemp("upstream") / "vllm.log", KEY, UPSTREAM_WINDOW)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(WRONG_KEY_ENV, "sk-not-the-key")


def upstream_tier(name: str, upstream: Upstream, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "openai",
        "base_url": upstream.base_url,
        "model": SERVED_MODEL,
        "api_key_env": KEY_ENV,
        "context_window": UPSTREAM_WINDOW,
        "max_tokens": 48,
        "temperature": 0.0,
        "price_per_1k_input_usd": 0.001,
        "price_per_1k_output_usd": 0.002,
        **fields,
    }


def our_tier(name: str, address: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "model": "smollm2",
        "max_tokens": 48,
        "temperature": 0.0,
        "engine_args": {"max_model_len": 2048},
        **fields,
    }


@pytest_asyncio.fixture
async def router_with(
    validator_process: ServiceProcess,
) -> AsyncIterator[Any]:
    hosts: list[Host] = []

    async def start(tiers: list[dict[str, Any]], min_confidence: float = 0.05) -> str:
        cfg = make_config(
            {
                "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR)},
                "tiers": tiers,
                "validator": {"address": validator_process.address},
                "escalation": {"min_confidence": min_confidence},
            }
        )
        server, address = await started_host(host(cfg))
        hosts.append(server)
        return address

    yield start
    for server in hosts:
        await server.stop(0)


async def route(address: str, **fields: Any) -> tuple[list[pb.RouteResponse], pb.RouteSummary]:
    events = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        async for event in stub.Route(pb.RouteRequest(**fields), timeout=CALL_TIMEOUT_SECONDS):
            events.append(event)
    assert events[-1].WhichOneof("event") == "summary"
    return events, events[-1].summary


def text_of(events: list[pb.RouteResponse]) -> str:
    return "".join(e.chunk.text for e in events if e.WhichOneof("event") == "chunk")


async def test_a_route_streams_from_an_upstream_tier_and_is_priced(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    address = await router_with(
        [upstream_tier("small", upstream), our_tier("large", large_tier.address)]
    )
    events, summary = await route(address, prompt=SIMPLE, force_tier="small")
    chunks = [e for e in events if e.WhichOneof("event") == "chunk"]
    assert len(chunks) > 1, "streamed, not one block"
    assert "Paris" in text_of(events)
    assert summary.tier == "small" and not summary.escalated
    usage = summary.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = (usage.prompt_tokens * 0.001 + usage.completion_tokens * 0.002) / 1000.0
    assert summary.cost_usd == pytest.approx(expected)


async def test_an_upstream_answer_judged_by_its_logprobs_escalates_to_our_tier(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    # A bar no answer clears: the validator judges the upstream's token log-probabilities.
    address = await router_with(
        [
            upstream_tier("small", upstream, validation="logprob"),
            our_tier("large", large_tier.address),
        ],
        min_confidence=0.9999,
    )
    events, summary = await route(address, prompt=SIMPLE, force_tier="small")
    escalations = [e.escalation for e in events if e.WhichOneof("event") == "escalation"]
    assert [(e.from_tier, e.to_tier) for e in escalations] == [("small", "large")]
    assert escalations[0].reason == pb.ESCALATION_REASON_LOW_CONFIDENCE
    judged = summary.attempts[0]
    assert judged.tier == "small" and judged.validation == pb.VALIDATION_STATUS_FAILED
    assert judged.judged_tokens > 0, "the validator saw the upstream's log-probabilities"
    assert summary.tier == "large" and "Paris" in text_of(events)


async def test_our_tier_escalates_to_an_upstream_large_tier(
    upstream: Upstream, small_tier: ServiceProcess, router_with: Any
) -> None:
    address = await router_with(
        [
            our_tier("small", small_tier.address, validation="logprob"),
            upstream_tier("large", upstream),
        ],
        min_confidence=0.9999,
    )
    events, summary = await route(address, prompt=SIMPLE, force_tier="small")
    assert summary.escalated and summary.tier == "large"
    assert "Paris" in text_of(events)
    assert summary.attempts[-1].usage.completion_tokens > 0


async def test_a_refused_api_key_is_unavailable_naming_where_the_key_came_from(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    address = await router_with(
        [
            upstream_tier("small", upstream, api_key_env=WRONG_KEY_ENV),
            our_tier("large", large_tier.address),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await route(address, prompt=SIMPLE, force_tier="small", disable_escalation=True)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert WRONG_KEY_ENV in details and "API key" in details
    assert "sk-not-the-key" not in details
    # With escalation on, the refusal is a tier failure: our large tier answers instead.
    _, summary = await route(address, prompt=SIMPLE, force_tier="small")
    assert summary.tier == "large" and summary.escalation_reason == (
        pb.ESCALATION_REASON_TIER_FAILURE
    )


async def test_bench_tiers_measures_an_upstream_tier_beside_ours(
    upstream: Upstream, large_tier: ServiceProcess
) -> None:
    cfg = make_config(
        {
            "router": {"model": str(EMBEDDER_DIR)},
            "tiers": [upstream_tier("small", upstream), our_tier("large", large_tier.address)],
        }
    )
    prompts = [bench.Prompt(SIMPLE, "lookup"), bench.Prompt("Say hello.", "chit_chat")]
    rows = await bench.run(cfg, prompts, 2, 2, 8, CALL_TIMEOUT_SECONDS)
    overall = {r["tier"]: r for r in rows if r["category"] == bench.ALL}
    small = overall["small"]
    assert small["model"] == SERVED_MODEL, "described by the upstream's GET /models"
    assert small["calls"] == 4 and small["errors"] == 0 and small["ttft_p50_ms"] > 0
    assert small["cost_per_1k_usd"] > 0, "priced at its configured prices"
    assert overall["large"]["calls"] == 4
    assert ("small", bench.ALL, TTFT_MS) in bench.observations(rows)


async def test_a_dead_replica_of_an_upstream_tier_is_passed_over_within_the_tier(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    # A port bound and never listened on: connections to it are refused, for the whole test.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        address = await router_with(
            [
                upstream_tier("small", upstream, base_url=dead, replicas=[upstream.base_url]),
                our_tier("large", large_tier.address),
            ]
        )

        def calls(replica: str, outcome: str) -> float:
            labels = {"tier": "small", "replica": replica, "outcome": outcome}
            return REGISTRY.get_sample_value("tierroute_replica_calls_total", labels) or 0.0

        before = calls(dead, "unavailable"), calls(upstream.base_url, "ok")
        for _ in range(3):
            events, summary = await route(address, prompt=SIMPLE, force_tier="small")
            # The live replica answered every one: the tier never failed over to "large".
            assert summary.tier == "small" and not summary.escalated and text_of(events)
        assert calls(upstream.base_url, "ok") - before[1] == 3
        assert calls(dead, "unavailable") - before[0] >= 1, "the dead replica was tried"
        for replica in (dead, upstream.base_url):
            info = {"tier": "small", "kind": "openai", "model": SERVED_MODEL, "replica": replica}
            assert REGISTRY.get_sample_value("tierroute_tier_info", info) == 1.0


async def test_a_request_too_long_for_the_upstream_moves_to_a_tier_with_a_larger_window(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    # The router's config overstates the upstream's window (as a user's may), so it sends the
    # request; the upstream itself refuses it as longer than its model's context.
    address = await router_with(
        [
            upstream_tier("small", upstream, context_window=16384),
            our_tier("large", large_tier.address),
        ]
    )
    filler = "The quarterly report lists revenue, costs and staff numbers by region. " * 110
    prompt = f"{filler}\n\n{SIMPLE}"  # about 1,300 tokens: over 1024, under 2048
    events, summary = await route(address, prompt=prompt, force_tier="small")
    assert summary.tier == "large" and text_of(events)
    assert summary.escalation_reason == pb.ESCALATION_REASON_CONTEXT_TOO_LONG
    refused = summary.attempts[0]
    assert refused.tier == "small" and not refused.delivered
    # No larger window left: the client's error, naming the upstream's own words.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await route(address, prompt=prompt, force_tier="small", disable_escalation=True)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "maximum context length" in details and "shorten the prompt" in details


async def test_an_upstream_without_a_configured_window_is_given_the_one_its_server_reports(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    # No context_window in the config: the router reads vLLM's max_model_len (1024) from GET
    # /v1/models at start, and a request that cannot fit is never sent there.
    address = await router_with(
        [
            upstream_tier("small", upstream, context_window=None),
            our_tier("large", large_tier.address),
        ]
    )
    filler = "The quarterly report lists revenue, costs and staff numbers by region. " * 50
    # 3,600 bytes: about 1,200 tokens as the router counts for a model it has no tokenizer of
    # (one per three bytes): over 1024, under 2048.
    long = f"{filler}\n\n{SIMPLE}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        decision = (await stub.Score(pb.ScoreRequest(prompt=long), timeout=30)).decision
        short = (await stub.Score(pb.ScoreRequest(prompt=SIMPLE), timeout=30)).decision
    assert decision.tier == "large", decision
    assert "context_window_excluded:small" in decision.reasons
    assert short.tier == "small"
    events, summary = await route(address, prompt=long)
    assert summary.tier == "large" and not summary.escalated and text_of(events)
    assert [a.tier for a in summary.attempts] == ["large"]  # never sent to the upstream


async def test_a_client_that_leaves_stops_the_upstreams_generation(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    address = await router_with(
        [
            upstream_tier("small", upstream, max_tokens=900, temperature=1.0),
            our_tier("large", large_tier.address),
        ]
    )
    # vLLM counts requests that finish (stop, length) in request_success, not the ones a
    # client's leaving aborts: if this one had run to its end, the count would have grown.
    finished = upstream.metric("vllm:request_success_total")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        call = stub.Route(
            pb.RouteRequest(
                prompt="Write a very long story about a lighthouse keeper.",
                force_tier="small",
                disable_escalation=True,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        async for event in call:
            if event.WhichOneof("event") == "chunk":
                break  # the answer is streaming: the client leaves
        call.cancel()
    # The upstream engine stops: nothing is left running or waiting there, and the request did
    # not run to its end (900 tokens at the CPU engine's pace take well over a minute).
    async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
        while (  # noqa: ASYNC110 - the upstream's /metrics has no event to wait on
            upstream.metric("vllm:num_requests_running") > 0
            or upstream.metric("vllm:num_requests_waiting") > 0
        ):
            await asyncio.sleep(0.2)
    assert upstream.metric("vllm:request_success_total") == finished


async def test_an_upstream_killed_mid_answer_ends_the_request_with_what_was_delivered(
    upstream: Upstream, large_tier: ServiceProcess, router_with: Any
) -> None:
    """Last in this module: it kills the module's upstream."""
    address = await router_with(
        [
            upstream_tier("small", upstream, max_tokens=900, temperature=1.0),
            our_tier("large", large_tier.address),
        ]
    )
    chunks = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            async for event in stub.Route(
                pb.RouteRequest(
                    prompt="Write a very long story about a river.", force_tier="small"
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            ):
                if event.WhichOneof("event") == "chunk":
                    chunks += 1
                    if chunks == 1:
                        upstream.kill()
    assert chunks >= 1
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "characters into its answer: the answer is incomplete" in (caught.value.details() or "")
    # The next request fails over to our large tier before anything was sent.
    events, summary = await route(address, prompt=SIMPLE, force_tier="small")
    assert summary.tier == "large" and "Paris" in text_of(events)
