"""The router's Score while both vLLM engines decode on the same machine (issue 16, part 2).

Starts the embedded default's tiers and validator as their own processes, and two routers on
them, each its own process: the shipped config (degraded scorer on), and the same config with
`degraded_scorer` unset (what the router did before: over budget, the default tier). Then, idle
and with every tier kept decoding (`--streams` long greedy answers per tier, restarted as they
end), it sends `--scores` Score requests (cache bypassed) at `--concurrency` to each router,
in alternating blocks, and counts how each decision was made: scored by the embedder, by the
degraded scorer (and why), or the fallback. Prints a table and writes
benchmarks/results/contention.json.

    make bench-router-contention    # or: .venv/bin/python benchmarks/bench_contention.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_e2e import start_router_variant
from benchmarks.common import LONG_PROMPTS, ROOT, machine, print_goals, start_suite, write_result
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config, load_config
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

RESULTS = ROOT / "benchmarks" / "results" / "contention.json"
ROUTERS = ("degraded scorer", "fallback only")


def prompts() -> list[str]:
    doc = yaml.safe_load((ROOT / "tests" / "data" / "prompts.yaml").read_text())
    return list(doc["simple"] + doc["complex"])


async def keep_decoding(stub: tier_grpc.TierServiceStub, n: int, stop: asyncio.Event) -> int:
    """Greedy long answers, one after another, until `stop`; how many were started."""
    started = 0
    while not stop.is_set():
        request = tier_pb.GenerateRequest(
            messages=[common_pb.ChatMessage(role="user", content=LONG_PROMPTS[n % 4])],
            sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=256),
        )
        started += 1
        call = stub.Generate(request, timeout=600)
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in call:
                if stop.is_set():
                    call.cancel()
                    break
    return started


async def scores(
    stub: pb_grpc.RouterServiceStub, texts: list[str], total: int, concurrency: int, first: int
) -> list[tuple[float, str]]:
    """`total` Scores at `concurrency`: (latency ms, how it was decided) each."""
    out: list[tuple[float, str]] = []
    numbers = iter(range(first, first + total))

    async def worker() -> None:
        for i in numbers:
            request = pb.ScoreRequest(prompt=texts[i % len(texts)], bypass_cache=True)
            t0 = time.perf_counter()
            got = await stub.Score(request, timeout=30)
            took = (time.perf_counter() - t0) * 1000
            d = got.decision
            if pb.REASON_CODE_ROUTER_FALLBACK in d.reason_codes:
                how = "fallback"
            elif pb.REASON_CODE_SCORE_DEGRADED in d.reason_codes:
                how = d.reasons[0]  # score_degraded:<why>
            else:
                how = "scored"
            out.append((took, how))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def summary(samples: list[tuple[float, str]]) -> dict[str, Any]:
    latencies = np.array([s[0] for s in samples])
    return {
        "scores": len(samples),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "decided": dict(Counter(s[1] for s in samples)),
    }


async def bench(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:

    root = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    started: list[Any] = []
    try:
        tiers, validator = await start_suite(args.config, cfg, root, started)
        routers = {}
        for name in ROUTERS:

            def change(doc: dict[str, Any], name: str = name) -> None:
                if name == "fallback only":
                    doc["router"].pop("degraded_scorer", None)

            routers[name] = await start_router_variant(
                cfg, tiers, validator.address, root / name.replace(" ", "-"), change
            )
            started.append(routers[name])
        texts = prompts()
        block = args.scores // args.blocks
        results: dict[str, dict[str, Any]] = {}
        channels = [grpc.aio.insecure_channel(routers[n].address) for n in ROUTERS]
        tier_channels = [grpc.aio.insecure_channel(a) for a in tiers.values()]
        try:
            stubs = {
                n: pb_grpc.RouterServiceStub(c) for n, c in zip(ROUTERS, channels, strict=True)
            }
            for stub in stubs.values():  # warm the connections and the embedders
                await scores(stub, texts, 64, args.concurrency, 0)
            for phase in ("idle", "busy"):
                stop = asyncio.Event()
                load: list[asyncio.Task[int]] = []
                if phase == "busy":
                    for channel in tier_channels:
                        tier = tier_grpc.TierServiceStub(channel)
                        load += [
                            asyncio.create_task(keep_decoding(tier, i, stop))
                            for i in range(args.streams)
                        ]
                    await asyncio.sleep(args.settle)  # the engines are decoding
                got: dict[str, list[tuple[float, str]]] = {n: [] for n in ROUTERS}
                for b in range(args.blocks):
                    print(f"{phase}: block {b + 1}/{args.blocks}", file=sys.stderr)
                    for name in ROUTERS if b % 2 == 0 else ROUTERS[::-1]:
                        got[name] += await scores(
                            stubs[name], texts, block, args.concurrency, b * block
                        )
                stop.set()
                generated = sum(await asyncio.gather(*load)) if load else 0
                for name in ROUTERS:
                    results[f"{phase}: {name}"] = summary(got[name])
                if phase == "busy":
                    results["busy: long answers started"] = {"count": generated}
        finally:
            for channel in [*channels, *tier_channels]:
                await channel.close()
        return results
    finally:
        for process in reversed(started):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--scores", type=int, default=1000, help="per router and phase")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--streams", type=int, default=2, help="long answers per tier, busy")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of decoding first")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = asyncio.run(bench(args, cfg))

    busy = results["busy: degraded scorer"]
    idle = results["idle: degraded scorer"]
    goals = {
        "busy: fallbacks out of the Scores == 0": busy["decided"].get("fallback", 0) == 0,
    }
    doc = {
        "benchmark": "router Score with both engines decoding on the same machine",
        "command": "make bench-router-contention",
        "machine": machine(onnxruntime=__import__("onnxruntime").__version__),
        "settings": {
            "scores_per_router_and_phase": args.scores,
            "concurrency": args.concurrency,
            "streams_per_tier": args.streams,
            "score_budget_ms": cfg.router.score_budget_ms,
            "scorer_threads": cfg.router.scorer_threads,
        },
        "results": results,
        "busy_over_idle_p50": busy["p50_ms"] / idle["p50_ms"],
        "busy_over_idle_p99": busy["p99_ms"] / idle["p99_ms"],
        "goals_met": goals,
    }
    write_result(args.out, doc)
    print(
        f"\nScore at concurrency {args.concurrency}, {args.scores} per router and phase, "
        f"cache bypassed; busy: {args.streams} long answers decoding per tier "
        f"({results['busy: long answers started']['count']} started)"
    )
    print(f"{'phase: router':<26}{'p50 ms':>8}{'p99 ms':>8}  decided")
    for key, m in results.items():
        if "p50_ms" not in m:
            continue
        how = ", ".join(f"{k} {v}" for k, v in sorted(m["decided"].items()))
        print(f"{key:<26}{m['p50_ms']:>8.1f}{m['p99_ms']:>8.1f}  {how}")
    print(
        f"\nbusy / idle (degraded scorer): p50 x{doc['busy_over_idle_p50']:.1f}, "
        f"p99 x{doc['busy_over_idle_p99']:.1f}"
    )
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
