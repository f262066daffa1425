"""Selection among N tiers within a request's bounds: the score's quality bar, the context
window, the request's SLO, the fallbacks, and the reasons each decision carries."""

from __future__ import annotations

from typing import Any

import pytest

from tierroute.core.config import Config, config_from_dict
from tierroute.core.errors import InvalidArgument
from tierroute.router.selection.decision import Decisions
from tierroute.router.selection.fit import BYTES_PER_TOKEN_ESTIMATE, Fit
from tierroute.router.selection.policy import Bounds, Policy, above
from tierroute.router.selection.selector import select
from tierroute.router.tiers.measured import TTFT_MS
from tierroute.router.v1 import router_service_pb2 as pb

NAMES = ["small", "medium", "large"]
ALL = frozenset(NAMES)
NO_TTFT: dict[str, float | None] = {}
NO_COST: dict[str, float] = {}


def config(**tiers: dict[str, Any]) -> Config:
    prices = {"small": (0.0001, 0.0002), "medium": (0.001, 0.002), "large": (0.003, 0.006)}
    bounds = {"small": 3.0, "medium": 6.0}
    return config_from_dict(
        {
            "router": {"listen": "127.0.0.1:0"},
            "tiers": [
                {
                    "name": name,
                    "address": f"127.0.0.1:{i + 1}",
                    "model": f"{name}-model",
                    "price_per_1k_input_usd": prices[name][0],
                    "price_per_1k_output_usd": prices[name][1],
                    **({"max_score": bounds[name]} if name in bounds else {}),
                    **tiers.get(name, {}),
                }
                for i, name in enumerate(NAMES)
            ],
        }
    )


def ranked(score: float, cfg: Config | None = None) -> tuple[list[str], str]:
    candidates = Policy(cfg or config()).rank(score)
    return [c.tier for c in candidates], candidates[0].tier


@pytest.mark.parametrize("score", [0.0, 2.9, 3.0, 4.5, 6.0, 6.1, 10.0])
def test_without_bounds_the_selection_is_the_score_ranking(score: float) -> None:
    order, band = ranked(score)
    selection = select(order, above(NAMES, band), NAMES, Bounds(ALL), NO_TTFT, NO_COST)
    assert selection.tiers == order
    assert selection.usable == ALL
    assert selection.reasons == [f"below_quality_bar:{t}" for t in NAMES[: NAMES.index(band)]]


def test_two_tiers_and_one_threshold_are_todays_router() -> None:
    two = config_from_dict(
        {
            "router": {"listen": "127.0.0.1:0", "complexity_threshold": 4.0},
            "tiers": [
                {"name": "small", "address": "a:1", "model": "m"},
                {"name": "large", "address": "a:2", "model": "m"},
            ],
        }
    )
    for score, expected in [
        (1.0, ["small", "large"]),
        (4.0, ["small", "large"]),
        (4.1, ["large", "small"]),
    ]:
        order, band = ranked(score, two)
        selection = select(
            order,
            above(["small", "large"], band),
            ["small", "large"],
            Bounds(frozenset(["small", "large"])),
            NO_TTFT,
            NO_COST,
        )
        assert selection.tiers == expected


def test_a_tier_the_request_does_not_fit_is_passed_over_for_the_next_larger() -> None:
    order, band = ranked(1.0)
    selection = select(
        order, above(NAMES, band), NAMES, Bounds(frozenset({"medium", "large"})), NO_TTFT, NO_COST
    )
    assert selection.tiers == ["medium", "large"]
    assert selection.reasons == ["context_window_excluded:small"]
    assert "small" not in selection.usable


def test_a_slow_tier_is_excluded_by_a_time_to_first_token_bound() -> None:
    order, band = ranked(4.5)  # medium's band
    ttft = {"small": 80.0, "medium": 900.0, "large": 300.0}
    selection = select(
        order, above(NAMES, band), NAMES, Bounds(ALL, max_ttft_ms=500.0), ttft, NO_COST
    )
    assert selection.tiers == ["large", "small"]
    assert selection.reasons == ["below_quality_bar:small", "slo_ttft_excluded:medium"]
    assert selection.usable == {"small", "large"}


