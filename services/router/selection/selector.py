"""Selection's one home: which tiers a request may go to, in what order, and why.

The decider scores a prompt; decision.py hands the ranking its score gives (policy.py) to the
`Selector`, which gathers what the rules need (each tier's measured time to first token for
the prompt's category, its cost for this request, its predicted quality where a quality
artifact gives one) and applies them: the quality bar (policy.py), then each exclusion
(`EXCLUSIONS`: the context window, the SLO's time to first token, the SLO's cost), then the
fallbacks when nothing is left (`select`). Filters that depend on the moment a request is
admitted (a breaker open, the validator down) are in filters.py.
"""

from __future__ import annotations

from collections.abc import Callable

from tierroute.core.config import Config
from tierroute.router.scoring.scored import Ask
from tierroute.router.selection.policy import (
    BELOW_QUALITY_BAR,
    CONTEXT_WINDOW_EXCLUDED,
    SLO_COST_EXCLUDED,
    SLO_FALLBACK,
    SLO_TTFT_EXCLUDED,
    SLO_UNMET,
    Bounds,
    Policy,
    Selection,
    above,
    by_predicted_quality,
)
from tierroute.router.tiers.measured import TTFT_MS, Measurements


class Selector:
    """Selection with its inputs: the config, the policy's ranking and the measured figures."""

    def __init__(self, cfg: Config, policy: Policy, measurements: Measurements) -> None:
        self.cfg = cfg
        self.policy = policy
        self.measurements = measurements

    def select(
        self,
        ranked: list[str],
        band: str,
        ask: Ask | None,
        category: str,
        quality: dict[str, float] | None = None,
    ) -> Selection:
        """The tiers that meet the quality bar (the score's band and above, or by predicted
        quality), narrowed to what the request fits and its SLO allows."""
        names = self.policy.tiers
        if ask is None:
            ask = Ask({}, Bounds(frozenset(names)))
        bounds = ask.bounds
        ttft: dict[str, float | None] = {}
        if bounds.max_ttft_ms is not None or (quality and self.cfg.router.latency_weight):
            ttft = {t: self.measurements.figure(t, TTFT_MS, category) for t in names}
        cost: dict[str, float] = {}
        if bounds.max_cost_per_1k is not None or quality:
            cost = {t: self.cost(t, ask) for t in names}
        if not quality:
            return select(ranked, above(names, band), names, bounds, ttft, cost)
        router = self.cfg.router
        tie_break = {
            t: router.quality_weight * quality[t]
            - router.latency_weight * (ttft.get(t) or 0.0) / 1000.0
            for t in names
        }
        ranked, meets, by_quality = by_predicted_quality(
            quality, cost, names, router.quality_tolerance, tie_break
        )
        return select(ranked, meets, names, bounds, ttft, cost, by_quality)

    def cost(self, tier: str, ask: Ask) -> float:
        """USD per 1k tokens of this request on `tier` (its output price, without a request)."""
        need = ask.needs.get(tier)
        if need is None:
            return self.cfg.tier(tier).cost_per_1k(0, 0)
        return self.cfg.tier(tier).cost_per_1k(need.prompt_tokens, need.max_tokens)


# An exclusion: (tier, the request's bounds, its measured TTFT in ms or None, its cost per 1k)
# -> the reason it is excluded, or None.
Exclusion = Callable[[str, Bounds, float | None, float], str | None]


def context_window(tier: str, bounds: Bounds, ttft_ms: float | None, cost: float) -> str | None:
    """The request (prompt and max_tokens, counted as the tier counts) does not fit."""
    return CONTEXT_WINDOW_EXCLUDED if tier not in bounds.fits else None


def slo_ttft(tier: str, bounds: Bounds, ttft_ms: float | None, cost: float) -> str | None:
    """Its measured time to first token misses the SLO (not measured yet: not excluded)."""
    limit = bounds.max_ttft_ms
    return (
        SLO_TTFT_EXCLUDED if limit is not None and ttft_ms is not None and ttft_ms > limit else None
    )


def slo_cost(tier: str, bounds: Bounds, ttft_ms: float | None, cost: float) -> str | None:
    """Its price for this request misses the SLO's cost bound."""
    limit = bounds.max_cost_per_1k
    return SLO_COST_EXCLUDED if limit is not None and cost > limit else None


# In order: a tier is excluded for the first that applies.
EXCLUSIONS: tuple[Exclusion, ...] = (context_window, slo_ttft, slo_cost)


def select(
    ranked: list[str],
    meets: frozenset[str],
    order: list[str],
    bounds: Bounds,
    ttft_ms: dict[str, float | None],
    cost_per_1k: dict[str, float],
    by_quality: list[str] | None = None,
) -> Selection:
    """The tiers to try for a request.

    1. Tiers the request does not fit, or whose measured time to first token or cost misses
       its SLO, are excluded (a tier not measured yet is not excluded for its speed).
    2. Among the rest, the first in `ranked` order that meets the quality bar (`meets`: the
       band tier and those above it, or the tiers whose predicted quality is within tolerance
       of the best) serves, the cheapest such tier; the others follow in `ranked` order
       (failover). With no bounds this is `ranked` unchanged.
    3. None meets the bar: the highest-quality tier within the bounds serves, then the others
       within them (SLO_FALLBACK). Quality is `by_quality`, best first; by default the last
       tier in `order` is the best.
    4. No tier is within the bounds: the highest-quality tier the request fits, then the others
       it fits (SLO_FALLBACK and SLO_UNMET)."""
    by_quality = by_quality or list(reversed(order))
    reasons = [f"{BELOW_QUALITY_BAR}:{t}" for t in order if t not in meets]
    excluded: dict[str, str] = {}
    for t in order:
        for exclusion in EXCLUSIONS:
            why = exclusion(t, bounds, ttft_ms.get(t), cost_per_1k.get(t, 0.0))
            if why is not None:
                excluded[t] = why
                break
    reasons += [f"{why}:{t}" for t, why in excluded.items()]
    within = [t for t in by_quality if t not in excluded]
    if any(t not in excluded for t in meets):
        return Selection([t for t in ranked if t not in excluded], reasons, frozenset(within))
    if within:
        return Selection(within, [*reasons, SLO_FALLBACK], frozenset(within))
    fitting = [t for t in by_quality if t in bounds.fits]
    return Selection(fitting, [*reasons, SLO_FALLBACK, SLO_UNMET], frozenset(fitting))
