"""Calibration that never makes it worse, and still learns: `tierroute calibrate` on 250, 500
and 1,000 labelled rows of each RouterDC benchmark (../shared/data/routerdc7), against three
priors, with its guard judged on rows it never saw.

Per benchmark the pair is the base Mistral-7B (the small tier) and the best of the seven models
on the training rows (the large tier); on `specialists` (MMLU and GSM8K mixed) it is zephyr
(best at MMLU) and MetaMath (best at grade-school maths), whose better model depends on the
topic: a prior fitted on another pair's notion of difficulty has most to learn there. Training
rows: the benchmark's train split (or, for the benchmarks with one file, the `calibrate` half
by prompt hash); the slice of n rows: the first n by a hash of the prompt. Test rows: the test
split (or the `eval` half). The three priors:
- `shipped`: the shipped default artifact (fitted on RouteLLM's pair, another pair of models);
- `same task`: an artifact calibrated (no prior) on this benchmark's other training rows (all
  but the slice), a prior the slice can rarely beat;
- `other task`: an artifact calibrated (no prior) on another benchmark's training rows (OTHER),
  a router fitted on other traffic.

For each (benchmark, n, prior), the blend `calibrate --model auto` finds (written with --force
when the guard refuses it) is scored on the test rows against the prior alone: its held-out
APGR gain, with a paired bootstrap 95% interval, says whether it was a real gain (interval
above zero), a loss (below) or a tie. Then what each guard decided on the slice alone: the
shipped guard (a paired bootstrap of out-of-fold APGR over the rows) and the one it replaced
(the gain fold by fold over 5 folds, a normal interval over the five). A good guard accepts the
real gains and refuses the losses. Prints a table, writes benchmarks/results/calibration.json.

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
from tierroute.quality.calibrate import (
    PRIOR_SHARES,
    NotBetter,
    calibrate,
    fold_apgrs,
    kfold_scores,
    kfolds,
    paired_gain,
    summary,
)
from tierroute.quality.evaluate import DEFAULT_ARTIFACT, context, machine
from tierroute.quality.fitting import Labelled, labelled
from tierroute.quality.labelled import Row, read_rows, split

DATA = ROOT.parent / "shared" / "data" / "routerdc7"
WEAK = "mistralai/Mistral-7B-v0.1"
BENCHMARKS = {  # name: (training files, test files); no test file: the two hash halves
    "mmlu": (("mmlu.train.jsonl",), ("mmlu.test.jsonl",)),
    "gsm8k": (("gsm8k.train.jsonl",), ("gsm8k.test.jsonl",)),
    "cmmlu": (("cmmlu.train.jsonl",), ("cmmlu.test.jsonl",)),
    "ceval": (("ceval.all.jsonl",), ()),
    "math_prealgebra": (("math_prealgebra.all.jsonl",), ()),
    # Two specialists: zephyr, the best at MMLU, and MetaMath, the best at grade-school maths;
    # on their mixed traffic the model to call depends on the topic, not on difficulty.
    "specialists": (
        ("mmlu.train.jsonl", "gsm8k.train.jsonl"),
        ("mmlu.test.jsonl", "gsm8k.test.jsonl"),
    ),
}
# The pair where it is not the base Mistral-7B against the best on the training rows.
PAIRS = {"specialists": ("HuggingFaceH4/zephyr-7b-beta", "meta-math/MetaMath-Mistral-7B")}
SIZES = (250, 500, 1000)
# Where the `other task` prior comes from: a benchmark of another kind.
OTHER = {
    "mmlu": "gsm8k",
    "gsm8k": "cmmlu",
    "cmmlu": "gsm8k",
    "ceval": "gsm8k",
    "math_prealgebra": "cmmlu",
    "specialists": "cmmlu",
}


def rows_of(name: str) -> tuple[list[Row], list[Row]]:
    train_files, test_files = BENCHMARKS[name]
    rows = [r for f in train_files for r in read_rows(DATA / f)]
    if not test_files:
        return split(rows, "calibrate"), split(rows, "eval")
    return rows, [r for f in test_files for r in read_rows(DATA / f)]


def pair(name: str, rows: list[Row]) -> tuple[str, str]:
    """(small, large): PAIRS', else the base Mistral-7B and the best model on `rows`."""
    if name in PAIRS:
        return PAIRS[name]
    means = {m: np.mean([r.scores[m] for r in rows]) for m in rows[0].scores}
    return WEAK, max(means, key=lambda m: means[m])


