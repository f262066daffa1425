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
        """How far the score lies inside its tier's band, relative to the widest distance it
        could lie: 0 on a boundary, 1 at the far end of the scale."""
        lower = self._bounds[index - 1] if index > 0 else None
        upper = self._bounds[index] if index < len(self._bounds) - 1 else None
        distances = []
        if upper is not None:
            distances.append((upper - score) / max(upper, 1e-9))
        if lower is not None:
            distances.append((score - lower) / max(10.0 - lower, 1e-9))
        if not distances:
            return 1.0
        return float(min(max(min(distances), 0.0), 1.0))
