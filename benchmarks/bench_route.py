"""Benchmark Route against a direct Generate to the same tier: what the router adds.

Starts one tier service (the embedded default's small tier) and a router in front of it, both as
their own processes; the router's tiers both point at that one tier process, streaming live (no
validation), so whichever tier a prompt is routed to, the same engine answers. The same
requests (greedy, fixed max_tokens) go through Route and straight to the tier's Generate as
interleaved pairs, the order swapped every pair; at concurrency 8 each side sends a group of 8.
Route scores every prompt afresh (bypass_cache), and its time to first token is taken minus
the decision's own router_latency_ms: what is left is what the router adds beyond Score. Each
pair gives a tokens/s ratio and a TTFT difference; medians over pairs are the result. Prints a
table and writes benchmarks/results/route.json.

    make bench-route           # or: .venv/bin/python benchmarks/bench_route.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    LONG_PROMPTS,
    ROOT,
    Run,
    Sample,
    engine_label,
    interleaved_pairs,
    machine,
    paired,
    print_goals,
    write_result,
)
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import load_config
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc


async def via_route(stub: pb_grpc.RouterServiceStub, prompt: str, max_tokens: int) -> Sample:
    request = pb.RouteRequest(
        prompt=prompt,
        bypass_cache=True,
        sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    started = time.perf_counter()
    first = None
    score_ms = 0.0
    summary = None
    async for event in stub.Route(request, timeout=300):
        if event.HasField("decision"):
            score_ms = event.decision.router_latency_ms
        elif event.HasField("chunk"):
            first = first or time.perf_counter()
        elif event.HasField("summary"):
            summary = event.summary
    done = time.perf_counter()
    assert first is not None and summary is not None
    return {
        "ttft_ms": (first - started) * 1e3,
        "ttft_beyond_score_ms": (first - started) * 1e3 - score_ms,
        "score_ms": score_ms,
        "total_ms": (done - started) * 1e3,
        "tokens": summary.usage.completion_tokens,
    }


async def via_generate(stub: tier_grpc.TierServiceStub, prompt: str, max_tokens: int) -> Sample:
    request = tier_pb.GenerateRequest(
        messages=[common_pb.ChatMessage(role="user", content=prompt)],
        sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    started = time.perf_counter()
    first = None
    tokens = 0
    async for response in stub.Generate(request, timeout=300):
        if response.HasField("chunk"):
            first = first or time.perf_counter()
        else:
            tokens = response.complete.completion_tokens
    done = time.perf_counter()
    assert first is not None
    return {
        "ttft_ms": (first - started) * 1e3,
        "ttft_beyond_score_ms": (first - started) * 1e3,
        "score_ms": 0.0,
        "total_ms": (done - started) * 1e3,
        "tokens": tokens,
    }


def summarize(samples: list[Sample], wall_s: float) -> Sample:
    """A group's medians and its aggregate tokens/s."""
    return {
        "ttft_p50_ms": statistics.median(s["ttft_ms"] for s in samples),
        "ttft_beyond_score_p50_ms": statistics.median(s["ttft_beyond_score_ms"] for s in samples),
        "score_p50_ms": statistics.median(s["score_ms"] for s in samples),
        "tokens_per_s": sum(s["tokens"] for s in samples) / wall_s,
    }


def router_config(config: Path, tier_address: str, workdir: Path) -> Path:
    cfg = load_config(config)
    small = cfg.tier("small")
    tiers = [
        {
            "name": name,
            "address": tier_address,
            "model": small.model,
            "validation": "none",
            "price_per_1k_input_usd": t.price_per_1k_input_usd,
            "price_per_1k_output_usd": t.price_per_1k_output_usd,
        }
        for name, t in (("small", small), ("large", cfg.tiers[-1]))
    ]
    doc = {
        "router": {
            "listen": "127.0.0.1:0",
            "model": str(cfg.router.model),
            "complexity_threshold": cfg.router.complexity_threshold,
        },
        "tiers": tiers,
        "monitoring": {"log_level": "WARNING"},
    }
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def bench(args: argparse.Namespace) -> dict[str, list[Sample]]:
    from tests.helpers.services import start_service, start_tier

    workdir = Path(tempfile.mkdtemp())
    tier = await asyncio.to_thread(start_tier, workdir / "tier.log")
    router = await asyncio.to_thread(
        start_service,
        ["tierroute.router", "--config", str(router_config(args.config, tier.address, workdir))],
        workdir / "router.log",
    )
    try:
        async with (
            grpc.aio.insecure_channel(router.address) as router_channel,
            grpc.aio.insecure_channel(tier.address) as tier_channel,
        ):
            route_stub = pb_grpc.RouterServiceStub(router_channel)
            tier_stub = tier_grpc.TierServiceStub(tier_channel)

            async def route_run(prompt: str, max_tokens: int, n: int) -> Sample:
                return await via_route(route_stub, prompt, max_tokens)

            async def generate_run(prompt: str, max_tokens: int, n: int) -> Sample:
                return await via_generate(tier_stub, prompt, max_tokens)

            for _ in range(2):  # warm-up: connections, first engine steps
                await route_run(LONG_PROMPTS[0], 8, 0)
                await generate_run(LONG_PROMPTS[0], 8, 0)
            runs: list[tuple[str, Run]] = [("route", route_run), ("generate", generate_run)]
            return await interleaved_pairs(runs, args.pairs, args.max_tokens, summarize)
    finally:
        router.stop()
        tier.stop()


