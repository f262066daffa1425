"""The end-to-end table: a mixed workload through the HTTP front and through gRPC Route, against
sending everything straight to the large tier, side by side in one run.

Starts the configured suite as its own processes (both tiers, the validator, the router with
its HTTP front; `--config`, the embedded default unless told), each tier on a free port. The
workload is fixed by `--seed`: everyday requests (data/everyday, the `eval` half: never fitted
on), benchmark prompts (GSM8K, `eval` half, and MT-Bench first turns, from
../shared/data/routellm), and questions whose answers a program checks (data/checkable), sent
as one user turn each, greedy, at most `--max-tokens` tokens, `--concurrency` at a time.

Three ways to answer it, each sending the whole workload once per round, the order rotated
every round so that none always gets the warmer machine:

- large direct: every request to the large tier's Generate (what a user runs without a router);
- Route (gRPC): `RouterService.Route`, model chosen by the router;
- HTTP front: `POST /v1/chat/completions` with `model: auto`, streamed (server-sent events).

Measured per request: time to first token (first content received), total time, completion
tokens, cost in USD (the tiers' configured prices over every tier called, escalations
included), the tier that answered, and whether the answer is right where the prompt has one.
Per way and round: requests/s and tokens/s. Ratios against large direct are taken per round
and their median reported. The Route and HTTP rows score every prompt afresh (bypass_cache).

Prints the table and writes benchmarks/results/e2e.json.

    make bench-e2e            # or: .venv/bin/python benchmarks/bench_e2e.py --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT, machine, start_suite, write_result
from benchmarks.escalation import QUESTIONS, right
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config, load_config
from tierroute.quality.evaluate import bootstrap
from tierroute.quality.labelled import convert_gsm8k, convert_mt_bench, half
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

ROUTELLM = ROOT.parent / "shared" / "data" / "routellm"
EVERYDAY = ROOT / "data" / "everyday" / "prompts.yaml"
WAYS = ("large direct", "Route (gRPC)", "HTTP front")
BASELINE = WAYS[0]
# What the seed documents claimed for routing against the large tier alone.
SEED_CLAIMS = {"cost": -0.78, "ttft_p99": -0.42, "throughput": 2.75, "quality": -0.003}

Item = dict[str, Any]  # {"kind", "prompt", "answers" (or None)}
Sample = dict[str, Any]


# --- the workload ---


def workload(n: int, seed: int) -> list[Item]:
    """`n` requests: a third everyday, a third checkable questions, a third benchmark prompts
    (GSM8K and MT-Bench by halves), drawn with `seed`, then shuffled."""
    rng = random.Random(seed)
    everyday = []
    for level, kinds in yaml.safe_load(EVERYDAY.read_text()).items():
        for kind, prompts in kinds.items():
            everyday += [
                {"kind": f"everyday/{level}", "prompt": p, "answers": None, "about": kind}
                for p in prompts
                if half(p) == "eval"
            ]
    checkable = [
        {"kind": "checkable", "prompt": q["q"], "answers": q["answers"], "about": group}
        for group, questions in yaml.safe_load(QUESTIONS.read_text()).items()
        for q in questions
    ]
    gsm8k = [
        {"kind": "gsm8k", "prompt": r.prompt, "answers": None, "about": "math"}
        for r in convert_gsm8k(ROUTELLM / "gsm8k")
        if half(r.prompt) == "eval"
    ]
    mt_bench = [
        {"kind": "mt-bench", "prompt": r.prompt, "answers": None, "about": r.category}
        for r in convert_mt_bench(ROUTELLM / "mt_bench")
        if half(r.prompt) == "eval"
    ]
    third = n // 3
    items = (
        rng.sample(everyday, third)
        + rng.sample(checkable, third)
        + rng.sample(gsm8k, (n - 2 * third) // 2)
        + rng.sample(mt_bench, n - 2 * third - (n - 2 * third) // 2)
    )
    rng.shuffle(items)
    return items


# --- the suite, as its own processes ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_yaml(cfg: Config, tiers: dict[str, str], validator: str, http_port: int,
                workdir: Path) -> Path:  # fmt: skip
    """The config as given, with the tiers and validator where they were started, no routing
    log or metrics store of the user's touched (fresh ones in `workdir`)."""
    doc = cfg.model_dump(mode="json", exclude_none=True)
    doc["router"].update(
        listen="127.0.0.1:0",
        http_listen=f"127.0.0.1:{http_port}",
        routing_log=str(workdir / "routing-log.sqlite"),
        metrics_store=str(workdir / "metrics.sqlite"),
    )
    for key in ("operating_point_state", "auth_tokens_file"):
        doc["router"].pop(key, None)
    for tier in doc["tiers"]:
        tier["address"] = tiers[tier["name"]]
        tier.pop("replicas", None)
    doc["validator"]["address"] = validator
    doc.setdefault("monitoring", {})["log_level"] = "WARNING"
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def start_router_variant(
    cfg: Config,
    tiers: dict[str, str],
    validator: str,
    workdir: Path,
    change: Callable[[dict[str, Any]], None],
) -> Any:
    """A gRPC-only router on the started suite (`router_yaml`, no HTTP front), its config
    document changed by `change`, started as its own process with its files in `workdir`."""
    from tests.helpers.services import start_service

    def start() -> Any:
        workdir.mkdir()
        path = router_yaml(cfg, tiers, validator, free_port(), workdir)
        doc = yaml.safe_load(path.read_text())
        doc["router"].pop("http_listen")
        change(doc)
        path.write_text(yaml.safe_dump(doc))
        return start_service(["tierroute.router", "--config", str(path)], workdir / "router.log")

    return await asyncio.to_thread(start)


