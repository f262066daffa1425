"""What scoring makes of a request (`Scored`, kept by the routing cache; `Scoring`, what the
decider hands to selection/decision.py) and what a request asks of the tiers beyond quality
(`Ask`): the types the decider, the flow and selection share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tierroute.router.selection.fit import Need
from tierroute.router.selection.policy import (
    Bounds,
)


class Message(Protocol):
    role: str
    content: str


@dataclass(frozen=True)
class Scored:
    """What the routing cache keeps: the score, not the tier (the bounds may move)."""

    score: float
    category: str
    truncated: bool
    # The prompt's embedding, kept only for the routing log (router.routing_log).
    vector: np.ndarray | None = None
    # Predicted quality per tier (router.quality_artifact), or None.
    quality: dict[str, float] | None = None


@dataclass(frozen=True)
class Scoring:
    """What the decider made of one prompt: its score (None: it could not score it, `why`),
    whether the routing cache answered, the degraded scorer's reason if that scored it, when
    scoring started (time.perf_counter()) and the versions that scored it."""

    scored: Scored | None
    started: float
    embedder_version: str = ""
    scorer_version: str = ""
    hit: bool = False
    degraded: str = ""
    why: str = ""


@dataclass(frozen=True)
class Ask:
    """What one request asks of the tiers beyond quality: what it needs of each, its SLO."""

    needs: dict[str, Need]
    bounds: Bounds
