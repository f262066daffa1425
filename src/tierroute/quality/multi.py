"""Quality per model for N models: `tierroute eval-n` fits and measures it, the router serves it
(router.quality_artifact) to choose the cheapest tier whose predicted quality meets the bar.

The model predicts, from a prompt's unit-length embedding `e`, the quality each of N models
reaches on it, in two parts:

- the kind of request: a multinomial logistic regression over the rows' `category` gives
  P(category | e), and the prediction starts from the categories' mean quality per model
  weighted by those probabilities (with one category, or none, that is each model's mean);
- the prompt itself: a ridge regression of each model's quality minus its category's mean,
  added with weight `lam`.

`alpha` (the ridge penalty) and `lam` are chosen by k-fold cross-validation on the training
rows only, by the mean over categories of the quality the chosen model reaches (every category
counts alike, as the benchmarks do). `lam = 0` is the category-best router; it wins the
cross-validation whenever the embedding says nothing about a prompt beyond its kind.

Prediction uses numpy only, so the router serves it without scikit-learn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.quality.artifact import ArtifactError, load_artifact, save_artifact
from tierroute.quality.labelled import DataError, Row, data_hash

KIND = "quality"
ALPHAS = (10.0, 30.0, 100.0, 300.0)
LAMS = (0.0, 0.5, 1.0, 2.0)
K_FOLDS = 5


@dataclass(frozen=True)
class Table:
    """Labelled rows as arrays: embeddings, quality per model, category index."""

    x: np.ndarray  # (n, d) unit-length embeddings
    y: np.ndarray  # (n, m) quality per model
    category: np.ndarray  # (n,) index into `categories`
    models: tuple[str, ...]
    categories: tuple[str, ...]

    def take(self, keep: np.ndarray) -> Table:
        return Table(self.x[keep], self.y[keep], self.category[keep], self.models, self.categories)


def table(
    rows: Sequence[Row],
    x: np.ndarray,
    models: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
) -> Table:
    """The rows as a Table. Every row must score every model (the first row's, or `models`)."""
    if not rows:
        raise DataError("no labelled rows")
    models = tuple(models or sorted(rows[0].scores))
    for i, row in enumerate(rows):
        missing = [m for m in models if m not in row.scores]
        if missing:
            raise DataError(f"row {i + 1} ({row.prompt[:40]!r}) has no score for {missing}")
    categories = tuple(categories or sorted({r.category for r in rows}))
    index = {c: i for i, c in enumerate(categories)}
    # A category unseen in training counts as the first: only its true label is unknown, the
    # router never needs it.
    cats = np.array([index.get(r.category, 0) for r in rows], dtype=np.int64)
    y = np.array([[r.scores[m] for m in models] for r in rows], dtype=np.float64)
    return Table(np.asarray(x, dtype=np.float64), y, cats, models, categories)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w.T, my - mx @ w


def _classifier(t: Table) -> tuple[np.ndarray, np.ndarray]:
    k, d = len(t.categories), t.x.shape[1]
    present = np.unique(t.category)
    if len(present) < 2:
        bias = np.full(k, -30.0)
        bias[present[0] if len(present) else 0] = 0.0
        return np.zeros((k, d)), bias
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=3000).fit(t.x, t.category)
    weights, bias = np.zeros((k, d)), np.full(k, -30.0)
    if len(present) == 2:  # scikit-learn keeps one row of weights for two classes
        weights[present[1]], bias[present[1]] = clf.coef_[0], clf.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weights[present], bias[present] = clf.coef_, clf.intercept_
    return weights, bias


def fit(t: Table, alpha: float, lam: float) -> dict[str, np.ndarray]:
    """The model's arrays for one (alpha, lam)."""
    weights, bias = _classifier(t)
    overall = t.y.mean(axis=0)
    means = np.stack(
        [
            t.y[t.category == c].mean(axis=0) if (t.category == c).any() else overall
            for c in range(len(t.categories))
        ]
    )
    residual_w, residual_b = _ridge(t.x, t.y - means[t.category], alpha)
    return {
        "category_weights": weights.astype(np.float32),
        "category_bias": bias.astype(np.float32),
        "category_means": means.astype(np.float32),
        "residual_weights": (lam * residual_w).astype(np.float32),
        "residual_bias": (lam * residual_b).astype(np.float32),
    }


