"""Fit router scorers on labelled data and evaluate them the way RouteLLM does.

Training may use scikit-learn; the artifact it writes holds numpy arrays only, which the router
serves through `tierroute.router.learned` (the same raw-score code `evaluate` runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.quality import apgr
from tierroute.quality.artifact import (
    QUANTILES,
    raw_scores,
    save_artifact,
)
from tierroute.quality.bootstrap import RESAMPLES, interval
from tierroute.quality.fitting import (
    Labelled,
    fit,
    joined,
    out_of_fold,
    select,
    threshold_for,
    unit,
)
from tierroute.quality.labelled import data_hash
from tierroute.quality.stacked import fit_stacked

logger = logging.getLogger(__name__)

# Calibration is judged by K_FOLDS-fold cross-validation within the calibration rows, and
# shrunk toward a prior artifact: its share of the blend is chosen among PRIOR_SHARES, and a
# blend is kept only if its out-of-fold APGR beats the prior's with a paired bootstrap 95%
# interval above zero (`paired_gain`).
K_FOLDS = 5
PRIOR_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


class NotBetter(ValueError):
    """The calibrated router does not beat the prior on held-out folds: nothing is written."""


def kfolds(data: Labelled, k: int = K_FOLDS) -> np.ndarray:
    """A deterministic k-fold split of the rows, by a hash of the prompt."""
    return np.array(
        [int.from_bytes(hashlib.sha256(b"kfold:" + r.prompt.encode()).digest()[:4]) % k
         for r in data.rows]
    )  # fmt: skip


def kfold_scores(model: str, data: Labelled, folds: np.ndarray) -> np.ndarray:
    """Each row's raw score from `model` fitted on the other folds."""
    raw = np.zeros(len(data.rows))
    for f in np.unique(folds):
        train, test = data.subset(folds != f), data.subset(folds == f)
        arrays, params = fit(model, train)
        raw[folds == f] = raw_scores(model, arrays, params, test.embeddings, test.texts)
    return raw


def fold_apgrs(raw: np.ndarray, data: Labelled, folds: np.ndarray) -> list[float]:
    """APGR per fold; NaN for a fold where the two models are equally good on average (APGR
    is undefined there)."""
    values = []
    for f in np.unique(folds):
        large, small = data.large[folds == f], data.small[folds == f]
        gap = float(large.mean() - small.mean())
        values.append(apgr.curve(raw[folds == f], large, small).apgr if gap else float("nan"))
    return values


def summary(values: list[float]) -> dict[str, Any]:
    """Mean over folds with a 95% interval (normal approximation over the folds); folds where
    the figure is undefined (NaN) are left out."""
    kept = [v for v in values if not np.isnan(v)]
    if len(kept) < 2:
        raise ValueError(
            f"the labelled rows leave {len(kept)} of {len(values)} folds where the large model "
            "does better or worse on average than the small one: label more rows"
        )
    mean = float(np.mean(kept))
    half = 1.96 * float(np.std(kept, ddof=1)) / np.sqrt(len(kept))
    return {"mean": mean, "ci95": [mean - half, mean + half], "folds": [float(v) for v in values]}


