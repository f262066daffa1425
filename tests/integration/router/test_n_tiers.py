"""Selection among three tiers on real engines: the context window, the request's SLO on
measured figures, the fallbacks and their reasons, and routers sharing a metrics store.

Three tiers run on the session's two vLLM tier processes (SmolLM2-135M on the CPU), each
configured with its own prices, context window and score band; the router counts prompt tokens
with the model's own tokenizer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, SMOLLM_DIR, ServiceProcess
from tests.helpers.services import started as started_host
from tests.integration.router.test_route import Routed, route
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.router.service import RouterService, host
from tierroute.router.tiers.measured import TTFT_MS
from tierroute.router.tiers.store import Figure, SqliteStore, open_store
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.host import Host

pytestmark = pytest.mark.tier

SHORT = "Name a colour of the sky."
# About 450 SmolLM2 tokens: more than the small tier's 256-token window takes.
LONG = "Summarize this list in one sentence: " + ", ".join(
    f"item {i} is a {w}" for i, w in enumerate(["red apple", "blue car", "green tree"] * 30)
)
PRICES = {"small": (0.0001, 0.0002), "medium": (0.001, 0.002), "large": (0.003, 0.006)}


def three_tiers(
    small: str, large: str, store: Path | str, bands: tuple[float, float], **router: Any
) -> dict[str, Any]:
    """small and large on their own processes; medium shares the large one's engine."""
    addresses = {"small": small, "medium": large, "large": large}
    windows = {"small": 256, "medium": 2048, "large": 2048}
    max_scores = {"small": bands[0], "medium": bands[1]}
    return {
        "router": {
            "listen": "127.0.0.1:0",
            "model": str(EMBEDDER_DIR),
            "metrics_store": str(store),
            "metrics_sync_seconds": 0.2,
            # Never the fallback tier for a slow embedding on a loaded machine.
            **router,
        },
        "tiers": [
            {
                "name": name,
                "address": addresses[name],
                "model": str(SMOLLM_DIR),  # its tokenizer counts the prompt
                "max_tokens": 8,
                "temperature": 0.0,
                "context_window": windows[name],
                "price_per_1k_input_usd": PRICES[name][0],
                "price_per_1k_output_usd": PRICES[name][1],
                **({"max_score": max_scores[name]} if name in max_scores else {}),
            }
            for name in ("small", "medium", "large")
        ],
        "escalation": {},
    }


Start = Callable[..., Any]


@pytest_asyncio.fixture
async def start_router(
    small_tier: ServiceProcess, large_tier: ServiceProcess
) -> AsyncIterator[Start]:
    """Starts in-process routers over the two tier processes; stops them after the test."""
    hosts: list[Host] = []

    async def start(
        store: Path | str, bands: tuple[float, float], **router: Any
    ) -> tuple[str, RouterService]:
        cfg = three_tiers(small_tier.address, large_tier.address, store, bands, **router)
        server, address = await started_host(host(make_config(cfg)))
        hosts.append(server)
        assert isinstance(server.service, RouterService)
        return address, server.service

    yield start
    for server in reversed(hosts):
        await server.stop(0)


# Bands: every score the small tier's (SMALL_FIRST), or every score the large tier's
# (LARGE_FIRST: scores of real prompts are far above 0.02).
SMALL_FIRST = (9.8, 9.9)
LARGE_FIRST = (0.01, 0.02)


async def score(address: str, **fields: Any) -> pb.RoutingDecision:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.RouterServiceStub(channel).Score(
            pb.ScoreRequest(**fields), timeout=60
        )
    return response.decision


async def test_a_long_prompt_skips_the_tier_whose_context_window_is_too_small(
    start_router: Start, tmp_path: Path
) -> None:
    address, _ = await start_router(tmp_path / "metrics.sqlite", SMALL_FIRST)
    short = await route(address, prompt=SHORT)
    assert short.decision.tier == "small" and short.summary is not None
    assert short.summary.tier == "small" and short.text
    assert list(short.decision.reasons) == []

    long = await route(address, prompt=LONG)
    assert long.decision.tier == "medium"
    assert list(long.decision.reasons) == ["context_window_excluded:small"]
    assert long.summary is not None and long.summary.tier == "medium" and long.text
    # The tier counted the prompt as the router did: more than small's window holds.
    assert long.summary.usage.prompt_tokens + 8 > 256

    # Score says the same, and a smaller answer budget does not make the prompt fit.
    decision = await score(address, prompt=LONG, max_tokens=1)
    assert decision.tier == "medium" and "context_window_excluded:small" in decision.reasons