def first(rows: list[Row], n: int) -> list[Row]:
    """n rows chosen by a hash of the prompt (the same ones on every run)."""
    return sorted(rows, key=lambda r: hashlib.sha256(r.prompt.encode()).digest())[:n]


def held_out(raw: np.ndarray, test: Labelled) -> float:
    return apgr.curve(raw, test.large, test.small).apgr


def score(artifact: Path, test: Labelled) -> np.ndarray:
    meta, arrays = load_artifact(artifact)
    return raw_scores(meta["model"], arrays, meta.get("params", {}), test.embeddings, test.texts)


def fold_guard(data: Labelled, model: str, prior: Path) -> bool:
    """The guard calibrate used before: some blend's APGR gain over the prior, fold by fold over
    K_FOLDS folds, has a 95% normal interval (over the folds) above zero."""
    meta, arrays = load_artifact(prior)
    folds = kfolds(data)
    oof = kfold_scores(model, data, folds)
    prior_raw = raw_scores(meta["model"], arrays, meta.get("params", {}), data.embeddings,
                           data.texts)  # fmt: skip
    z_own = (oof - oof.mean()) / (oof.std() + 1e-9)
    z_prior = (prior_raw - prior_raw.mean()) / (prior_raw.std() + 1e-9)
    alone = fold_apgrs(z_prior, data, folds)
    for share in PRIOR_SHARES[:-1]:
        blend = fold_apgrs((1 - share) * z_own + share * z_prior, data, folds)
        try:
            low = summary([float(g) for g in np.subtract(blend, alone)])["ci95"][0]
        except ValueError:  # too few folds with a defined APGR
            continue
        if low > 0:
            return True
    return False


def other_task(name: str, work: Path, ctx: Any, version: str) -> Path:
    """A prior calibrated (no prior of its own) on all the training rows of benchmark `name`,
    with that benchmark's pair: a router for other traffic. Made once per benchmark."""
    out = work / f"other-task-{name}"
    if not out.exists():
        rows, _ = rows_of(name)
        weak, strong = pair(name, rows)
        data = labelled(rows, weak, strong, ctx.embedder(), ctx.cache_dir)
        calibrate(data, "auto", {"pgr": 0.8}, out=out, small=weak, large=strong,
                  embedder_version=version, source=f"routerdc7 {name}")  # fmt: skip
    return out


