"""The decision, built once: a score (or its absence) in, the routing decision and the tiers in
the order to try them out.

The decider (scoring/decider.py) only scores a prompt: `Scoring` is what it made of it. Here
the score is ranked (policy.py), the operating point follows it (operating.py), the ranking is
narrowed to what the request fits and its SLO allows (selector.py), the Route's admission runs
on it (filters.py), and the decision is built from all of them, with the reasons of each step.
It is counted once here, in the decisions metric and the drift watch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from tierroute.core.config import Config
from tierroute.core.errors import InvalidArgument
from tierroute.core.prompts import check_prompt, routing_text
from tierroute.router import metrics
from tierroute.router.scoring.scored import Ask, Message, Scored, Scoring
from tierroute.router.selection.drift import DriftWatch, EmbeddingReference
from tierroute.router.selection.filters import Admit, Admitted
from tierroute.router.selection.fit import Fit
from tierroute.router.selection.operating import OperatingPoint
from tierroute.router.selection.policy import Bounds, Policy, Selection
from tierroute.router.selection.selector import Selector
from tierroute.router.tiers.measured import Measurements
from tierroute.router.v1 import router_service_pb2 as pb

logger = logging.getLogger(__name__)


class Decisions:
    """Selection's inputs and state (policy, fit, selector, measurements, operating point,
    drift) and the one place a decision is built."""

    def __init__(self, cfg: Config, measurements: Measurements | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy(cfg)
        self.fit = Fit(cfg)
        self.measurements = measurements or Measurements(cfg.router.metrics_half_life_seconds)
        self.selector = Selector(cfg, self.policy, self.measurements)
        self.operating: OperatingPoint | None = None
        self.drift: DriftWatch | None = None
        self._large = cfg.tiers[-1].name if cfg.tiers else ""

    def start(self, prior: np.ndarray | None, reference: EmbeddingReference | None) -> None:
        """The drift watch and the operating point, from the scorer's calibration: `prior`,
        the scores of its calibration prompts (or None), and `reference`, their embeddings."""
        cfg = self.cfg.router
        self.drift = DriftWatch(
            cfg.operating_point_half_life,
            prior,
            cfg.target_large_share,
            cfg.drift_psi_max,
            cfg.drift_share_band,
            cfg.drift_escalation_max,
            reference,
        )
        if cfg.target_large_share is not None:
            self.operating = OperatingPoint(
                cfg.target_large_share,
                self.policy.last_bound,
                cfg.operating_point_half_life,
                cfg.operating_point_state,
                prior,
            )
            self.policy.shift(self.operating.offset)

    def check_input(self, prompt: str, messages: Sequence[Message]) -> str:
        """The text to route on, once the prompt or messages are within every input limit of
        router (characters, messages, tokens): InvalidArgument or TooLarge, saying which."""
        r = self.cfg.router
        check_prompt(prompt, messages, r.max_prompt_chars, r.max_messages)
        self.fit.check_tokens(prompt, messages)
        return routing_text(prompt, messages, r.routing_context_chars)

    def ask(
        self,
        prompt: str,
        messages: Sequence[Message],
        max_tokens: int = 0,
        slo: pb.Slo | None = None,
    ) -> Ask:
        """What a request asks of the tiers. InvalidArgument for an SLO bound that is not a
        positive number (a cost bound may be 0), or a request that fits no tier."""
        needs = self.fit.needs(prompt, messages, max_tokens)
        self.fit.check_any(needs)
        ttft = cost = None
        if slo is not None and slo.HasField("max_ttft_ms"):
            ttft = slo.max_ttft_ms
            if not math.isfinite(ttft) or ttft <= 0:
                raise InvalidArgument(
                    f"slo.max_ttft_ms is {ttft}; set it to the most milliseconds the first "
                    "token may take (> 0), or leave it unset"
                )
        if slo is not None and slo.HasField("max_cost_per_1k"):
            cost = slo.max_cost_per_1k
            if not math.isfinite(cost) or cost < 0:
                raise InvalidArgument(
                    f"slo.max_cost_per_1k is {cost}; set it to the most USD per 1,000 tokens "
                    "the request may cost (>= 0), or leave it unset"
                )
        fits = frozenset(name for name, need in needs.items() if need.fits)
        return Ask(needs, Bounds(fits, ttft, cost))

    def decide(
        self, scoring: Scoring, ask: Ask | None, admit: Admit | None, looked_up: bool
    ) -> tuple[pb.RoutingDecision, Selection]:
        """The decision for `scoring`, and the selection it was made from. Without `ask`: a
        request that fits every tier, with no SLO. With `admit` (a Route's), the tier is the
        one it admits from the selection, and its reasons join the decision's. When there is
        no score: the default tier (reason ROUTER_FALLBACK). Counted in the decisions metric
        (`looked_up`: the routing cache was asked) and the drift watch."""
        if scoring.scored is None:
            decision, selection = self._fallback(scoring, ask, admit)
        else:
            decision, selection = self._scored(scoring, scoring.scored, ask, admit)
        metrics.decided(decision, looked_up=looked_up)
        if self.drift is not None:
            # The score's own choice: a tier passed over at admission is not drift.
            score = scoring.scored.score if scoring.scored is not None else None
            self.drift.observe(score, selection.tiers[0] == self._large)
        return decision, selection

    def _scored(
        self, scoring: Scoring, scored: Scored, ask: Ask | None, admit: Admit | None
    ) -> tuple[pb.RoutingDecision, Selection]:
        ranking = self.policy.rank(scored.score)
        if self.operating is not None:
            self.operating.observe(scored.score)
            self.policy.shift(self.operating.offset)
        selection = self.selector.select(
            [c.tier for c in ranking], ranking[0].tier, ask, scored.category, scored.quality
        )
        admitted = admit(selection.tiers) if admit is not None else None
        chosen = next(c for c in ranking if c.tier == selection.tiers[0])
        reasons = list(ranking[0].reasons)
        if scoring.degraded:
            reasons.append(pb.REASON_CODE_SCORE_DEGRADED)
            selection.reasons.insert(0, f"score_degraded:{scoring.degraded}")
        if scored.truncated:
            reasons.append(pb.REASON_CODE_PROMPT_TRUNCATED)
        if scoring.hit:
            reasons.append(pb.REASON_CODE_CACHE_HIT)
        decision = pb.RoutingDecision(
            complexity_score=round(scored.score, 4),
            tier=admitted.tier if admitted is not None else chosen.tier,
            confidence=round(chosen.confidence, 4),
            category=scored.category,
            reason_codes=with_admission(reasons, admitted),
            router_latency_ms=(time.perf_counter() - scoring.started) * 1000.0,
            cache_hit=scoring.hit,
            embedder_version=scoring.embedder_version,
            scorer_version=scoring.scorer_version,
            tier_max_score=chosen.max_score,
            reasons=selection.reasons + (admitted.reasons if admitted is not None else []),
            predicted_quality={t: round(q, 4) for t, q in (scored.quality or {}).items()},
        )
        return decision, selection

    def _fallback(
        self, scoring: Scoring, ask: Ask | None, admit: Admit | None
    ) -> tuple[pb.RoutingDecision, Selection]:
        """The default tier, as if the score had chosen it."""
        band = self.cfg.fallback_tier()
        names = self.policy.tiers
        i = names.index(band)
        selection = self.selector.select([*names[i:], *reversed(names[:i])], band, ask, "")
        tier = selection.tiers[0]
        logger.warning(
            "scoring %s: routing to the default tier %r (%s serves)", scoring.why, band, tier
        )
        admitted = admit(selection.tiers) if admit is not None else None
        decision = pb.RoutingDecision(
            tier=admitted.tier if admitted is not None else tier,
            reason_codes=with_admission([pb.REASON_CODE_ROUTER_FALLBACK], admitted),
            router_latency_ms=(time.perf_counter() - scoring.started) * 1000.0,
            tier_max_score=self.policy.bound(tier),
            reasons=selection.reasons + (admitted.reasons if admitted is not None else []),
        )
        return decision, selection


def with_admission(codes: list[pb.ReasonCode], admitted: Admitted | None) -> list[pb.ReasonCode]:
    """The scoring's reason codes, then those of admission not already among them."""
    if admitted is None:
        return codes
    return codes + [c for c in admitted.codes if c not in codes]
