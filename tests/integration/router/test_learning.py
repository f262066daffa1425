"""Escalations teach: a workload through the real suite (router, two vLLM tiers, validator)
where the small tier fails on one topic, recorded in the routing log; `tierroute calibrate
--from-log` learns from it, and the next artifact sends that topic to the large tier.

The small model (SmolLM2-135M, greedy) cannot spell a word backwards, and its token
log-probabilities say so: on this workload its answers score a geometric-mean token probability
of 0.22-0.65 (median 0.37) on spelling, 0.25-0.77 (median 0.61) on unit conversions. At
`min_confidence` 0.5 the validator escalates most spelling answers and delivers most
conversions: the labels are as noisy as real ones, and the learning has to see through that.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, generous, make_config
from tests.helpers.services import EMBEDDER_DIR, ServiceProcess, started
from tests.helpers.tools import cli
from tierroute.quality.artifact import MODEL_KINDS
from tierroute.router.route.routing_log import APPLICATION_ID
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.tier

ROOT = Path(__file__).resolve().parents[3]
PRIOR = ROOT / "artifacts" / "router-default"
WORDS = (
    "necessary rhythm banana keyboard elephant window mountain calendar pyramid umbrella "
    "blanket journey lantern harvest crystal whistle compass orchard pelican marble thunder "
    "velvet satellite porcupine avalanche labyrinth quarantine tangerine xylophone zeppelin "
    "hurricane symphony kangaroo pineapple volcano giraffe notebook lighthouse basket "
    "chimney dolphin feather gravity"
).split()
SPELLING = (
    "Spell the word '{}' backwards.",
    "Write '{}' with its letters in reverse order.",
    "Reverse the letters of the word {}.",
    "What is '{}' spelled backwards?",
    "Spell {} from the last letter to the first.",
)
UNITS = (
    ("degrees Celsius", "degrees Fahrenheit"),
    ("inches", "centimetres"),
    ("miles", "kilometres"),
    ("kilograms", "pounds"),
    ("litres", "gallons"),
    ("metres", "feet"),
    ("ounces", "grams"),
    ("hours", "minutes"),
)
NUMBERS = (37, 7.5, 3.2, 2.4, 12, 450, 16, 3, 42, 150, 5280, 20, 98, 1.5, 60, 25, 8, 100, 250)
NUMBERS += (64, 18, 0.5, 72, 30, 500, 13, 9, 1000, 6, 40, 11, 75, 200, 4, 55, 33, 14, 90)
NUMBERS += (2.5, 48, 120, 7, 360)
CONVERSION = (
    "Convert {n} {a} to {b}.",
    "How many {b} are in {n} {a}?",
    "What is {n} {a} in {b}?",
    "Please convert {n} {a} into {b}.",
    "{n} {a} equals how many {b}?",
)
LOGGED = 35  # per topic, recorded; the rest are new to every router
MIN_CONFIDENCE = 0.5


def spelling() -> list[str]:
    return [SPELLING[i % len(SPELLING)].format(w) for i, w in enumerate(WORDS)]


def conversion() -> list[str]:
    return [
        CONVERSION[i % len(CONVERSION)].format(
            n=n, a=UNITS[i % len(UNITS)][0], b=UNITS[i % len(UNITS)][1]
        )
        for i, n in enumerate(NUMBERS)
    ]


def config(small: str, large: str, validator: str, **router: Any) -> dict[str, Any]:
    tier = {"model": "smollm2", "temperature": 0.0, "engine_args": {"max_model_len": 2048}}
    return {
        "router": {
            "listen": "127.0.0.1:0",
            "model": str(EMBEDDER_DIR),
            "scorer": "learned",
            **router,
        },
        "tiers": [
            {"name": "small", "address": small, "validation": "logprob", "max_tokens": 16, **tier},
            # The large tier's answer is not what is measured: keep it short.
            {"name": "large", "address": large, "max_tokens": 4, **tier},
        ],
        "validator": {"address": validator},
        "escalation": {
            "min_confidence": MIN_CONFIDENCE,
        },
    }


async def route_all(address: str, prompts: dict[str, str]) -> list[pb.RouteSummary]:
    """Route each prompt (by request id), one at a time: each answer is the engine's alone, never
    batched with another, so the small tier's log-probabilities, and the labels the log learns
    from, are the same on every run (batched float32 arithmetic differs in its last bits and
    greedy decoding can take another path)."""
    limit = asyncio.Semaphore(1)

    async def one(stub: pb_grpc.RouterServiceStub, request_id: str) -> pb.RouteSummary:
        request = pb.RouteRequest(prompt=prompts[request_id], request_id=request_id)
        async with limit:
            summary = None
            async for event in stub.Route(request, timeout=CALL_TIMEOUT_SECONDS):
                if event.HasField("summary"):
                    summary = event.summary
            assert summary is not None, f"no summary for {request_id}"
            return summary

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        return list(await asyncio.gather(*(one(stub, r) for r in prompts)))


async def scores_for(data: dict[str, Any], prompts: list[str]) -> list[pb.RoutingDecision]:
    server, address = await started(host(make_config(data)))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            return [
                (await stub.Score(pb.ScoreRequest(prompt=p), timeout=30)).decision for p in prompts
            ]
    finally:
        await server.stop(0)


async def test_the_next_artifact_sends_the_topic_the_small_tier_failed_on_to_the_large_tier(
    tmp_path: Path,
    small_tier: ServiceProcess,
    large_tier: ServiceProcess,
    validator_process: ServiceProcess,
) -> None:
    log = tmp_path / "routing.sqlite"
    spell, convert = spelling(), conversion()
    new_spell, new_convert = spell[LOGGED:], convert[LOGGED:]
    before = config(
        small_tier.address, large_tier.address, validator_process.address,
        artifact=str(PRIOR), routing_log=str(log),
    )  # fmt: skip
    # The prior sends both topics to the small tier.
    assert {d.tier for d in await scores_for(before, spell + convert)} == {"small"}

    workload = {f"spell-{i}": p for i, p in enumerate(spell[:LOGGED])}
    workload |= {f"convert-{i}": p for i, p in enumerate(convert[:LOGGED])}
    server, address = await started(host(make_config(before)))
    try:
        summaries = await route_all(address, workload)
    finally:
        await server.stop(0)  # closing the router commits the log
    assert all(s.tier for s in summaries), "every Route ends in an answer"

    with sqlite3.connect(log) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM routes ORDER BY id").fetchall()
    assert sorted(r["request_id"] for r in rows) == sorted(workload), "one row per Route"
    assert all(r["prompt"] is None and r["embedding"] is not None for r in rows)
    assert all(r["status"] == "OK" and r["judged_tier"] == "small" for r in rows)
    assert sum(r["escalated"] for r in rows) == sum(s.escalated for s in summaries)
    rate = {
        topic: sum(r["escalated"] for r in rows if r["request_id"].startswith(topic)) / LOGGED
        for topic in ("spell", "convert")
    }
    # The workload's premise (measured on the tier alone: 30 of 35 spelling answers and 6 of
    # 35 conversions below 0.5).
    assert rate["spell"] >= 0.6 and rate["convert"] <= 0.4, rate

    cfg = tmp_path / "router.yaml"
    cfg.write_text(yaml.safe_dump(generous(before)))
    learned = tmp_path / "learned"
    code, out, err = await cli(
        "calibrate", "--from-log", str(log), "--config", str(cfg), "-o", str(learned)
    )
    assert code == 0, err
    # No shadow mode here: every label is the validator's verdict.
    assert "answers of tier 'small' judged (" in out
    assert "by the validator, 0 against the large tier in shadow mode)" in out, out
    assert f"of the {len(rows)} scored requests in the log" in out
    meta = json.loads((learned / "router.json").read_text())
    assert meta["source"].startswith(f"routing log {log}")
    # The prior's share is chosen by k-fold APGR on the log: a blend, or the log's own model
    # alone when that wins on the held-out folds (both happen: the log's escalations vary
    # with the engines' batching). Never the prior alone: that is no new artifact.
    if meta["model"] == "blend":
        assert 0.0 < meta["params"]["prior_share"] < 1.0
    else:
        assert meta["model"] in MODEL_KINDS and meta["model"] != "stacked", meta["model"]

    after = before | {"router": before["router"] | {"artifact": str(learned)}}
    spell_scores = await scores_for(after, new_spell)
    convert_scores = await scores_for(after, new_convert)
    # Prompts of either topic that no router has seen: spelling now goes large, and
    # conversions, which the small tier answered well enough, stay small (measured: 7 of 8
    # and 8 of 8; the labels are noisy, so one of each may land on the other side).
    assert sum(d.tier == "large" for d in spell_scores) >= 0.75 * len(new_spell), spell_scores
    assert sum(d.tier == "small" for d in convert_scores) >= 0.75 * len(new_convert)
    # And the ranking holds: a new spelling prompt scores above a new conversion prompt.
    pairs = [(s.complexity_score, c.complexity_score) for s in spell_scores for c in convert_scores]
    assert sum(s > c for s, c in pairs) >= 0.9 * len(pairs)


async def test_calibrating_from_a_log_of_an_older_schema_stops_and_writes_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "old.sqlite"
    with sqlite3.connect(log) as db:
        db.execute("CREATE TABLE routes (id INTEGER PRIMARY KEY, prompt TEXT, score REAL)")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # a routing log's mark
        db.execute("PRAGMA user_version = 0")
    out = tmp_path / "artifact"
    code, _, err = await cli(
        "calibrate", "--from-log", str(log), "--prior", str(PRIOR), "-o", str(out)
    )
    assert code == 2
    assert str(log) in err and "schema version 0" in err and "new file" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]  # noqa: ASYNC240
