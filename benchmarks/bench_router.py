"""Benchmark the router's Score RPC against the seed design's embedder, side by side.

Starts the router as its own process (the embedded default config, a free port), then in
alternating rounds measures:
  - Score over gRPC at concurrency 1 (latency) and 32 (throughput, latency), cache bypassed;
  - Score over gRPC answered by the routing cache, at concurrency 1 (the floor: the RPC, the
    handler and the client without the scoring) and 32;
  - the baseline, the seed design: sentence-transformers (PyTorch, fp32, the same weights)
    encoding one prompt per call in this process, plus the hand-written anchor scorer, at
    concurrency 1. (The router runs the config's scorer: the calibrated one by default.)
Prints a table and writes benchmarks/results/router.json. Medians over the rounds are reported.

    make bench-router            # or: .venv/bin/python benchmarks/bench_router.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, machine, print_goals, write_result
from tierroute.core.asked import asked
from tierroute.core.config import load_config
from tierroute.router.scoring.scorers import build_scorer
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

RESULTS = ROOT / "benchmarks" / "results" / "router.json"
BUDGET_MS = 5000
UNSCORED = (pb.REASON_CODE_ROUTER_FALLBACK, pb.REASON_CODE_SCORE_DEGRADED)


def prompt_set() -> list[str]:
    doc = yaml.safe_load((ROOT / "tests" / "data" / "prompts.yaml").read_text())
    return doc["simple"] + doc["complex"]


def start_router(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierroute.router",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        stderr=subprocess.DEVNULL,
        # What the scorer can do: every prompt scored by the embedder, none sent to the
        # degraded scorer or the fallback by the budget (make bench-router-contention is
        # about those).
        env={**os.environ, "TIERROUTE__ROUTER__SCORE_BUDGET_MS": str(BUDGET_MS)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if port_file.exists():
            address = f"127.0.0.1:{port_file.read_text().strip()}"
            with grpc.insecure_channel(address) as ch:
                try:
                    status = (
                        health_pb2_grpc.HealthStub(ch)
                        .Check(health_pb2.HealthCheckRequest(), timeout=2)
                        .status
                    )
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return proc, address
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("router did not become SERVING within 120 s")


async def grpc_load(
    address: str, prompts: list[str], concurrency: int, total: int, bypass_cache: bool
) -> dict[str, float]:
    latencies: list[float] = []
    unscored = 0  # decided by the degraded scorer or the fallback
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for p in prompts[:concurrency]:  # warm the connection (and, if wanted, the cache)
            await stub.Score(pb.ScoreRequest(prompt=p))
        counter = iter(range(total))

        async def worker() -> None:
            for i in counter:
                request = pb.ScoreRequest(
                    prompt=prompts[i % len(prompts)], bypass_cache=bypass_cache
                )
                t0 = time.perf_counter()
                got = await stub.Score(request, timeout=30)
                latencies.append((time.perf_counter() - t0) * 1000)
                codes = got.decision.reason_codes
                nonlocal unscored
                unscored += any(c in UNSCORED for c in codes)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {**summarize(latencies, elapsed), "unscored": unscored}


def sync_load(
    address: str, prompts: list[str], total: int, bypass_cache: bool = True
) -> dict[str, float]:
    """Concurrency 1 from a blocking client: the least client-side overhead Python offers.
    With the cache (`bypass_cache` False, every prompt cached first): the floor of a Score
    over gRPC, everything but the scoring."""
    latencies: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for p in prompts if not bypass_cache else prompts[:1]:
            stub.Score(pb.ScoreRequest(prompt=p))
        started = time.perf_counter()
        for i in range(total):
            request = pb.ScoreRequest(prompt=prompts[i % len(prompts)], bypass_cache=bypass_cache)
            t0 = time.perf_counter()
            stub.Score(request, timeout=30)
            latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed)


def summarize(latencies_ms: list[float], elapsed_s: float) -> dict[str, float]:
    arr = np.array(latencies_ms)
    return {
        "requests": len(arr),
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "throughput_rps": len(arr) / elapsed_s,
    }


def baseline(prompts: list[str], total: int, model: Any, scorer: Any) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for i in range(total):
        t0 = time.perf_counter()
        vector = model.encode([prompts[i % len(prompts)]], normalize_embeddings=True)
        scorer.score(np.asarray(vector, dtype=np.float32))
        latencies.append((time.perf_counter() - t0) * 1000)
    return summarize(latencies, time.perf_counter() - started)


def profile(config: Path, prompts: list[str], reps: int) -> dict[str, dict[str, float]]:
    """Where one Score's time goes, stage by stage, in this process (microseconds, median and
    p99 over every prompt `reps` times): tokenizer, ONNX run, the scorer (numpy's BLAS on one
    thread, as the router runs it, and on its default threads), the whole in-process decision
    (through the batcher's worker thread; cache bypassed)."""
    from threadpoolctl import threadpool_limits

    from tierroute.router.scoring.decider import Decider
    from tierroute.router.scoring.learned import LearnedScorer

    cfg = load_config(config)
    decider = Decider(cfg)

    def stage(fn: Any) -> dict[str, float]:
        times = []
        for _ in range(reps):
            for p in prompts:
                t0 = time.perf_counter()
                fn(p)
                times.append((time.perf_counter() - t0) * 1e6)
        return {"p50_us": float(np.median(times)), "p99_us": float(np.percentile(times, 99))}

    async def run() -> dict[str, dict[str, float]]:
        await decider.load()
        embedder, scorer = decider.embedder, decider.scorer
        assert embedder is not None and scorer is not None
        encoded = {p: embedder.encode([p]) for p in prompts}
        vectors = {p: embedder.run(encoded[p]) for p in prompts}
        out = {
            # what the router scores of a prompt: finding the request (tierroute.core.asked),
            # uncached (a Route computes it once; its later uses hit asked's cache)
            "asked": stage(asked.__wrapped__),
            "asked_with_pasted_context": stage(
                lambda p: asked.__wrapped__(f"{PASTED}\n\n{p}")  # 120 words, then the prompt
            ),
            "tokenize": stage(lambda p: embedder.encode([p])),
            "onnx_run": stage(lambda p: embedder.run(encoded[p])),
            "scorer_blas_1_thread": stage(lambda p: scorer.score(vectors[p], [p])),
        }
        if cfg.router.scorer == "learned" and cfg.router.artifact is not None:
            # the same scorer with the exact float32 kNN search (as `tierroute eval` runs it)
            exact = LearnedScorer(
                cfg.router.artifact,
                cfg.tier_bounds()[0],
                embedder.version,
                int8_search=False,
            )
            out["scorer_exact_knn"] = stage(lambda p: exact.score(vectors[p], [p]))
        with threadpool_limits(os.cpu_count(), user_api="blas"):
            out["scorer_blas_default_threads"] = stage(lambda p: scorer.score(vectors[p], [p]))
        # A batch of 32 as the scorer's worker embeds it, against the way it did before each
        # prompt ran alone (length-sorted runs of 8, padded, all threads on each), alternating;
        # per batch.
        batch = (prompts * 2)[:32]
        out["batch32_side_by_side"], out["batch32_padded_runs_before"] = alternating(
            reps * 4,
            lambda: embedder.embed_with_truncation(batch),
            lambda: padded_runs(embedder, batch),
        )
        if decider.degraded is not None:
            degraded = decider.degraded
            out["degraded_embedding"] = stage(lambda p: degraded.embed(p))
        times = []
        for _ in range(reps):
            for p in prompts:
                t0 = time.perf_counter()
                await decider.decide(p, bypass_cache=True)
                times.append((time.perf_counter() - t0) * 1e6)
        out["decision_in_process"] = {
            "p50_us": float(np.median(times)),
            "p99_us": float(np.percentile(times, 99)),
        }
        await decider.close()
        return out

    return asyncio.run(run())


def alternating(reps: int, *fns: Any) -> list[dict[str, float]]:
    """Each of `fns` timed `reps` times, taking turns (microseconds, median and p99)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, kept in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            kept.append((time.perf_counter() - t0) * 1e6)
    return [{"p50_us": float(np.median(t)), "p99_us": float(np.percentile(t, 99))} for t in times]


def padded_runs(embedder: Any, texts: list[str]) -> np.ndarray:
    """The batch path before each prompt ran alone: length-sorted runs of 8, each padded to
    its longest prompt, on the all-threads session (one int8 activation scale per run)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(order), 8):
        rows = order[start : start + 8]
        vectors[rows] = embedder.run(embedder.encode([texts[i] for i in rows]))
    return vectors


