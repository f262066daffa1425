"""Selection: a complexity score in, the tiers ranked for it out, each with its reasons.

The first candidate is the tier whose score band covers the score (smallest first); after it
come the larger tiers in order, then the smaller ones, largest first: the order in which the
router tries tiers when the chosen one cannot take the request (failover lives in one place,
route/flow.py, and walks this ranking).
"""

from __future__ import annotations

from dataclasses import dataclass

from tierroute.core.config import Config
from tierroute.router.v1 import router_service_pb2 as pb


@dataclass(frozen=True)
class Candidate:
    tier: str
    # The highest score this tier serves.
    max_score: float
    # How far the score lies inside this tier's band: 0 on a boundary, 1 at the farthest point.
    confidence: float
    # Why it ranks here (pb.ReasonCode values).
    reasons: tuple[pb.ReasonCode, ...] = ()


class Policy:
    def __init__(self, cfg: Config) -> None:
        if not cfg.tiers:
            raise ValueError("no tiers are configured")
        self._names = [t.name for t in cfg.tiers]
        self._configured = cfg.tier_bounds()
        self._bounds = list(self._configured)

    def shift(self, offset: float) -> None:
        """Move every bound but the last (10) by `offset`: the operating point."""
        self._bounds = [
            min(10.0, max(0.0, b + offset)) for b in self._configured[:-1]
        ] + self._configured[-1:]

    @property
    def last_bound(self) -> float:
        """The configured score above which the last (large) tier serves."""
        return self._configured[-2] if len(self._configured) > 1 else 10.0

    @property
    def applied_last_bound(self) -> float:
        """The score above which the last (large) tier serves now (the operating point's)."""
        return self._bounds[-2] if len(self._bounds) > 1 else 10.0

    @property
    def tiers(self) -> list[str]:
        return list(self._names)

    def rank(self, score: float) -> list[Candidate]:
        """Every tier, best first, for a prompt of complexity `score` (0-10)."""
        last = len(self._bounds) - 1
        chosen = next(i for i, bound in enumerate(self._bounds) if score <= bound or i == last)
        reason = (
            pb.REASON_CODE_SCORE_BELOW_THRESHOLD
            if chosen < last
            else pb.REASON_CODE_SCORE_ABOVE_THRESHOLD
        )
        order = [chosen, *range(chosen + 1, last + 1), *range(chosen - 1, -1, -1)]
        return [
            Candidate(
                self._names[i],
                self._bounds[i],
                self._confidence(score, i),
                (reason,) if i == chosen else (),
            )
            for i in order
        ]

    def bound(self, tier: str) -> float:
        return self._bounds[self._names.index(tier)]

    def _confidence(self, score: float, index: int) -> float:
        """How far the score lies from the nearest boundary of the tier's band, relative to
        the farthest any score in that band can lie: 0 on a boundary, 1 at the farthest point
        (the end of the scale for the first and last tier, the middle for a middle tier)."""
        lower = self._bounds[index - 1] if index > 0 else None
        upper = self._bounds[index] if index < len(self._bounds) - 1 else None
        if lower is None and upper is None:
            return 1.0
        if lower is None:
            assert upper is not None
            distance, farthest = upper - score, upper
        elif upper is None:
            distance, farthest = score - lower, 10.0 - lower
        else:
            distance, farthest = min(upper - score, score - lower), (upper - lower) / 2
        return float(min(max(distance / max(farthest, 1e-9), 0.0), 1.0))


# Machine-readable reasons, as `<reason>:<tier>` (RoutingDecision.reasons).
BELOW_QUALITY_BAR = "below_quality_bar"
CONTEXT_WINDOW_EXCLUDED = "context_window_excluded"
SLO_TTFT_EXCLUDED = "slo_ttft_excluded"
SLO_COST_EXCLUDED = "slo_cost_excluded"
SLO_FALLBACK = "slo_fallback_highest_quality"
SLO_UNMET = "slo_unmet"
# Set by the flow when it admits the request (pool.py, flow.py).
SKIP_REASONS = {
    pb.REASON_CODE_CIRCUIT_OPEN: "circuit_open",
    pb.REASON_CODE_TIER_UNAVAILABLE: "tier_unavailable",
    pb.REASON_CODE_VALIDATOR_UNAVAILABLE: "validator_unavailable",
}


@dataclass(frozen=True)
class Bounds:
    """What a request asks of a tier beyond quality: tiers it fits, and its SLO."""

    fits: frozenset[str]
    max_ttft_ms: float | None = None
    max_cost_per_1k: float | None = None


@dataclass(frozen=True)
class Selection:
    # The tiers to try, in order (the flow passes over any whose breaker is open).
    tiers: list[str]
    # Why: `<reason>:<tier>`, and SLO_FALLBACK when it applied.
    reasons: list[str]
    # Tiers an escalation may go to: those within every bound (all that fit, in a fallback).
    usable: frozenset[str]


def above(order: list[str], band: str) -> frozenset[str]:
    """The tiers that meet the score's bar: the band tier and every tier above it."""
    return frozenset(order[order.index(band) :])


def by_predicted_quality(
    quality: dict[str, float],
    cost: dict[str, float],
    order: list[str],
    tolerance: float,
    tie_break: dict[str, float],
) -> tuple[list[str], frozenset[str], list[str]]:
    """With predicted quality per tier (router.quality_artifact): the tiers that meet the bar
    (within `tolerance` of the best), the order to try them (those, cheapest first, ties by
    the higher `tie_break`, then config order; then the rest, best predicted first), and every
    tier by predicted quality, best first."""
    best = max(quality.values())
    meets = frozenset(t for t in order if quality[t] >= best - tolerance)
    by_quality = sorted(order, key=lambda t: (-quality[t], order.index(t)))
    cheapest = sorted(meets, key=lambda t: (cost[t], -tie_break[t], order.index(t)))
    return [*cheapest, *(t for t in by_quality if t not in meets)], meets, by_quality
