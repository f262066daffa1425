"""Routing quality: what `tierroute eval` and `make eval` (tools/quality_commands.py,
eval_report.py) are made of, and the default artifact.

`evaluate` scores the evaluation rows with the artifact exactly as the router serves it, and in
the same run: every scorer kind fitted on the calibration rows, the seed's hand-written anchor
scorer, a random router (mean of 10 seeds) and the optimal oracle.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.config import RouterConfig, load_config
from tierroute.core.prompts import normalize
from tierroute.quality import apgr, length
from tierroute.quality.artifact import load_artifact, raw_scores
from tierroute.quality.bootstrap import interval
from tierroute.quality.calibrate import calibrate
from tierroute.quality.fitting import Labelled, auc, embed_texts, fit, labelled
from tierroute.quality.labelled import (
    CONVERTERS,
    ROUTELLM_SETS,
    STRONG,
    WEAK,
    Row,
    read_rows,
    split,
    write_rows,
)

logger = logging.getLogger(__name__)

# Paths below are relative to where the command runs (`make eval` runs in the checkout).
ROUTELLM = Path(os.environ.get("TIERROUTE_ROUTELLM_DATA", "../shared/data/routellm"))
EVERYDAY = Path("data/everyday")
DEFAULT_ARTIFACT = Path("artifacts/router-default")
# The shipped default artifact beside this source tree (a checkout; an installed package has
# none): the prior `calibrate` compares against when neither --prior nor the config names one.
SHIPPED_ARTIFACT = Path(__file__).resolve().parents[3] / DEFAULT_ARTIFACT
KINDS = ("logistic", "knn", "ensemble", "centroid", "anchors")
# The default artifact's threshold: the fewest large-tier calls that keep 80% of the quality
# the large tier adds over the small one.
DEFAULT_TARGET = {"pgr": 0.8}


@dataclass
class Context:
    """The embedder the router runs, where embeddings are cached, and the tiers' prices."""

    router: RouterConfig
    cache_dir: Path | None
    # Cost of a small-tier call relative to a large-tier one, when the data has no costs.
    cost_ratio: float = 0.0
    tiers: tuple[str, ...] = ()
    _embedder: Any = None

    def embedder(self) -> Any:
        from tierroute.router.scoring.embedder import Embedder

        if self._embedder is None:
            self._embedder = Embedder(self.router.model, max_tokens=self.router.embed_max_tokens)
        return self._embedder


def seed_anchor_scores(ctx: Context, data: Labelled) -> np.ndarray:
    """The seed design's hand-written anchor scorer (0-10), as the router runs it."""
    from tierroute.router.scoring.scorers import build_scorer

    embedder = ctx.embedder()
    cfg = ctx.router.model_copy(update={"scorer": "anchors", "anchors_file": None})
    scorer = build_scorer(cfg, embedder.embed, embedder.version)
    return np.array([s.value for s in scorer.score(data.embeddings, data.texts)])


