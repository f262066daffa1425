"""Benchmark the tier service's gRPC streaming layer against the same engine without gRPC.

Starts the tier service (the embedded default's small tier) as its own process and, in this
process, an in-process vLLM AsyncLLM with the same engine arguments. It sends the same requests
(greedy, long-running prompts, fixed max_tokens) to both as interleaved pairs: one request (at
concurrency 1) or one group of 8 concurrent requests (at concurrency 8) through gRPC, then the
same through the engine directly, the order swapped every pair. The two engines never run at
the same time. Each pair gives a tokens/s ratio and a TTFT difference; the medians over pairs
are the result, which cancels most of a shared machine's drift. Prints a table and writes
benchmarks/results/tier.json.

    make bench-tier            # or: .venv/bin/python benchmarks/bench_tier.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    LONG_PROMPTS,
    ROOT,
    Run,
    engine_label,
    interleaved_pairs,
    machine,
    paired,
    print_goals,
    write_result,
)


def summarize(samples: list[dict[str, float]], wall_s: float) -> dict[str, float]:
    tokens = sum(s["tokens"] for s in samples)
    return {
        "requests": len(samples),
        "ttft_p50_ms": statistics.median(s["ttft_ms"] for s in samples),
        "tokens_per_s": tokens / wall_s,
        "per_request_decode_tokens_per_s": statistics.median(
            (s["tokens"] - 1) / max(s["total_ms"] - s["ttft_ms"], 1e-6) * 1000 for s in samples
        ),
    }


async def via_grpc(address: str, prompt: str, max_tokens: int) -> dict[str, float]:
    from tierroute.common.v1 import common_pb2 as common_pb
    from tierroute.tier.v1 import tier_service_pb2 as pb
    from tierroute.tier.v1 import tier_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TierServiceStub(channel)
        await stub.Describe(pb.DescribeRequest())  # connect outside the timed region
        request = pb.GenerateRequest(
            messages=[common_pb.ChatMessage(role="user", content=prompt)],
            sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )
        started = time.perf_counter()
        first = None
        tokens = 0
        async for response in stub.Generate(request, timeout=300):
            if response.HasField("chunk"):
                first = first or time.perf_counter()
                tokens += response.chunk.token_count
        done = time.perf_counter()
    assert first is not None
    return {
        "ttft_ms": (first - started) * 1e3,
        "total_ms": (done - started) * 1e3,
        "tokens": tokens,
    }


async def direct(engine: Any, prompt: str, max_tokens: int, n: int) -> dict[str, float]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    started = time.perf_counter()
    tokenizer = engine.get_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA
    )
    first = None
    tokens = 0
    async for out in engine.generate(
        {"prompt_token_ids": ids}, params, f"bench-{n}-{time.time_ns()}"
    ):
        if out.outputs[0].token_ids:
            first = first or time.perf_counter()
            tokens += len(out.outputs[0].token_ids)
    done = time.perf_counter()
    assert first is not None
    return {
        "ttft_ms": (first - started) * 1e3,
        "total_ms": (done - started) * 1e3,
        "tokens": tokens,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from vllm.v1.engine.async_llm import AsyncLLM

    from tests.helpers.services import start_tier
    from tierroute.core.config import load_config
    from tierroute.tier.engine import engine_args_for

    cfg = load_config(args.config)
    tier = cfg.tier("small")
    for key, value in tier.env.items():
        os.environ.setdefault(key, value)
    log = Path(tempfile.mkdtemp()) / "tier.log"
    service = await asyncio.to_thread(start_tier, log)
    engine = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args_for(tier))

    async def grpc_run(prompt: str, max_tokens: int, n: int) -> dict[str, float]:
        return await via_grpc(service.address, prompt, max_tokens)

    async def direct_run(prompt: str, max_tokens: int, n: int) -> dict[str, float]:
        return await direct(engine, prompt, max_tokens, n)

    try:
        for _ in range(2):  # warm-up: first requests compile/allocate
            await grpc_run(LONG_PROMPTS[0], 8, 0)
            await direct_run(LONG_PROMPTS[0], 8, 0)
        runs: list[tuple[str, Run]] = [("grpc", grpc_run), ("engine", direct_run)]
        return await interleaved_pairs(runs, args.pairs, args.max_tokens, summarize)
    finally:
        service.stop()
        await asyncio.to_thread(engine.shutdown)  # synchronous in vLLM 0.32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--pairs", type=int, default=12, help="interleaved pairs per concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tier.json")
    args = parser.parse_args()
    rows = asyncio.run(bench(args))
    result = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}

    ratios = {}
    for c in (1, 8):
        r = paired(rows, f"grpc_c{c}", f"engine_c{c}", "tokens_per_s", "ttft_p50_ms")
        ratios[f"c{c}"] = {
            "tokens_per_s_kept": r["ratio"]["median"],
            "tokens_per_s_kept_iqr": r["ratio"]["iqr"],
            "ttft_added_ms": r["diff"]["median"],
            "ttft_added_ms_iqr": r["diff"]["iqr"],
        }
    goals = {
        f"c{c}_tokens_per_s_kept>=0.95": ratios[f"c{c}"]["tokens_per_s_kept"] >= 0.95
        for c in (1, 8)
    } | {f"c{c}_ttft_added_ms<=5": ratios[f"c{c}"]["ttft_added_ms"] <= 5 for c in (1, 8)}
    doc = {
        "benchmark": "tier Generate over gRPC vs the same vLLM engine in-process",
        "command": "make bench-tier",
        "machine": machine(vllm=__import__("vllm").__version__),
        "model": engine_label(args.config),
        "max_tokens": args.max_tokens,
        "pairs": args.pairs,
        "results": result,
        "ratios": ratios,
        "goals_met": goals,
    }
    write_result(args.out, doc)
    print(
        f"\ntier Generate, {args.max_tokens} tokens per request, medians over {args.pairs} "
        f"interleaved pairs, {os.cpu_count()} cores"
    )
    print(f"{'measurement':<34}{'TTFT p50 ms':>12}{'tokens/s':>10}{'per-req tok/s':>15}")
    for c in (1, 8):
        for name, label in (("grpc", "tier over gRPC"), ("engine", "engine in-process")):
            m = result[f"{name}_c{c}"]
            print(
                f"{label + f', concurrency {c}':<34}{m['ttft_p50_ms']:>12.1f}"
                f"{m['tokens_per_s']:>10.1f}{m['per_request_decode_tokens_per_s']:>15.1f}"
            )
    for c in (1, 8):
        r = ratios[f"c{c}"]
        print(
            f"concurrency {c}: gRPC keeps {r['tokens_per_s_kept']:.1%} of tokens/s "
            f"(IQR {r['tokens_per_s_kept_iqr'][0]:.1%} to {r['tokens_per_s_kept_iqr'][1]:.1%}), "
            f"adds {r['ttft_added_ms']:+.1f} ms TTFT "
            f"(IQR {r['ttft_added_ms_iqr'][0]:+.1f} to {r['ttft_added_ms_iqr'][1]:+.1f})"
        )
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