# A pasted text for the request finder to set aside (in prose paragraphs).
PASTED = "\n\n".join(
    [" ".join(["The quarterly report lists revenue, costs and headcount by region."] * 5)] * 3
)


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="per measurement and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cfg = load_config(args.config)
    prompts = prompt_set()
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from tierroute.tools.modelbuild import embedder_source

    tokenizer = Tokenizer.from_file(str(cfg.router.model / "tokenizer.json"))
    lengths = [len(tokenizer.encode(p).ids) for p in prompts]
    st_model = SentenceTransformer(str(embedder_source()), device="cpu")

    def st_embed(texts: list[str]) -> np.ndarray:
        return np.asarray(st_model.encode(texts, normalize_embeddings=True), dtype=np.float32)

    # The seed design: fp32 sentence-transformers and the hand-written anchor scorer.
    seed = cfg.router.model_copy(update={"scorer": "anchors", "anchors_file": None})
    st_scorer = build_scorer(seed, st_embed, "sentence-transformers-fp32")
    st_model.encode(prompts[:8])  # warm-up

    print("profiling the stages in this process ...", file=sys.stderr)
    stages = profile(args.config, prompts, reps=5)
    proc, address = start_router(args.config)
    rows: dict[str, list[dict[str, float]]] = {
        "score_c1": [],
        "score_c32": [],
        "cached_c1": [],
        "cached_c32": [],
        "baseline_c1": [],
    }
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            rows["baseline_c1"].append(baseline(prompts, args.requests // 2, st_model, st_scorer))
            rows["score_c1"].append(sync_load(address, prompts, args.requests))
            rows["cached_c1"].append(sync_load(address, prompts, args.requests, False))
            rows["score_c32"].append(
                asyncio.run(grpc_load(address, prompts, 32, args.requests * 2, True))
            )
            rows["cached_c32"].append(
                asyncio.run(grpc_load(address, prompts, 32, args.requests * 2, False))
            )
    finally:
        proc.terminate()
        proc.wait(30)

    result = {name: median_of(r) for name, r in rows.items()}
    speedup = result["baseline_c1"]["p50_ms"] / result["score_c1"]["p50_ms"]
    goals = {
        "score_c1_p50_ms<=3": result["score_c1"]["p50_ms"] <= 3,
        "score_c1_p99_ms<=8": result["score_c1"]["p99_ms"] <= 8,
        "score_c32_rps>=600": result["score_c32"]["throughput_rps"] >= 600,
        "score_c32_p99_ms<=25": result["score_c32"]["p99_ms"] <= 25,
        "speedup_vs_baseline>=4": speedup >= 4,
    }
    doc = {
        "benchmark": "router Score over gRPC vs sentence-transformers fp32, one prompt per call",
        "command": "make bench-router",
        "machine": machine(
            onnxruntime=__import__("onnxruntime").__version__,
            torch=__import__("torch").__version__,
        ),
        "prompts": {
            "count": len(prompts),
            "tokens_median": statistics.median(lengths),
            "tokens_max": max(lengths),
        },
        "rounds": args.rounds,
        "results": result,
        "profile_us": stages,
        "speedup_p50_vs_baseline": speedup,
        "goals_met": goals,
    }
    write_result(args.out, doc)

    print(
        f"\nrouter Score, {len(prompts)} prompts ({doc['prompts']['tokens_median']:.0f} tokens "
        f"median, {max(lengths)} max), median of {args.rounds} rounds, {os.cpu_count()} cores"
    )
    print(f"{'measurement':<42}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    labels = {
        "score_c1": "Score (gRPC, int8 ONNX), concurrency 1",
        "score_c32": "Score (gRPC, int8 ONNX), concurrency 32",
        "cached_c1": "Score, routing-cache hits, concurrency 1",
        "cached_c32": "Score, routing-cache hits, concurrency 32",
        "baseline_c1": "baseline: sentence-transformers fp32, c=1",
    }
    for key, label in labels.items():
        m = result[key]
        print(f"{label:<42}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{m['throughput_rps']:>9.0f}")
    print(f"\nper-request speed-up over the baseline (p50): {speedup:.1f}x")
    grpc_us = result["score_c1"]["p50_ms"] * 1000 - stages["decision_in_process"]["p50_us"]
    print("\nwhere a Score's time goes (one prompt, in-process stages, microseconds)")
    print(f"{'stage':<42}{'p50 us':>9}{'p99 us':>9}")
    for name, m in stages.items():
        print(f"{name:<42}{m['p50_us']:>9.0f}{m['p99_us']:>9.0f}")
    print(f"{'gRPC, protobuf and client (c=1 p50 - decision)':<42}{grpc_us:>9.0f}")
    ratio = (
        stages["batch32_side_by_side"]["p50_us"] / stages["batch32_padded_runs_before"]["p50_us"]
    )
    print(f"(batch32 rows: a batch of 32; side by side takes {ratio:.0%} of the padded runs' time)")
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