# --- one request, each way ---


async def via_generate(
    stub: tier_grpc.TierServiceStub,
    item: Item,
    max_tokens: int,
    tier: str = "large",
    logprobs: bool = False,
) -> Sample:
    """One request to a tier's Generate; with `logprobs`, the sample keeps its answer's token
    log-probabilities."""
    request = tier_pb.GenerateRequest(
        messages=[common_pb.ChatMessage(role="user", content=item["prompt"])],
        sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        logprobs=logprobs,
    )
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    values: list[float] = []
    complete = None
    async for response in stub.Generate(request, timeout=900):
        if response.HasField("chunk"):
            if response.chunk.text and first is None:
                first = time.perf_counter()
            parts.append(response.chunk.text)
            values += [t.logprob for t in response.chunk.logprobs]
        else:
            complete = response.complete
    assert complete is not None
    got = sample(item, started, first, "".join(parts), complete.completion_tokens,
                 complete.cost_usd, tier, False)  # fmt: skip
    return {**got, "logprobs": values} if logprobs else got


async def via_route(stub: pb_grpc.RouterServiceStub, item: Item, max_tokens: int) -> Sample:
    request = pb.RouteRequest(
        messages=[common_pb.ChatMessage(role="user", content=item["prompt"])],
        sampling=common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        bypass_cache=True,
    )
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    summary = None
    async for event in stub.Route(request, timeout=900):
        if event.HasField("chunk"):
            if event.chunk.text and first is None:
                first = time.perf_counter()
            parts.append(event.chunk.text)
        elif event.HasField("summary"):
            summary = event.summary
    assert summary is not None
    got = sample(item, started, first, "".join(parts), summary.usage.completion_tokens,
                 summary.cost_usd, summary.tier, summary.escalated)  # fmt: skip
    return {**got, "hedged": any(a.hedged for a in summary.attempts)}


async def via_http(http: httpx.AsyncClient, item: Item, max_tokens: int) -> Sample:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": item["prompt"]}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tierroute": {"bypass_cache": True},
    }
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    summary: dict[str, Any] = {}
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(f"the stream ended with an error: {chunk['error']}")
            for choice in chunk.get("choices", []):
                text = choice["delta"].get("content") or ""
                if text and first is None:
                    first = time.perf_counter()
                parts.append(text)
            if "tierroute" in chunk:
                summary = chunk["tierroute"].get("summary", {})
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return sample(item, started, first, "".join(parts), tokens, summary.get("cost_usd", 0.0),
                  summary.get("tier", ""), bool(summary.get("escalated")))  # fmt: skip


def sample(item: Item, started: float, first: float | None, text: str, tokens: int,
           cost: float, tier: str, escalated: bool) -> Sample:  # fmt: skip
    done = time.perf_counter()
    return {
        "kind": item["kind"],
        "ttft_ms": ((first or done) - started) * 1e3,
        "total_ms": (done - started) * 1e3,
        "tokens": tokens,
        "cost_usd": cost,
        "tier": tier,
        "escalated": escalated,
        "right": right(text, item["answers"]) if item["answers"] else None,
    }


# --- rounds and the table ---


