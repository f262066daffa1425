"""Complexity scorers: turn prompt embeddings into a 0-10 complexity score and a category.

- `learned`: a calibrated artifact from `tierroute calibrate` (learned.py).
- `anchors`: s_low / s_high are the highest cosine similarity to the simple / complex reference
  prompts; score = 10 * s_high / (s_low + s_high + 0.01).
- `centroid`: the difference of the cosine similarities to the complex and the simple centroid,
  squashed by a sigmoid into 0-10.

All take a batch of unit-length embeddings (and its texts) and are pure numpy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from tierroute.core.config import RouterConfig


@dataclass(frozen=True)
class Score:
    value: float
    category: str


@dataclass(frozen=True)
class ReferenceSet:
    """Reference prompts with their level (simple/complex) and category."""

    simple: list[tuple[str, str]]  # (category, text)
    complex: list[tuple[str, str]]
    digest: str

    @classmethod
    def load(cls, path: Path | None = None) -> ReferenceSet:
        if path is None:
            text = resources.files("tierroute.router").joinpath("data/anchors.yaml").read_text()
        else:
            text = path.read_text()
        doc = yaml.safe_load(text) or {}
        sets: dict[str, list[tuple[str, str]]] = {}
        for level in ("simple", "complex"):
            by_category = doc.get(level)
            if not isinstance(by_category, dict) or not by_category:
                raise ValueError(f"anchors file needs a non-empty `{level}:` mapping of categories")
            sets[level] = [
                (str(category), str(prompt))
                for category, prompts in by_category.items()
                for prompt in prompts
            ]
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return cls(sets["simple"], sets["complex"], digest)


class Scorer(Protocol):
    kind: str
    version: str

    def score(self, embeddings: np.ndarray, texts: Sequence[str]) -> list[Score]:
        """Scores for unit-length embeddings of the whitespace-folded `texts`."""
        ...


class AnchorScorer:
    kind = "anchors"

    def __init__(
        self,
        simple: np.ndarray,
        complex_: np.ndarray,
        categories: list[str],
        version: str,
    ) -> None:
        self._simple = simple
        self._complex = complex_
        self._categories = categories  # simple first, then complex
        self.version = version

    def score(self, embeddings: np.ndarray, texts: Sequence[str] = ()) -> list[Score]:
        sim_simple = embeddings @ self._simple.T
        sim_complex = embeddings @ self._complex.T
        s_low = np.clip(sim_simple.max(axis=1), 0.0, None)
        s_high = np.clip(sim_complex.max(axis=1), 0.0, None)
        values = 10.0 * s_high / (s_low + s_high + 0.01)
        nearest = np.concatenate([sim_simple, sim_complex], axis=1).argmax(axis=1)
        return [
            Score(float(v), self._categories[int(n)]) for v, n in zip(values, nearest, strict=True)
        ]


class CentroidScorer:
    kind = "centroid"

    def __init__(
        self,
        simple: np.ndarray,
        complex_: np.ndarray,
        references: np.ndarray,
        categories: list[str],
        sharpness: float,
        version: str,
    ) -> None:
        self._simple_centroid = _unit(simple.mean(axis=0))
        self._complex_centroid = _unit(complex_.mean(axis=0))
        self._references = references
        self._categories = categories
        self._sharpness = sharpness
        self.version = version

    def score(self, embeddings: np.ndarray, texts: Sequence[str] = ()) -> list[Score]:
        margin = embeddings @ self._complex_centroid - embeddings @ self._simple_centroid
        values = 10.0 / (1.0 + np.exp(-self._sharpness * margin))
        nearest = (embeddings @ self._references.T).argmax(axis=1)
        return [
            Score(float(v), self._categories[int(n)]) for v, n in zip(values, nearest, strict=True)
        ]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def build_scorer(
    cfg: RouterConfig,
    embed: Callable[[list[str]], np.ndarray],
    embedder_version: str,
    first_bound: float | None = None,
) -> Scorer:
    """Build the configured scorer, embedding its reference prompts with `embed`. A learned
    scorer's threshold lands on `first_bound`, the first tier's bound (default
    `complexity_threshold`)."""
    if cfg.scorer == "learned":
        from tierroute.router.scoring.learned import LearnedScorer  # it builds on Score

        assert cfg.artifact is not None  # the config requires it
        bound = cfg.complexity_threshold if first_bound is None else first_bound
        return LearnedScorer(cfg.artifact, bound, embedder_version)
    refs = ReferenceSet.load(cfg.anchors_file)
    simple = embed([text for _, text in refs.simple])
    complex_ = embed([text for _, text in refs.complex])
    categories = [c for c, _ in refs.simple] + [c for c, _ in refs.complex]
    settings: dict[str, object] = {"kind": cfg.scorer, "refs": refs.digest}
    if cfg.scorer == "centroid":
        settings["sharpness"] = cfg.centroid_sharpness
    digest = hashlib.sha256(
        (json.dumps(settings, sort_keys=True) + embedder_version).encode()
    ).hexdigest()[:12]
    version = f"{cfg.scorer}@{digest}"
    if cfg.scorer == "anchors":
        return AnchorScorer(simple, complex_, categories, version)
    return CentroidScorer(
        simple,
        complex_,
        np.concatenate([simple, complex_]),
        categories,
        cfg.centroid_sharpness,
        version,
    )
