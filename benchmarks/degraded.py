"""How far the degraded scorer's decisions are from the embedder's, on prompts neither was
fitted on.

The shipped router artifact and degraded map were fitted on the calibration halves of
RouteLLM's MMLU and GSM8K and of data/everyday; this scores their evaluation halves (and
MT-Bench, unseen by both) through the shipped learned scorer twice, once with the real
embedding and once with the degraded one, and reports: how often the tier decision is the
same, the rank correlation of the scores, the large tier's share either way, and on the
everyday half the AUC of each (complex above simple). Writes benchmarks/results/degraded.json.

    .venv/bin/python benchmarks/degraded.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, machine, write_result
from tierroute.core.config import load_config
from tierroute.core.prompts import normalize
from tierroute.quality.artifact import load_artifact, raw_scores, requests
from tierroute.quality.evaluate import EVERYDAY, STRONG, WEAK, bootstrap
from tierroute.quality.fitting import auc
from tierroute.quality.labelled import CONVERTERS, split
from tierroute.router.scoring.degraded import DegradedEmbedder
from tierroute.router.scoring.embedder import Embedder
from tierroute.tools.modelbuild import routellm_data


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/degraded.json")
    args = parser.parse_args()
    cfg = load_config(args.config).router
    assert cfg.artifact is not None and cfg.degraded_scorer is not None
    embedder = Embedder(cfg.model, max_tokens=cfg.embed_max_tokens)
    degraded = DegradedEmbedder(
        cfg.degraded_scorer, cfg.model, embedder.version, cfg.embed_max_tokens
    )
    meta, arrays = load_artifact(cfg.artifact)
    data = routellm_data()
    sets = {
        "everyday (eval half)": split(list(CONVERTERS["everyday"](EVERYDAY)), "eval"),
        "MMLU (eval half)": split(list(CONVERTERS["mmlu"](data / "mmlu")), "eval"),
        "GSM8K (eval half)": split(list(CONVERTERS["gsm8k"](data / "gsm8k")), "eval"),
        "MT-Bench (unseen)": list(CONVERTERS["mt_bench"](data / "mt_bench")),
    }
    results: dict[str, Any] = {}
    for name, rows in sets.items():
        print(f"{name}: {len(rows)} prompts ...", file=sys.stderr)
        texts = [normalize(r.prompt) for r in rows]
        asks = requests(texts)  # what the router embeds of each, either way
        real, _ = embedder.embed_with_truncation(asks)
        started = time.perf_counter()
        approx = np.stack([degraded.embed(t)[0] for t in asks])
        per_prompt_us = (time.perf_counter() - started) / len(texts) * 1e6
        params = meta.get("params", {})
        r = raw_scores(meta["model"], arrays, params, real, texts)
        d = raw_scores(meta["model"], arrays, params, approx, texts)
        same = (r > meta["threshold"]) == (d > meta["threshold"])
        entry: dict[str, Any] = {
            "prompts": len(rows),
            "same_decision": float(same.mean()),
            "same_decision_ci95": bootstrap(lambda i, s=same: float(s[i].mean()), len(same)),
            "spearman": float(np.corrcoef(ranks(r), ranks(d))[0, 1]),
            "cosine_mean": float((real * approx).sum(axis=1).mean()),
            "large_share_real": float((r > meta["threshold"]).mean()),
            "large_share_degraded": float((d > meta["threshold"]).mean()),
            "degraded_us_per_prompt": per_prompt_us,
        }
        if name.startswith("everyday"):
            complex_ = np.array([row.scores[STRONG] > row.scores[WEAK] for row in rows])
            entry["auc_real"] = auc(r, complex_)
            entry["auc_degraded"] = auc(d, complex_)
        results[name] = entry
    doc = {
        "benchmark": "degraded scorer against the embedder, the shipped artifact's decisions",
        "command": ".venv/bin/python benchmarks/degraded.py",
        "machine": machine(),
        "degraded_map": degraded.version,
        "results": results,
    }
    write_result(args.out, doc)
    print(f"\n{'held-out set':<22}{'n':>6}{'same tier':>11}{'95% CI':>14}{'Spearman':>10}"
          f"{'large real':>12}{'degraded':>10}")  # fmt: skip
    for name, e in results.items():
        lo, hi = e["same_decision_ci95"]
        print(f"{name:<22}{e['prompts']:>6}{e['same_decision']:>11.1%}"
              f"{f'{lo:.1%}-{hi:.1%}':>14}{e['spearman']:>10.3f}"
              f"{e['large_share_real']:>12.1%}{e['large_share_degraded']:>10.1%}")  # fmt: skip
    every = results["everyday (eval half)"]
    print(f"\neveryday AUC: real {every['auc_real']:.3f}, degraded {every['auc_degraded']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