async def one_round(
    ask: Callable[[Item], Awaitable[Sample]], items: list[Item], concurrency: int
) -> tuple[list[Sample], float]:
    gate = asyncio.Semaphore(concurrency)

    async def bounded(item: Item) -> Sample:
        async with gate:
            return await ask(item)

    started = time.perf_counter()
    samples = await asyncio.gather(*(bounded(item) for item in items))
    return list(samples), time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def round_figures(samples: list[Sample], wall_s: float) -> dict[str, float]:
    return {
        "cost_usd": sum(s["cost_usd"] for s in samples),
        "ttft_p50_ms": percentile([s["ttft_ms"] for s in samples], 50),
        "ttft_p99_ms": percentile([s["ttft_ms"] for s in samples], 99),
        "total_p50_ms": percentile([s["total_ms"] for s in samples], 50),
        "total_p99_ms": percentile([s["total_ms"] for s in samples], 99),
        "requests_per_s": len(samples) / wall_s,
        "tokens_per_s": sum(s["tokens"] for s in samples) / wall_s,
    }


def quality(samples: list[Sample]) -> dict[str, Any]:
    marks = np.array([s["right"] for s in samples if s["right"] is not None], dtype=float)
    if not len(marks):
        return {"n": 0}
    return {
        "n": len(marks),
        "accuracy": float(marks.mean()),
        "accuracy_ci95": bootstrap(lambda i: marks[i].mean(), len(marks)),
    }


async def bench(args: argparse.Namespace, cfg: Config, items: list[Item]) -> dict[str, Any]:
    from tests.helpers.services import start_service

    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    started: list[Any] = []
    try:
        tiers, validator = await start_suite(args.config, cfg, workdir, started)
        http_port = free_port()
        router_cfg = router_yaml(cfg, tiers, validator.address, http_port, workdir)
        router = await asyncio.to_thread(
            start_service, ["tierroute.router", "--config", str(router_cfg)], workdir / "router.log"
        )
        started.append(router)
        large = cfg.tiers[-1].name
        timeout = httpx.Timeout(900.0, connect=30.0)
        limits = httpx.Limits(max_connections=args.concurrency * 2)
        async with (
            grpc.aio.insecure_channel(router.address) as router_channel,
            grpc.aio.insecure_channel(tiers[large]) as large_channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=timeout,
                              limits=limits) as http,
        ):  # fmt: skip
            route_stub = pb_grpc.RouterServiceStub(router_channel)
            large_stub = tier_grpc.TierServiceStub(large_channel)
            ways: dict[str, Callable[[Item], Awaitable[Sample]]] = {
                WAYS[0]: lambda item: via_generate(large_stub, item, args.max_tokens),
                WAYS[1]: lambda item: via_route(route_stub, item, args.max_tokens),
                WAYS[2]: lambda item: via_http(http, item, args.max_tokens),
            }
            warm = {"kind": "warm-up", "prompt": "Say hello.", "answers": None}
            for ask in ways.values():  # connections, the engines' first steps
                await ask(warm)
            rounds: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
            samples: dict[str, list[Sample]] = {w: [] for w in WAYS}
            for r in range(args.rounds):
                order = WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]  # fmt: skip
                for way in order:
                    print(f"round {r + 1}/{args.rounds}: {way} ...", file=sys.stderr)
                    got, wall = await one_round(ways[way], items, args.concurrency)
                    rounds[way].append(round_figures(got, wall))
                    samples[way] += got
        return {"rounds": rounds, "samples": samples, "workdir": str(workdir)}
    finally:
        for process in reversed(started):
            process.stop()


