"""The operating point: a target share of large-tier traffic met on live scores that differ from
the calibration data, in bounded logged steps, kept across restarts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tierroute.router.selection.operating import MAX_STEP, UPDATE_EVERY, OperatingPoint

# The calibration data's scores: spread evenly over 0-10.
PRIOR = np.linspace(0.0, 10.0, 101)


def live(n: int, seed: int = 0) -> np.ndarray:
    """Live traffic that scores much lower than the calibration data: mostly easy requests."""
    return np.clip(np.random.default_rng(seed).normal(3.0, 1.0, n), 0.0, 10.0)


def run(point: OperatingPoint, scores: np.ndarray) -> np.ndarray:
    """Route each score at the threshold of its moment; whether it went large."""
    went = np.zeros(len(scores), dtype=bool)
    for i, s in enumerate(scores):
        went[i] = s > point.threshold
        point.observe(float(s))
    return went


def test_the_prior_sets_the_first_threshold_for_the_target() -> None:
    point = OperatingPoint(0.3, 4.0, 2000.0, prior=PRIOR)
    assert point.threshold == pytest.approx(7.0, abs=0.1)


def test_the_target_share_is_met_on_live_traffic_within_2000_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tierroute.router.selection.operating")
    point = OperatingPoint(0.3, 4.0, 2000.0, prior=PRIOR)
    went = run(point, live(3000))
    assert went[:500].mean() < 0.05, "at first, the calibration data's threshold: few go large"
    assert went[2000:].mean() == pytest.approx(0.3, abs=0.05)
    moves = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert moves and all("target 30% large" in m for m in moves)
    steps = [
        float(m.split(" -> ")[1].split()[0]) - float(m.split(" -> ")[0].split()[-1]) for m in moves
    ]
    assert all(abs(s) <= MAX_STEP + 0.011 for s in steps)  # bounded (printed to 2 decimals)
    assert len(moves) <= 3000 // UPDATE_EVERY


def test_the_operating_point_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "op" / "state.json"
    first = OperatingPoint(0.3, 4.0, 2000.0, state, prior=PRIOR)
    run(first, live(2000))
    assert state.is_file()
    again = OperatingPoint(0.3, 4.0, 2000.0, state, prior=PRIOR)
    assert again.threshold == pytest.approx(first.threshold)
    went = run(again, live(500, seed=1))
    assert went.mean() == pytest.approx(0.3, abs=0.06), "it starts where it left off"


def test_a_broken_state_file_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "offset": 1.0, "sketch": {"counts": [1, 2]}}')
    point = OperatingPoint(0.3, 4.0, 2000.0, state, prior=PRIOR)
    assert point.threshold == pytest.approx(7.0, abs=0.1)
    assert f"ignoring {state}" in caplog.text


def test_a_state_kept_for_another_target_recomputes_the_threshold(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    run(OperatingPoint(0.3, 4.0, 2000.0, state, prior=PRIOR), live(2000))
    other = OperatingPoint(0.1, 4.0, 2000.0, state, prior=PRIOR)
    went = run(other, live(500, seed=2))
    assert went.mean() == pytest.approx(0.1, abs=0.05)
