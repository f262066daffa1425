"""Calibration's guard and the quality tools' intervals on legal but awkward data: the paired
bootstrap finds a real gain on 300 rows, refuses a tie and a loss, and an interval that cannot
be had is said to be undefined (never a crash, never NaN passed off as a figure)."""

from __future__ import annotations

import math

import numpy as np

from tierroute.quality import apgr
from tierroute.quality.bootstrap import interval
from tierroute.quality.calibrate import paired_gain, to_json
from tierroute.quality.fitting import Labelled


def rows(n: int, seed: int = 0) -> tuple[Labelled, np.ndarray]:
    """n prompts of a hidden difficulty; the large model answers all, the small one the easy
    ones (with noise). Returns the data and the difficulty."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    small = (difficulty + 0.3 * rng.standard_normal(n) < 0.5).astype(float)
    large = np.ones(n)
    data = Labelled([], [], np.zeros((n, 1)), large, small)
    return data, difficulty


def test_a_scorer_that_ranks_difficulty_beats_a_random_one_on_300_rows() -> None:
    data, difficulty = rows(300)
    noise = np.random.default_rng(1).random(300)
    result = paired_gain(difficulty, noise, data, resamples=400)
    assert result["gain"] > 0.1
    assert result["gain_ci95"] is not None and result["gain_ci95"][0] > 0


def test_a_tie_and_a_loss_are_not_gains() -> None:
    data, difficulty = rows(300)
    same = paired_gain(difficulty, difficulty.copy(), data, resamples=200)
    assert same["gain"] == 0 and same["gain_ci95"] == [0.0, 0.0]
    noise = np.random.default_rng(2).random(300)
    worse = paired_gain(noise, difficulty, data, resamples=400)
    assert worse["gain_ci95"] is not None and worse["gain_ci95"][1] < 0


def test_two_models_that_score_alike_make_apgr_undefined_not_a_division_by_zero() -> None:
    scores = np.linspace(0, 1, 20)
    equal = np.full(20, 0.5)
    curve = apgr.curve(scores, equal, equal)
    assert math.isnan(curve.apgr) and curve.undefined == "the two models score the same on average"
    assert apgr.curve(scores, equal + 0.1, equal).apgr > 0  # apart by any amount: defined


def test_an_interval_with_too_many_undefined_resamples_says_why() -> None:
    large = np.zeros(64)
    large[0] = 1.0  # one row tells the models apart; a third of the resamples miss it
    small = np.zeros(64)
    scores = np.arange(64, dtype=float)
    ci = interval(
        lambda i: apgr.curve(scores[i], large[i], small[i]).apgr,
        64,
        "the two models score the same on average",
    )
    assert ci.bounds() is None and ci.left_out > 50
    assert ci.undefined.startswith("in ") and "score the same" in ci.undefined
    assert ci.text() == f"undefined ({ci.undefined})"


def test_a_rare_undefined_resample_is_left_out_and_counted() -> None:
    values = iter([float("nan")] + [0.5] * 999)
    ci = interval(lambda i: next(values), 10, "why")
    assert ci.bounds() == [0.5, 0.5] and ci.left_out == 1


def test_results_are_strict_json_with_undefined_figures_as_null() -> None:
    text = to_json({"apgr": float("nan"), "ci": [float("inf"), 0.25]})
    assert text.replace(" ", "").replace("\n", "") == '{"apgr":null,"ci":[null,0.25]}'
