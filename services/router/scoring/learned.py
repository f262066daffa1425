"""The calibrated scorer: serves a router artifact (tierroute.quality.artifact) with numpy (and
onnxruntime for a kNN's int8 neighbour search, scoring/neighbours.py).

The artifact's raw score maps piecewise-linearly onto 0-10 so that its threshold lands on the
first tier's bound: the router's tier choice is then exactly the artifact's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tierroute.quality.artifact import (
    ArtifactError,
    Search,
    exact_search,
    load_artifact,
    raw_scores,
)
from tierroute.router.scoring.neighbours import Int8Search
from tierroute.router.scoring.scorers import Score


def calibration_scores(folder: Path, complexity_threshold: float) -> np.ndarray | None:
    """The 0-10 scores of an artifact's calibration prompts at evenly spaced quantiles, as the
    router would score them, if the artifact carries them (drift's reference in
    `tierroute report`)."""
    meta, arrays = load_artifact(folder)
    raw = arrays.get("raw_quantiles")
    if raw is None:
        return None
    return np.interp(raw, *_knots(meta, complexity_threshold))


def _knots(meta: dict, complexity_threshold: float) -> tuple[list[float], list[float]]:
    low, threshold, high = meta["raw_low"], meta["threshold"], meta["raw_high"]
    return [low, threshold, high], [0.0, complexity_threshold, 10.0]


class LearnedScorer:
    kind = "learned"

    def __init__(
        self,
        folder: Path,
        complexity_threshold: float,
        embedder_version: str,
        int8_search: bool = True,
    ) -> None:
        meta, arrays = load_artifact(folder)
        if meta["embedder_version"] != embedder_version:
            raise ArtifactError(
                f"{folder} was calibrated on embedder {meta['embedder_version']}, the router runs "
                f"{embedder_version}: recalibrate (`tierroute calibrate`) with this embedder"
            )
        self._model = meta["model"]
        self._params = meta.get("params", {})
        self._arrays = arrays
        low, threshold, high = meta["raw_low"], meta["threshold"], meta["raw_high"]
        if not low < threshold < high:
            raise ArtifactError(f"{folder}: needs raw_low < threshold < raw_high")
        self._knots = _knots(meta, complexity_threshold)
        self._categories: list[str] = meta.get("categories", [])
        self.version = f"learned:{self._model}@{meta['version']}"
        self.meta = meta
        # a kNN's calibration prompts (of any component), searched on int8 copies (without
        # `int8_search`: exactly, as `tierroute eval` does; for comparison)
        self._search: Search = exact_search
        if int8_search:
            self._search = search = Int8Search()
            for name, array in arrays.items():
                if name.endswith("neighbours"):
                    search.prepare(array)

    def reference_embeddings(self) -> np.ndarray | None:
        """The calibration prompts' embeddings, if the artifact carries them (a kNN scorer's
        neighbours): what the embedding drift signal judges live prompts against."""
        for key in ("neighbours", "base_neighbours"):
            if key in self._arrays:
                return np.asarray(self._arrays[key], dtype=np.float32)
        return None

    def prior_scores(self) -> np.ndarray | None:
        """The 0-10 scores of the calibration prompts at evenly spaced quantiles, if the
        artifact carries them: where the operating point starts."""
        raw = self._arrays.get("raw_quantiles")
        return None if raw is None else np.interp(raw, *self._knots)

    def score(self, embeddings: np.ndarray, texts: Sequence[str]) -> list[Score]:
        raw = raw_scores(self._model, self._arrays, self._params, embeddings, texts, self._search)
        values = np.interp(raw, *self._knots)
        if self._categories:
            nearest = (embeddings @ self._arrays["category_centroids"].T).argmax(axis=1)
            names = [self._categories[int(n)] for n in nearest]
        else:
            names = [""] * len(values)
        return [Score(float(v), c) for v, c in zip(values, names, strict=True)]
