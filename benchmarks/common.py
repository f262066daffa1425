"""What every benchmark shares: paired comparisons, the machine it ran on, the result file and
the goal lines of the printed table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
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


def write_result(out: Path, doc: dict[str, Any]) -> None:
    """Write the result file: the document with its date, and the goals it was held to."""
    doc = {**doc, "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def print_goals(goals: dict[str, bool], out: Path) -> None:
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISS'} {goal}")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
