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