def evaluate(
    ctx: Context, artifact: Path, data: Labelled, calibration: Labelled | None
) -> dict[str, Any]:
    """Every router's curve and RouteLLM metrics on `data`, plus the artifact at its threshold."""
    meta, arrays = load_artifact(artifact)
    if meta["embedder_version"] != ctx.embedder().version:
        raise ValueError(
            f"{artifact} was calibrated on embedder {meta['embedder_version']}, this run uses "
            f"{ctx.embedder().version}"
        )
    scores: dict[str, np.ndarray] = {
        f"artifact ({meta['model']})": raw_scores(
            meta["model"], arrays, meta.get("params", {}), data.embeddings, data.texts
        )
    }
    if calibration is not None:
        for kind in KINDS:
            fitted, params = fit(kind, calibration)
            scores[kind] = raw_scores(kind, fitted, params, data.embeddings, data.texts)
    scores["seed anchors (hand-written)"] = seed_anchor_scores(ctx, data)
    routers = {}
    for name, raw in scores.items():
        c = apgr.curve(raw, data.large, data.small)
        routers[name] = {**c.summary(), "curve": _points(c)}
    randoms = apgr.random_curves(data.large, data.small, seeds=10)
    routers["random (mean of 10 seeds)"] = {
        key: float(np.mean([r.summary()[key] for r in randoms])) for key in randoms[0].summary()
    } | {"apgr_std": float(np.std([r.apgr for r in randoms])), "curve": _points(randoms[0])}
    optimal = apgr.optimal_curve(data.large, data.small)
    routers["optimal"] = {**optimal.summary(), "curve": _points(optimal)}
    own = scores[f"artifact ({meta['model']})"]
    ci = interval(
        lambda i: apgr.curve(own[i], data.large[i], data.small[i]).apgr,
        len(own),
        "the two models score the same on average (APGR is undefined there)",
    )
    artifact_result = routers[f"artifact ({meta['model']})"]
    artifact_result["apgr_ci95"] = ci.bounds()
    if ci.undefined:
        artifact_result["apgr_ci95_undefined"] = ci.undefined
    at = apgr.at_threshold(own, meta["threshold"], data.large, data.small)
    ratio, ratio_from = cost_ratio(ctx, data, meta["small"], meta["large"])
    avoided = 1.0 - at["strong_share"]
    return {
        "rows": len(data.rows),
        "large_quality": float(data.large.mean()),
        "small_quality": float(data.small.mean()),
        "artifact": {"version": meta["version"], "model": meta["model"], "source": meta["source"]},
        "at_threshold": at
        | {
            "large_calls_avoided": avoided,
            # Against sending everything to the large tier: each avoided call costs `ratio`.
            "cost_saving_vs_all_large": avoided * (1.0 - ratio),
            "small_to_large_cost_ratio": ratio,
            "cost_ratio_from": ratio_from,
        },
        "routers": routers,
    }


def _points(c: apgr.Curve) -> list[list[float]]:
    return [[float(x), float(q)] for x, q in zip(c.strong_pct, c.quality, strict=True)]


def plot(result: dict[str, Any], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, r in result["routers"].items():
        xs, qs = zip(*r["curve"], strict=True)
        style = "--" if name.startswith(("random", "optimal")) else "-"
        width = 2.5 if name.startswith("artifact") else 1.2
        label = f"{name}: APGR {r['apgr']:.3f}"
        if name.startswith("random"):
            label += " (curve: seed 0)"
        ax.plot(xs, qs, style, marker=".", linewidth=width, label=label)
    ax.axhline(result["small_quality"], color="grey", linestyle=":", label="small model alone")
    ax.axhline(result["large_quality"], color="black", linestyle=":", label="large model alone")
    ax.set_xlabel("calls sent to the large model (%)")
    ax.set_ylabel("quality")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)


def print_table(title: str, result: dict[str, Any]) -> None:
    print(
        f"\n{title}: {result['rows']} prompts, large {result['large_quality']:.3f}, "
        f"small {result['small_quality']:.3f}"
    )
    print(f"  {'router':<34}{'APGR':>7}{'CPT20':>8}{'CPT50':>8}{'CPT80':>8}")
    for name, r in result["routers"].items():
        ci = r.get("apgr_ci95")
        note = f"   APGR 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
        if r.get("apgr_ci95_undefined"):
            note = f"   APGR 95% CI undefined: {r['apgr_ci95_undefined']}"
        value = "    n/a" if math.isnan(r["apgr"]) else f"{r['apgr']:>7.3f}"
        print(f"  {name:<34}{value}{r['cpt20']:>7.1f}%{r['cpt50']:>7.1f}%{r['cpt80']:>7.1f}%{note}")
    if math.isnan(result["routers"]["optimal"]["apgr"]):
        print("  APGR is undefined on these rows: the two models score the same on average")
    at = result["at_threshold"]
    print(
        f"  at the artifact's threshold: {at['strong_share']:.1%} large calls, quality "
        f"{at['quality']:.3f} (PGR {at['pgr']:.2f}), cost {at['cost_saving_vs_all_large']:.1%} "
        f"below all-large (small/large cost ratio {at['small_to_large_cost_ratio']:.3g})"
    )


