"""Drift signals on fixed scores: the PSI, the score signal against calibration deciles, the
large-tier share and the escalation rate against their bands, the alerts' log lines."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tierroute.router.selection.drift import DRIFT_BINS, DriftWatch, EmbeddingReference, psi
from tierroute.router.selection.operating import UPDATE_EVERY

PRIOR = np.linspace(0.0, 10.0, 200)  # calibration scores spread evenly over 0-10


def watch(**kw: object) -> DriftWatch:
    args = {"half_life": 100.0, "prior": PRIOR, "target": None,
            "psi_max": 0.25, "share_band": 0.15, "escalation_max": 0.3} | kw  # fmt: skip
    return DriftWatch(**args)  # type: ignore[arg-type]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    even = np.full(DRIFT_BINS, 0.1)
    assert psi(even, even) == pytest.approx(0.0)
    slight = even + np.linspace(-0.02, 0.02, DRIFT_BINS)
    shifted = np.r_[np.zeros(5), np.full(5, 0.2)]
    assert 0 < psi(even, slight) < 0.1 < psi(even, shifted)
    assert psi(even, shifted) > 1.0


def test_traffic_like_the_calibration_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    w = watch(target=0.4)
    for s in rng.choice(PRIOR, 4 * UPDATE_EVERY):
        w.observe(float(s), large=s > 6.0)
        w.answered(escalated=rng.random() < 0.1)
    assert w.alerts == {"score": False, "large_share": False, "escalation_rate": False}
    assert w.values["score"] < 0.1
    assert w.values["large_share"] == pytest.approx(0.4, abs=0.1)
    assert not [r for r in caplog.records if r.name.endswith("operating")]


def test_a_shift_to_hard_prompts_raises_the_score_and_share_alerts_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "tierroute.router.selection.operating")
    rng = np.random.default_rng(1)
    w = watch(target=0.4)
    for s in rng.choice(PRIOR, 2 * UPDATE_EVERY):
        w.observe(float(s), large=s > 6.0)
    assert not any(w.alerts.values())
    raised_after = None
    for n in range(1, 6 * UPDATE_EVERY + 1):  # the hard prompts only: scores 8-10
        w.observe(float(rng.uniform(8.0, 10.0)), large=True)
        if raised_after is None and w.alerts.get("score"):
            raised_after = n
    # Within the stated window: the alert rises inside two half-lives of the shift.
    assert raised_after is not None and raised_after <= 2 * 100
    assert w.alerts["score"] and w.alerts["large_share"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("drift: score left its band: PSI" in m for m in lines)
    assert any("drift: large_share left its band: large-tier share" in m for m in lines)


def test_the_escalation_rate_alert_rises_and_falls() -> None:
    w = watch(prior=None)  # an anchors scorer: no calibration scores, no score signal
    for _ in range(2 * UPDATE_EVERY):
        w.observe(None, large=False)
        w.answered(escalated=True)
    assert w.alerts == {"escalation_rate": True}  # no prior: no score; no target: no share
    for _ in range(6 * UPDATE_EVERY):
        w.observe(None, large=False)
        w.answered(escalated=False)
    assert w.alerts == {"escalation_rate": False}
    assert w.values["escalation_rate"] < 0.3


def test_a_target_share_is_the_expected_share() -> None:
    w = watch(target=0.2)
    for _ in range(2 * UPDATE_EVERY):
        w.observe(5.0, large=False)  # none to the large tier: 20 points under its target
    assert w.alerts["large_share"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cluster(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    return unit(centre + spread * rng.normal(size=(n, len(centre))))


async def test_prompts_unlike_the_calibration_raise_the_embedding_alert() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=32), rng.normal(size=32)
    calibration = cluster(rng, a, 2000, 0.6)
    reference = EmbeddingReference.of(calibration)
    assert reference is not None and len(reference.edges) == DRIFT_BINS - 1
    w = watch(reference=reference, half_life=2000.0)

    async def send(vectors: np.ndarray) -> None:
        for v in vectors:
            w.embedded(v)
            if w.embedding_job is not None and not w.embedding_job.done():
                await w.embedding_job  # the batch is computed off the loop; wait for it here

    await send(cluster(rng, a, 5 * UPDATE_EVERY, 0.6))  # new prompts like the calibration ones
    w.judge()
    like = w.values["embedding"]
    assert w.alerts["embedding"] is False and like < 0.25, like
    await send(cluster(rng, b, 8 * UPDATE_EVERY, 0.6))  # prompts of another kind altogether
    w.judge()
    assert w.alerts["embedding"] is True and w.values["embedding"] > 1.0, w.values
    print(f"embedding PSI: like the calibration {like:.3f}, shifted {w.values['embedding']:.3f}")


def test_without_calibration_embeddings_there_is_no_embedding_signal() -> None:
    w = watch()
    w.embedded(np.ones(4, dtype=np.float32))  # no reference: ignored, no loop needed
    w.judge()
    assert "embedding" not in w.values
    assert EmbeddingReference.of(np.ones((5, 4), dtype=np.float32)) is None  # too few