async def test_a_request_that_fits_no_tier_is_refused_with_what_to_fix(
    start_router: Start, tmp_path: Path
) -> None:
    address, _ = await start_router(tmp_path / "metrics.sqlite", SMALL_FIRST)
    huge = LONG * 6  # about 2,700 tokens: more than every window
    for call in (route(address, prompt=huge), score(address, prompt=huge)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.value.details() or ""
        assert "fits no tier's context window" in details and "shorten the prompt" in details
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await score(address, prompt=SHORT, slo=pb.Slo(max_ttft_ms=-5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slo.max_ttft_ms is -5" in (error.value.details() or "")


async def test_a_cost_bound_sends_a_hard_request_to_the_best_tier_within_it(
    start_router: Start, tmp_path: Path
) -> None:
    address, _ = await start_router(tmp_path / "metrics.sqlite", LARGE_FIRST)
    unbounded = await score(address, prompt=SHORT)
    assert unbounded.tier == "large"
    assert list(unbounded.reasons) == ["below_quality_bar:small", "below_quality_bar:medium"]

    r: Routed = await route(
        address,
        prompt=SHORT,
        slo=pb.Slo(max_cost_per_1k=0.0025),  # medium costs about 0.0011 here, large 0.0033
        sampling=common_pb.SamplingParams(max_tokens=8),
    )
    assert r.decision.tier == "medium"
    assert list(r.decision.reasons) == [
        "below_quality_bar:small",
        "below_quality_bar:medium",
        "slo_cost_excluded:large",
        "slo_fallback_highest_quality",
    ]
    assert r.summary is not None and r.summary.tier == "medium" and r.text
    assert r.summary.cost_usd > 0


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_routers_share_measured_speed_and_a_bound_nothing_meets_falls_back(
    start_router: Start, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    store = (
        str(tmp_path / "metrics.sqlite")
        if kind == "sqlite"
        else request.getfixturevalue("fresh_redis").url
    )
    first, first_service = await start_router(store, LARGE_FIRST)
    # Real traffic on every tier: the first router measures each one's time to first token.
    for tier in ("small", "medium", "large"):
        r = await route(first, prompt=SHORT, force_tier=tier)
        assert r.summary is not None and r.summary.tier == tier
    first_service.measurements.sync()
    kept = open_store(store).exchange({}, 30.0)
    measured = {tier: kept[(tier, "", TTFT_MS)].value for tier in ("small", "medium", "large")}
    assert all(v > 0 for v in measured.values()), measured

    # A second router on the same store routes on the first one's figures before it has
    # served anything itself: a bound below every measured figure leaves nothing within it.
    second, second_service = await start_router(store, LARGE_FIRST)
    assert second_service.measurements.figure("small", TTFT_MS) == pytest.approx(measured["small"])
    decision = await score(second, prompt=SHORT, slo=pb.Slo(max_ttft_ms=0.001))
    assert decision.tier == "large"
    assert list(decision.reasons)[-2:] == ["slo_fallback_highest_quality", "slo_unmet"]
    assert {f"slo_ttft_excluded:{t}" for t in ("small", "medium", "large")} <= set(decision.reasons)


async def test_a_time_to_first_token_bound_excludes_a_slow_tier(
    start_router: Start, tmp_path: Path
) -> None:
    store = tmp_path / "metrics.sqlite"
    # The large tier measured slow, as a benchmark run writes it (a heavy weight, just now).
    writer = SqliteStore(store)
    writer.exchange({("large", "", TTFT_MS): Figure(60_000.0, 1000.0, time.time())}, 30.0)
    writer.close()
    address, _ = await start_router(store, LARGE_FIRST)
    r = await route(address, prompt=SHORT, slo=pb.Slo(max_ttft_ms=30_000))
    assert r.decision.tier == "medium"
    assert "slo_ttft_excluded:large" in r.decision.reasons
    assert r.decision.reasons[-1] == "slo_fallback_highest_quality"
    assert r.summary is not None and r.summary.tier == "medium" and r.text


async def test_the_router_benchmarks_its_tiers_on_a_schedule(
    start_router: Start, tmp_path: Path
) -> None:
    sample = tmp_path / "sample.jsonl"
    sample.write_text(
        '{"prompt": "Say hi.", "category": "chit_chat"}\n'
        '{"prompt": "Spell cat backwards.", "category": "formatting"}\n'
    )
    store = tmp_path / "metrics.sqlite"
    _, service = await start_router(
        store,
        SMALL_FIRST,
        bench_interval_seconds=0.1,
        bench_sample=str(sample),
        bench_max_tokens=4,
    )
    await asyncio.wait_for(service.benched.wait(), 300)
    for tier in ("small", "medium", "large"):
        ttft = service.measurements.figure(tier, TTFT_MS, "chit_chat")
        assert ttft is not None and ttft > 0
    kept = SqliteStore(store)
    runs = kept.benchmarks()
    kept.close()
    assert {(r["tier"], r["category"]) for r in runs} >= {
        (t, c) for t in ("small", "medium", "large") for c in ("chit_chat", "formatting", "")
    }