def test_a_tier_never_measured_is_not_excluded_for_its_speed() -> None:
    order, band = ranked(1.0)
    selection = select(
        order, above(NAMES, band), NAMES, Bounds(ALL, max_ttft_ms=1.0), {"small": None}, NO_COST
    )
    assert selection.tiers[0] == "small"


def test_a_cost_bound_that_excludes_the_tier_the_score_wants_picks_the_best_cheaper_one() -> None:
    order, band = ranked(9.0)  # large's band
    cost = {"small": 0.0002, "medium": 0.002, "large": 0.006}
    selection = select(
        order, above(NAMES, band), NAMES, Bounds(ALL, max_cost_per_1k=0.0025), NO_TTFT, cost
    )
    assert selection.tiers == ["medium", "small"]
    assert selection.reasons == [
        "below_quality_bar:small",
        "below_quality_bar:medium",
        "slo_cost_excluded:large",
        "slo_fallback_highest_quality",
    ]
    assert selection.usable == {"small", "medium"}  # no escalation past the bound


def test_nothing_within_the_bounds_falls_back_to_the_best_tier_the_request_fits() -> None:
    order, band = ranked(1.0)
    ttft = {"small": 80.0, "medium": 90.0, "large": 300.0}
    fits = frozenset({"small", "medium"})
    selection = select(
        order, above(NAMES, band), NAMES, Bounds(fits, max_ttft_ms=10.0), ttft, NO_COST
    )
    assert selection.tiers == ["medium", "small"]
    assert selection.reasons[-2:] == ["slo_fallback_highest_quality", "slo_unmet"]
    assert "context_window_excluded:large" in selection.reasons
    assert "slo_ttft_excluded:small" in selection.reasons


def test_fit_counts_by_estimate_without_a_tokenizer_and_skips_counting_short_prompts() -> None:
    cfg = config(small={"context_window": 200}, medium={"context_window": 2000})
    fit = Fit(cfg)
    short = fit.needs("What is 2 + 2?", [], 50)
    assert all(n.fits for n in short.values())
    long_text = "word " * 400  # 2,000 bytes: about 667 tokens by the estimate
    needs = fit.needs(long_text, [], 50)
    assert not needs["small"].fits
    assert needs["small"].prompt_tokens >= 2000 // BYTES_PER_TOKEN_ESTIMATE
    assert needs["medium"].fits and needs["large"].fits  # large has no window
    with pytest.raises(InvalidArgument, match="fits no tier's context window"):
        tight = Fit(config(**{n: {"context_window": 100} for n in NAMES}))
        tight.check_any(tight.needs(long_text, [], 50))


def test_the_request_max_tokens_counts_against_the_window() -> None:
    fit = Fit(config(small={"context_window": 300}))
    assert fit.needs("hi", [], 100)["small"].fits
    assert not fit.needs("hi", [], 290)["small"].fits
    assert not fit.needs("hi", [], 0)["small"].fits  # small's default max_tokens is 256


@pytest.mark.parametrize(
    ("slo", "message"),
    [
        (pb.Slo(max_ttft_ms=0), "slo.max_ttft_ms is 0"),
        (pb.Slo(max_ttft_ms=float("nan")), "slo.max_ttft_ms is nan"),
        (pb.Slo(max_cost_per_1k=-1), "slo.max_cost_per_1k is -1"),
    ],
)
def test_an_slo_bound_that_is_not_a_number_of_the_right_sign_is_refused(
    slo: pb.Slo, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Decisions(config()).ask("hi", [], 0, slo)


def test_the_decider_reads_measured_speed_per_category() -> None:
    decisions = Decisions(config())
    for _ in range(5):
        decisions.measurements.observe("medium", "math", TTFT_MS, 900.0)
        decisions.measurements.observe("medium", "chat", TTFT_MS, 50.0)
    ask = decisions.ask("hi", [], 0, pb.Slo(max_ttft_ms=500))
    math_selection = decisions.selector.select(["medium", "large", "small"], "medium", ask, "math")
    chat_selection = decisions.selector.select(["medium", "large", "small"], "medium", ask, "chat")
    assert math_selection.tiers[0] == "large"
    assert chat_selection.tiers[0] == "medium"
