"""Turns a complexity score into a tier: the first tier, smallest first, whose bound covers it."""

from __future__ import annotations

from dataclasses import dataclass, field

from tierroute.config import Config
from tierroute.router.v1 import router_service_pb2 as pb


@dataclass(frozen=True)
class TierChoice:
    tier: str
    max_score: float
    confidence: float
    reasons: list[pb.ReasonCode] = field(default_factory=list)


class TierSelector:
    def __init__(self, cfg: Config) -> None:
        self._names = [t.name for t in cfg.tiers]
        self._bounds = cfg.tier_bounds()

    def choose(self, score: float) -> TierChoice:
        if not self._names:
            raise ValueError("no tiers are configured")
        index = next(
            i
            for i, bound in enumerate(self._bounds)
            if score <= bound or i == len(self._bounds) - 1
        )
        reason = (
            pb.REASON_CODE_SCORE_BELOW_THRESHOLD
            if index < len(self._bounds) - 1
            else pb.REASON_CODE_SCORE_ABOVE_THRESHOLD
        )
        return TierChoice(
            self._names[index], self._bounds[index], self._confidence(score, index), [reason]
        )

    def _confidence(self, score: float, index: int) -> float:
        """How far the score lies from the nearest boundary of its tier's band, relative to
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
