"""Drift: whether today's traffic still looks like what the router was calibrated on. The
score's distribution (PSI over deciles of the calibration scores), the share sent to the large
tier, the escalation rate, and how near prompts lie to the calibration prompts' embeddings,
each over the operating point's window, with an alert when one leaves its band."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from tierroute.router.selection.operating import BINS, UPDATE_EVERY, ScoreSketch

logger = logging.getLogger(__name__)


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
