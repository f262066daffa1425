"""What shadow mode costs the user: time to first token with shadow mode on against off, side by
side in one run, on the same tier processes.

Starts the configured suite (`--config`, the embedded default unless told): both tiers, the
validator, and three routers on them that differ only in `shadow`: off; shadowing every answer
a small tier delivers (`shadow.fraction` 1) giving way to live calls on any tier (`yield_to:
any`, the setting for tiers that share hardware, as the embedded default's two CPU engines
do); and the same giving way only to the large tier's (`yield_to: large`, the setting for
tiers on their own GPUs, run here on shared cores to show what it would cost there). The
small tier delivers its answers as generated (`validation: none`), so that every answer it
gives is one to shadow.

The workload is the everyday requests (data/everyday, the `eval` half), one user turn each,
greedy, at most `--max-tokens` tokens, sent one at a time with `--gap` seconds between one
answer and the next request (a user reading it): room for shadow calls to run, as in traffic
that is not flat out. Each round sends the whole workload through each router in turn (the
order rotating between rounds); a shadowing router's calls are let finish before the next
router's turn, so that no row pays for another's shadow calls.

Reported per router: time to first token p50/p95 over all answers and over the small tier's
(the ones shadowed), the per-round ratio against shadow off and its median over rounds, and
what shadow mode did (compared, agreed, dropped by reason), read from the router's /metrics.

    make bench-shadow         # or: .venv/bin/python benchmarks/bench_shadow.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_e2e import EVERYDAY, percentile, start_router_variant, via_route
from benchmarks.common import RESULTS, machine, start_suite, write_result
from tierroute.core.config import Config, load_config
from tierroute.quality.labelled import half
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

OFF = "shadow off"
ROUTERS = (OFF, "shadow on, yield to any", "shadow on, yield to large")
YIELD_TO = {ROUTERS[1]: "any", ROUTERS[2]: "large"}


def prompts(n: int) -> list[dict[str, Any]]:
    """The everyday requests of the `eval` half (simple and complex kinds interleaved)."""
    doc = yaml.safe_load(EVERYDAY.read_text())
    out = [
        {"kind": f"everyday/{level}", "prompt": p, "answers": None}
        for level in ("simple", "complex")
        for kind in doc[level].values()
        for p in kind
        if half(p) == "eval"
    ]
    simple = [p for p in out if p["kind"] == "everyday/simple"]
    complex_ = [p for p in out if p["kind"] == "everyday/complex"]
    mixed = [p for pair in zip(simple, complex_, strict=False) for p in pair]
    mixed += simple[len(complex_) :] + complex_[len(simple) :]
    return mixed[:n]


async def shadow_figures(metrics: str) -> dict[str, Any]:
    """The shadowing router's shadow counters, from its /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{metrics}/metrics")).text
    out: dict[str, Any] = {"compared": 0.0, "agreed": 0.0, "dropped": {}, "in_flight": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tierroute_shadow_comparisons_total":
                out["compared"] += s.value
                out["agreed"] += s.value if s.labels["agreed"] == "true" else 0.0
            elif s.name == "tierroute_shadow_dropped_total":
                out["dropped"][s.labels["reason"]] = s.value
            elif s.name == "tierroute_shadow_in_flight":
                out["in_flight"] = s.value
    return out


async def drained(metrics: str, timeout: float = 600) -> None:  # noqa: ASYNC109
    """Until the shadowing router has no shadow call in flight."""
    deadline = time.monotonic() + timeout
    while (await shadow_figures(metrics))["in_flight"] > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"shadow calls still in flight after {timeout:g} s")
        await asyncio.sleep(0.1)


async def bench(
    args: argparse.Namespace, cfg: Config, items: list[dict[str, Any]]
) -> dict[str, Any]:

    root = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    started: list[Any] = []
    try:
        tiers, validator = await start_suite(args.config, cfg, root, started)
        routers = {}
        for name in ROUTERS:

            def change(doc: dict[str, Any], name: str = name) -> None:
                # Delivered as generated: every small-tier answer is an answer to shadow (a
                # validated one is often escalated, and then the large tier answered anyway).
                doc["tiers"][0]["validation"] = "none"
                doc["shadow"] = (
                    {"fraction": 1.0, "yield_to": YIELD_TO[name]} if name in YIELD_TO
                    else {"fraction": 0.0}
                )  # fmt: skip

            routers[name] = await start_router_variant(
                cfg, tiers, validator.address, root / name.replace(" ", "-"), change
            )
            started.append(routers[name])
        shadowing = {n: routers[n].metrics_address for n in YIELD_TO}
        samples: dict[str, list[list[dict[str, Any]]]] = {n: [] for n in ROUTERS}
        stubs = {}
        channels = [grpc.aio.insecure_channel(routers[n].address) for n in ROUTERS]
        try:
            for name, channel in zip(ROUTERS, channels, strict=True):
                stubs[name] = pb_grpc.RouterServiceStub(channel)
                await via_route(
                    stubs[name], {"kind": "warm-up", "prompt": "Say hello.", "answers": None}, 8
                )
                if name in shadowing:
                    await drained(shadowing[name])
            before = {n: await shadow_figures(m) for n, m in shadowing.items()}
            for r in range(args.rounds):
                order = ROUTERS[r % len(ROUTERS) :] + ROUTERS[: r % len(ROUTERS)]
                for name in order:
                    print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr)
                    got = []
                    for item in items:
                        got.append(await via_route(stubs[name], item, args.max_tokens))
                        await asyncio.sleep(args.gap)  # the workload's think time
                    samples[name].append(got)
                    if name in shadowing:
                        await drained(shadowing[name])
            after = {n: await shadow_figures(m) for n, m in shadowing.items()}
        finally:
            for channel in channels:
                await channel.close()
        shadow = {
            n: {
                "compared": after[n]["compared"] - before[n]["compared"],
                "agreed": after[n]["agreed"] - before[n]["agreed"],
                "dropped": {
                    k: v - before[n]["dropped"].get(k, 0.0)
                    for k, v in after[n]["dropped"].items()
                    if v - before[n]["dropped"].get(k, 0.0)
                },
            }
            for n in shadowing
        }
        return {"samples": samples, "shadow": shadow}
    finally:
        for process in reversed(started):
            process.stop()


