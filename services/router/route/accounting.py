"""The accounting of a Route that ended, however it ended: its metrics and the cost ledger,
the drift monitor, its row in the routing log, and the offer to shadow mode (whose comparison,
if it runs, is recorded in the same row)."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

from tierroute.core.asked import asked
from tierroute.core.config import Config
from tierroute.core.prompts import normalize
from tierroute.quality.artifact import prompt_features
from tierroute.router import metrics
from tierroute.router.route.routing_log import Entry, RoutingLog
from tierroute.router.route.shadow import Comparison, Shadow
from tierroute.router.route.state import Outcome, Routed, Token, large_tier_cost
from tierroute.router.scoring.decider import Decider
from tierroute.router.scoring.scored import Scored
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime.auth import CLIENT


class Accounting:
    def __init__(
        self, cfg: Config, decider: Decider, log: RoutingLog | None, shadow: Shadow
    ) -> None:
        self.cfg = cfg
        self.decider = decider
        self.log = log
        self.shadow = shadow
        large = cfg.tiers[-1]
        self._large_prices = (large.price_per_1k_input_usd, large.price_per_1k_output_usd)

    def settle(
        self,
        routed: Routed,
        text: str,
        decision: pb.RoutingDecision,
        scored: Scored | None,
        status: str,
        admitted: bool,
        answered: list[Token] | None,
    ) -> None:
        """Account for a Route that ended with `status` (a gRPC status name). `admitted`: it
        passed the input checks and the client's limits; `answered`: what each tier streamed,
        kept while shadow mode is on."""
        request = routed.request
        summary = routed.outcome.summary()
        if_large = large_tier_cost(summary, self._large_prices)
        metrics.routed(summary, status, CLIENT.get(), if_large)
        drift = self.decider.decisions.drift
        if drift is not None and status == "OK" and summary.tier and not request.force_tier:
            drift.answered(summary.escalated)
        entry: Entry | None = None
        if self.log is not None and admitted and status != "INVALID_ARGUMENT":
            entry = self._entry(request, text, decision, scored, routed.outcome, status)
            entry = replace(entry, client=CLIENT.get(), large_tier_cost_usd=if_large)
        shadowed = (
            answered is not None
            and status == "OK"
            and not request.force_tier
            and self.shadow.offer(
                request,
                "".join(t.text for t in answered if t.tier == summary.tier),
                summary.tier,
                scored.score if scored is not None else None,
                partial(self._shadowed, entry),
            )
        )
        if entry is not None and not shadowed:
            self._record(entry, None)

    def _shadowed(self, entry: Entry | None, comparison: Comparison | None) -> None:
        """A shadow comparison ended (None: it did not complete): the request's row is
        recorded now, with it."""
        if entry is not None:
            self._record(entry, comparison)

    def _record(self, entry: Entry, comparison: Comparison | None) -> None:
        assert self.log is not None
        if comparison is not None:
            entry = replace(
                entry,
                shadow_tier=comparison.tier,
                shadow_method=comparison.method,
                shadow_similarity=comparison.similarity,
                shadow_agreed=comparison.agreed,
            )
        self.log.record(entry)

    def _entry(
        self,
        request: pb.RouteRequest,
        text: str,
        decision: pb.RoutingDecision,
        scored: Scored | None,
        outcome: Outcome,
        status: str,
    ) -> Entry:
        """The routing log's row for one Route."""
        summary = outcome.summary()
        normalized = normalize(text)
        judged_tier, verdict, reason, confidence = outcome.judged or ("", "", "", None)
        vector = scored.vector if scored is not None else None
        ask = asked(normalized) if scored is not None else None
        return Entry(
            at=time.time() - (time.perf_counter() - outcome.started),
            request_id=request.request_id,
            normalized=normalized,
            embedding=vector,
            features=prompt_features([normalized])[0] if vector is not None else None,
            embedder_version=decision.embedder_version,
            scorer_version=decision.scorer_version,
            score=scored.score if scored is not None else None,
            category=decision.category,
            forced=bool(request.force_tier),
            chosen_tier=decision.tier,
            judged_tier=judged_tier,
            verdict=verdict,
            verdict_reason=reason,
            confidence=confidence,
            min_confidence=self.cfg.escalation.min_confidence if outcome.judged else None,
            final_tier=summary.tier,
            escalated=summary.escalated,
            escalation_reason=_name(
                pb.EscalationReason, summary.escalation_reason, "ESCALATION_REASON_"
            ),
            status=status,
            latency_ms=summary.latencies.total_ms,
            time_to_first_token_ms=(
                summary.latencies.time_to_first_token_ms if outcome.first_chunk_at else None
            ),
            prompt_tokens=summary.usage.prompt_tokens,
            completion_tokens=summary.usage.completion_tokens,
            cost_usd=summary.cost_usd,
            request_chars=len(ask.request) if ask is not None else None,
            context_words=ask.context_words if ask is not None else None,
            context_kind=ask.kind if ask is not None else "",
            attempts=[
                {
                    "tier": a.tier,
                    "delivered": a.delivered,
                    "validation": _name(pb.ValidationStatus, a.validation, "VALIDATION_STATUS_"),
                    "escalation_reason": _name(
                        pb.EscalationReason, a.escalation_reason, "ESCALATION_REASON_"
                    ),
                    "latency_ms": a.latency_ms,
                    "completion_tokens": a.usage.completion_tokens,
                }
                for a in summary.attempts
            ],
        )


def _name(enum: type, value: int, prefix: str) -> str:
    """An enum value's name without its type's prefix."""
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)
