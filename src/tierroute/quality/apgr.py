"""Routing-quality metrics, computed the way RouteLLM's evaluation code does.

A router gives each prompt a score; higher means "send it to the strong (large) model". The
thresholds are the 11 edges of the scores' deciles (pandas' qcut bins: min, 10%, ..., max);
at each, prompts scoring >= it (> it for the last) go to the strong model. That gives 11 points
(share of strong calls in %, mean quality), sorted by share. Then:

- APGR: the area under quality over share (trapezoid rule), as a fraction of the way from the
  weak model's area to the strong model's over the same span of shares.
- CPT(x%): the share of strong calls at which quality recovers x% of the gap between the weak
  and the strong model, by linear interpolation over the points (np.interp, as RouteLLM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    strong_pct: np.ndarray  # share of strong calls, 0-100, ascending
    quality: np.ndarray  # mean quality at that share
    strong_quality: float
    weak_quality: float

    @property
    def apgr(self) -> float:
        """NaN where it is undefined: the two models score the same on average."""
        if self.undefined:
            return float("nan")
        x = self.strong_pct / 100.0
        auc = float(np.trapezoid(self.quality, x))
        span = float(x[-1] - x[0])
        weak_auc, strong_auc = self.weak_quality * span, self.strong_quality * span
        return (auc - weak_auc) / (strong_auc - weak_auc)

    @property
    def undefined(self) -> str:
        """Why APGR is undefined here ("" when it is defined)."""
        if self.strong_quality == self.weak_quality:
            return "the two models score the same on average"
        return ""

    def cpt(self, fraction: float) -> float:
        """Share of strong calls (%) needed to recover `fraction` of the quality gap."""
        target = fraction * (self.strong_quality - self.weak_quality) + self.weak_quality
        return float(np.interp(target, self.quality, self.strong_pct))

    def summary(self) -> dict[str, float]:
        return {
            "apgr": self.apgr,
            "cpt20": self.cpt(0.2),
            "cpt50": self.cpt(0.5),
            "cpt80": self.cpt(0.8),
        }


def curve(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray, bins: int = 10) -> Curve:
    """RouteLLM's threshold sweep: `strong` and `weak` are each prompt's quality per model."""
    scores = np.asarray(scores, dtype=np.float64)
    edges = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1))
    points = []
    for i, threshold in enumerate(edges):
        chosen = scores >= threshold if i != len(edges) - 1 else scores > threshold
        points.append((chosen.mean() * 100.0, np.where(chosen, strong, weak).mean()))
    points.sort(key=lambda p: p[0])  # stable: ties keep threshold order
    x, q = (np.array(v) for v in zip(*points, strict=True))
    return Curve(x, q, float(np.mean(strong)), float(np.mean(weak)))


def optimal_curve(strong: np.ndarray, weak: np.ndarray, steps: int = 10) -> Curve:
    """The oracle: at each share of strong calls, the prompts that gain most from the strong
    model go to it (only those that gain at all)."""
    gain = np.sort(np.asarray(strong) - np.asarray(weak))[::-1]
    n = len(gain)
    base = float(np.sum(weak))
    xs, qs = [], []
    for step in range(steps + 1):
        k = int(n * step / steps)
        xs.append(100.0 * step / steps)
        qs.append((base + float(np.sum(np.clip(gain[:k], 0.0, None)))) / n)
    return Curve(np.array(xs), np.array(qs), float(np.mean(strong)), float(np.mean(weak)))


def random_curves(strong: np.ndarray, weak: np.ndarray, seeds: int = 10) -> list[Curve]:
    """Routers that score at random: seeds 0.. of a stream of their own."""
    return [
        curve(np.random.default_rng((0x7AB1E, seed)).random(len(strong)), strong, weak)
        for seed in range(seeds)
    ]


def at_threshold(
    scores: np.ndarray, threshold: float, strong: np.ndarray, weak: np.ndarray
) -> dict[str, float]:
    """Quality and share of strong calls when prompts scoring above threshold go strong (the
    router's rule: a score at or below a tier's bound stays on that tier)."""
    chosen = np.asarray(scores) > threshold
    quality = float(np.where(chosen, strong, weak).mean())
    s, w = float(np.mean(strong)), float(np.mean(weak))
    return {
        "strong_share": float(chosen.mean()),
        "quality": quality,
        "pgr": (quality - w) / (s - w) if s != w else 0.0,
    }