def figures(samples: list[dict[str, Any]], small: str) -> dict[str, Any]:
    ttft = [s["ttft_ms"] for s in samples]
    small_ttft = [s["ttft_ms"] for s in samples if s["tier"] == small and not s["escalated"]]
    return {
        "requests": len(samples),
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p95_ms": percentile(ttft, 95),
        "small_answers": len(small_ttft),
        "small_ttft_p50_ms": statistics.median(small_ttft) if small_ttft else None,
        "small_ttft_p95_ms": percentile(small_ttft, 95) if small_ttft else None,
    }


def summarize(result: dict[str, Any], cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    small = cfg.tiers[0].name
    rounds = {n: [figures(s, small) for s in result["samples"][n]] for n in ROUTERS}
    pooled = {n: figures([s for got in result["samples"][n] for s in got], small) for n in ROUTERS}
    ratios: dict[str, dict[str, float | None]] = {}
    for name in YIELD_TO:
        ratios[name] = {}
        for key in ("ttft_p50_ms", "ttft_p95_ms", "small_ttft_p50_ms"):
            paired = [
                on[key] / off[key]
                for on, off in zip(rounds[name], rounds[OFF], strict=True)
                if on[key] and off[key]
            ]
            ratios[name][key] = statistics.median(paired) if paired else None
    shadow = {
        n: {**f, "offered": f["compared"] + sum(f["dropped"].values())}
        for n, f in result["shadow"].items()
    }
    return {
        "benchmark": "shadow mode: the user's time to first token, shadowing every small-tier "
        "answer against not shadowing",
        "command": "make bench-shadow",
        "machine": machine(grpc=grpc.__version__),
        "tiers": [
            {"name": t.name, "validation": t.validation, "model": Path(t.model).name}
            for t in cfg.tiers
        ],
        "workload": {
            "requests_per_round": len(result["samples"][ROUTERS[0]][0]),
            "prompts": "data/everyday eval half, simple and complex interleaved",
            "concurrency": 1,
            "gap_seconds": args.gap,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
        },
        "shadow_config": {"fraction": 1.0, "max_in_flight": 1, "busy_in_flight": 1},
        "routers": pooled,
        "rounds": rounds,
        "ratio_to_shadow_off_median_of_rounds": ratios,
        "shadow": shadow,
    }


def print_table(doc: dict[str, Any]) -> None:
    w = doc["workload"]
    print(f"\nshadow mode, {w['requests_per_round']} requests x {w['rounds']} rounds per "
          f"router, one at a time, {w['gap_seconds']:g} s between, "
          f"max_tokens {w['max_tokens']}")  # fmt: skip
    print(f"{'router':<28}{'TTFT p50':>9}{'p95 ms':>8}{'small answers':>15}"
          f"{'their p50':>11}{'p95 ms':>8}")  # fmt: skip
    for name, f in doc["routers"].items():
        small50 = "-" if f["small_ttft_p50_ms"] is None else f"{f['small_ttft_p50_ms']:.0f}"
        small95 = "-" if f["small_ttft_p95_ms"] is None else f"{f['small_ttft_p95_ms']:.0f}"
        print(f"{name:<28}{f['ttft_p50_ms']:>9.0f}{f['ttft_p95_ms']:>8.0f}"
              f"{f['small_answers']:>15}{small50:>11}{small95:>8}")  # fmt: skip
    for name, r in doc["ratio_to_shadow_off_median_of_rounds"].items():
        s = doc["shadow"][name]
        agreement = f"{s['agreed'] / s['compared']:.0%}" if s["compared"] else "-"
        print(f"{name}: against off (median of rounds) " + ", ".join(
            f"{k} x{v:.3f}" for k, v in r.items() if v is not None))  # fmt: skip
        print(f"  {s['offered']:.0f} offered, {s['compared']:.0f} compared (agreement "
              f"{agreement}), dropped {s['dropped'] or 'none'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--requests", type=int, default=16, help="requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between requests")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS / "shadow.json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    items = prompts(args.requests)
    result = asyncio.run(bench(args, cfg, items))
    raw = args.out.with_suffix(".raw.json")  # kept until the summary is written
    raw.write_text(json.dumps(result))
    doc = summarize(result, cfg, args)
    print_table(doc)
    write_result(args.out, doc)
    raw.unlink()
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