# --- the commands ---


def load_rows(paths: list[Path]) -> list[Row]:
    return [row for path in paths for row in read_rows(path)]


def context(config: Path | None, cache_dir: Path | None) -> Context:
    cfg = load_config(config)
    ratio = 0.0
    if len(cfg.tiers) >= 2 and cfg.tiers[-1].price_per_1k_output_usd > 0:
        ratio = cfg.tiers[0].price_per_1k_output_usd / cfg.tiers[-1].price_per_1k_output_usd
    return Context(cfg.router, cache_dir, ratio, tuple(t.name for t in cfg.tiers))


def cost_ratio(ctx: Context, data: Labelled, small: str, large: str) -> tuple[float, str]:
    """Small-call cost over large-call cost: from the rows' `costs` if they have them, else
    from the config's tier prices."""
    costs = [
        (r.costs[small], r.costs[large]) for r in data.rows if small in r.costs and large in r.costs
    ]
    if costs and sum(c[1] for c in costs) > 0:
        return sum(c[0] for c in costs) / sum(c[1] for c in costs), "the data's costs"
    return ctx.cost_ratio, "the config's output prices (first vs last tier)"


# --- `make eval` and the default artifact ---


def convert_all(source: Path, folder: Path) -> dict[str, Path]:
    paths = {}
    for name in ROUTELLM_SETS:
        path = folder / f"{name}.jsonl"
        write_rows(CONVERTERS[name](source / name), path)
        paths[name] = path
    return paths


def build_default(source: Path, out: Path, config: Path | None, cache_dir: Path | None) -> str:
    """The embedded default artifact: a stacked scorer calibrated on the calibration halves of
    MMLU and GSM8K and of the everyday set (their evaluation halves and MT-Bench stay unseen),
    for DEFAULT_TARGET."""
    ctx = context(config, cache_dir)
    rows = [r for name in ("mmlu", "gsm8k") for r in CONVERTERS[name](source / name)]
    data = routellm(ctx, split(rows, "calibrate"))
    general = routellm(ctx, split(list(CONVERTERS["everyday"](EVERYDAY)), "calibrate"))
    described = "RouteLLM MMLU + GSM8K and data/everyday (calibration halves)"
    return str(calibrate_routellm(ctx, data, out, described, "stacked", general)["version"])


def bootstrap(statistic: Any, n: int, resamples: int = 1000, seed: int = 0) -> list[float]:
    """The 95% percentile interval of `statistic(indices)` over resamples of n rows, for a
    statistic that is defined on every resample (a share, a mean); see quality/bootstrap.py
    for one that may not be."""
    ci = interval(statistic, n, "the statistic is undefined", resamples, seed)
    if ci.low is None or ci.high is None:
        raise ValueError(f"no bootstrap interval: {ci.undefined}")
    return [ci.low, ci.high]


