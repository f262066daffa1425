"""The N-model quality router end to end: `tierroute eval-n` fits it on RouterDC's per-prompt
quality of seven models (a slice of the train splits, ../shared/data/routerdc7) with the real
embedder, and a real router serves the artifact over gRPC, choosing among three tiers by
predicted quality, price and the request's bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, started
from tests.helpers.shared_data import ROUTERDC7, require
from tierroute.core.config import Config
from tierroute.quality.artifact import ArtifactError
from tierroute.quality.labelled import read_rows
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[3]
ZEPHYR = "HuggingFaceH4/zephyr-7b-beta"
METAMATH = "meta-math/MetaMath-Mistral-7B"
DOLPHIN = "cognitivecomputations/dolphin-2.9-llama3-8b"
MODELS = [
    ZEPHYR,
    METAMATH,
    DOLPHIN,
    "cognitivecomputations/dolphin-2.6-mistral-7b",
    "itpossible/Chinese-Mistral-7B-v0.1",
    "meta-llama/Meta-Llama-3-8B",
    "mistralai/Mistral-7B-v0.1",
]
# Tiers as a user would name them, each serving one of the seven models: two at one price, the
# code model dearer.
TIERS = {"chat": ZEPHYR, "math": METAMATH, "code": DOLPHIN}
PRICES = {"chat": 0.001, "math": 0.001, "code": 0.003}


@pytest.fixture(autouse=True, scope="module")
def _shared_data() -> None:
    require(ROUTERDC7)


def sliced(tmp: Path, name: str, rows: int) -> Path:
    out = tmp / f"{name}.jsonl"
    lines = (ROUTERDC7 / f"{name}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:rows]), encoding="utf-8")
    return out


def eval_n(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierroute.tools.cli", "eval-n", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("quality-n")
    config = tmp / "embedder.yaml"
    config.write_text(json.dumps({"router": {"model": str(EMBEDDER_DIR)}}))
    train = [sliced(tmp, f"{n}.train", 300) for n in ("mmlu", "gsm8k", "cmmlu", "humaneval")]
    test = [sliced(tmp, f"{n}.test", 25) for n in ("gsm8k", "cmmlu", "humaneval")]
    unseen = [sliced(tmp, "javascript.all", 25)]
    prices = [f"--price={m}={0.003 if 'llama' in m.lower() else 0.001}" for m in MODELS]
    done = eval_n(
        "--train", *train, "--test", *test, "--unseen", *unseen, *prices,
        "--config", config, "--cache-dir", tmp / "cache", "--work", tmp,
        "--artifact-out", tmp / "artifact", "--out", tmp / "quality-n.json",
        "--plot", tmp / "quality-n.png",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "artifact": tmp / "artifact",
        "result": json.loads((tmp / "quality-n.json").read_text()),
        "png": tmp / "quality-n.png",
        "stdout": done.stdout,
        "tmp": tmp,
        "config": config,
    }


def test_eval_n_measures_the_router_against_every_model_and_random(
    fitted: dict[str, Any],
) -> None:
    result = fitted["result"]
    ind = result["in_distribution"]
    assert set(ind["sets"]) == {"gsm8k.test", "cmmlu.test", "humaneval.test"}
    assert set(ind["single_models"]) == set(MODELS)
    best = ind["best_single"]
    assert best["quality"] == max(ind["single_models"].values())
    assert ind["gain_points"] == pytest.approx(100 * (ind["router"] - best["quality"]))
    low, high = ind["gain_ci95"]
    assert low <= ind["gain_points"] <= high
    assert ind["random"] < ind["oracle"] and ind["router"] <= ind["oracle"]
    # The three kinds of request have different best models; the router sends each its own.
    chosen = {n: max(s["chosen_share"], key=s["chosen_share"].get) for n, s in ind["sets"].items()}
    assert chosen["cmmlu.test"] == ZEPHYR
    assert chosen["humaneval.test"] == DOLPHIN
    assert "unseen" in result and list(result["unseen"]["sets"]) == ["javascript.all"]
    assert len(result["cost_curve"]["router"]) > 1
    assert fitted["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gain over the best single model" in fitted["stdout"]


def test_eval_n_names_a_model_without_a_price(fitted: dict[str, Any]) -> None:
    tmp = fitted["tmp"]
    done = eval_n(
        "--train", tmp / "cmmlu.train.jsonl", tmp / "humaneval.train.jsonl",
        "--test", tmp / "cmmlu.test.jsonl", f"--price={ZEPHYR}=0.1",
        "--config", fitted["config"], "--cache-dir", tmp / "cache", "--work", tmp / "w",
    )  # fmt: skip
    assert done.returncode == 2
    assert "--price has no price for" in done.stderr and METAMATH in done.stderr


def quality_config(artifact: Path, **router: Any) -> Config:
    return make_config(
        {
            "router": {
                "listen": "127.0.0.1:0",
                "model": str(EMBEDDER_DIR),
                "quality_artifact": str(artifact),
                **router,
            },
            "tiers": [
                {
                    "name": name,
                    "address": f"127.0.0.1:{i + 1}",
                    "model": f"{name}-model",
                    "quality_model": model,
                    "price_per_1k_input_usd": PRICES[name],
                    "price_per_1k_output_usd": PRICES[name],
                    **({"max_score": 3.0 + i} if i < 2 else {}),
                }
                for i, (name, model) in enumerate(TIERS.items())
            ],
        }
    )


@pytest_asyncio.fixture(scope="module")
async def stub(fitted: dict[str, Any]) -> AsyncIterator[pb_grpc.RouterServiceStub]:
    server, address = await started(host(quality_config(fitted["artifact"])))
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.RouterServiceStub(channel)
    await server.stop(0)


def prompts(name: str, n: int = 8) -> list[str]:
    return [r.prompt for r in read_rows(ROUTERDC7 / f"{name}.jsonl")[:n]]


async def score(stub: pb_grpc.RouterServiceStub, **fields: Any) -> pb.RoutingDecision:
    return (await stub.Score(pb.ScoreRequest(**fields), timeout=30)).decision


def best(d: pb.RoutingDecision) -> str:
    return max(d.predicted_quality, key=d.predicted_quality.__getitem__)


async def test_each_kind_of_request_goes_to_the_tier_predicted_best_for_it(
    stub: pb_grpc.RouterServiceStub,
) -> None:
    served: dict[str, list[str]] = {}
    for name in ("cmmlu.test", "humaneval.test"):
        for text in prompts(name):
            d = await score(stub, prompt=text)
            assert set(d.predicted_quality) == set(TIERS)
            # With no tolerance only the best tier meets the bar, however dear it is.
            assert d.tier == best(d), dict(d.predicted_quality)
            assert d.reasons == [f"below_quality_bar:{t}" for t in TIERS if t != d.tier]
            served.setdefault(name, []).append(d.tier)
    assert served["cmmlu.test"].count("chat") > len(served["cmmlu.test"]) / 2, served
    assert served["humaneval.test"].count("code") > len(served["humaneval.test"]) / 2, served


async def test_a_cost_bound_falls_back_to_the_best_predicted_tier_within_it(
    stub: pb_grpc.RouterServiceStub,
) -> None:
    for text in prompts("humaneval.test"):
        if (await score(stub, prompt=text)).tier == "code":
            break
    else:
        pytest.fail("no code prompt went to the code tier")
    d = await score(stub, prompt=text, slo=pb.Slo(max_cost_per_1k=0.002))
    q = d.predicted_quality
    assert d.tier == max(["chat", "math"], key=q.__getitem__), dict(q)
    assert "slo_cost_excluded:code" in d.reasons
    assert d.reasons[-1] == "slo_fallback_highest_quality"


async def test_with_a_wide_tolerance_the_cheapest_tier_serves(fitted: dict[str, Any]) -> None:
    cfg = quality_config(fitted["artifact"], quality_tolerance=1.0)
    server, address = await started(host(cfg))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            for text in prompts("humaneval.test", 3):
                d = await score(stub, prompt=text)
                # Every tier meets the bar. chat and math cost the same: the higher predicted
                # quality of the two breaks the tie.
                q = d.predicted_quality
                assert d.tier == max(["chat", "math"], key=q.__getitem__), dict(q)
                assert d.reasons == []
    finally:
        await server.stop(0)


async def test_a_tier_naming_a_model_the_artifact_does_not_know_stops_the_router(
    fitted: dict[str, Any],
) -> None:
    cfg = quality_config(fitted["artifact"])
    tiers = [
        t.model_copy(update={"quality_model": "nobody/none-7b"}) if t.name == "code" else t
        for t in cfg.tiers
    ]
    server = host(cfg.model_copy(update={"tiers": tiers}))
    await server.start()
    try:
        with pytest.raises(ArtifactError, match=r"code -> 'nobody/none-7b'"):
            await server.load()
    finally:
        await server.stop(0)
