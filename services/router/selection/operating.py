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

import asyncio
import json
import logging
import math
import os
from dataclasses import dataclass
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

DRIFT_BINS = 10
# Live weight (in requests) a signal needs before it is judged.
DRIFT_MIN_REQUESTS = 100


def psi(expected: np.ndarray, observed: np.ndarray, floor: float = 1e-4) -> float:
    """The population stability index of `observed` against `expected` (two histograms over the
    same bins, normalised here): sum of (o - e) * ln(o / e). By the usual reading, under 0.1 no
    shift, 0.1 to 0.25 a moderate one, over 0.25 a major one."""
    e = np.maximum(np.asarray(expected, dtype=float), 0.0)
    o = np.maximum(np.asarray(observed, dtype=float), 0.0)
    e = np.maximum(e / max(e.sum(), 1e-300), floor)
    o = np.maximum(o / max(o.sum(), 1e-300), floor)
    return float(np.sum((o - e) * np.log(o / e)))


def decile_edges(prior: np.ndarray) -> np.ndarray:
    """The inner edges of DRIFT_BINS bins, each holding a tenth of the calibration scores."""
    return np.quantile(np.asarray(prior, dtype=float), np.linspace(0, 1, DRIFT_BINS + 1)[1:-1])


# Every EMBED_EVERY-th freshly embedded prompt is sampled for the embedding signal, and its
# nearest-calibration-neighbour similarity computed in batches of EMBED_BATCH, off the loop.
EMBED_EVERY = 4
EMBED_BATCH = 25
# Calibration prompts whose own nearest-neighbour similarity (leave one out) is the reference.
EMBED_REFERENCE_SAMPLE = 1000