def paired_gain(
    raw: np.ndarray, baseline: np.ndarray, data: Labelled, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """APGR of `raw` and its gain over `baseline` on the same rows, with the gain's paired
    bootstrap 95% interval: each resample draws rows once and scores both on them, so what
    the two share (which prompts are hard) cancels out of the difference."""

    def gain(i: np.ndarray) -> float:
        large, small = data.large[i], data.small[i]
        return apgr.curve(raw[i], large, small).apgr - apgr.curve(baseline[i], large, small).apgr

    whole = np.arange(len(raw))
    ci = interval(
        gain, len(raw), "the two models score the same on average", resamples=resamples, seed=seed
    )
    return {
        "apgr": apgr.curve(raw, data.large, data.small).apgr,
        "gain": gain(whole),
        "gain_ci95": ci.bounds(),
        **({"gain_ci95_undefined": ci.undefined} if ci.undefined else {}),
    }


def _interval_text(result: dict[str, Any]) -> str:
    ci = result["gain_ci95"]
    return f"{ci[0]:+.3f} to {ci[1]:+.3f}" if ci else f"undefined: {result['gain_ci95_undefined']}"


def _standardised(raw: np.ndarray) -> tuple[float, float]:
    return float(raw.mean()), float(raw.std() + 1e-9)


def calibrate(
    data: Labelled,
    model: str,
    target: dict[str, float],
    *,
    small: str,
    large: str,
    embedder_version: str,
    out: Path,
    source: str = "",
    general: Labelled | None = None,
    prior: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Fit `model` ("auto": the kind with the best cross-validated APGR) on `data`, choose
    its threshold on out-of-fold scores, write the artifact; returns its metadata. A `stacked`
    model also needs `general`: everyday rows labelled simple or complex."""
    cross_validated: dict[str, Any] = {}
    if model == "stacked":
        if general is None:
            raise ValueError(
                "--model stacked needs general traffic as well (--general FILE: labelled rows "
                "of everyday requests, such as `tierroute data convert everyday`)"
            )
        stack = fit_stacked(data, general, target=target)
        # The target is met on both kinds of traffic: the lower of the two thresholds.
        on_data = threshold_for(stack.oof, data, target)
        on_general = threshold_for(stack.general_oof, general, target)
        stack.chosen_on["threshold_for_target"] = {"data": on_data, "general": on_general}
        return _finish(
            data, "stacked", stack.arrays, stack.params, stack.oof, target, stack.chosen_on,
            small=small, large=large, embedder_version=embedder_version, out=out, source=source,
            oof_threshold=min(on_data, on_general), categories_from=joined(data, general),
        )  # fmt: skip
    folds = kfolds(data)
    if len(data.rows) < 2 * K_FOLDS or len(np.unique(folds)) < K_FOLDS:
        raise ValueError(
            f"{len(data.rows)} labelled rows are too few for {K_FOLDS}-fold cross-validation: "
            f"give at least {10 * K_FOLDS} (a few hundred for a useful router)"
        )
    own: dict[str, np.ndarray] = {}
    if model == "auto":
        for kind in ("logistic", "knn", "ensemble"):
            own[kind] = kfold_scores(kind, data, folds)
            cross_validated[kind] = summary(fold_apgrs(own[kind], data, folds))
        model = max(cross_validated, key=lambda k: cross_validated[k]["mean"])
        logger.info("auto: chose %s (%d-fold APGR %s)", model, K_FOLDS, cross_validated)
    if prior is not None:
        oof = own[model] if model in own else kfold_scores(model, data, folds)
        blend = _blend_with_prior(data, model, oof, prior, force, embedder_version)
        if blend is not None:
            cross_validated["prior"] = blend.pop("chosen_on")
            return _finish(
                data, "blend", blend["arrays"], blend["params"], blend["oof"], target,
                cross_validated, small=small, large=large, embedder_version=embedder_version,
                out=out, source=source,
            )  # fmt: skip
    param = select(model, data)
    arrays, params = fit(model, data, param)
    raw = out_of_fold(model, data, param)
    return _finish(
        data, model, arrays, params, raw, target, cross_validated,
        small=small, large=large, embedder_version=embedder_version, out=out, source=source,
    )  # fmt: skip


def _blend_with_prior(
    data: Labelled,
    model: str,
    oof: np.ndarray,
    prior: Path,
    force: bool,
    embedder_version: str,
) -> dict[str, Any] | None:
    """Shrink the calibrated scorer toward `prior`: the share of the prior in a blend of the
    two (each standardised over these rows) with the best out-of-fold APGR among the blends
    that beat the prior (`paired_gain`). Refuses (NotBetter) when none does, unless `force`.
    None: the calibrated scorer alone is best (no prior in the artifact)."""
    from tierroute.quality.artifact import load_artifact

    prior_meta, prior_arrays = load_artifact(prior)
    if prior_meta["embedder_version"] != embedder_version:
        raise ValueError(
            f"the prior {prior} was calibrated on embedder {prior_meta['embedder_version']}, "
            f"this run uses {embedder_version}: pass --prior none, or a prior for this embedder"
        )
    prior_params = prior_meta.get("params", {})
    prior_raw = raw_scores(
        prior_meta["model"], prior_arrays, prior_params, data.embeddings, data.texts
    )
    own_stats, prior_stats = _standardised(oof), _standardised(prior_raw)
    z_own = (oof - own_stats[0]) / own_stats[1]
    z_prior = (prior_raw - prior_stats[0]) / prior_stats[1]
    # Every row's score out of fold (the prior was never fitted on these rows): a blend is
    # kept only if its APGR beats the prior's on the same rows with a paired bootstrap 95%
    # interval above zero. Paired resamples of the rows (not five fold means) give the test
    # power on a few hundred rows, and a blend that only ties the prior is still refused.
    table = {
        share: paired_gain((1 - share) * z_own + share * z_prior, z_prior, data)
        for share in PRIOR_SHARES[:-1]
    }
    prior_apgr = apgr.curve(z_prior, data.large, data.small).apgr
    better = [v for v in table if (table[v]["gain_ci95"] or [-1.0])[0] > 0.0]
    share = max(better, key=lambda v: (table[v]["apgr"], v)) if better else 1.0
    logger.info("prior %s: share %s chosen (APGR by share %s)", prior, share, table)
    if share == 1.0:
        alone = table[0.0]
        message = (
            f"the calibrated router is not better than the prior {prior} on these rows out of "
            f"fold: APGR {alone['apgr']:.3f} calibrated alone against {prior_apgr:.3f} for the "
            f"prior (gain {alone['gain']:+.3f}, paired bootstrap 95% CI "
            f"{_interval_text(alone)}), and no blend of the two beats the prior with an "
            "interval above zero; no artifact written. Label more rows, or pass --force to "
            "write it anyway"
        )
        if not force:
            raise NotBetter(message)
        logger.warning("%s: written because of --force", message)
        share = max(table, key=lambda v: table[v]["apgr"])
    if share == 0.0:
        return None
    param = select(model, data)
    own_arrays, own_params = fit(model, data, param)
    arrays = {f"own_{k}": v for k, v in own_arrays.items()} | {
        f"prior_{k}": v for k, v in prior_arrays.items() if k != "raw_quantiles"
    }
    params = {
        "own_model": model,
        "own_params": own_params,
        "prior_model": prior_meta["model"],
        "prior_params": prior_params,
        "prior_share": share,
        "own_mean": own_stats[0],
        "own_std": own_stats[1],
        "prior_mean": prior_stats[0],
        "prior_std": prior_stats[1],
    }
    chosen_on = {
        "prior": str(prior),
        "prior_version": prior_meta["version"],
        "share": share,
        "prior_apgr": prior_apgr,
        "apgr_by_prior_share": {str(k): v for k, v in table.items()},
        "test": "paired bootstrap of out-of-fold APGR, blend minus prior, 95% interval > 0",
    }
    return {
        "arrays": arrays,
        "params": params,
        "oof": (1 - share) * z_own + share * z_prior,
        "chosen_on": chosen_on,
    }


def _finish(
    data: Labelled,
    model: str,
    arrays: dict[str, np.ndarray],
    params: dict[str, Any],
    raw: np.ndarray,
    target: dict[str, float],
    cross_validated: dict[str, Any],
    *,
    small: str,
    large: str,
    embedder_version: str,
    out: Path,
    source: str,
    oof_threshold: float | None = None,
    categories_from: Labelled | None = None,
) -> dict[str, Any]:
    """The threshold for `target` from out-of-fold scores `raw` (or `oof_threshold`, chosen on
    those scores by the caller), the metadata, the artifact."""
    # The target is met on out-of-fold scores (what unseen prompts get); the served model,
    # fitted on all of the data, spreads its scores differently: its threshold is the one that
    # sends the same share of these prompts to the large tier.
    if oof_threshold is None:
        oof_threshold = threshold_for(raw, data, target)
    share = float(np.mean(raw > oof_threshold))
    served = raw_scores(model, arrays, params, data.embeddings, data.texts)
    threshold = float(np.quantile(served, 1.0 - share))
    # Where a router aiming at a target share of large-tier traffic starts (operating.py).
    arrays["raw_quantiles"] = np.quantile(served, QUANTILES).astype(np.float64)
    low, high = (float(v) for v in np.quantile(served, [0.005, 0.995]))
    spread = max(high - low, 1e-6)
    low, high = min(low, threshold - 1e-3 * spread), max(high, threshold + 1e-3 * spread)
    named = categories_from or data
    categories = sorted({r.category for r in named.rows if r.category})
    if categories:
        index = {c: i for i, c in enumerate(categories)}
        which = np.array([index.get(r.category, -1) for r in named.rows])
        arrays["category_centroids"] = np.stack(
            [unit(named.embeddings[which == i].mean(0)) for i in range(len(categories))]
        )
    meta = {
        "model": model,
        "params": params,
        "threshold": threshold,
        "raw_low": low,
        "raw_high": high,
        "target": target,
        "small": small,
        "large": large,
        "embedder_version": embedder_version,
        "data_hash": data_hash(data.rows),
        "source": source,
        "rows": len(data.rows),
        "categories": categories,
        "cross_validated_apgr": cross_validated,
        "calibration_out_of_fold": {
            **apgr.curve(raw, data.large, data.small).summary(),
            **apgr.at_threshold(raw, float(np.quantile(raw, 1.0 - share)), data.large, data.small),
        },
    }
    meta["version"] = save_artifact(out, meta, arrays)
    return meta


def to_json(doc: Any) -> str:
    """Strict JSON: a figure that is undefined (NaN) or infinite is written as null."""
    return json.dumps(_finite(doc), indent=2, sort_keys=True, allow_nan=False)


def _finite(doc: Any) -> Any:
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc
