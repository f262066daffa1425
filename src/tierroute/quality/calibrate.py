"""Fit router scorers on labelled data and evaluate them the way RouteLLM does.

Training may use scikit-learn; the artifact it writes holds numpy arrays only, which the router
serves through `tierroute.router.learned` (the same raw-score code `evaluate` runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.prompts import normalize
from tierroute.quality import apgr
from tierroute.quality.artifact import (
    FEATURES,
    MODEL_KINDS,
    QUANTILES,
    RecordedTexts,
    expected_gain,
    gate,
    general_scores,
    logistic_inputs,
    prompt_features,
    raw_scores,
    requests,
    save_artifact,
)
from tierroute.quality.bootstrap import RESAMPLES, interval
from tierroute.quality.labelled import Row, data_hash

logger = logging.getLogger(__name__)

# Hyper-parameters, chosen by 2-fold cross-validation on the calibration half only (never on
# the evaluation half); see `select`.
LOGISTIC_C = (0.1, 0.3, 1.0)
KNN_K = (50, 100, 300)
DEFAULT_C = 0.3
DEFAULT_K = 100
# The ensemble's share of the knn score (the rest: the logistic model's).
KNN_WEIGHT = 0.3
ANCHORS_PER_CLASS = 32
# A stacked scorer's general-traffic model: its regularisation and its weight are chosen by
# cross-validation on the calibration rows: the least weight that tells simple from complex
# everyday requests with GOAL_AUC, so that the benchmark ranking loses the least.
GENERAL_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
GENERAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
GOAL_AUC = 0.95
# A feature a model must not see is divided by this (standardised to zero): the everyday
# model and the gate never see a request's length, which the everyday data teaches is not
# difficulty; the benchmark model may (a longer word problem is a harder one).
BLIND_STD = 1e30
LENGTH_FEATURES = ("log_request_words",)
# The gate's regularisation (a stacked scorer's benchmark-or-everyday model), and how much of
# the general model's weight it may take away on benchmark-like prompts.
DOMAIN_C = 1.0
# The everyday model's kNN: neighbours, and the shares of its score it may take.
GENERAL_K = 10
GENERAL_KNN_SHARES = (0.0, 0.25, 0.5)
GATE_SHARES = (0.0, 0.5, 0.9, 1.0)
# Calibration is judged by K_FOLDS-fold cross-validation within the calibration rows, and
# shrunk toward a prior artifact: its share of the blend is chosen among PRIOR_SHARES, and a
# blend is kept only if its out-of-fold APGR beats the prior's with a paired bootstrap 95%
# interval above zero (`paired_gain`).
K_FOLDS = 5
PRIOR_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


class NotBetter(ValueError):
    """The calibrated router does not beat the prior on held-out folds: nothing is written."""


@dataclass(frozen=True)
class Labelled:
    """Rows with the router's view of each prompt and each model's quality."""

    rows: list[Row]
    texts: list[str]  # the prompts as the router sees them (whitespace-folded)
    embeddings: np.ndarray  # (n, d) float32, unit length
    large: np.ndarray  # quality of the large (strong) model per row
    small: np.ndarray

    @property
    def gain(self) -> np.ndarray:
        return self.large - self.small

    def subset(self, mask: np.ndarray) -> Labelled:
        keep = np.flatnonzero(mask)
        texts = self.texts
        return Labelled(
            [self.rows[i] for i in keep],
            texts.take(keep) if isinstance(texts, RecordedTexts) else [texts[i] for i in keep],
            self.embeddings[keep],
            self.large[keep],
            self.small[keep],
        )


def labelled(
    rows: list[Row], small: str, large: str, embedder: Any, cache_dir: Path | None = None
) -> Labelled:
    missing = [i for i, r in enumerate(rows) if small not in r.scores or large not in r.scores]
    if missing:
        names = sorted({k for r in rows for k in r.scores})
        raise ValueError(
            f"{len(missing)} rows lack a score for {small!r} or {large!r} (first: row "
            f"{missing[0] + 1}); models in the data: {', '.join(names)}"
        )
    texts = [normalize(r.prompt) for r in rows]
    return Labelled(
        rows,
        texts,
        embed_texts(texts, embedder, cache_dir),
        np.array([r.scores[large] for r in rows], dtype=np.float64),
        np.array([r.scores[small] for r in rows], dtype=np.float64),
    )


def embed_texts(texts: list[str], embedder: Any, cache_dir: Path | None = None) -> np.ndarray:
    """The router's own embeddings of what the prompts ask (artifact.requests), as the router
    embeds them; with `cache_dir`, each distinct text embedded once per embedder version,
    whatever subsets later runs ask for."""
    texts = requests(texts)
    keys = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
    folder = None
    index: dict[str, int] = {}
    vectors = np.zeros((0, 0), dtype=np.float32)
    if cache_dir is not None:
        folder = cache_dir / hashlib.sha256(embedder.version.encode()).hexdigest()[:16]
        if (folder / "keys.json").is_file():
            index = {k: i for i, k in enumerate(json.loads((folder / "keys.json").read_text()))}
            vectors = np.load(folder / "vectors.npy")
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in index:
            missing.setdefault(key, text)
    if missing:
        todo = list(missing.values())
        logger.info("embedding %d prompts", len(todo))
        # One prompt per run, as the router embeds a lone request: dynamic int8 quantization
        # picks its scales per run, so batch-mates would move a score slightly.
        fresh = np.concatenate([embedder.embed([text]) for text in todo]).astype(np.float32)
        vectors = fresh if not index else np.concatenate([vectors, fresh])
        for key in missing:
            index[key] = len(index)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "vectors.npy", vectors)
            (folder / "keys.json").write_text(json.dumps(sorted(index, key=index.__getitem__)))
    return vectors[[index[k] for k in keys]]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _logistic(
    data: Labelled, c: float, balanced: bool = False, blind: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A multinomial logistic model of the gain's sign (large better / same / worse); with
    `balanced`, each class weighs alike however many rows it has; features named in `blind`
    are not seen (standardised to zero)."""
    from sklearn.linear_model import LogisticRegression

    features = prompt_features(data.texts)
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    for name in blind:
        mean[FEATURES.index(name)], std[FEATURES.index(name)] = 0.0, BLIND_STD
    arrays = {
        "feature_mean": mean.astype(np.float32),
        "feature_std": std.astype(np.float32),
    }
    x = logistic_inputs(arrays, data.embeddings, data.texts)
    lr = LogisticRegression(
        C=c, max_iter=5000, tol=1e-6, class_weight="balanced" if balanced else None
    ).fit(x, np.sign(data.gain).astype(int))
    weights, bias = lr.coef_, lr.intercept_
    if len(lr.classes_) == 2:  # sklearn keeps one row for two classes: make it a softmax pair
        weights = np.vstack([np.zeros_like(weights[0]), weights[0]])
        bias = np.array([0.0, bias[0]])
    arrays["weights"] = weights.astype(np.float32)
    arrays["bias"] = bias.astype(np.float32)
    return arrays, {"C": c, "classes": [int(v) for v in lr.classes_]}


