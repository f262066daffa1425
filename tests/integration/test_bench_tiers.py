"""`tierroute bench-tiers` against the real tier processes: the table it prints, the figures
and the run it writes to the metrics store (SQLite and Redis), and the input it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.budgets import generous
from tests.helpers.redis import RedisServer
from tests.helpers.services import ServiceProcess, router_config
from tests.helpers.tools import cli
from tierroute.core.config import ConfigError
from tierroute.router.service import RouterService
from tierroute.router.tiers.measured import ERROR_RATE, TTFT_MS
from tierroute.router.tiers.store import open_store

CATEGORIES = {
    "chit_chat": ["Hello there!", "How is your day going?"],
    "formatting": ["Write the word cat in capitals.", "Spell the word dog backwards."],
}


def write_config(tmp_path: Path, small: str, large: str) -> Path:
    data: dict[str, Any] = {
        "router": {"metrics_store": "metrics.sqlite"},
        "tiers": [
            {
                "name": "small",
                "address": small,
                "model": "smollm2",
                "price_per_1k_input_usd": 0.0001,
                "price_per_1k_output_usd": 0.0002,
            },
            # Paid by the hour: its cost per 1k tokens comes from the measured throughput.
            {"name": "large", "address": large, "model": "smollm2", "price_per_hour_usd": 2.0},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(generous(data)))
    return path


def write_sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": p, "category": c}) + "\n"
            for c, prompts in CATEGORIES.items()
            for p in prompts
        )
    )
    return path


@pytest.mark.tier
async def test_bench_tiers_measures_every_tier_into_the_store(
    small_tier: ServiceProcess,
    large_tier: ServiceProcess,
    fresh_redis: RedisServer,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, small_tier.address, large_tier.address)
    sample = write_sample(tmp_path)
    args = ["bench-tiers", "--config", str(config), "--sample", str(sample), "--runs", "2"]
    args += ["--concurrency", "2", "--max-tokens", "8"]
    code, out, err = await cli(*args, "--out", str(tmp_path / "tiers.json"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["tier", "category", "calls"]
    for tier in ("small", "large"):
        for category in [*CATEGORIES, "(all)"]:
            row = next(line for line in lines if line.split()[:2] == [tier, category])
            assert int(row.split()[2]) == (8 if category == "(all)" else 4)
    assert "16/16" in err and f"stored in {tmp_path / 'metrics.sqlite'}" in err

    rows = json.loads((tmp_path / "tiers.json").read_text())["rows"]
    overall = {r["tier"]: r for r in rows if r["category"] == ""}
    assert overall["small"]["errors"] == overall["large"]["errors"] == 0
    assert 0 < overall["small"]["ttft_p50_ms"] <= overall["small"]["ttft_p95_ms"]
    assert overall["small"]["cost_basis"] == "price per 1k input and output tokens"
    assert overall["large"]["cost_basis"] == "price_per_hour_usd / measured throughput"
    throughput = overall["large"]["throughput_tokens_per_s"]
    assert overall["large"]["cost_per_1k_usd"] == pytest.approx(2.0 / 3600 / throughput * 1000)

    # The store holds the figures, weighing the calls they were measured on, and the run.
    store = open_store(str(tmp_path / "metrics.sqlite"))
    kept = store.exchange({}, 30.0)
    assert kept[("small", "", TTFT_MS)].weight == pytest.approx(8.0, rel=1e-3)
    assert kept[("small", "chit_chat", TTFT_MS)].value > 0
    assert kept[("large", "", ERROR_RATE)].value == 0.0
    runs = store.benchmarks()
    store.close()
    assert {(r["tier"], r["category"]) for r in runs} == {
        (t, c) for t in ("small", "large") for c in [*CATEGORIES, ""]
    }
    assert all(r["model"] and r["at"] == runs[0]["at"] for r in runs)

    # The same run into Redis.
    code, out, err = await cli(*args, "--store", fresh_redis.url, "--tier", "small")
    assert code == 0, err
    redis_store = open_store(fresh_redis.url)
    assert redis_store.exchange({}, 30.0)[("small", "", TTFT_MS)].weight == pytest.approx(8.0)
    assert {r["tier"] for r in redis_store.benchmarks()} == {"small"}
    redis_store.close()


async def test_bench_tiers_refuses_bad_input_before_sending_anything(tmp_path: Path) -> None:
    # Nothing listens at these addresses: every refusal comes before a tier is called.
    config = write_config(tmp_path, "127.0.0.1:1", "127.0.0.1:2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "category": "a"}\nprompt,category\n')
    code, _, err = await cli("bench-tiers", "--config", str(config), "--sample", str(bad))
    assert code == 2
    assert f"{bad}, line 2: not JSON" in err and "the sample is JSONL" in err

    # A router benchmarking on a schedule refuses the same file at start.
    scheduled = router_config(bench_interval_seconds=60, bench_sample=bad)
    with pytest.raises(ConfigError, match=r"router\.bench_sample: .*line 2: not JSON"):
        RouterService(scheduled)

    sample = write_sample(tmp_path)
    base = ["bench-tiers", "--config", str(config), "--sample", str(sample)]
    code, _, err = await cli(*base, "--tier", "medium")
    assert code == 2 and "--tier medium: not a tier" in err and "(small, large)" in err

    code, _, err = await cli(*base, "--store", f"unix://{tmp_path / 'no.sock'}")
    assert code == 2 and "cannot reach Redis" in err

    code, _, err = await cli(*base, "--runs", "0")
    assert code == 2 and "--runs must be at least 1" in err

    code, _, err = await cli(*base)
    assert code == 1 and "tier small at 127.0.0.1:1: UNAVAILABLE" in err