def summarize(result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    rounds, samples = result["rounds"], result["samples"]
    ways: dict[str, Any] = {}
    for way in WAYS:
        figures = {k: statistics.median(r[k] for r in rounds[way]) for k in rounds[way][0]}
        every = samples[way]
        served: dict[str, int] = {}
        for s in every:
            served[s["tier"]] = served.get(s["tier"], 0) + 1
        ways[way] = {
            **figures,
            "share_by_tier": {t: n / len(every) for t, n in sorted(served.items())},
            "escalation_rate": sum(s["escalated"] for s in every) / len(every),
            "quality": quality(every),
        }
    ratios: dict[str, Any] = {}
    base = rounds[BASELINE]
    for way in WAYS[1:]:
        mine = rounds[way]

        def change(key: str, mine: list[dict[str, float]] = mine) -> float:
            return statistics.median(m[key] / b[key] - 1 for m, b in zip(mine, base, strict=True))

        q, bq = ways[way]["quality"], ways[BASELINE]["quality"]
        ratios[way] = {
            "cost": change("cost_usd"),
            "ttft_p50": change("ttft_p50_ms"),
            "ttft_p99": change("ttft_p99_ms"),
            "total_p99": change("total_p99_ms"),
            "throughput": change("requests_per_s"),
            "tokens_per_s": change("tokens_per_s"),
            "quality_points": (q["accuracy"] - bq["accuracy"]) * 100 if q["n"] else None,
        }
    return {"ways": ways, "changes_vs_large_direct": ratios}


def print_table(doc: dict[str, Any]) -> None:
    ways = doc["ways"]
    r = doc["router"]
    print(f"\nrouter: {r['scorer']} scorer ({r['artifact']}), target large share "
          f"{r['target_large_share'] or 'unset'}")  # fmt: skip
    print(f"End to end: {doc['workload']['requests']} requests per round "
          f"({doc['workload']['composition']}), concurrency {doc['concurrency']}, "
          f"max_tokens {doc['max_tokens']}, medians over {doc['rounds']} rounds")  # fmt: skip
    head = (f"{'':<14}{'cost $':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'total p99':>10}"
            f"{'req/s':>8}{'tok/s':>8}{'right':>16}  share by tier")  # fmt: skip
    print(head)
    for way, w in ways.items():
        q = w["quality"]
        right_ = (f"{q['accuracy']:.0%} [{q['accuracy_ci95'][0]:.0%},{q['accuracy_ci95'][1]:.0%}]"
                  if q["n"] else "-")  # fmt: skip
        share = ", ".join(f"{t} {v:.0%}" for t, v in w["share_by_tier"].items())
        print(f"{way:<14}{w['cost_usd']:>10.5f}{w['ttft_p50_ms']:>10.0f}{w['ttft_p99_ms']:>10.0f}"
              f"{w['total_p99_ms']:>10.0f}{w['requests_per_s']:>8.3f}{w['tokens_per_s']:>8.1f}"
              f"{right_:>16}  {share}")  # fmt: skip
    print("\nAgainst large direct (median over rounds of each round's change):")
    claims = SEED_CLAIMS
    print(f"{'':<14}{'cost':>9}{'TTFT p99':>10}{'throughput':>12}{'quality (points)':>18}")
    for way, c in doc["changes_vs_large_direct"].items():
        qp = "-" if c["quality_points"] is None else f"{c['quality_points']:+.1f}"
        print(f"{way:<14}{c['cost']:>+9.0%}{c['ttft_p99']:>+10.0%}{c['throughput']:>+12.0%}"
              f"{qp:>18}")  # fmt: skip
    print(f"{'seeds claimed':<14}{claims['cost']:>+9.0%}{claims['ttft_p99']:>+10.0%}"
          f"{claims['throughput']:>+12.0%}{claims['quality'] * 100:>+18.1f}")  # fmt: skip
    print(f"\nwrote {doc['out']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--requests", type=int, default=30, help="requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    args = parser.parse_args(argv)
    if args.requests < 6:
        parser.error("--requests: at least 6 (the workload has four kinds)")
    cfg = load_config(args.config)
    items = workload(args.requests, args.seed)
    composition: dict[str, int] = {}
    for item in items:
        composition[item["kind"]] = composition.get(item["kind"], 0) + 1
    result = asyncio.run(bench(args, cfg, items))
    doc: dict[str, Any] = {
        "benchmark": "end to end: HTTP front and gRPC Route against the large tier direct",
        "command": "make bench-e2e",
        "machine": machine(grpc=grpc.__version__),
        "tiers": [
            {
                "name": t.name,
                "model": Path(t.model).name,
                "validation": t.validation,
                "price_per_1k_input_usd": t.price_per_1k_input_usd,
                "price_per_1k_output_usd": t.price_per_1k_output_usd,
            }
            for t in cfg.tiers
        ],
        "router": {
            "scorer": cfg.router.scorer,
            "artifact": Path(cfg.router.artifact).name if cfg.router.artifact else None,
            "complexity_threshold": cfg.router.complexity_threshold,
            "target_large_share": cfg.router.target_large_share,
        },
        "workload": {
            "requests": len(items),
            "composition": ", ".join(f"{k} {n}" for k, n in sorted(composition.items())),
            "seed": args.seed,
        },
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        **summarize(result, cfg),
        "seed_claims": SEED_CLAIMS,
        "out": str(args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out),
    }
    write_result(args.out, doc)
    print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
