"""Calibration that never makes it worse: `tierroute calibrate` on 250, 500 and 1,000 labelled
rows of each RouterDC benchmark (../shared/data/routerdc7), shrunk toward the shipped default
artifact as its prior, evaluated on rows it never saw.

Per benchmark the pair is the base Mistral-7B (the small tier) and the best of the seven models
on the training rows (the large tier). Training rows: the benchmark's train split (or, for the
benchmarks with one file, the `calibrate` half by prompt hash); the first n by a hash of the
prompt. Test rows: the test split (or the `eval` half). For each n: what `calibrate --model
auto` did with the default prior (blended, or refused and kept the prior), the held-out APGR of
what a user would then serve, with a bootstrap 95% interval, against the prior alone, the
calibrated router without a prior, and a random router. Prints a table, writes
benchmarks/results/calibration.json.

    make bench-calibration      # or: .venv/bin/python benchmarks/calibration.py
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT, write_result
from tierroute.quality import apgr
from tierroute.quality.artifact import load_artifact, raw_scores
from tierroute.quality.calibrate import Labelled, NotBetter, calibrate, labelled
from tierroute.quality.evaluate import DEFAULT_ARTIFACT, bootstrap, context, machine
from tierroute.quality.labelled import Row, read_rows, split

DATA = ROOT.parent / "shared" / "data" / "routerdc7"
WEAK = "mistralai/Mistral-7B-v0.1"
BENCHMARKS = {  # name: (training rows, test rows); one file: its two hash halves
    "mmlu": ("mmlu.train.jsonl", "mmlu.test.jsonl"),
    "gsm8k": ("gsm8k.train.jsonl", "gsm8k.test.jsonl"),
    "cmmlu": ("cmmlu.train.jsonl", "cmmlu.test.jsonl"),
    "ceval": ("ceval.all.jsonl", None),
    "math_prealgebra": ("math_prealgebra.all.jsonl", None),
}
SIZES = (250, 500, 1000)


def rows_of(name: str) -> tuple[list[Row], list[Row]]:
    train_file, test_file = BENCHMARKS[name]
    rows = read_rows(DATA / train_file)
    if test_file is None:
        return split(rows, "calibrate"), split(rows, "eval")
    return rows, read_rows(DATA / test_file)


def first(rows: list[Row], n: int) -> list[Row]:
    """n rows chosen by a hash of the prompt (the same ones on every run)."""
    return sorted(rows, key=lambda r: hashlib.sha256(r.prompt.encode()).digest())[:n]


def held_out(raw: np.ndarray, test: Labelled) -> dict[str, Any]:
    return {
        "apgr": apgr.curve(raw, test.large, test.small).apgr,
        "ci95": bootstrap(
            lambda i: apgr.curve(raw[i], test.large[i], test.small[i]).apgr, len(raw), 300
        ),
    }


def score(artifact: Path, test: Labelled) -> np.ndarray:
    meta, arrays = load_artifact(artifact)
    return raw_scores(meta["model"], arrays, meta.get("params", {}), test.embeddings, test.texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "models" / "embeddings-cache")
    parser.add_argument("--prior", type=Path, default=ROOT / DEFAULT_ARTIFACT)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ctx = context(args.config, args.cache_dir)
    version = ctx.embedder().version
    results: list[dict[str, Any]] = []
    head = (
        f"{'benchmark':<16}{'rows':>6}  {'calibrate with the prior':<36}"
        f"{'served APGR (95% CI)':<24}{'prior alone':>12}{'no prior':>10}{'random':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for name in args.benchmarks:
        train_rows, test_rows = rows_of(name)
        means = {m: np.mean([r.scores[m] for r in train_rows]) for m in train_rows[0].scores}
        strong = max(means, key=lambda m: means[m])
        test = labelled(test_rows, WEAK, strong, ctx.embedder(), ctx.cache_dir)
        prior = held_out(score(args.prior, test), test)
        random = float(np.mean([c.apgr for c in apgr.random_curves(test.large, test.small)]))
        for n in SIZES:
            if n > len(train_rows):
                continue
            data = labelled(first(train_rows, n), WEAK, strong, ctx.embedder(), ctx.cache_dir)
            with tempfile.TemporaryDirectory() as tmp:
                common: dict[str, Any] = {
                    "small": WEAK,
                    "large": strong,
                    "embedder_version": version,
                    "source": f"routerdc7 {name} ({n} rows)",
                }
                calibrate(data, "auto", {"pgr": 0.8}, out=Path(tmp) / "own", **common)
                own = held_out(score(Path(tmp) / "own", test), test)
                try:
                    meta = calibrate(
                        data,
                        "auto",
                        {"pgr": 0.8},
                        out=Path(tmp) / "blend",
                        prior=args.prior,
                        **common,
                    )
                except NotBetter as exc:
                    outcome, served = "refused: prior kept", prior
                    why = str(exc)
                else:
                    share = meta["params"].get("prior_share", 0.0)
                    outcome = f"written ({meta['model']}, prior share {share:g})"
                    served = held_out(score(Path(tmp) / "blend", test), test)
                    why = ""
            row = {
                "benchmark": name,
                "rows": n,
                "test_rows": len(test_rows),
                "small": WEAK,
                "large": strong,
                "outcome": outcome,
                "refusal": why,
                "served": served,
                "prior_alone": prior,
                "calibrated_without_prior": own,
                "random": random,
                "not_below_prior": served["apgr"] >= prior["apgr"] - 1e-9,
                "not_below_random": served["apgr"] >= random,
            }
            results.append(row)
            ci = served["ci95"]
            print(
                f"{name:<16}{n:>6}  {outcome:<36}{served['apgr']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
                f"{'':<4}{prior['apgr']:>12.3f}{own['apgr']:>10.3f}{random:>8.3f}",
                flush=True,
            )
    below_prior = [r for r in results if not r["not_below_prior"]]
    below_random = [r for r in results if not r["not_below_random"]]
    print(
        f"\nserved below the prior on held-out rows: {len(below_prior)} of {len(results)}; "
        f"below random: {len(below_random)} of {len(results)}"
    )
    write_result(
        args.out,
        {
            "benchmark": "calibration safety",
            "command": "make bench-calibration",
            "machine": machine(),
            "prior": load_artifact(args.prior)[0]["version"],
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
