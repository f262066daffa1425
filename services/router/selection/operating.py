"""The operating point: keep the share of traffic sent to the large (last) tier at a target
(`router.target_large_share`), on the user's own traffic rather than on the data the scorer was
fitted on.

A `ScoreSketch` is an exponentially decayed histogram of live scores over 0-10 (1,000 bins; a
score's weight halves every `operating_point_half_life` requests), seeded with the scorer's own
score distribution from its calibration data when it carries one (weight: `PRIOR_REQUESTS`
requests), so the first decisions already aim at the target. Every `UPDATE_EVERY` decisions the
last tier's threshold moves toward the sketch's (1 - target) quantile, by at most `MAX_STEP`
points; every move is logged with the old and the new value. The other tiers' bounds move with
it. The sketch and the offset are saved to `router.operating_point_state` after each move, and
read back at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BINS = 1000
UPDATE_EVERY = 100
MAX_STEP = 0.25
PRIOR_REQUESTS = 200
STATE_FORMAT = 1


class ScoreSketch:
    """An exponentially decayed histogram of scores in [0, 10]."""

    def __init__(self, half_life: float) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.counts = np.zeros(BINS)
        self._weight = 1.0  # the next score's weight; grows instead of decaying the rest

    @staticmethod
    def _bin(score: float) -> int:
        return min(BINS - 1, max(0, int(score / 10.0 * BINS)))

    def add(self, score: float) -> None:
        self._weight /= self.decay
        self.counts[self._bin(score)] += self._weight
        if self._weight > 1e100:  # renormalise long before float overflow
            self.counts /= self._weight
            self._weight = 1.0

    def seed(self, quantiles: np.ndarray, requests: float) -> None:
        """Pretend `requests` scores with these (evenly spaced) quantiles were seen."""
        for q in quantiles:
            self.counts[self._bin(float(q))] += requests / len(quantiles) * self._weight

    @property
    def total(self) -> float:
        """The decayed number of scores seen, in units of the latest one's weight."""
        return float(self.counts.sum() / self._weight)

    def quantile(self, q: float) -> float:
        cumulative = np.cumsum(self.counts)
        if cumulative[-1] <= 0:
            raise ValueError("no scores yet")
        i = int(np.searchsorted(cumulative, q * cumulative[-1]))
        return (min(i, BINS - 1) + 0.5) * 10.0 / BINS

    def state(self) -> dict[str, Any]:
        return {"decay": self.decay, "counts": (self.counts / self._weight).tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.float64)
        if counts.shape != (BINS,) or not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("the sketch's counts are not 1,000 finite non-negative numbers")
        self.counts, self._weight = counts, 1.0


class OperatingPoint:
    """The offset added to every tier bound but the last, kept so that `target` of the
    traffic scores above the last one."""

    def __init__(
        self,
        target: float,
        last_bound: float,
        half_life: float,
        state_path: Path | None = None,
        prior: np.ndarray | None = None,
    ) -> None:
        self.target = target
        self.last_bound = last_bound
        self.state_path = state_path
        self.half_life = half_life
        self.sketch = ScoreSketch(half_life)
        self.offset = 0.0
        self.decisions = 0
        restored = state_path is not None and self._load(state_path)
        if not restored and prior is not None and len(prior):
            self.sketch.seed(prior, PRIOR_REQUESTS)
            self.offset = self._clamp(self.sketch.quantile(1.0 - target) - last_bound)
            logger.info(
                "operating point: large-tier threshold %.2f (target %.0f%% large, from the "
                "scorer's calibration scores; it follows live traffic from here)",
                self.threshold,
                target * 100,
            )

    @property
    def threshold(self) -> float:
        return self.last_bound + self.offset

    def _clamp(self, offset: float) -> float:
        return min(10.0 - self.last_bound, max(-self.last_bound, offset))

    def observe(self, score: float) -> None:
        self.sketch.add(score)
        self.decisions += 1
        if self.decisions % UPDATE_EVERY == 0:
            self.update()

    def update(self) -> None:
        """Move the threshold toward the live (1 - target) quantile, by at most MAX_STEP."""
        want = self._clamp(self.sketch.quantile(1.0 - self.target) - self.last_bound)
        step = max(-MAX_STEP, min(MAX_STEP, want - self.offset))
        if abs(step) < 0.005:
            return
        old = self.threshold
        self.offset += step
        share = self._share_above(old)
        logger.info(
            "operating point: large-tier threshold %.2f -> %.2f (target %.0f%% large; %.0f%% of "
            "recent traffic scored above %.2f; about %.0f requests weigh in)",
            old,
            self.threshold,
            self.target * 100,
            share * 100,
            old,
            self.sketch.total,
        )
        if self.state_path is not None:
            self._save(self.state_path)

    def _share_above(self, threshold: float) -> float:
        counts = self.sketch.counts
        return float(counts[ScoreSketch._bin(threshold) + 1 :].sum() / max(counts.sum(), 1e-300))

    def _save(self, path: Path) -> None:
        doc = {
            "format": STATE_FORMAT,
            "target": self.target,
            "last_bound": self.last_bound,
            "offset": self.offset,
            "sketch": self.sketch.state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    def _load(self, path: Path) -> bool:
        """Read a saved state; a missing one is fine, a broken one is reported and ignored."""
        if not path.is_file():
            return False
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {STATE_FORMAT}")
            self.sketch.restore(doc["sketch"])
            offset = float(doc["offset"])
            if not math.isfinite(offset):
                raise ValueError("offset is not a number")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "operating point: ignoring %s (%s); starting from the scorer's calibration",
                path,
                exc,
            )
            self.sketch = ScoreSketch(self.half_life)
            return False
        if doc.get("target") != self.target or doc.get("last_bound") != self.last_bound:
            logger.info(
                "operating point: %s was kept for another target or bound; its live scores are "
                "kept, its threshold is recomputed",
                path,
            )
            offset = self._clamp(self.sketch.quantile(1.0 - self.target) - self.last_bound)
        self.offset = self._clamp(offset)
        logger.info(
            "operating point: large-tier threshold %.2f, restored from %s", self.threshold, path
        )
        return True


# --- drift: is the traffic still what the router was fitted on? ---