def nearest_similarity(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each vector's cosine similarity to its nearest reference vector (all unit length)."""
    return np.asarray((vectors @ reference.T).max(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class EmbeddingReference:
    """What the embedding signal judges live prompts against: the calibration prompts'
    embeddings, and the deciles of their similarity to their nearest other calibration prompt."""

    embeddings: np.ndarray
    edges: np.ndarray

    @classmethod
    def of(cls, embeddings: np.ndarray, seed: int = 0) -> EmbeddingReference | None:
        n = len(embeddings)
        if n < 2 * DRIFT_BINS:
            return None
        rng = np.random.default_rng(seed)
        picked = rng.choice(n, size=min(n, EMBED_REFERENCE_SAMPLE), replace=False)
        sims = embeddings[picked] @ embeddings.T
        sims[np.arange(len(picked)), picked] = -np.inf  # not itself
        return cls(embeddings, decile_edges(sims.max(axis=1)))

    def bins(self, vectors: np.ndarray) -> np.ndarray:
        """The reference decile each vector's nearest-neighbour similarity falls in."""
        return np.searchsorted(self.edges, nearest_similarity(vectors, self.embeddings), "right")


class DriftWatch:
    """Three signals over the same window as the operating point (a score's, a decision's and
    an answer's weight halve every `operating_point_half_life` requests; judged every
    UPDATE_EVERY decisions, as the operating point moves):

    - `score`: the PSI of the live complexity scores against the scorer's calibration scores
      (DRIFT_BINS bins at the calibration deciles), when the artifact carries them;
    - `large_share`: the share of decisions for the large tier against its target
      (router.target_large_share; without one, not judged: the calibration data's own share
      says little about a user's traffic);
    - `escalation_rate`: the share of delivered answers that were escalated;
    - `embedding`: the PSI of the live prompts' similarity to their nearest calibration prompt
      against the calibration prompts' own (leave one out; DRIFT_BINS bins at its deciles),
      when the artifact carries its calibration embeddings (a learned kNN scorer's do): prompts
      unlike anything the router was fitted on, whatever they score. Every EMBED_EVERY-th
      embedded prompt is sampled, and the similarities are computed in batches off the event
      loop.

    A signal outside its band (router.drift_psi_max, drift_share_band, drift_escalation_max)
    raises its alert: the `alerts` dict (Prometheus' tierroute_drift_alert), and a log line
    with the figures when it starts and when it ends."""

    def __init__(
        self,
        half_life: float,
        prior: np.ndarray | None,
        target: float | None,
        psi_max: float,
        share_band: float,
        escalation_max: float,
        reference: EmbeddingReference | None = None,
    ) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.sketch = ScoreSketch(half_life)
        self.reference = reference
        # Decayed counts of the sampled prompts' reference deciles (sampled every EMBED_EVERY
        # prompts: the same window in requests).
        self.embedding_counts = np.zeros(DRIFT_BINS)
        self._embed_decay = 0.5 ** (EMBED_EVERY / half_life)
        self._embedded = 0
        self._pending: list[np.ndarray] = []
        self.embedding_job: asyncio.Future[np.ndarray] | None = None
        self.edges = decile_edges(prior) if prior is not None and len(prior) else None
        self.expected_share = target
        self.psi_max, self.share_band, self.escalation_max = psi_max, share_band, escalation_max
        self.large = _Ewma(self.decay)
        self.escalated = _Ewma(self.decay)
        self.decisions = 0
        self.values: dict[str, float] = {}
        self.alerts: dict[str, bool] = {}

    def observe(self, score: float | None, large: bool) -> None:
        """One decision: its score (None: not scored) and whether it chose the large tier."""
        if score is not None and self.edges is not None:
            self.sketch.add(score)
        self.large.add(1.0 if large else 0.0)
        self.decisions += 1
        if self.decisions % UPDATE_EVERY == 0:
            self.judge()

    def answered(self, escalated: bool) -> None:
        self.escalated.add(1.0 if escalated else 0.0)

    def embedded(self, vector: np.ndarray) -> None:
        """A freshly embedded prompt (unit length): sampled for the embedding signal."""
        if self.reference is None:
            return
        self._embedded += 1
        if self._embedded % EMBED_EVERY:
            return
        self._pending.append(vector)
        if len(self._pending) >= EMBED_BATCH and (
            self.embedding_job is None or self.embedding_job.done()
        ):
            batch, self._pending = np.stack(self._pending), []
            loop = asyncio.get_running_loop()
            reference = self.reference
            self.embedding_job = loop.run_in_executor(None, reference.bins, batch)
            self.embedding_job.add_done_callback(self._add_bins)

    def _add_bins(self, job: asyncio.Future[np.ndarray]) -> None:
        if job.cancelled() or job.exception() is not None:
            logger.warning("drift: embedding similarities not computed: %r", job.exception())
            return
        self.add_bins(job.result())

    def add_bins(self, bins: np.ndarray) -> None:
        for b in bins:
            self.embedding_counts *= self._embed_decay
            self.embedding_counts[int(b)] += 1.0

    def embedding_psi(self) -> float | None:
        # DRIFT_MIN_REQUESTS sampled prompts, not requests: the PSI of fewer is mostly noise
        # (about (DRIFT_BINS - 1) / n for traffic exactly like the calibration's).
        if self.embedding_counts.sum() < DRIFT_MIN_REQUESTS:
            return None
        return psi(np.full(DRIFT_BINS, 1.0 / DRIFT_BINS), self.embedding_counts)

    def score_psi(self) -> float | None:
        if self.edges is None or self.sketch.total < DRIFT_MIN_REQUESTS:
            return None
        centres = (np.arange(BINS) + 0.5) * 10.0 / BINS
        observed = np.bincount(
            np.searchsorted(self.edges, centres, side="right"),
            weights=self.sketch.counts,
            minlength=DRIFT_BINS,
        )
        return psi(np.full(DRIFT_BINS, 1.0 / DRIFT_BINS), observed)

    def judge(self) -> dict[str, bool]:
        """Compute the signals, update the alerts, log what changed."""
        checks: dict[str, tuple[float | None, str, bool]] = {}
        value = self.score_psi()
        if value is not None:
            checks["score"] = (value, f"PSI {value:.3f} (band < {self.psi_max:g})",
                               value > self.psi_max)  # fmt: skip
        value = self.embedding_psi()
        if value is not None:
            checks["embedding"] = (
                value,
                f"PSI {value:.3f} of the nearest-calibration-prompt similarity "
                f"(band < {self.psi_max:g})",
                value > self.psi_max,
            )
        if self.expected_share is not None and self.large.weight >= DRIFT_MIN_REQUESTS:
            share, expected = self.large.value, self.expected_share
            checks["large_share"] = (
                share,
                f"large-tier share {share:.1%} (expected {expected:.1%} +/- {self.share_band:.0%})",
                abs(share - expected) > self.share_band,
            )
        if self.escalated.weight >= DRIFT_MIN_REQUESTS:
            rate = self.escalated.value
            checks["escalation_rate"] = (
                rate,
                f"escalation rate {rate:.1%} (band < {self.escalation_max:.0%})",
                rate > self.escalation_max,
            )
        for signal, (value, figures, out) in checks.items():
            assert value is not None
            self.values[signal] = value
            if out != self.alerts.get(signal, False):
                if out:
                    logger.warning("drift: %s left its band: %s, over the last ~%.0f requests",
                                   signal, figures, self.large.weight)  # fmt: skip
                else:
                    logger.warning("drift: %s is back in its band: %s", signal, figures)
            self.alerts[signal] = out
        return self.alerts


class _Ewma:
    """An exponentially weighted mean whose weights halve every half-life observations."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.total = 0.0
        self.weight = 0.0

    def add(self, x: float) -> None:
        self.total = self.total * self.decay + x
        self.weight = self.weight * self.decay + 1.0

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight else 0.0
