"""The scorers fitted on labelled rows: the rows with their embeddings and features
(`Labelled`), the logistic and kNN models and their ensemble, their hyper-parameters chosen by
cross-validation on two folds, a threshold for a target, and AUC. calibrate.py chooses among
them and guards the result; stacked.py combines them with a model of everyday requests."""

from __future__ import annotations

import hashlib
import json
import logging
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
    logistic_inputs,
    prompt_features,
    raw_scores,
    requests,
)
from tierroute.quality.labelled import Row

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


# A feature a model must not see is divided by this (standardised to zero): the everyday
# model and the gate never see a request's length, which the everyday data teaches is not
# difficulty; the benchmark model may (a longer word problem is a harder one).
BLIND_STD = 1e30


LENGTH_FEATURES = ("log_request_words",)


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


def unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def fit_logistic(
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


def fit_knn(data: Labelled) -> dict[str, np.ndarray]:
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
        return fit_logistic(data, DEFAULT_C if param is None else param)
    if model == "knn":
        k = _k(data, int(DEFAULT_K if param is None else param))
        return fit_knn(data), {"k": k}
    if model == "ensemble":
        logistic, params = fit_logistic(data, DEFAULT_C)
        arrays = {**logistic, **fit_knn(data)}
        params |= {"k": _k(data, DEFAULT_K), "knn_weight": KNN_WEIGHT}
        # Rank tables from scores the calibration prompts get without seeing themselves.
        folds = two_folds(data, b"rank:")
        logit = np.zeros(len(data.rows))
        knn = np.zeros(len(data.rows))
        for f in (0, 1):
            train, test = data.subset(folds != f), data.subset(folds == f)
            logistic, part_params = fit_logistic(train, DEFAULT_C)
            part = {**logistic, **fit_knn(train)}
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
                "large_centroid": unit(e[needed].mean(0)),
                "small_centroid": unit(e[~needed].mean(0)),
            },
            {},
        )
    if model == "anchors":
        arrays = {}
        for name, mask in (("large_anchors", needed), ("small_anchors", ~needed)):
            members = e[mask]
            centre = unit(members.mean(0))
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


def joined(a: Labelled, b: Labelled) -> Labelled:
    return Labelled(
        a.rows + b.rows,
        a.texts + b.texts,
        np.concatenate([a.embeddings, b.embeddings]),
        np.concatenate([a.large, b.large]),
        np.concatenate([a.small, b.small]),
    )


def two_folds(data: Labelled, salt: bytes = b"fold:") -> np.ndarray:
    """A deterministic 2-fold split of the calibration half, by another hash of the prompt
    (a different salt for a split nested inside another)."""
    return np.array([hashlib.sha256(salt + r.prompt.encode()).digest()[0] % 2 for r in data.rows])


def select(model: str, data: Labelled) -> float | None:
    """The hyper-parameter with the best mean APGR over two folds of `data`."""
    grid: tuple[float, ...] = {"logistic": LOGISTIC_C, "knn": KNN_K}.get(model, ())
    folds = two_folds(data)
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
    folds = two_folds(data)
    raw = np.zeros(len(data.rows))
    for f in (0, 1):
        train, test = data.subset(folds != f), data.subset(folds == f)
        arrays, params = fit(model, train, param)
        raw[folds == f] = raw_scores(model, arrays, params, test.embeddings, test.texts)
    return raw