def _knn(data: Labelled) -> dict[str, np.ndarray]:
    # Gains scaled into -1..1 whatever the quality scale (correctness, or 1-10 ratings).
    span = max(float(np.abs(data.gain).max()), 1e-9)
    return {
        "neighbours": data.embeddings.astype(np.float32),
        "labels": (data.gain / span).astype(np.float32),
    }


def _k(data: Labelled, k: int) -> int:
    """At most half the rows: with more, every prompt's neighbours are nearly all the rows and
    the knn score is nearly the same for every prompt (a constant ranks nothing)."""
    return max(1, min(k, len(data.rows) // 2))


def fit(
    model: str, data: Labelled, param: float | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and parameters of one scorer kind fitted on `data`."""
    e, needed = data.embeddings, data.gain > 0
    if model == "logistic":
        return _logistic(data, DEFAULT_C if param is None else param)
    if model == "knn":
        k = _k(data, int(DEFAULT_K if param is None else param))
        return _knn(data), {"k": k}
    if model == "ensemble":
        logistic, params = _logistic(data, DEFAULT_C)
        arrays = {**logistic, **_knn(data)}
        params |= {"k": _k(data, DEFAULT_K), "knn_weight": KNN_WEIGHT}
        # Rank tables from scores the calibration prompts get without seeing themselves.
        folds = _folds(data, b"rank:")
        logit = np.zeros(len(data.rows))
        knn = np.zeros(len(data.rows))
        for f in (0, 1):
            train, test = data.subset(folds != f), data.subset(folds == f)
            logistic, part_params = _logistic(train, DEFAULT_C)
            part = {**logistic, **_knn(train)}
            part_params |= {"k": _k(train, DEFAULT_K)}
            logit[folds == f] = raw_scores(
                "logistic", part, part_params, test.embeddings, test.texts
            )
            knn[folds == f] = raw_scores("knn", part, part_params, test.embeddings, test.texts)
        arrays["logistic_quantiles"] = np.quantile(logit, QUANTILES).astype(np.float32)
        arrays["knn_quantiles"] = np.quantile(knn, QUANTILES).astype(np.float32)
        return arrays, params
    if model == "centroid":
        return (
            {
                "large_centroid": _unit(e[needed].mean(0)),
                "small_centroid": _unit(e[~needed].mean(0)),
            },
            {},
        )
    if model == "anchors":
        arrays = {}
        for name, mask in (("large_anchors", needed), ("small_anchors", ~needed)):
            members = e[mask]
            centre = _unit(members.mean(0))
            nearest = np.argsort(-(members @ centre), kind="stable")[:ANCHORS_PER_CLASS]
            arrays[name] = members[np.sort(nearest)].astype(np.float32)
        return arrays, {"per_class": ANCHORS_PER_CLASS}
    raise ValueError(f"unknown model {model!r} (known: {', '.join(MODEL_KINDS)})")


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count half)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError("AUC needs both simple and complex prompts")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Stack:
    """What a stacked scorer is made of, and the cross-validated figures it was chosen on."""

    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    oof: np.ndarray  # each calibration prompt's score from components that did not see it
    general_oof: np.ndarray  # the same for the general rows
    chosen_on: dict[str, Any]


def fit_stacked(
    data: Labelled,
    general: Labelled,
    weight: float | None = None,
    target: dict[str, float] | None = None,
) -> Stack:
    """A stacked scorer: an ensemble fitted on `data` (benchmark rows) plus a logistic model
    fitted on `general` (everyday rows labelled simple or complex). The general model's
    regularisation is chosen by 2-fold AUC on `general`; the weight (unless given) is the
    smallest that reaches GOAL_AUC on out-of-fold scores of `general` (each weight costs the
    benchmark ranking a little: the table of both is kept), else the one with the best AUC."""
    complex_ = general.gain > 0
    folds = _folds(general)
    # Out of fold, per C: the general model's scores on its own rows, from the fold models.
    oof_by_c = {}
    for c in GENERAL_C:
        oof = np.zeros(len(general.rows))
        for f in (0, 1):
            arrays, params = _logistic(general.subset(folds != f), c, blind=LENGTH_FEATURES)
            test = general.subset(folds == f)
            oof[folds == f] = expected_gain(
                arrays, params, logistic_inputs(arrays, test.embeddings, test.texts)
            )
        oof_by_c[c] = oof
    c_auc = {c: auc(oof, complex_) for c, oof in oof_by_c.items()}
    c = max(GENERAL_C, key=lambda v: (c_auc[v], -v))
    general_arrays, general_params = _logistic(general, c, blind=LENGTH_FEATURES)
    # ... mixed with the labels of the most similar everyday requests (a kNN over what they
    # ask): a lookup question over a pasted text resembles the lookups more than its words
    # alone say. Its share is chosen by the same 2-fold AUC.
    knn_oof = np.zeros(len(general.rows))
    for f in (0, 1):
        test = general.subset(folds == f)
        knn_oof[folds == f] = raw_scores(
            "knn", _knn(general.subset(folds != f)), {"k": GENERAL_K}, test.embeddings,
            test.texts,
        )  # fmt: skip
    mixes = {a: (1 - a) * oof_by_c[c] + a * knn_oof for a in GENERAL_KNN_SHARES}
    mix_auc = {a: auc(oof, complex_) for a, oof in mixes.items()}
    knn_share = max(GENERAL_KNN_SHARES, key=lambda a: (mix_auc[a], -a))
    general_arrays |= {k: v for k, v in _knn(general).items()}
    general_params |= {"k": GENERAL_K, "knn_share": knn_share}
    general_oof = mixes[knn_share]
    base_arrays, base_params = fit("ensemble", data)
    base_oof = out_of_fold("ensemble", data)

    def general_score(rows: Labelled) -> np.ndarray:
        return general_scores(general_arrays, general_params, rows.embeddings, rows.texts)

    general_on_data = general_score(data)  # never fitted on these rows
    base_on_general = raw_scores(
        "ensemble", base_arrays, base_params, general.embeddings, general.texts
    )
    # The gate: how much a prompt is like the benchmark rows rather than the everyday ones.
    # The benchmark-fitted scorer speaks for prompts like its data; on a pasted log, a line of
    # code or a greeting its score is noise, which the gate keeps out.
    domain = _domain(data, general)
    domain_arrays, domain_params = _logistic(domain, DOMAIN_C, balanced=True, blind=LENGTH_FEATURES)
    domain_folds = _folds(domain, b"domain:")
    gate_oof = np.zeros(len(domain.rows))
    for f in (0, 1):
        arrays, params = _logistic(
            domain.subset(domain_folds != f), DOMAIN_C, balanced=True, blind=LENGTH_FEATURES
        )
        test = domain.subset(domain_folds == f)
        gate_oof[domain_folds == f] = gate(arrays, params, test.embeddings, test.texts)
    gate_data, gate_general = gate_oof[: len(data.rows)], gate_oof[len(data.rows) :]
    stats = {
        "base_mean": float(base_oof.mean()),
        "base_std": float(base_oof.std() + 1e-9),
        "general_mean": float(general_on_data.mean()),
        "general_std": float(general_on_data.std() + 1e-9),
    }

    def combine(
        base: np.ndarray, gen: np.ndarray, g: np.ndarray, wk: tuple[float, float]
    ) -> np.ndarray:
        w, k = wk
        return (
            g * (base - stats["base_mean"]) / stats["base_std"]
            + w * (1 - k * g) * (gen - stats["general_mean"]) / stats["general_std"]
        )

    # The general model's weight w, and how much the gate takes it away on benchmark-like
    # prompts (k): the pair that reaches GOAL_AUC with the least cost to the benchmark
    # ranking, else the best AUC.
    table = {}
    grid = [(w, k) for w in GENERAL_WEIGHTS for k in GATE_SHARES]
    for wk in grid if weight is None else [(weight, 0.0)]:
        a = auc(combine(base_on_general, general_oof, gate_general, wk), complex_)
        oof = combine(base_oof, general_on_data, gate_data, wk)
        table[wk] = {"auc": a, "apgr": apgr.curve(oof, data.large, data.small).apgr}
    reaching = [v for v in table if table[v]["auc"] >= GOAL_AUC]
    wk = (
        max(reaching, key=lambda v: (table[v]["apgr"], -v[0]))
        if reaching
        else max(table, key=lambda v: (table[v]["auc"], -v[0]))
    )
    w, gate_share = wk
    logger.info("stacked: general C %s (AUC %s), weight %s of %s", c, c_auc, wk, table)
    arrays = (
        {f"base_{k}": v for k, v in base_arrays.items()}
        | {f"general_{k}": v for k, v in general_arrays.items()}
        | {f"domain_{k}": v for k, v in domain_arrays.items()}
    )
    params = {
        "base_model": "ensemble",
        "base_params": base_params,
        "general_params": general_params,
        "domain_params": domain_params,
        "general_weight": w,
        "general_gate_share": gate_share,
        **stats,
    }
    chosen_on = {
        "general_rows": len(general.rows),
        "general_c_auc": {str(k): v for k, v in c_auc.items()},
        "general_knn_share_auc": {str(k): v for k, v in mix_auc.items()},
        "weights": {f"{k[0]}, gate share {k[1]}": v for k, v in table.items()},
    }
    chosen_on["gate"] = {
        "benchmark_rows_mean": float(gate_data.mean()),
        "general_rows_mean": float(gate_general.mean()),
    }
    oof = combine(base_oof, general_on_data, gate_data, wk)
    general_oof = combine(base_on_general, general_oof, gate_general, wk)
    # One threshold serves both kinds of traffic: the everyday side (weighted by 1 - g) is
    # shifted so that the threshold meeting `target` on the everyday rows is the benchmark
    # rows' own (without it, the lower of the two would send lookups that need no large
    # model to it, to meet the benchmark's target).
    offset = 0.0
    if target is not None:
        gap = threshold_for(oof, data, target) - threshold_for(general_oof, general, target)
        offset = float(gap / max(float(np.mean(1.0 - gate_general)), 1e-6))
        oof = oof + (1.0 - gate_data) * offset
        general_oof = general_oof + (1.0 - gate_general) * offset
    params["general_offset"] = offset
    return Stack(arrays, params, oof, general_oof, chosen_on)


def _domain(data: Labelled, general: Labelled) -> Labelled:
    """The benchmark and the everyday rows as one set whose gain's sign says which is which
    (+1 benchmark, -1 everyday), for the gate's logistic model."""
    joined = _joined(data, general)
    n, m = len(data.rows), len(general.rows)
    return Labelled(
        joined.rows,
        joined.texts,
        joined.embeddings,
        np.concatenate([np.ones(n), np.zeros(m)]),
        np.concatenate([np.zeros(n), np.ones(m)]),
    )


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


def _joined(a: Labelled, b: Labelled) -> Labelled:
    return Labelled(
        a.rows + b.rows,
        a.texts + b.texts,
        np.concatenate([a.embeddings, b.embeddings]),
        np.concatenate([a.large, b.large]),
        np.concatenate([a.small, b.small]),
    )


def _folds(data: Labelled, salt: bytes = b"fold:") -> np.ndarray:
    """A deterministic 2-fold split of the calibration half, by another hash of the prompt
    (a different salt for a split nested inside another)."""
    return np.array([hashlib.sha256(salt + r.prompt.encode()).digest()[0] % 2 for r in data.rows])


def select(model: str, data: Labelled) -> float | None:
    """The hyper-parameter with the best mean APGR over two folds of `data`."""
    grid: tuple[float, ...] = {"logistic": LOGISTIC_C, "knn": KNN_K}.get(model, ())
    folds = _folds(data)
    if model == "knn":  # k within what a fold's rows can give (see _k); the least at worst
        fold_rows = min(int(np.sum(folds == f)) for f in (0, 1))
        grid = tuple(k for k in grid if k <= fold_rows // 2) or grid[:1]
    if not grid:
        return None
    best, best_apgr = grid[0], -np.inf
    for value in grid:
        apgrs = []
        for f in (0, 1):
            train, test = data.subset(folds != f), data.subset(folds == f)
            arrays, params = fit(model, train, value)
            raw = raw_scores(model, arrays, params, test.embeddings, test.texts)
            apgrs.append(apgr.curve(raw, test.large, test.small).apgr)
        if np.mean(apgrs) > best_apgr:
            best, best_apgr = value, float(np.mean(apgrs))
    logger.info("%s: chose %s (cross-validated APGR %.3f)", model, best, best_apgr)
    return best


def threshold_for(raw: np.ndarray, data: Labelled, target: dict[str, float]) -> float:
    """The raw-score threshold meeting the target on `data` (prompts scoring above it go to
    the large tier): `large_share` (the share of prompts sent to the large tier) or `pgr`
    (the least large share that recovers that fraction of the quality gap)."""
    if "large_share" in target:
        share = target["large_share"]
        return float(np.quantile(raw, 1.0 - share))
    want = target["pgr"]
    for candidate in np.unique(raw)[::-1]:  # from the fewest large calls up
        if apgr.at_threshold(raw, candidate, data.large, data.small)["pgr"] >= want:
            return float(candidate)
    return float(raw.min())


def out_of_fold(model: str, data: Labelled, param: float | None = None) -> np.ndarray:
    """Each calibration prompt's raw score from a scorer fitted on the other fold: what a
    prompt the scorer has not seen gets (a knn scorer would find a prompt itself)."""
    folds = _folds(data)
    raw = np.zeros(len(data.rows))
    for f in (0, 1):
        train, test = data.subset(folds != f), data.subset(folds == f)
        arrays, params = fit(model, train, param)
        raw[folds == f] = raw_scores(model, arrays, params, test.embeddings, test.texts)
    return raw


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
            oof_threshold=min(on_data, on_general), categories_from=_joined(data, general),
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
            [_unit(named.embeddings[which == i].mean(0)) for i in range(len(categories))]
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
