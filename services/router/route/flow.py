"""The Route flow, transport-neutral: a route request in, events out (Decided, then Token and
Escalated events, then Finished); failures raise the project's errors
(tierroute.core.errors). The gRPC servicer and any other front adapt it; none of them holds
routing, escalation or failover.

A tier whose answers are validated (its `validation` is not "none", and a larger tier can take
over) is asked for the answer envelope (self_reported) or for token log-probabilities
(logprob). Its answer is held back until the validator has judged it, then delivered, or
replaced by an Escalated event and the next tier's answer; or, with the tier's `commit:
prefix`, judged on its first `commit_prefix_tokens` tokens, then streamed live from there
(committed), or escalated before anything was sent (the tier's call cancelled); a prefix too
close to call (the validator's UNDECIDED) is judged again every `commit_prefix_tokens` more
tokens, and on the whole answer if none decides. Other tiers stream live. Both run on one
skeleton (`_attempt`). A tier that fails before any token reached the client is skipped (an
escalation with reason TIER_FAILURE); after tokens were sent the request ends with UNAVAILABLE
(or DEADLINE_EXCEEDED), saying how much was delivered, with a partial RouteSummary in the
error's trailing metadata `tierroute-partial-summary-bin`.

Failover lives in one place: the request walks the selection's ranking (`_admit`), at the
start and after every failed or rejected attempt, passing over tiers whose breaker is open or
whose channel is down. Within a tier, a call that fails on one replica before anything reached
the client is retried on another (`_attempt`); the tier's breaker sees only the final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import grpc
import numpy as np
from opentelemetry import trace

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core import envelope
from tierroute.core.asked import asked
from tierroute.core.config import Config, TierConfig
from tierroute.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Overloaded,
    ServiceError,
    Unavailable,
)
from tierroute.core.prompts import last_user_turn, normalize
from tierroute.core.sampling import check_sampling
from tierroute.quality.artifact import prompt_features
from tierroute.router import metrics
from tierroute.router.route.affinity import Affinity
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.hedge import Hedge
from tierroute.router.route.judge import ESCALATION_FOR, Judge, ValidatorDown
from tierroute.router.route.limits import ClientLimits
from tierroute.router.route.routing_log import Entry, RoutingLog
from tierroute.router.route.shadow import Comparison, Shadow
from tierroute.router.scoring.decider import Decider, Scored
from tierroute.router.selection.policy import BELOW_QUALITY_BAR, SKIP_REASONS
from tierroute.router.tiers.measured import ERROR_RATE, TPOT_MS, TTFT_MS
from tierroute.router.tiers.pool import FirstTokenTimer, Replica, TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.auth import CLIENT
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.validator.v1 import validator_service_pb2 as val_pb

logger = logging.getLogger(__name__)

PARTIAL_SUMMARY_KEY = "tierroute-partial-summary-bin"
# Stands in for a tier's default temperature when only the bounds are checked.
DEFAULT_TEMPERATURE = 0.7
GENERATE_METHOD = tier_pb.DESCRIPTOR.services_by_name["TierService"].full_name + "/Generate"
# Failures that count against a tier's breaker; INVALID_ARGUMENT and CANCELLED are not its fault.
_TIER_FAULTS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


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


class TierFailed(Exception):
    """A tier call failed; `sent_chars` is how much of its answer had reached the client.

    `overloaded`: the tier refused the call (RESOURCE_EXHAUSTED), or our own budget ran out
    while the tier, answering other streams all along, had not yet answered this one: the
    request waited in the tier's queue. That is load, not failure: the breaker does not count
    it and the replica is not ejected for it; the request may still move to a larger tier.
    """

    def __init__(self, tier: str, error: grpc.aio.AioRpcError, budget: bool, busy: bool = False):
        super().__init__(f"tier {tier!r} failed: {error.code().name}: {error.details()}")
        self.error = error
        self.budget = budget
        self.sent_chars = 0
        code = error.code()
        self.overloaded = code == grpc.StatusCode.RESOURCE_EXHAUSTED or (
            code == grpc.StatusCode.DEADLINE_EXCEEDED and budget and busy
        )
        # DEADLINE_EXCEEDED from our own per-tier budget (the tier's fault), not the client's.
        self.tier_fault = (
            code in _TIER_FAULTS
            and not self.overloaded
            and (code != grpc.StatusCode.DEADLINE_EXCEEDED or budget)
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


class RouteFlow:
    def __init__(
        self,
        cfg: Config,
        decider: Decider,
        pool: TierPool,
        judge: Judge,
        log: RoutingLog | None = None,
    ) -> None:
        self.cfg = cfg
        self.decider = decider
        self.pool = pool
        self.judge = judge
        self.log = log
        self._tiers = [t.name for t in cfg.tiers]
        self._measured = decider.measurements
        self.limits = ClientLimits(cfg.router)
        self.affinity = Affinity(
            cfg.router.affinity_ttl_seconds, self._tiers, decider.measurements.store
        )
        self._max_tokens_limit = cfg.output_tokens_limit()
        large = cfg.tiers[-1]
        self._large_prices = (large.price_per_1k_input_usd, large.price_per_1k_output_usd)
        self.shadow = Shadow(cfg, pool, self._shadow_request, self._embed)

    def _shadow_request(self, request: pb.RouteRequest, tier: str) -> tier_pb.GenerateRequest:
        """What the large tier is asked in shadow mode: what `tier` was asked, with the same
        sampling (its defaults where the client set none), unvalidated."""
        return self._generate_request(self.cfg.tier(tier), request, "none")

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.decider.embedder is not None, "the decider is loaded before any request"
        return self.decider.embedder.embed(texts)

    async def route(
        self, request: pb.RouteRequest, deadline: Deadline
    ) -> AsyncGenerator[RouteEvent, None]:
        """Decide, then answer: one Decided, Token and Escalated events, one Finished."""
        started = time.perf_counter()
        holder = object()  # this request, for the circuit breakers
        span = trace.get_current_span()
        outcome = Outcome(started, usable=frozenset(self._tiers))
        scored: Scored | None = None
        decision = pb.RoutingDecision()
        tier = ""
        text = ""
        status = "OK"
        ticket = None
        admitted = False  # past the input checks and the client's limits
        conversation = request.conversation_id if self.affinity.on else ""
        # What each tier streamed, for shadow mode (only while it is on).
        answered: list[Token] | None = [] if self.shadow.on else None
        metrics.IN_FLIGHT.inc()
        try:  # every Route is counted, refused ones too (tierroute_routes_total)
            # Checked once, here, by the tiers' own rules: a client's mistake never reaches a
            # tier, so it is never an escalation and never counts against a breaker.
            text = self.decider.check_input(request.prompt, request.messages)
            check_sampling(request.sampling, DEFAULT_TEMPERATURE, self._max_tokens_limit)
            # Past a client's limit: RESOURCE_EXHAUSTED before any work (route/limits.py).
            ticket = self.limits.admit(CLIENT.get()) if self.limits.active else None
            admitted = True
            held = await self.affinity.held(conversation) if conversation else None
            if request.force_tier:
                if request.force_tier not in self._tiers:
                    raise InvalidArgument(
                        f"force_tier {request.force_tier!r} is not a tier "
                        f"(tiers: {', '.join(self._tiers)})"
                    )
                decision = pb.RoutingDecision(
                    tier=request.force_tier,
                    confidence=1.0,
                    reason_codes=[pb.REASON_CODE_FORCED_TIER],
                    reasons=[f"forced_tier:{request.force_tier}"]
                    + (["escalation_disabled"] if request.disable_escalation else []),
                    router_latency_ms=(time.perf_counter() - started) * 1000.0,
                )
                tier = request.force_tier
                metrics.decided(decision, looked_up=False)
            else:
                # A forced tier is the caller's choice: it checks its own context window.
                ask = self.decider.ask(
                    request.prompt,
                    request.messages,
                    request.sampling.max_tokens,
                    request.slo if request.HasField("slo") else None,
                )
                with telemetry.tracer(__name__).start_as_current_span("score") as score_span:
                    decision, selection, scored = await self.decider.decide_scored(
                        text, request.bypass_cache, ask
                    )
                    what = asked(normalize(text))  # what was scored: the request, not its bulk
                    score_span.set_attributes(
                        {
                            "tierroute.cache_hit": decision.cache_hit,
                            "tierroute.scored.request_chars": len(what.request),
                            "tierroute.scored.context_words": what.context_words,
                            "tierroute.scored.context_kind": what.kind,
                        }
                    )
                outcome.usable = selection.usable
                outcome.score = decision.complexity_score if scored is not None else None
                ranking = self._without_unjudgeable(selection.tiers, request, decision)
                if held is not None:
                    ranking, why = self.affinity.first(ranking, held)
                    if why:
                        decision.reasons.append(why)
                tier = self._admit(ranking, holder, decision)
            outcome.category = decision.category
            span.set_attributes(
                {
                    "tierroute.decision.tier": decision.tier,
                    "tierroute.decision.score": decision.complexity_score,
                    "tierroute.decision.reason_codes": [
                        pb.ReasonCode.Name(r) for r in decision.reason_codes
                    ],
                    "tierroute.decision.reasons": list(decision.reasons),
                }
            )
            if any(not r.startswith(BELOW_QUALITY_BAR) for r in decision.reasons):
                logger.info(
                    "request %s: %s serves (%s)",
                    request.request_id or "-",
                    decision.tier,
                    ", ".join(decision.reasons),
                )
            outcome.score_ms = (time.perf_counter() - started) * 1000.0
            yield Decided(decision)
            async for event in self._answer(tier, request, deadline, outcome, holder):
                if answered is not None and isinstance(event, Token):
                    answered.append(event)
                if conversation and isinstance(event, Finished):
                    # Before the summary: the conversation's next turn sees where it is held.
                    await self.affinity.hold(conversation, held, event.summary.tier)
                yield event
        except ServiceError as error:
            status = error.code.name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = "CANCELLED"  # the client left
            raise
        except BaseException:
            status = "INTERNAL"
            raise
        finally:
            if ticket is not None:
                ticket.done(
                    sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in outcome.attempts)
                )
            # Whatever ended the request, a half-open probe it still holds is freed (a no-op
            # once the attempt has been recorded).
            if tier:
                self.pool.release(tier, holder)
            metrics.IN_FLIGHT.dec()
            summary = outcome.summary()
            if_large = large_tier_cost(summary, self._large_prices)
            metrics.routed(summary, status, CLIENT.get(), if_large)
            drift = self.decider.drift
            if drift is not None and status == "OK" and summary.tier and not request.force_tier:
                drift.answered(summary.escalated)
            entry: Entry | None = None
            if self.log is not None and admitted and status != "INVALID_ARGUMENT":
                entry = self._entry(request, text, decision, scored, outcome, status)
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
            escalation_reason=pb.EscalationReason.Name(summary.escalation_reason).removeprefix(
                "ESCALATION_REASON_"
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
                    "validation": pb.ValidationStatus.Name(a.validation).removeprefix(
                        "VALIDATION_STATUS_"
                    ),
                    "escalation_reason": pb.EscalationReason.Name(a.escalation_reason).removeprefix(
                        "ESCALATION_REASON_"
                    ),
                    "latency_ms": a.latency_ms,
                    "completion_tokens": a.usage.completion_tokens,
                }
                for a in summary.attempts
            ],
        )

    def _without_unjudgeable(
        self, ranking: list[str], request: pb.RouteRequest, decision: pb.RoutingDecision
    ) -> list[str]:
        """While the validator is down and the policy is to escalate, an answer from a tier
        it would judge is thrown away: pass over such tiers instead of wasting their work."""
        if (
            not self.judge.down
            or self.cfg.escalation.on_validator_unavailable != "escalate"
            or request.disable_escalation
            or self.cfg.escalation.max_retries == 0
        ):
            return ranking
        last = self._tiers[-1]
        kept = [t for t in ranking if t == last or self.cfg.tier(t).validation == "none"]
        if kept[:1] != ranking[:1]:
            decision.reason_codes.append(pb.REASON_CODE_VALIDATOR_UNAVAILABLE)
            decision.reasons.extend(
                f"{SKIP_REASONS[pb.REASON_CODE_VALIDATOR_UNAVAILABLE]}:{t}"
                for t in ranking
                if t not in kept
            )
            logger.warning(
                "the validator is down: passing over %s, whose answers it would judge",
                ", ".join(t for t in ranking if t not in kept),
            )
        return kept

    def _admit(self, ranking: list[str], holder: object, decision: pb.RoutingDecision) -> str:
        """The first tier of the ranking that can take the request; the decision's reason
        codes say why any was passed over. UNAVAILABLE if none can."""
        tier, skipped = self.pool.first_available(ranking, holder)
        for name, reason in skipped:
            if reason not in decision.reason_codes:
                decision.reason_codes.append(reason)
            decision.reasons.append(f"{SKIP_REASONS[reason]}:{name}")
        if tier is None:
            raise Unavailable(
                "no tier can take the request: "
                + ", ".join(f"{n} ({pb.ReasonCode.Name(r)})" for n, r in skipped)
                + "; retry after the breakers' cooldown "
                + f"({self.cfg.circuit_breaker.cooldown_seconds:g} s)"
            )
        if skipped:
            logger.warning("passed over %s: %s serves", ", ".join(n for n, _ in skipped), tier)
        decision.tier = tier
        return tier

    def _larger(self, tier: str, outcome: Outcome) -> list[str]:
        """The tiers an escalation from `tier` may go to, in order."""
        return [t for t in self._tiers[self._tiers.index(tier) + 1 :] if t in outcome.usable]

    async def _answer(
        self,
        tier_name: str,
        request: pb.RouteRequest,
        deadline: Deadline,
        outcome: Outcome,
        holder: object,
    ) -> AsyncIterator[RouteEvent]:
        escalations_left = 0 if request.disable_escalation else self.cfg.escalation.max_retries
        first = True
        hedge: Hedge | None = None  # the next larger tier, racing the first tier's answer
        try:
            while True:
                tier = self.cfg.tier(tier_name)
                following = None
                if escalations_left > 0:
                    following, _ = self.pool.first_available(self._larger(tier_name, outcome), None)
                tier_started = time.perf_counter()
                serving = hedge if hedge is not None and hedge.tier.name == tier_name else None
                # A place within the tier's concurrency limit (a hedge serving it holds one).
                try:
                    placed = serving is not None or await self._place(
                        tier_name, following is not None, deadline, first
                    )
                except BaseException:  # refused, or the client left while it waited
                    self.pool.release(tier_name, holder)
                    raise
                if not placed:
                    self.pool.release(tier_name, holder)  # overload: no verdict on the tier
                    metrics.OVERLOAD.labels(tier_name, "spilled").inc()
                    self._overloaded(tier_name, tier_started, outcome)
                    waited = (time.perf_counter() - tier_started) * 1000.0
                    if first:
                        outcome.first_tier_ms = waited
                    else:
                        outcome.escalation_ms += waited
                else:
                    hold = tier.validation != "none" and following is not None
                    if first and hold and following is not None:
                        hedge = self._hedge(tier, following, request, deadline, outcome)
                    racing = hedge if serving is None else None
                    try:
                        attempt = self._attempt(
                            tier, request, deadline, outcome, first, hold, holder, serving, racing
                        )
                        async for event in attempt:
                            yield event
                    except TierFailed as failure:
                        if failure.tier_fault:
                            self.pool.record(tier_name, False, holder)
                            self._measured.observe(tier_name, outcome.category, ERROR_RATE, 1.0)
                        else:
                            self.pool.release(tier_name, holder)
                        client_error = failure.error.code() == grpc.StatusCode.INVALID_ARGUMENT
                        if failure.overloaded:
                            what = (
                                "tier_refused"
                                if failure.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                                else "queued_past_budget"
                            )
                            metrics.OVERLOAD.labels(tier_name, what).inc()
                            self._overloaded(tier_name, tier_started, outcome)
                        else:
                            outcome.attempts.append(
                                pb.TierAttempt(
                                    tier=tier_name,
                                    escalation_reason=pb.ESCALATION_REASON_TIER_FAILURE,
                                    latency_ms=(time.perf_counter() - tier_started) * 1000.0,
                                )
                            )
                        if failure.sent_chars or following is None or client_error:
                            raise _error_for(failure, outcome) from failure
                        logger.warning("%s; failing over", failure)
                        if not failure.overloaded:
                            outcome.escalation_reason = pb.ESCALATION_REASON_TIER_FAILURE
                    except BaseException:
                        self.pool.release(tier_name, holder)  # the client left: no verdict
                        raise
                    else:
                        self.pool.record(tier_name, True, holder)
                        self._measured.observe(tier_name, outcome.category, ERROR_RATE, 0.0)
                    finally:
                        if serving is None:
                            self.pool.slots[tier_name].release()
                        elapsed = (time.perf_counter() - tier_started) * 1000.0
                        if first:
                            outcome.first_tier_ms = elapsed
                        else:
                            outcome.escalation_ms += elapsed
                    if serving is not None:
                        outcome.attempts[-1].hedged = True  # it answered with the head start
                    if outcome.attempts[-1].delivered:
                        if racing is not None:  # the hedge lost: charged for what it generated
                            outcome.attempts.append(await racing.lost())
                        yield Finished(outcome.summary())
                        return
                # Not delivered: only possible where a following tier existed.
                escalations_left -= 1
                first = False
                previous = tier_name
                nxt, _ = self.pool.first_available(self._larger(previous, outcome), holder)
                if nxt is None:
                    raise Unavailable(
                        f"tier {previous!r} could not answer "
                        f"({pb.EscalationReason.Name(outcome.escalation_reason)}) and no larger "
                        "tier can take the request now (circuit open or unreachable)",
                        outcome.partial(),
                    )
                tier_name = nxt
                if hedge is not None and not hedge.used and hedge.tier.name != tier_name:
                    outcome.attempts.append(await hedge.lost())  # its tier cannot serve now
                    hedge = None
                try:
                    yield Escalated(self._escalation(previous, tier_name, outcome))
                except BaseException:  # the client left: free a half-open probe slot
                    self.pool.release(tier_name, holder)
                    raise
        finally:
            if hedge is not None:
                hedge.stop()  # whatever ended the request, no call is left running

    def _overloaded(self, tier: str, started: float, outcome: Outcome) -> None:
        """An attempt that ended in overload, before anything of it reached the client."""
        outcome.attempts.append(
            pb.TierAttempt(
                tier=tier,
                escalation_reason=pb.ESCALATION_REASON_TIER_OVERLOADED,
                latency_ms=(time.perf_counter() - started) * 1000.0,
            )
        )
        outcome.escalation_reason = pb.ESCALATION_REASON_TIER_OVERLOADED

    async def _place(self, tier: str, can_move_on: bool, deadline: Deadline, first: bool) -> bool:
        """A place at `tier` within its concurrency limit (tiers/slots.py). Where a larger tier
        can take the request, it waits `escalation.queue_wait_ms` (False: move on); else it
        waits within the tier's budget, then is refused (Overloaded, with a retry hint)."""
        slots = self.pool.slots[tier]
        if slots.try_acquire():
            return True
        esc = self.cfg.escalation
        wait_ms = (
            esc.queue_wait_ms
            if can_move_on
            else esc.first_tier_timeout_ms
            if first
            else esc.escalation_timeout_ms
        )
        timeout, ours = deadline.budget(wait_ms, f"a place at tier {tier!r} came free")
        queued_at = time.perf_counter()
        try:
            placed = await slots.acquire(timeout)
        finally:
            metrics.QUEUE_SECONDS.labels(tier).observe(time.perf_counter() - queued_at)
        if placed or can_move_on:
            return placed
        if not ours:
            raise DeadlineExceeded(
                f"the client's deadline passed while the request waited for a place at tier "
                f"{tier!r} ({slots.in_flight} calls in flight, its limit {slots.limit()})"
            )
        metrics.OVERLOAD.labels(tier, "refused").inc()
        p95 = self.pool.first_token[tier].p95()
        retry_after = max(1.0, p95 or 1.0)
        raise Overloaded(
            f"tier {tier!r} is at its concurrency limit ({slots.limit()} calls in flight, "
            f"{slots.waiting} more waiting; tiers[{tier}].max_in_flight) and no place came free "
            f"within {timeout * 1000:.0f} ms; retry after {retry_after:.0f} s",
            retry_after_s=retry_after,
        )

    def _hedge(
        self,
        tier: TierConfig,
        following: str,
        request: pb.RouteRequest,
        deadline: Deadline,
        outcome: Outcome,
    ) -> Hedge | None:
        """The next larger tier, asked now, if the request's score lies within `tier`'s
        hedge_margin of its bound and a replica of it is left."""
        margin, score = tier.hedge_margin, outcome.score
        if margin is None or score is None:
            return None
        if abs(self.decider.policy.bound(tier.name) - score) > margin:
            return None
        replica = self.pool.pick(following)
        if replica is None or not self.pool.slots[following].try_acquire():
            return None  # no replica left, or the larger tier is at its limit: no hedge
        larger = self.cfg.tier(following)
        self.shadow.live_call_started(following)
        generate = self._generate_request(larger, request, "none")
        call = self._call(larger, replica, generate, deadline, False, outcome.category)
        logger.info("hedging %s with %s (score %.2f)", tier.name, following, score)
        return Hedge(larger, replica, call, self.pool.slots[following].release)

    def _escalation(self, from_tier: str, to_tier: str, outcome: Outcome) -> pb.Escalation:
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

    def _generate_request(
        self, tier: TierConfig, request: pb.RouteRequest, validation: str
    ) -> tier_pb.GenerateRequest:
        messages = list(request.messages) or [
            common_pb.ChatMessage(role="user", content=request.prompt)
        ]
        structured = validation == "self_reported"
        if structured:
            messages = [
                common_pb.ChatMessage(role="system", content=envelope.INSTRUCTION),
                *messages,
            ]
        # The tier's configured defaults for what the client left unset (the tier service
        # applies the same ones when it reads the same config; here they also hold when not).
        sampling = common_pb.SamplingParams()
        sampling.CopyFrom(request.sampling)
        if not sampling.max_tokens:
            sampling.max_tokens = tier.max_tokens
        if not sampling.HasField("temperature"):
            sampling.temperature = tier.temperature
        return tier_pb.GenerateRequest(
            request_id=request.request_id,
            messages=messages,
            sampling=sampling,
            json_schema=envelope.SCHEMA if structured else "",
            logprobs=validation == "logprob",
        )

    async def _call(
        self,
        tier: TierConfig,
        replica: Replica,
        generate: tier_pb.GenerateRequest,
        deadline: Deadline,
        first: bool,
        category: str,
    ) -> AsyncGenerator[tier_pb.GenerateResponse, None]:
        """One Generate call in a CLIENT span; gRPC errors become TierFailed."""
        escalation = self.cfg.escalation
        timeout, budget = deadline.budget(
            escalation.first_tier_timeout_ms if first else escalation.escalation_timeout_ms,
            f"tier {tier.name!r} was called",
        )
        attributes: dict[str, str | int | float | bool] = {
            "tierroute.tier": tier.name,
            "tierroute.replica": replica.address,
            "tierroute.escalation": not first,
        }
        timer = self.pool.first_token[tier.name]
        with telemetry.client_span(GENERATE_METHOD, __name__, attributes) as (span, metadata):
            call = replica.stub.Generate(generate, timeout=timeout, metadata=metadata)
            called = time.monotonic()
            try:
                responses = aiter(call)
                try:
                    first_response = await _first(responses, timer, called)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise TierFailed(tier.name, _stalled(timer), True) from None
                ttft_ms = timer.samples[-1] * 1000.0
                self.pool.slots[tier.name].observe(ttft_ms / 1000.0)
                span.set_attribute("tierroute.time_to_first_token_ms", ttft_ms)
                self._measured.observe(tier.name, category, TTFT_MS, ttft_ms)
                async for response in _prepend(first_response, responses):
                    timer.heard(time.monotonic())
                    if response.HasField("waiting"):
                        continue
                    if response.HasField("complete"):
                        c = response.complete
                        span.set_attribute("tierroute.completion_tokens", c.completion_tokens)
                        span.set_attribute("tierroute.prompt_tokens", c.prompt_tokens)
                        span.set_attribute("tierroute.cost_usd", c.cost_usd)
                        if c.completion_tokens > 1:
                            per_token = (c.total_time_ms - c.time_to_first_token_ms) / (
                                c.completion_tokens - 1
                            )
                            self._measured.observe(tier.name, category, TPOT_MS, per_token)
                    yield response
            except grpc.aio.AioRpcError as error:
                # The tier answered other calls meanwhile: what ran out was the wait, not the tier
                busy = timer.last_message > called
                raise TierFailed(tier.name, error, budget, busy) from error
            finally:
                call.cancel()  # a client that went away, or an escalation: stop the tier's work

    async def _attempt(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        deadline: Deadline,
        outcome: Outcome,
        first: bool,
        hold: bool,
        holder: object,
        serving: Hedge | None = None,
        racing: Hedge | None = None,
    ) -> AsyncIterator[RouteEvent]:
        """One tier's answer: streamed live, or (`hold`) held back until the validator has
        judged it. Appends the attempt to `outcome`. `serving`: a hedge already calling this
        tier, whose responses are the answer; `racing`: a larger tier's hedge, stopped the
        moment this answer is committed."""
        validation = tier.validation if hold else "none"
        generate = self._generate_request(tier, request, validation)
        # Prefix commit: judged once this many tokens are in, then streamed (or escalated).
        first_prefix = tier.commit_prefix_tokens if hold and tier.commit == "prefix" else 0
        committed: pb.ValidationStatus | None = None  # the prefix's judgement, once delivered
        rejected: tuple[pb.ValidationStatus, pb.EscalationReason] | None = None
        tried: list[Replica] = []
        while True:  # over the tier's replicas, while none has sent the client anything
            stream: AsyncGenerator[tier_pb.GenerateResponse, None]
            own_call = serving is None or bool(tried)  # a hedge counts its own call
            if not own_call:
                assert serving is not None
                replica, stream = serving.replica, serving.responses()
            else:
                picked = self.pool.pick(tier.name, tried)
                # every replica ejected, yet the breaker let the tier through: the first
                replica = picked or self.pool.replicas[tier.name][0]
                stream = self._call(tier, replica, generate, deadline, first, outcome.category)
            tried.append(replica)
            parts: list[str] = []
            logprobs: list[common_pb.TokenLogprob] = []
            complete = None
            sent_chars = 0
            holding = hold
            prefix_at = first_prefix
            if own_call:
                replica.in_flight += 1
                self.shadow.live_call_started(tier.name)
            try:
                async with contextlib.aclosing(
                    stream
                ) as calling:  # closed early (a rejected prefix): the tier's call is cancelled
                    async for response in calling:
                        if response.HasField("complete"):
                            complete = response.complete
                        elif holding:
                            parts.append(response.chunk.text)
                            logprobs.extend(response.chunk.logprobs)
                            if prefix_at and len(logprobs) >= prefix_at:
                                prefix = "".join(parts)
                                verdict, status, reason = await self._verdict(
                                    tier,
                                    request,
                                    deadline,
                                    outcome,
                                    prefix,
                                    logprobs,
                                    holder,
                                    partial=True,
                                )
                                if verdict.verdict == val_pb.VERDICT_UNDECIDED:
                                    # too close to call: judged again on a longer prefix
                                    prefix_at += first_prefix
                                    continue
                                if verdict.verdict != val_pb.VERDICT_DELIVER:
                                    rejected = (status, reason)
                                    break
                                committed, holding = status, False
                                if racing is not None:
                                    racing.stop()
                                outcome.first_chunk_at = time.perf_counter()
                                sent_chars += len(prefix)
                                yield Token(prefix, tier.name)
                        elif response.chunk.text:
                            outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
                            sent_chars += len(response.chunk.text)
                            yield Token(response.chunk.text, tier.name)
            except TierFailed as failure:
                failure.sent_chars = sent_chars
                self.pool.replica_result(tier.name, replica, not failure.tier_fault)
                if not self._retry_on_another(failure, tier, tried):
                    raise
                logger.warning(
                    "%s (replica %s): retrying on another replica", failure, replica.address
                )
                continue
            else:
                self.pool.replica_result(tier.name, replica, True)
                break
            finally:
                if own_call:
                    replica.in_flight -= 1
        if rejected is not None:  # escalated on its prefix: what it generated so far is paid
            status, reason = rejected
            outcome.escalation_reason = reason
            so_far = tier_pb.GenerateComplete(
                completion_tokens=len(logprobs),
                cost_usd=len(logprobs) * tier.price_per_1k_output_usd / 1000.0,
            )
            outcome.attempts.append(_attempt(tier, so_far, False, status, reason, len(logprobs)))
            return
        if committed is not None:  # the prefix's tokens: none were added once it was judged
            outcome.attempts.append(_attempt(tier, complete, True, committed, judged=len(logprobs)))
            return
        if not hold:
            outcome.attempts.append(
                _attempt(tier, complete, True, pb.VALIDATION_STATUS_NOT_VALIDATED)
            )
            return
        verdict, status, reason = await self._verdict(
            tier, request, deadline, outcome, "".join(parts), logprobs, holder
        )
        # the whole answer: its log-probabilities, or (self_reported) its tokens
        judged = len(logprobs) or (complete.completion_tokens if complete is not None else 0)
        if verdict.verdict == val_pb.VERDICT_DELIVER:
            if racing is not None:
                racing.stop()
            outcome.attempts.append(_attempt(tier, complete, True, status, judged=judged))
            outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
            yield Token(verdict.content, tier.name)
            return
        outcome.escalation_reason = reason
        outcome.attempts.append(_attempt(tier, complete, False, status, reason, judged))

    async def _verdict(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        deadline: Deadline,
        outcome: Outcome,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        holder: object,
        partial: bool = False,
    ) -> tuple[val_pb.ValidateResponse, pb.ValidationStatus, pb.EscalationReason]:
        """The validator's verdict on an answer (or, `partial`, a prefix of one, which may be
        undecided), kept in `outcome` once it decides."""
        verdict, status, reason = await self._judge(
            tier, request, deadline, outcome, answer, logprobs, holder, partial
        )
        if verdict.verdict == val_pb.VERDICT_UNDECIDED:
            return verdict, status, reason
        outcome.confidence = verdict.confidence
        if outcome.judged is None:
            outcome.judged = (
                tier.name,
                "" if status == pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
                else val_pb.Verdict.Name(verdict.verdict).removeprefix("VERDICT_"),
                "VALIDATOR_UNAVAILABLE" if status == pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
                else val_pb.ValidationReason.Name(verdict.reason).removeprefix(
                    "VALIDATION_REASON_"
                ),
                verdict.confidence,
            )  # fmt: skip
        return verdict, status, reason

    def _retry_on_another(
        self, failure: TierFailed, tier: TierConfig, tried: list[Replica]
    ) -> bool:
        """Whether a failed call is retried on another replica of its tier: the replica's fault
        (not the request's, not a spent budget), nothing of it reached the client, and another
        replica that is not ejected is left."""
        return (
            (failure.tier_fault or failure.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
            and failure.sent_chars == 0
            and failure.error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
            and self.pool.pick(tier.name, tried) is not None
        )

    async def _judge(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        deadline: Deadline,
        outcome: Outcome,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        holder: object,
        partial: bool,
    ) -> tuple[val_pb.ValidateResponse, pb.ValidationStatus, pb.EscalationReason]:
        """The validator's verdict on a held-back answer, the validation status to record, and
        the escalation reason if it is not delivered."""
        judged_at = time.perf_counter()
        try:
            timeout, _ = deadline.budget(
                self.cfg.escalation.validate_timeout_ms, "the validator was called"
            )
            verdict = await self.judge.validate(
                tier,
                request.request_id,
                last_user_turn(request.prompt, request.messages),
                answer,
                logprobs,
                timeout,
                holder,
                partial,
            )
        except (ValidatorDown, grpc.aio.AioRpcError) as error:
            why = error.why if isinstance(error, ValidatorDown) else error.code().name
            reason = pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE
            status = pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
            if self.cfg.escalation.on_validator_unavailable == "deliver":
                logger.warning(
                    "validator unavailable (%s): delivering %s's answer unvalidated",
                    why,
                    tier.name,
                )
                content = envelope.unwrap(answer) if tier.validation == "self_reported" else answer
                return (
                    val_pb.ValidateResponse(verdict=val_pb.VERDICT_DELIVER, content=content),
                    status,
                    reason,
                )
            logger.warning("validator unavailable (%s): escalating", why)
            return val_pb.ValidateResponse(verdict=val_pb.VERDICT_ESCALATE), status, reason
        finally:
            outcome.validate_ms += (time.perf_counter() - judged_at) * 1000.0
        if verdict.verdict in (val_pb.VERDICT_DELIVER, val_pb.VERDICT_UNDECIDED):
            return verdict, pb.VALIDATION_STATUS_PASSED, pb.ESCALATION_REASON_UNSPECIFIED
        reason = ESCALATION_FOR.get(verdict.reason, pb.ESCALATION_REASON_UNSPECIFIED)
        return verdict, pb.VALIDATION_STATUS_FAILED, reason


def _attempt(
    tier: TierConfig,
    complete: tier_pb.GenerateComplete | None,
    delivered: bool,
    validation: pb.ValidationStatus,
    reason: pb.EscalationReason = pb.ESCALATION_REASON_UNSPECIFIED,
    judged: int = 0,
) -> pb.TierAttempt:
    # `judged`: the tokens its deciding verdict judged; they count only if a validator judged
    # them (not an unvalidated answer, nor one the validator could not be asked about)
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


async def _first(
    responses: AsyncIterator[tier_pb.GenerateResponse],
    timer: FirstTokenTimer,
    called: float,
    clock: Callable[[], float] = time.monotonic,
) -> tier_pb.GenerateResponse:
    """The call's first message (not a `waiting` one); TimeoutError once the tier counts as
    stalled (nothing on any of its streams, `waiting` messages included, for the first-token
    timeout), never merely because it is busy."""
    reading = asyncio.ensure_future(anext(responses))
    try:
        while True:
            now = clock()
            if timer.stalled(now, now - called):
                raise TimeoutError
            # Until the timeout is reached, or until it would be reached by the tier's silence.
            wait = max(
                timer.timeout() - (now - called), timer.timeout() - (now - timer.last_message)
            )
            done, _ = await asyncio.wait({reading}, timeout=max(wait, 0.01))
            if done:
                response = reading.result()
                now = clock()
                timer.heard(now)
                if response.HasField("waiting"):  # queued in a busy engine: keep waiting
                    reading = asyncio.ensure_future(anext(responses))
                    continue
                timer.observe(now - called)
                return response
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading


def _stalled(timer: FirstTokenTimer) -> grpc.aio.AioRpcError:
    """What a tier that sent no first token in time counts as: UNAVAILABLE (a stall)."""
    p95 = timer.p95()
    measured = "none measured yet" if p95 is None else f"its recent p95 is {p95 * 1000:.0f} ms"
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"no first token within {timer.timeout() * 1000:.0f} ms and no message on any "
        f"of its streams meanwhile ({measured}; escalation.first_token_timeout_*): "
        "taken as stalled",
    )