def category_probabilities(arrays: dict[str, np.ndarray], e: np.ndarray) -> np.ndarray:
    logits = np.asarray(e, dtype=np.float32) @ arrays["category_weights"].T
    logits = logits + arrays["category_bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def predict(arrays: dict[str, np.ndarray], e: np.ndarray) -> np.ndarray:
    """Predicted quality, (n, models), for unit-length embeddings e (n, d)."""
    e = np.asarray(e, dtype=np.float32)
    base = category_probabilities(arrays, e) @ arrays["category_means"]
    return np.asarray(base + e @ arrays["residual_weights"].T + arrays["residual_bias"])


def balanced_quality(y: np.ndarray, category: np.ndarray, chosen: np.ndarray) -> float:
    """The mean over categories of the quality of the chosen model."""
    got = y[np.arange(len(y)), chosen]
    return float(np.mean([got[category == c].mean() for c in np.unique(category)]))


def folds(t: Table, prompts: Sequence[str], k: int = K_FOLDS) -> np.ndarray:
    return np.array(
        [hashlib.sha256(b"fold:" + p.encode()).digest()[0] % k for p in prompts], dtype=np.int64
    )


def cross_validate(
    t: Table,
    prompts: Sequence[str],
    alphas: Sequence[float] = ALPHAS,
    lams: Sequence[float] = LAMS,
) -> tuple[tuple[float, float], list[dict[str, float]]]:
    """The (alpha, lam) with the best mean out-of-fold balanced quality, and every result."""
    fold = folds(t, prompts)
    # With lam = 0 alpha plays no part: one run is enough.
    grid = [(0.0, 0.0)] if 0.0 in lams else []
    grid += [(alpha, lam) for alpha in alphas for lam in lams if lam != 0.0]
    results = []
    for alpha, lam in grid:
        scores = []
        for f in range(K_FOLDS):
            train, held = fold != f, fold == f
            if not held.any() or not train.any():
                continue
            arrays = fit(t.take(train), alpha or 1.0, lam)
            chosen = predict(arrays, t.x[held]).argmax(axis=1)
            scores.append(balanced_quality(t.y[held], t.category[held], chosen))
        results.append({"alpha": alpha, "lam": lam, "cv_quality": float(np.mean(scores))})
    best = max(results, key=lambda r: r["cv_quality"])
    return (best["alpha"], best["lam"]), results


def calibrate_quality(
    rows: Sequence[Row], x: np.ndarray, out: Path, embedder_version: str, described: str
) -> dict[str, Any]:
    """Fit by cross-validation on `rows` (embeddings `x`) and write the artifact to `out`."""
    t = table(rows, x)
    (alpha, lam), cv = cross_validate(t, [r.prompt for r in rows])
    arrays = fit(t, alpha or 1.0, lam)
    meta = {
        "model": KIND,
        "models": list(t.models),
        "categories": list(t.categories),
        "embedder_version": embedder_version,
        "data": described,
        "data_sha256": data_hash(list(rows)),
        "rows": len(rows),
        "params": {"alpha": alpha, "lam": lam},
        "cross_validation": cv,
    }
    meta["version"] = save_artifact(out, meta, arrays)
    return meta


class QualityModel:
    """A served quality artifact: predicted quality per tier (each tier names its model)."""

    def __init__(self, folder: Path, embedder_version: str, tier_models: dict[str, str]) -> None:
        meta, arrays = load_artifact(folder)
        if meta.get("model") != KIND:
            raise ArtifactError(
                f"{folder} is a {meta.get('model')!r} artifact; router.quality_artifact needs "
                "one written by `tierroute eval-n --artifact-out` (kind 'quality')"
            )
        if meta["embedder_version"] != embedder_version:
            raise ArtifactError(
                f"{folder} was fitted on embedder {meta['embedder_version']}, the router runs "
                f"{embedder_version}: refit it with `tierroute eval-n` on this embedder"
            )
        models = list(meta["models"])
        unknown = {t: m for t, m in tier_models.items() if m not in models}
        if unknown:
            raise ArtifactError(
                f"{folder} predicts quality for {models}; tiers name models it does not know: "
                + ", ".join(f"{t} -> {m!r}" for t, m in unknown.items())
                + " (set each tier's quality_model to one of them)"
            )
        self._arrays = arrays
        self._columns = {t: models.index(m) for t, m in tier_models.items()}
        self.version = f"quality@{meta['version']}"

    def predict(self, e: np.ndarray) -> dict[str, float]:
        """Predicted quality per tier for one unit-length embedding."""
        q = predict(self._arrays, np.asarray(e)[None, :])[0]
        return {t: float(q[i]) for t, i in self._columns.items()}
