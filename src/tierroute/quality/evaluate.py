"""Routing quality: `tierroute eval`, the report behind `make eval`, and the default artifact.

`evaluate` scores the evaluation rows with the artifact exactly as the router serves it, and in
the same run: every scorer kind fitted on the calibration rows, the seed's hand-written anchor
scorer, a random router (mean of 10 seeds) and the optimal oracle.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.config import RouterConfig, load_config
from tierroute.core.prompts import normalize
from tierroute.quality import apgr, length
from tierroute.quality.artifact import RecordedTexts, load_artifact, raw_scores
from tierroute.quality.bootstrap import interval
from tierroute.quality.calibrate import (
    Labelled,
    auc,
    calibrate,
    embed_texts,
    fit,
    labelled,
    to_json,
)
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


def cmd_convert(args: argparse.Namespace) -> int:
    rows = list(CONVERTERS[args.benchmark](args.input))
    n = write_rows(rows, args.out)
    print(f"wrote {n} rows to {args.out}")
    return 0


def _target(text: str) -> dict[str, float]:
    key, _, value = text.partition("=")
    if key not in ("large_share", "pgr") or not value:
        raise SystemExit(f"--target must be large_share=X or pgr=X, got {text!r}")
    number = float(value)
    if not 0.0 < number < 1.0:
        raise SystemExit(f"--target {key} must be between 0 and 1, got {number}")
    return {key: number}


def cmd_calibrate(args: argparse.Namespace) -> int:
    if bool(args.data) == bool(args.from_log):
        raise SystemExit(
            "tierroute calibrate: give labelled JSONL files, or --from-log LOG (not both)"
        )
    if args.from_log:
        return calibrate_from_log(args)
    if not args.small or not args.large:
        raise SystemExit("tierroute calibrate: --small and --large name the models in `scores`")
    ctx = context(args.config, args.cache_dir)
    rows = split(load_rows(args.data), args.split)
    data = labelled(rows, args.small, args.large, ctx.embedder(), ctx.cache_dir)
    general = None
    if args.general:
        general_rows = split(load_rows(args.general), args.split)
        general = labelled(general_rows, args.small, args.large, ctx.embedder(), ctx.cache_dir)
    source = f"{', '.join(p.name for p in args.data)} ({args.split} half)"
    meta = _calibrated(
        source,
        data,
        args.model,
        _target(args.target),
        small=args.small,
        large=args.large,
        embedder_version=ctx.embedder().version,
        out=args.out,
        source=source,
        general=general,
        prior=_prior(args.prior, ctx),
        force=args.force,
    )
    cv = meta["calibration_out_of_fold"]
    print(
        f"wrote {args.out} ({meta['model']}, version {meta['version']}): on {len(rows)} "
        f"calibration prompts (out of fold) APGR {cv['apgr']:.3f}, CPT(50%) {cv['cpt50']:.1f}%; "
        f"at its threshold {cv['strong_share']:.1%} large calls"
    )
    return 0


def _calibrated(where: str, data: Labelled, model: str, target: dict[str, float], **kw: Any) -> Any:
    """`calibrate`, its refusals and data errors naming where the rows came from."""
    try:
        return calibrate(data, model, target, **kw)
    except ValueError as error:
        raise type(error)(f"{where}: {error}") from error


def calibrate_from_log(args: argparse.Namespace) -> int:
    """Labels from the routing log (the small tier's answers the validator escalated, or shadow
    mode found the large tier answering otherwise: the large tier was needed; those it
    delivered as confident, or the large tier agreed with: the small one was enough),
    combined with the prior by the same k-fold blend and refusal as labelled files."""
    from tierroute.router.route.routing_log import check, read_labels

    check(args.from_log)  # a wrong file is named before anything is loaded
    ctx = context(args.config, args.cache_dir)
    small = args.small or (ctx.tiers[0] if ctx.tiers else "")
    large = args.large or (ctx.tiers[-1] if ctx.tiers else "")
    prior = _prior(args.prior, ctx)
    if prior is None:
        raise SystemExit(
            f"tierroute calibrate --from-log {args.from_log}: a log teaches only about the "
            "prompts its router sent to the small tier, so it needs a prior to combine with: "
            "pass --prior ARTIFACT (the artifact the router served)"
        )
    embedder = ctx.embedder()
    labels = read_labels(args.from_log, small, embedder.version, embedder.dimension)
    needed = labels.needed_larger
    rows = [
        Row(key, {small: 1.0 - n, large: 1.0}, category)
        for key, n, category in zip(labels.keys, needed, labels.categories, strict=True)
    ]
    data = Labelled(
        rows,
        RecordedTexts(labels.keys, labels.features),
        labels.embeddings,
        np.ones(len(rows)),
        1.0 - needed,
    )
    source = f"routing log {args.from_log} ({len(rows)} judged answers of tier {small!r})"
    print(
        f"{args.from_log}: {len(rows)} answers of tier {small!r} judged "
        f"({len(rows) - labels.from_shadow} by the validator, {labels.from_shadow} against the "
        f"large tier in shadow mode): {int(needed.sum())} not good enough, "
        f"{int((needed == 0).sum())} good enough; skipped {labels.skipped}"
    )
    meta = _calibrated(
        str(args.from_log),
        data,
        args.model,
        _target(args.target),
        small=small,
        large=large,
        embedder_version=embedder.version,
        out=args.out,
        source=source,
        prior=prior,
        force=args.force,
    )
    # What the new threshold does to all the traffic the log saw, against the prior's.
    traffic = RecordedTexts(["?"] * len(labels.all_features), labels.all_features)
    shares = {}
    for name, folder in (("prior", prior), ("new", args.out)):
        m, arrays = load_artifact(folder)
        raw = raw_scores(m["model"], arrays, m.get("params", {}), labels.all_embeddings, traffic)
        shares[name] = float(np.mean(raw > m["threshold"]))
    prior_share = meta["cross_validated_apgr"].get("prior", {}).get("share", 0.0)
    print(
        f"wrote {args.out} ({meta['model']}, prior's share {prior_share}, version "
        f"{meta['version']}); of the {len(labels.all_features)} scored requests in the log, "
        f"{shares['new']:.1%} would go to the large tier ({shares['prior']:.1%} with the prior)"
    )
    return 0


def _prior(choice: str | None, ctx: Context) -> Path | None:
    """--prior: a folder, `none`, or by default the artifact the config serves (scorer
    learned), else the shipped default. Printed first: which prior the result must beat."""
    if choice == "none":
        print("prior: none (--prior none): the new artifact is compared with nothing")
        return None
    if choice:
        prior, why = Path(choice), "--prior"
    elif ctx.router.scorer == "learned" and ctx.router.artifact is not None:
        prior, why = ctx.router.artifact, "the config's router.artifact"
    else:
        prior, why = SHIPPED_ARTIFACT, "the shipped default; --prior ARTIFACT or none to change"
    if not (prior / "router.json").is_file():
        raise ValueError(
            f"the prior {prior} ({why}) is not a router artifact: pass "
            "--prior ARTIFACT (the artifact your router serves), or --prior none to calibrate "
            "without comparing against one"
        )
    print(f"prior: {prior} ({why})", flush=True)
    return prior


def cmd_eval(args: argparse.Namespace) -> int:
    ctx = context(args.config, args.cache_dir)
    rows = load_rows(args.data)
    meta, _ = load_artifact(args.artifact)
    small, large = meta["small"], meta["large"]
    data = labelled(split(rows, args.split), small, large, ctx.embedder(), ctx.cache_dir)
    calibration = None
    if args.split == "eval":
        calibration = labelled(
            split(rows, "calibrate"), small, large, ctx.embedder(), ctx.cache_dir
        )
    result = evaluate(ctx, args.artifact, data, calibration)
    title = args.name or ", ".join(p.stem for p in args.data)
    print_table(title, result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(result) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot(result, title, args.plot)
        print(f"wrote {args.plot}")
    return 0


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


def mt_bench_spread(
    ctx: Context, artifact: Path, rows: list[Row], splits: int = 20
) -> dict[str, Any]:
    """MT-Bench's 72 questions are few: the artifact's APGR over random halves of them."""
    data = routellm(ctx, rows)
    meta, arrays = load_artifact(artifact)
    raw = raw_scores(meta["model"], arrays, meta.get("params", {}), data.embeddings, data.texts)
    apgrs, randoms = [], []
    for seed in range(splits):
        mask = np.array(
            [hashlib.sha256(f"{seed}:{r.prompt}".encode()).digest()[0] < 128 for r in rows]
        )
        apgrs.append(apgr.curve(raw[mask], data.large[mask], data.small[mask]).apgr)
        randoms.append(
            np.mean([c.apgr for c in apgr.random_curves(data.large[mask], data.small[mask])])
        )
    return {
        "splits": splits,
        "apgr_median": float(np.median(apgrs)),
        "apgr_range": [float(min(apgrs)), float(max(apgrs))],
        "random_apgr_median": float(np.median(randoms)),
        "margin_over_random_positive_in": int(
            sum(a > r for a, r in zip(apgrs, randoms, strict=True))
        ),
    }


# The held-out APGR of the default before it scored what is asked rather than the whole
# prompt (artifact d57696070c73): the bar is to lose at most 0.01 of it.
BEFORE_APGR = {"MMLU": 0.661, "GSM8K": 0.653}


def default_goals(results: dict[str, Any]) -> dict[str, bool]:
    """The bar for the default (held-out data): everyday requests told apart, by what they ask
    and not by their length; the benchmarks' held-out halves ranked as well as before; MT-Bench
    (never seen) above random beyond its interval."""

    def artifact(result: dict[str, Any]) -> dict[str, Any]:
        return next(r for n, r in result["routers"].items() if n.startswith("artifact"))

    everyday = results["everyday (default artifact)"]
    every = artifact(everyday)
    matched = every["length_matched"]["auc"] or 0.0
    kinds = everyday["small_share_by_kind"]
    lookup, terse = kinds.get("context_lookup", 0.0), 1.0 - kinds.get("terse_hard", 1.0)
    mt = results["mt_bench (default artifact)"]
    mt_random = mt["routers"]["random (mean of 10 seeds)"]["apgr"]
    mmlu_bar, gsm8k_bar = BEFORE_APGR["MMLU"] - 0.01, BEFORE_APGR["GSM8K"] - 0.01
    return {
        f"everyday AUC >= 0.95 (got {every['auc']:.3f})": every["auc"] >= 0.95,
        f"everyday AUC on length-matched pairs >= 0.90 (got {matched:.3f})": matched >= 0.90,
        f"context + lookup to the small tier >= 90% (got {lookup:.0%})": lookup >= 0.90,
        f"short hard requests to the large tier >= 90% (got {terse:.0%})": terse >= 0.90,
        **{
            f"{name} held-out APGR >= {bar:.3f} (got {got:.3f})": got >= bar
            for name, got, bar in (
                ("MMLU", artifact(results["mmlu (default artifact)"])["apgr"], mmlu_bar),
                ("GSM8K", artifact(results["gsm8k (default artifact)"])["apgr"], gsm8k_bar),
            )
        },
        f"MT-Bench APGR's 95% CI above random's {mt_random:.3f} (got {_ci_text(artifact(mt))})": (
            artifact(mt)["apgr_ci95"] is not None and artifact(mt)["apgr_ci95"][0] > mt_random
        ),
    }


def print_length(everyday: dict[str, Any]) -> None:
    """Length does not decide: length-matched AUC, pasted context, share by kind."""
    print("\nlength does not decide (everyday held-out half):")
    for name, r in everyday["routers"].items():
        matched = r.get("length_matched")
        if matched is None:
            continue
        shares = r["pasted_context"]["small_share_by_pasted_words"]
        print(
            f"  {name:<34} length-matched AUC {matched['auc']:.3f} ({matched['pairs']} pairs; "
            f"length alone {matched['length_auc']:.3f}); to the small tier with 0/50/150/300/500 "
            "words pasted before a simple question: "
            + " / ".join(f"{v:.0%}" for v in shares.values())
        )
    print("  share of each kind sent to the small tier (the artifact):")
    for kind, share in everyday["small_share_by_kind"].items():
        print(f"    {kind:<24} {share:>5.0%}")


def _ci_text(result: dict[str, Any]) -> str:
    ci = result["apgr_ci95"]
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else f"undefined: {result['apgr_ci95_undefined']}"


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


def report(args: argparse.Namespace) -> int:
    """`make eval`: per benchmark, calibrate on one half and evaluate on the other; the
    transfer between MMLU and GSM8K; the default artifact on all of MT-Bench."""
    ctx = context(args.config, args.cache_dir)
    work = args.work
    paths = convert_all(args.source, work / "data")
    rows = {name: read_rows(path) for name, path in paths.items()}
    results: dict[str, Any] = {}
    for name in ("mmlu", "gsm8k"):
        cal = routellm(ctx, split(rows[name], "calibrate"))
        held = routellm(ctx, split(rows[name], "eval"))
        artifact = work / "artifacts" / name
        calibrate_routellm(ctx, cal, artifact, f"{name} calibration half")
        results[name] = evaluate(ctx, artifact, held, cal)
        print_table(f"{name} (calibrated on its other half)", results[name])
        plot(results[name], f"{name}: held-out half", args.results / f"quality-{name}.png")
    for train, test in (("mmlu", "gsm8k"), ("gsm8k", "mmlu")):
        held = routellm(ctx, split(rows[test], "eval"))
        key = f"{train}->{test}"
        results[key] = evaluate(ctx, work / "artifacts" / train, held, None)
        print_table(f"transfer: calibrated on {train}, evaluated on {test}", results[key])
    mt = routellm(ctx, rows["mt_bench"])
    results["mt_bench (default artifact)"] = evaluate(ctx, args.default_artifact, mt, None)
    results["mt_bench (default artifact)"]["spread"] = mt_bench_spread(
        ctx, args.default_artifact, rows["mt_bench"]
    )
    print_table(
        "mt_bench: the default artifact (MMLU + GSM8K), unseen",
        results["mt_bench (default artifact)"],
    )
    print(f"  over 20 random halves: {results['mt_bench (default artifact)']['spread']}")
    plot(
        results["mt_bench (default artifact)"],
        "mt_bench: default artifact",
        args.results / "quality-mt_bench.png",
    )
    for name in ("mmlu", "gsm8k"):
        held = routellm(ctx, split(rows[name], "eval"))
        key = f"{name} (default artifact)"
        results[key] = evaluate(ctx, args.default_artifact, held, None)
        print_table(f"{name} held-out half: the default artifact", results[key])
    everyday = routellm(ctx, split(list(CONVERTERS["everyday"](args.everyday)), "eval"))
    results["everyday (default artifact)"] = everyday_auc(ctx, args.default_artifact, everyday)
    print(f"\neveryday held-out half ({len(everyday.rows)} prompts): AUC, complex above simple")
    for name, r in results["everyday (default artifact)"]["routers"].items():
        ci = r.get("auc_ci95")
        print(
            f"  {name:<34}{r['auc']:>7.3f}" + (f"   95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else "")
        )
    at = results["everyday (default artifact)"]["at_threshold"]
    print(
        f"  at the artifact's threshold: {at['complex_to_large']:.1%} of complex requests and "
        f"{at['simple_to_large']:.1%} of simple ones go to the large tier"
    )
    print_length(results["everyday (default artifact)"])
    goals = default_goals(results)
    print("\nthe default artifact against its goals (held-out data):")
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISS'} {goal}")
    meta, _ = load_artifact(args.default_artifact)
    out = args.results / "quality.json"
    doc = {
        "command": "make eval",
        # The figures below belong to this artifact, scored with this embedder on this CPU.
        "default_artifact": meta["version"],
        "embedder_version": ctx.embedder().version,
        "machine": machine(),
        "goals": goals,
        "results": results,
    }
    out.write_text(to_json(doc) + "\n")
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tierroute routing-quality report (make eval)")
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--source", type=Path, default=ROUTELLM)
    parser.add_argument("--everyday", type=Path, default=EVERYDAY)
    parser.add_argument("--work", type=Path, default=Path("build/quality"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache-dir", type=Path, default=Path("models/embeddings-cache"))
    parser.add_argument("--default-artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument(
        "--build-default", action="store_true", help="only (re)build the default artifact"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.build_default:
        print(build_default(args.source, args.default_artifact, args.config, args.cache_dir))
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
