"""Drift against the real router: the shipped learned artifact on the real int8 embedder, Score
over gRPC, the alert read from the router's own /metrics. Traffic drawn like the calibration
data (RouteLLM's MMLU and GSM8K, their `eval` halves) raises nothing; replaced by everyday
simple requests (greetings, conversions, small edits: far easier than exam questions), the
score alert rises within the stated window and the log says so."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, ROOT, free_port, started
from tests.helpers.shared_data import ROUTELLM, require
from tierroute.quality.labelled import convert_gsm8k, convert_mmlu, half
from tierroute.router.selection.operating import UPDATE_EVERY
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

HALF_LIFE = 100  # requests: the window the drift signals (and the operating point) share


@pytest.fixture(autouse=True, scope="module")
def _shared_data() -> None:
    require(ROUTELLM)


@pytest_asyncio.fixture(scope="module")
async def router() -> AsyncIterator[tuple[str, str]]:
    metrics = f"127.0.0.1:{free_port()}"
    cfg = make_config(
        {
            "router": {
                "listen": "127.0.0.1:0",
                "model": str(EMBEDDER_DIR),
                "scorer": "learned",
                "artifact": str(ROOT / "artifacts" / "router-default"),
                "operating_point_half_life": HALF_LIFE,
                "metrics_listen": metrics,
            },
            "tiers": [
                {"name": "small", "address": "127.0.0.1:1", "model": "m"},
                {"name": "large", "address": "127.0.0.1:2", "model": "m"},
            ],
        }
    )
    server, address = await started(host(cfg))
    yield address, metrics
    await server.stop(0)


def exam_prompts(n: int) -> list[str]:
    """Like the calibration data: MMLU and GSM8K in about its proportions (9 to 1)."""
    rng = random.Random(0)
    mmlu = [r.prompt for r in convert_mmlu(ROUTELLM / "mmlu") if half(r.prompt) == "eval"]
    gsm8k = [r.prompt for r in convert_gsm8k(ROUTELLM / "gsm8k") if half(r.prompt) == "eval"]
    return rng.sample(mmlu, n - n // 10) + rng.sample(gsm8k, n // 10)


def simple_prompts() -> list[str]:
    doc = yaml.safe_load((ROOT / "data" / "everyday" / "prompts.yaml").read_text())
    return [p for kind in doc["simple"].values() for p in kind if half(p) == "eval"]


async def drift(metrics: str, name: str) -> dict[str, float]:
    """tierroute_drift_<name> (alert or value) by signal, from the router's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{metrics}/metrics")).text
    return {
        s.labels["signal"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == f"tierroute_drift_{name}"
        for s in family.samples
    }


async def test_a_shift_to_simple_requests_raises_the_drift_alert_within_the_window(
    router: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tierroute.router.selection.operating")
    address, metrics = router
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def score(prompt: str) -> None:
            await stub.Score(pb.ScoreRequest(prompt=prompt, bypass_cache=True), timeout=60)

        for prompt in exam_prompts(3 * UPDATE_EVERY):
            await score(prompt)
        before = await drift(metrics, "alert")
        values = await drift(metrics, "value")
        assert before.get("score") == 0.0, values  # judged, and in its band
        print(f"PSI like the calibration: {values['score']:.3f}")
        assert not [r for r in caplog.records if "left its band" in r.getMessage()]

        simple = simple_prompts()
        shifted = 4 * HALF_LIFE  # the stated window: four half-lives of the shift
        for i in range(shifted):
            await score(simple[i % len(simple)])
    after = await drift(metrics, "alert")
    values = await drift(metrics, "value")
    assert after["score"] == 1.0, values
    assert "large_share" not in after  # no router.target_large_share: not judged
    print(f"PSI after the shift: {values['score']:.3f}")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("drift: score left its band: PSI") for m in lines), lines
