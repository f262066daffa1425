"""What selection among three tiers within a request's bounds adds to a decision, against two
tiers with no bounds (the router before issue 13), side by side in one process.

Both deciders run the real embedder and the config's scorer; every prompt is scored once first,
so the timed decisions are routing-cache hits and what is left is what differs: the tier
ranking, and for three tiers also the request's needs (tokens against each context window,
counted with the tier model's tokenizer when the prompt could overflow), its SLO against the
measured figures and the tier prices, and the reasons. The two are timed in alternating blocks
(the order swapped every round), and the report is the paired difference of their p50s.

    make bench-router   # runs this after the Score benchmark; or:
    .venv/bin/python benchmarks/bench_selection.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, median_iqr, print_goals, write_result

from tierroute.core.config import Config, load_config
from tierroute.router.scoring.decider import Decider
from tierroute.router.tiers.measured import TTFT_MS
from tierroute.router.v1 import router_service_pb2 as pb

PROMPTS = [
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Prove that there are infinitely many primes.",
    "Write a Python function that reverses a linked list, and explain its complexity.",
    "Summarize the plot of Hamlet in two sentences.",
    "Design a rate limiter for a distributed API gateway; discuss trade-offs.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "A long one: " + "the quick brown fox jumps over the lazy dog " * 60,
]


def three_tiers(base: Config) -> Config:
    """The config's tiers, with a medium tier between its first and last: own price and a
    smaller context window, so every request is checked against three windows."""
    small, large = base.tiers[0], base.tiers[-1]
    medium = small.model_copy(
        update={
            "name": "medium",
            "max_score": (base.tier_bounds()[0] + 10.0) / 2,
            "price_per_1k_input_usd": 0.001,
            "price_per_1k_output_usd": 0.002,
            "context_window": 512,
        }
    )
    return base.model_copy(update={"tiers": [small, medium, large]})


async def timed(decider: Decider, ask: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        started = time.perf_counter()
        a = ask(decider, prompt)
        await decider.decide(prompt, False, a)
        out.append((time.perf_counter() - started) * 1e6)
    return out


def no_bounds(decider: Decider, prompt: str) -> Any:
    return None


def with_slo(decider: Decider, prompt: str) -> Any:
    return decider.ask(prompt, [], 0, pb.Slo(max_ttft_ms=500, max_cost_per_1k=0.004))


async def run(config: Path, rounds: int, per_block: int) -> dict[str, Any]:
    base = load_config(config, part="router")
    two = Decider(base)
    three = Decider(three_tiers(base))
    for d in (two, three):
        await d.load()
        for tier, ms in zip(d.decisions.policy.tiers, (80.0, 150.0, 400.0), strict=False):
            for _ in range(5):
                d.decisions.measurements.observe(tier, "", TTFT_MS, ms)
        for p in PROMPTS:  # fill the routing cache
            await d.decide(p, False, None)
    runs = [("two_tiers", two, no_bounds), ("three_tiers_slo", three, with_slo)]
    p50: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for r in range(rounds):
        for name, decider, ask in runs if r % 2 == 0 else runs[::-1]:
            p50[name].append(statistics.median(await timed(decider, ask, per_block)))
    for d in (two, three):
        await d.close()
    diffs = [t - b for t, b in zip(p50["three_tiers_slo"], p50["two_tiers"], strict=True)]
    return {
        "p50_us": {name: median_iqr(v) for name, v in p50.items()},
        "added_p50_us": median_iqr(diffs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS / "selection.json")
    args = parser.parse_args()
    result = asyncio.run(run(args.config, args.rounds, args.per_block))
    added = result["added_p50_us"]["median"]
    goals = {"selection_3_tiers_added_p50_ms<=0.2": added / 1000.0 <= 0.2}
    write_result(
        args.out,
        {
            "benchmark": "decision (routing-cache hit): 3 tiers with SLO and context windows "
            "vs 2 tiers with no bounds, paired p50s over alternating blocks",
            "command": "make bench-router",
            "machine": machine(),
            "rounds": args.rounds,
            "per_block": args.per_block,
            "results": result,
            "goals_met": goals,
        },
    )
    print(f"\ndecision on a routing-cache hit, median of {args.rounds} paired blocks")
    print(f"{'measurement':<44}{'p50 us':>10}")
    for name, label in [
        ("two_tiers", "2 tiers, no bounds (before issue 13)"),
        ("three_tiers_slo", "3 tiers, SLO, context windows, reasons"),
    ]:
        print(f"{label:<44}{result['p50_us'][name]['median']:>10.1f}")
    print(f"{'added by selection (paired)':<44}{added:>10.1f}")
    print_goals(goals, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
