"""What one Route is and has done: the events the flow yields, the request's state (`Routed`),
and what the client will be told in its summary (`Outcome`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from opentelemetry import trace

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import TierConfig
from tierroute.router import metrics
from tierroute.router.route.budgets import Deadline
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

logger = logging.getLogger(__name__)

PARTIAL_SUMMARY_KEY = "tierroute-partial-summary-bin"


# --- events ---


@dataclass(frozen=True)
class Decided:
    decision: pb.RoutingDecision


@dataclass(frozen=True)
class Token:
    text: str
    tier: str


@dataclass(frozen=True)
class Escalated:
    escalation: pb.Escalation


@dataclass(frozen=True)
class Finished:
    summary: pb.RouteSummary


RouteEvent = Decided | Token | Escalated | Finished


@dataclass
class Outcome:
    """What the client will be told in the summary."""

    started: float
    score_ms: float = 0.0
    attempts: list[pb.TierAttempt] = field(default_factory=list)
    validate_ms: float = 0.0
    first_tier_ms: float = 0.0
    escalation_ms: float = 0.0
    first_chunk_at: float | None = None
    confidence: float = 0.0
    escalation_reason: pb.EscalationReason = pb.ESCALATION_REASON_UNSPECIFIED
    # The first verdict on a held-back answer: (tier, verdict, reason, confidence) names.
    judged: tuple[str, str, str, float | None] | None = None
    # The prompt's category, for the tiers' measured figures.
    category: str = ""
    # Tiers an escalation may go to (the selection's: within the request's SLO, fitting it).
    usable: frozenset[str] = frozenset()
    # The complexity score the decision was made on (None: forced, or the fallback's).
    score: float | None = None

    def summary(self) -> pb.RouteSummary:
        """The summary; before anything was delivered (a partial one), it names no tier."""
        delivered = next((a for a in reversed(self.attempts) if a.delivered), pb.TierAttempt())
        now = time.perf_counter()
        return pb.RouteSummary(
            tier=delivered.tier,
            escalated=self.escalation_reason != pb.ESCALATION_REASON_UNSPECIFIED,
            escalation_reason=self.escalation_reason,
            usage=common_pb.Usage(
                prompt_tokens=sum(a.usage.prompt_tokens for a in self.attempts),
                completion_tokens=sum(a.usage.completion_tokens for a in self.attempts),
            ),
            cost_usd=sum(a.cost_usd for a in self.attempts),
            latencies=pb.StageLatencies(
                score_ms=self.score_ms,
                generate_ms=self.first_tier_ms,
                validate_ms=self.validate_ms,
                escalation_ms=self.escalation_ms,
                total_ms=(now - self.started) * 1000.0,
                time_to_first_token_ms=((self.first_chunk_at or now) - self.started) * 1000.0,
            ),
            finish_reason=delivered.finish_reason,
            confidence=self.confidence,
            attempts=self.attempts,
            validation=delivered.validation,
        )

    def partial(self) -> tuple[tuple[str, bytes], ...]:
        """The summary so far, as trailing metadata for an error that ends the request."""
        return ((PARTIAL_SUMMARY_KEY, self.summary().SerializeToString()),)

    def overloaded(self, tier: str, started: float) -> None:
        """An attempt at `tier` ended in overload, before anything of it reached the client."""
        self.attempts.append(
            pb.TierAttempt(
                tier=tier,
                escalation_reason=pb.ESCALATION_REASON_TIER_OVERLOADED,
                latency_ms=(time.perf_counter() - started) * 1000.0,
            )
        )
        self.escalation_reason = pb.ESCALATION_REASON_TIER_OVERLOADED

    def spent(self, first: bool, since: float) -> None:
        """Time spent at a tier since `since`: the first tier's, or the escalations'."""
        elapsed = (time.perf_counter() - since) * 1000.0
        if first:
            self.first_tier_ms = elapsed
        else:
            self.escalation_ms += elapsed


@dataclass
class Routed:
    """One Route underway: what was asked, by when, what it has done so far, and the object
    that stands for it at the circuit breakers (`holder`: a half-open probe is its own)."""

    request: pb.RouteRequest
    deadline: Deadline
    outcome: Outcome
    holder: object = field(default_factory=object)


def escalation(from_tier: str, to_tier: str, outcome: Outcome) -> pb.Escalation:
    """The Escalated event's content, logged and added to the request's span."""
    reason = pb.EscalationReason.Name(outcome.escalation_reason)
    logger.info("escalating %s -> %s: %s", from_tier, to_tier, reason)
    trace.get_current_span().add_event(
        "escalation",
        {
            "tierroute.from_tier": from_tier,
            "tierroute.to_tier": to_tier,
            "tierroute.escalation_reason": reason,
            "tierroute.confidence": outcome.confidence,
        },
    )
    return pb.Escalation(
        from_tier=from_tier,
        to_tier=to_tier,
        reason=outcome.escalation_reason,
        confidence=outcome.confidence,
    )


def large_tier_cost(summary: pb.RouteSummary, prices: tuple[float, float]) -> float | None:
    """What the delivered answer's tokens would have cost at the large (last) tier's prices:
    the cost ledger's counterfactual (None when nothing was delivered)."""
    delivered = next((a for a in summary.attempts if a.delivered), None)
    if delivered is None:
        return None
    price_in, price_out = prices
    usage = delivered.usage
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1000.0


def tier_attempt(
    tier: TierConfig,
    complete: tier_pb.GenerateComplete | None,
    delivered: bool,
    validation: pb.ValidationStatus,
    reason: pb.EscalationReason = pb.ESCALATION_REASON_UNSPECIFIED,
    judged: int = 0,
) -> pb.TierAttempt:
    """The summary's record of one tier's answer. `judged`: the tokens its deciding verdict
    judged; they count only if a validator judged them (not an unvalidated answer, nor one the
    validator could not be asked about)."""
    if validation not in (pb.VALIDATION_STATUS_PASSED, pb.VALIDATION_STATUS_FAILED):
        judged = 0
    else:
        verdict = "deliver" if delivered else "escalate"
        metrics.JUDGED_TOKENS.labels(tier.name, verdict).observe(judged)
    c = complete or tier_pb.GenerateComplete()
    return pb.TierAttempt(
        tier=tier.name,
        usage=common_pb.Usage(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens),
        cost_usd=c.cost_usd,
        finish_reason=c.finish_reason,
        latency_ms=c.total_time_ms,
        delivered=delivered,
        escalation_reason=reason,
        validation=validation,
        judged_tokens=judged,
    )


async def read_ahead(events: AsyncGenerator[RouteEvent, None]) -> AsyncIterator[RouteEvent]:
    """The same events, with the next one already being worked on while the caller writes the
    current one (the tier call starts while the decision is on the wire). If the caller stops
    early, the pending step is cancelled and left to unwind before the flow is closed."""
    try:
        event = await anext(events)
    except StopAsyncIteration:
        return
    while True:
        pending = asyncio.ensure_future(anext(events))
        try:
            yield event
            event = await pending
        except StopAsyncIteration:
            return
        except BaseException:  # the client left, or the flow failed
            pending.cancel()
            # aclose() on a running generator raises: let the step unwind first.
            with contextlib.suppress(BaseException):
                await pending
            await events.aclose()
            raise