async def _prepend(
    first: tier_pb.GenerateResponse, rest: AsyncIterator[tier_pb.GenerateResponse]
) -> AsyncIterator[tier_pb.GenerateResponse]:
    yield first
    async for response in rest:
        yield response


def _error_for(failure: TierFailed, outcome: Outcome) -> ServiceError:
    code = failure.error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(failure.error.details() or str(failure))
    if failure.overloaded and not failure.sent_chars:
        return Overloaded(
            f"{failure}: the tier is overloaded and no other tier could take the request; "
            "retry after a second",
            retry_after_s=1.0,
        )
    error = DeadlineExceeded if code == grpc.StatusCode.DEADLINE_EXCEEDED else Unavailable
    if failure.sent_chars:
        return error(
            f"{failure}, {failure.sent_chars} characters into its answer: the answer is incomplete",
            outcome.partial(),
            grpc_note=" (the chunks sent are what was delivered; the partial summary is in the "
            f"trailing metadata {PARTIAL_SUMMARY_KEY!r})",
        )
    if error is DeadlineExceeded:
        if failure.budget:
            return error(
                f"{failure}: it did not finish within its budget "
                "(escalation.first_tier_timeout_ms, or escalation_timeout_ms after an "
                "escalation) and no other tier could take over"
            )
        return error(f"{failure}; the client's deadline passed")
    return error(f"{failure}; no other tier could serve the request")


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