def compare(
    rows: dict[str, list[Sample]], measured: str, baseline: str, ttft_goal_ms: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bool]]:
    """Medians per run and concurrency; per concurrency, over pairs, the tokens/s `measured`
    keeps of `baseline`'s and the TTFT it adds beyond Score; and the goals (95% of tokens/s,
    at most `ttft_goal_ms` added)."""
    result = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    ratios: dict[str, Any] = {}
    for c in (1, 8):
        r = paired(
            rows,
            f"{measured}_c{c}",
            f"{baseline}_c{c}",
            "tokens_per_s",
            "ttft_beyond_score_p50_ms:ttft_p50_ms",
        )
        # The tail: the 99th percentile over the pairs of each run's time to first token (at
        # concurrency 1 a pair is one request; at 8, its group's median), measured minus
        # baseline. Over 12 pairs that is close to the slowest pair of each.
        tail = [
            float(np.percentile([r[key] for r in rows[f"{run}_c{c}"]], 99))
            for run, key in ((measured, "ttft_beyond_score_p50_ms"), (baseline, "ttft_p50_ms"))
        ]
        ratios[f"c{c}"] = {
            "tokens_per_s_kept": r["ratio"]["median"],
            "tokens_per_s_kept_iqr": r["ratio"]["iqr"],
            "ttft_added_beyond_score_ms": r["diff"]["median"],
            "ttft_added_beyond_score_ms_iqr": r["diff"]["iqr"],
            "ttft_added_beyond_score_p99_over_pairs_ms": tail[0] - tail[1],
        }
    goals = {
        f"c{c}_tokens_per_s_kept>=0.95": ratios[f"c{c}"]["tokens_per_s_kept"] >= 0.95
        for c in (1, 8)
    } | {
        f"c{c}_ttft_added_beyond_score_ms<={ttft_goal_ms:g}": (
            ratios[f"c{c}"]["ttft_added_beyond_score_ms"] <= ttft_goal_ms
        )
        for c in (1, 8)
    }
    return result, ratios, goals


def print_comparison(
    title: str, result: dict[str, Any], ratios: dict[str, Any], labels: dict[str, str]
) -> None:
    """The table of `compare`'s medians (a row per run in `labels` and concurrency), then the
    ratios in words."""
    print(f"\n{title}")
    print(f"{'measurement':<36}{'TTFT p50 ms':>12}{'minus Score':>12}{'Score ms':>10}{'tok/s':>8}")
    for c in (1, 8):
        for name, label in labels.items():
            m = result[f"{name}_c{c}"]
            print(
                f"{label + f', concurrency {c}':<36}{m['ttft_p50_ms']:>12.1f}"
                f"{m['ttft_beyond_score_p50_ms']:>12.1f}{m['score_p50_ms']:>10.2f}"
                f"{m['tokens_per_s']:>8.1f}"
            )
    for c in (1, 8):
        r = ratios[f"c{c}"]
        lo, hi = r["ttft_added_beyond_score_ms_iqr"]
        print(
            f"concurrency {c}: Route keeps {r['tokens_per_s_kept']:.1%} of tokens/s "
            f"(IQR {r['tokens_per_s_kept_iqr'][0]:.1%} to {r['tokens_per_s_kept_iqr'][1]:.1%}), "
            f"adds {r['ttft_added_beyond_score_ms']:+.1f} ms TTFT beyond Score "
            f"(IQR {lo:+.1f} to {hi:+.1f}); at the p99 over pairs "
            f"{r['ttft_added_beyond_score_p99_over_pairs_ms']:+.1f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--pairs", type=int, default=12, help="interleaved pairs per concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "route.json")
    args = parser.parse_args()
    rows = asyncio.run(bench(args))
    result, ratios, goals = compare(rows, "route", "generate", 2)
    doc = {
        "benchmark": "router Route vs a direct tier Generate, same tier process, same prompts",
        "command": "make bench-route",
        "machine": machine(grpc=grpc.__version__),
        "model": engine_label(args.config),
        "max_tokens": args.max_tokens,
        "pairs": args.pairs,
        "results": result,
        "ratios": ratios,
        "goals_met": goals,
    }
    write_result(args.out, doc)
    print_comparison(
        f"Route vs Generate, {args.max_tokens} tokens per request, medians over {args.pairs} "
        "interleaved pairs",
        result,
        ratios,
        {"route": "Route", "generate": "Generate (direct)"},
    )
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