def truth(gain: float, ci: list[float] | None) -> str:
    if ci is None:
        return "undefined"
    return "gain" if ci[0] > 0 else "loss" if ci[1] < 0 else "tie"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "models" / "embeddings-cache")
    parser.add_argument("--prior", type=Path, default=ROOT / DEFAULT_ARTIFACT)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    ctx = context(args.config, args.cache_dir)
    version = ctx.embedder().version
    results: list[dict[str, Any]] = []
    head = (
        f"{'benchmark':<16}{'rows':>6} {'prior':<11}{'prior APGR':>11}{'blend':>7}"
        f"{'held-out gain (95% CI)':>28}  {'truth':<7}{'guard':<10}{'fold guard':<10}"
    )
    print(head + "\n" + "-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.benchmarks:
            train_rows, test_rows = rows_of(name)
            weak, strong = pair(name, train_rows)
            test = labelled(test_rows, weak, strong, ctx.embedder(), ctx.cache_dir)
            common: dict[str, Any] = {"small": weak, "large": strong, "embedder_version": version}
            for n in SIZES:
                if n >= len(train_rows):
                    continue
                chosen = first(train_rows, n)
                kept = {r.prompt for r in chosen}
                rest = [r for r in train_rows if r.prompt not in kept]
                data = labelled(chosen, weak, strong, ctx.embedder(), ctx.cache_dir)
                others = labelled(rest, weak, strong, ctx.embedder(), ctx.cache_dir)
                same_task = work / f"{name}-{n}-same-task"
                calibrate(others, "auto", {"pgr": 0.8}, out=same_task,
                          source=f"routerdc7 {name}, all but {n} rows", **common)  # fmt: skip
                priors = {"shipped": args.prior, "same task": same_task}
                priors["other task"] = other_task(OTHER[name], work, ctx, version)
                for label, prior in priors.items():
                    row = judge(name, n, label, prior, data, test, work, common)
                    results.append(row)
                    ci = row["held_out_gain_ci95"]
                    ci_text = f"({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "(undefined)"
                    print(
                        f"{name:<16}{n:>6} {label:<11}{row['prior_apgr']:>11.3f}"
                        f"{row['blend_apgr']:>7.3f}{row['held_out_gain']:>+11.3f} {ci_text:>16}  "
                        f"{row['truth']:<7}{row['guard']:<10}{row['fold_guard']:<10}",
                        flush=True,
                    )
    tally = tallies(results)
    print()
    for line in tally["lines"]:
        print(line)
    write_result(
        args.out,
        {
            "benchmark": "calibration guard",
            "command": "make bench-calibration",
            "machine": machine(),
            "prior": load_artifact(args.prior)[0]["version"],
            "results": results,
            "tally": tally["counts"],
        },
    )
    print(f"wrote {args.out}")
    return 0


def judge(
    name: str,
    n: int,
    label: str,
    prior: Path,
    data: Labelled,
    test: Labelled,
    work: Path,
    common: dict[str, Any],
) -> dict[str, Any]:
    """One slice against one prior: what the guard decided, and what was true on the test rows."""
    out = work / f"{name}-{n}-calibrated-against-{label.replace(' ', '-')}"
    source = f"routerdc7 {name} ({n} rows)"
    try:
        meta = calibrate(data, "auto", {"pgr": 0.8}, out=out, prior=prior, source=source, **common)
        accepted = True
    except NotBetter:
        meta = calibrate(data, "auto", {"pgr": 0.8}, out=out, prior=prior, source=source,
                         force=True, **common)  # fmt: skip
        accepted = False
    own_model = meta["params"].get("own_model", meta["model"])
    blend, alone = score(out, test), score(prior, test)
    gain = paired_gain(blend, alone, test, resamples=500)
    return {
        "benchmark": name,
        "rows": n,
        "test_rows": len(test.rows),
        "small": common["small"],
        "large": common["large"],
        "prior": label,
        "model": meta["model"],
        "prior_share": meta["params"].get("prior_share", 0.0),
        "prior_apgr": held_out(alone, test),
        "blend_apgr": gain["apgr"],
        "held_out_gain": gain["gain"],
        "held_out_gain_ci95": gain["gain_ci95"],
        "truth": truth(gain["gain"], gain["gain_ci95"]),
        "guard": "accepted" if accepted else "refused",
        "fold_guard": "accepted" if fold_guard(data, own_model, prior) else "refused",
    }


def tallies(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        for guard in ("guard", "fold_guard"):
            key = f"{guard}:{r['truth']}"
            counts.setdefault(key, {"accepted": 0, "refused": 0})[r[guard]] += 1
    lines = []
    for truth_ in ("gain", "loss", "tie"):
        for guard, label in (("guard", "shipped guard"), ("fold_guard", "fold guard")):
            c = counts.get(f"{guard}:{truth_}", {"accepted": 0, "refused": 0})
            lines.append(
                f"{label:<14} held-out {truth_:<5}: "
                f"accepted {c['accepted']}, refused {c['refused']}"
            )
    return {"counts": counts, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
