"""Selection: score-to-tier mapping for two and three tiers, and the order tiers are tried."""

from __future__ import annotations

import pytest

from tierroute.core.config import config_from_dict
from tierroute.router.selection.policy import Candidate, Policy
from tierroute.router.v1 import router_service_pb2 as pb


class Chooser:
    """The first-ranked candidate for a score."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def choose(self, score: float) -> Candidate:
        return self.policy.rank(score)[0]


def selector(*bounds: float | None) -> Chooser:
    tiers = [
        {
            "name": f"t{i}",
            "address": "h:1",
            "model": "m",
            **({"max_score": b} if b is not None else {}),
        }
        for i, b in enumerate(bounds)
    ]
    return Chooser(Policy(config_from_dict({"tiers": tiers})))


def test_two_tiers_split_at_the_threshold_inclusive() -> None:
    s = selector(None, None)
    assert s.choose(4.0).tier == "t0"
    assert s.choose(4.01).tier == "t1"
    assert s.choose(0).reasons == (pb.REASON_CODE_SCORE_BELOW_THRESHOLD,)
    assert s.choose(9).reasons == (pb.REASON_CODE_SCORE_ABOVE_THRESHOLD,)


def test_three_tiers_use_each_max_score() -> None:
    s = selector(3, 7, None)
    assert [s.choose(x).tier for x in (1, 3, 5, 7, 8, 10)] == ["t0", "t0", "t1", "t1", "t2", "t2"]


def test_confidence_is_zero_on_a_boundary_and_grows_away_from_it() -> None:
    s = selector(None, None)
    assert s.choose(4.0).confidence == pytest.approx(0.0)
    assert s.choose(0.0).confidence == pytest.approx(1.0)
    assert s.choose(10.0).confidence == pytest.approx(1.0)
    assert 0 < s.choose(2.0).confidence < s.choose(1.0).confidence


def test_middle_tier_confidence_peaks_at_the_middle_of_its_band() -> None:
    s = selector(3, 7, None)
    assert s.choose(5.0).confidence == pytest.approx(1.0)
    assert s.choose(3.5).confidence == pytest.approx(0.25)
    assert s.choose(7.0).confidence == pytest.approx(0.0)


def test_the_ranking_tries_larger_tiers_first_then_smaller_ones() -> None:
    ranked = selector(3, 5, 7, None).policy.rank(4.0)
    assert [c.tier for c in ranked] == ["t1", "t2", "t3", "t0"]
    assert ranked[0].reasons and not any(c.reasons for c in ranked[1:])