def everyday_auc(ctx: Context, artifact: Path, data: Labelled) -> dict[str, Any]:
    """How well each router ranks the complex everyday requests above the simple ones (AUC,
    with a bootstrap 95% interval): the artifact as served, the seed's anchors, random."""
    meta, arrays = load_artifact(artifact)
    complex_ = data.gain > 0
    scores = {
        f"artifact ({meta['model']})": raw_scores(
            meta["model"], arrays, meta.get("params", {}), data.embeddings, data.texts
        ),
        "seed anchors (hand-written)": seed_anchor_scores(ctx, data),
    }
    routers: dict[str, Any] = {}
    for name, raw in scores.items():

        def resampled(i: np.ndarray, r: np.ndarray = raw) -> float:
            return _auc_or_nan(r[i], complex_[i])

        routers[name] = {
            "auc": auc(raw, complex_),
            "auc_ci95": interval(
                resampled,
                len(raw),
                "the resample holds prompts of one kind only (AUC is undefined there)",
            ).bounds(),
        }
    routers["random"] = {"auc": 0.5}
    own = scores[f"artifact ({meta['model']})"]
    large = own > meta["threshold"]
    thresholds = {
        f"artifact ({meta['model']})": meta["threshold"],
        "seed anchors (hand-written)": ctx.router.complexity_threshold,
    }
    questions = [
        r.prompt for r in data.rows if r.category in length.QUESTION_KINDS and r.scores[WEAK]
    ]
    passages = length.fillers(EVERYDAY)
    for name, raw in scores.items():

        def score(texts: list[str], router: str = name) -> np.ndarray:
            return _scores_of(ctx, artifact, meta, arrays, router, texts)

        routers[name]["length_matched"] = length.length_matched_auc(raw, complex_, data.texts)
        routers[name]["pasted_context"] = length.pasted_context(
            score, thresholds[name], questions, passages
        )
    return {
        "rows": len(data.rows),
        "complex": int(complex_.sum()),
        "routers": routers,
        "at_threshold": {
            "large_share": float(large.mean()),
            "complex_to_large": float(large[complex_].mean()),
            "simple_to_large": float(large[~complex_].mean()),
        },
        "small_share_by_kind": length.by_kind(
            own, meta["threshold"], [r.category for r in data.rows]
        ),
        "prompts_by_kind": length.prompts_by_kind([r.category for r in data.rows]),
    }


def _scores_of(
    ctx: Context,
    artifact: Path,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    router: str,
    prompts: list[str],
) -> np.ndarray:
    """Raw scores of new prompts by the artifact, or the seed anchors' 0-10 scores."""
    texts = [normalize(p) for p in prompts]
    if router.startswith("seed"):
        rows = [Row(p, {STRONG: 1.0, WEAK: 1.0}, "") for p in prompts]
        return seed_anchor_scores(ctx, labelled(rows, WEAK, STRONG, ctx.embedder(), ctx.cache_dir))
    e = embed_texts(texts, ctx.embedder(), ctx.cache_dir)
    return raw_scores(meta["model"], arrays, meta.get("params", {}), e, texts)


def _auc_or_nan(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC of a resample (NaN, undefined, in a resample with one class only)."""
    return auc(scores, positive) if 0 < positive.sum() < len(positive) else float("nan")


def routellm(ctx: Context, rows: list[Row]) -> Labelled:
    """RouteLLM's rows, Mixtral as the small tier and GPT-4 as the large."""
    return labelled(rows, WEAK, STRONG, ctx.embedder(), ctx.cache_dir)


def calibrate_routellm(
    ctx: Context,
    data: Labelled,
    out: Path,
    source: str,
    model: str = "auto",
    general: Labelled | None = None,
) -> dict[str, Any]:
    """`tierroute calibrate --model auto` (or `model`) with the default target, on RouteLLM's
    pair."""
    return calibrate(
        data,
        model,
        DEFAULT_TARGET,
        small=WEAK,
        large=STRONG,
        embedder_version=ctx.embedder().version,
        out=out,
        source=source,
        general=general,
    )


def machine() -> str:
    """The CPU, its int8 instruction set (it shapes the int8 embedder's rounding) and cores."""
    import platform

    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln),
            platform.processor(),
        )
        flags = "avx512_vnni" if "avx512_vnni" in cpuinfo else "avx2" if "avx2" in cpuinfo else ""
    except OSError:
        model = platform.processor()
    cores = os.cpu_count()
    return f"{model} ({flags or 'no avx2'}), {cores} cores, Python {platform.python_version()}"
