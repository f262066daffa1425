"""The Route flow, transport-neutral: a route request in, events out (Decided, then Token and
Escalated events, then Finished); failures raise the project's errors
(tierroute.core.errors). The gRPC servicer and the HTTP front adapt it; neither holds routing,
escalation or failover.

The flow decides (the decider scores; the selection ranks; the request's admission, handed to
the decider, passes over tiers the validator would judge while it is down, puts a
conversation's held tier first and passes over tiers whose breaker is open or whose replicas
are down, before the decision is built), then answers, failing over and escalating. One tier's
attempt (the call, the stall check, replicas, prefix commit, hedging) is attempt.py; the validator's
verdicts are verdicts.py; what the request's end is counted as (metrics, ledger, routing log,
shadow mode) is accounting.py; the request's state and the events are state.py.

A tier that fails before any token reached the client is skipped (an escalation with reason
TIER_FAILURE); after tokens were sent the request ends with UNAVAILABLE (or
DEADLINE_EXCEEDED), saying how much was delivered, with a partial RouteSummary in the error's
trailing metadata `tierroute-partial-summary-bin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

import numpy as np
from opentelemetry import trace

from tierroute.core.asked import asked
from tierroute.core.config import Config
from tierroute.core.errors import InvalidArgument, ServiceError, Unavailable
from tierroute.core.prompts import normalize
from tierroute.core.sampling import check_sampling
from tierroute.router import metrics
from tierroute.router.route.accounting import Accounting
from tierroute.router.route.affinity import Affinity
from tierroute.router.route.attempt import Attempts, generate_request
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.failures import TierFailed
from tierroute.router.route.hedge import Hedge
from tierroute.router.route.judge import Judge
from tierroute.router.route.limits import ClientLimits
from tierroute.router.route.placing import place
from tierroute.router.route.routing_log import RoutingLog
from tierroute.router.route.shadow import Shadow
from tierroute.router.route.state import (
    Decided,
    Escalated,
    Finished,
    Outcome,
    Routed,
    RouteEvent,
    Token,
    escalation,
)
from tierroute.router.route.verdicts import Verdicts
from tierroute.router.scoring.decider import Decider
from tierroute.router.scoring.scored import Scored
from tierroute.router.selection.filters import Admit, Admitted, judgeable
from tierroute.router.selection.policy import BELOW_QUALITY_BAR
from tierroute.router.tiers.measured import ERROR_RATE
from tierroute.router.tiers.pool import TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.auth import CLIENT
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

logger = logging.getLogger(__name__)

# Stands in for a tier's default temperature when only the bounds are checked.
DEFAULT_TEMPERATURE = 0.7


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
        self._tiers = [t.name for t in cfg.tiers]
        self._measured = decider.decisions.measurements
        self.limits = ClientLimits(cfg.router)
        self.affinity = Affinity(
            cfg.router.affinity_ttl_seconds, self._tiers, decider.decisions.measurements.store
        )
        self._max_tokens_limit = cfg.output_tokens_limit()
        self.shadow = Shadow(cfg, pool, self._shadow_request, self._embed)
        self.accounting = Accounting(cfg, decider, log, self.shadow)
        self.attempts = Attempts(
            cfg,
            pool,
            self._measured,
            Verdicts(cfg, judge),
            self.shadow,
            decider.decisions.policy.bound,
        )

    def _shadow_request(self, request: pb.RouteRequest, tier: str) -> tier_pb.GenerateRequest:
        """What the large tier is asked in shadow mode: what `tier` was asked, with the same
        sampling (its defaults where the client set none), unvalidated."""
        return generate_request(self.cfg.tier(tier), request, "none")

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.decider.embedder is not None, "the decider is loaded before any request"
        return self.decider.embedder.embed(texts)

    async def route(
        self, request: pb.RouteRequest, deadline: Deadline
    ) -> AsyncGenerator[RouteEvent, None]:
        """Decide, then answer: one Decided, Token and Escalated events, one Finished."""
        started = time.perf_counter()
        routed = Routed(request, deadline, Outcome(started, usable=frozenset(self._tiers)))
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
            text = self.decider.decisions.check_input(request.prompt, request.messages)
            check_sampling(request.sampling, DEFAULT_TEMPERATURE, self._max_tokens_limit)
            # Past a client's limit: RESOURCE_EXHAUSTED before any work (route/limits.py).
            ticket = self.limits.admit(CLIENT.get()) if self.limits.active else None
            admitted = True
            held = await self.affinity.held(conversation) if conversation else None
            if request.force_tier:
                decision = self._forced(request, started)
            else:
                decision, scored = await self._decide(routed, text, held)
            tier = decision.tier
            routed.outcome.category = decision.category
            self._describe(request, decision)
            routed.outcome.score_ms = (time.perf_counter() - started) * 1000.0
            yield Decided(decision)
            # Closed with this one when the client leaves: the tier call ends now, not whenever
            # the abandoned generators are collected.
            async with contextlib.aclosing(self._answer(tier, routed)) as answering:
                async for event in answering:
                    if answered is not None and isinstance(event, Token):
                        answered.append(event)
                    if conversation and isinstance(event, Finished):
                        # Before the summary: the next turn sees where it is held.
                        await self.affinity.hold(conversation, held, event.summary.tier)
                    yield event
        except ServiceError as error:
            status = error.status
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = "CANCELLED"  # the client left
            raise
        except BaseException:
            status = "INTERNAL"
            raise
        finally:
            outcome = routed.outcome
            if ticket is not None:
                ticket.done(
                    sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in outcome.attempts)
                )
            # Whatever ended the request, a half-open probe it still holds is freed (a no-op
            # once the attempt has been recorded).
            if tier:
                self.pool.release(tier, routed.holder)
            metrics.IN_FLIGHT.dec()
            self.accounting.settle(routed, text, decision, scored, status, admitted, answered)

    def _forced(self, request: pb.RouteRequest, started: float) -> pb.RoutingDecision:
        """The decision for a request that names its tier (the caller's choice: it checks its
        own context window)."""
        if request.force_tier not in self._tiers:
            raise InvalidArgument(
                f"force_tier {request.force_tier!r} is not a tier (tiers: {', '.join(self._tiers)})"
            )
        decision = pb.RoutingDecision(
            tier=request.force_tier,
            confidence=1.0,
            reason_codes=[pb.REASON_CODE_FORCED_TIER],
            reasons=[f"forced_tier:{request.force_tier}"]
            + (["escalation_disabled"] if request.disable_escalation else []),
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
        )
        metrics.decided(decision, looked_up=False)
        return decision

    async def _decide(
        self, routed: Routed, text: str, held: str | None
    ) -> tuple[pb.RoutingDecision, Scored | None]:
        """Score the request and rank the tiers; the first that can take it serves."""
        request = routed.request
        ask = self.decider.decisions.ask(
            request.prompt,
            request.messages,
            request.sampling.max_tokens,
            request.slo if request.HasField("slo") else None,
        )
        admit = self._admission(request, routed.holder, held)
        with telemetry.tracer(__name__).start_as_current_span("score") as score_span:
            decision, selection, scored = await self.decider.decide_scored(
                text, request.bypass_cache, ask, admit
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
        routed.outcome.usable = selection.usable
        routed.outcome.score = decision.complexity_score if scored is not None else None
        return decision, scored

    def _describe(self, request: pb.RouteRequest, decision: pb.RoutingDecision) -> None:
        """The decision on the request's span, and in the log where it was not the plain one."""
        trace.get_current_span().set_attributes(
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

    def _admission(self, request: pb.RouteRequest, holder: object, held: str | None) -> Admit:
        """What admits this request to a tier of the selection's ranking, in order: tiers the
        validator would judge passed over while it is down (and the policy is to escalate: their
        answers would be thrown away), the conversation's held tier first, then the first tier
        whose breaker and replicas can take it (a half-open probe is claimed for `holder`).
        UNAVAILABLE if none can."""
        validator_down = (
            self.judge.down
            and self.cfg.escalation.on_validator_unavailable == "escalate"
            and not request.disable_escalation
            and self.cfg.escalation.max_retries > 0
        )

        def admit(ranking: list[str]) -> Admitted:
            admitted = Admitted()
            if validator_down:
                kept, skipped = judgeable(
                    ranking, lambda t: self.cfg.tier(t).validation != "none", self._tiers[-1]
                )
                if skipped:
                    logger.warning(
                        "the validator is down: passing over %s, whose answers it would judge",
                        ", ".join(t for t, _ in skipped),
                    )
                admitted.passed_over(skipped)
                ranking = kept
            if held is not None:
                ranking, why = self.affinity.first(ranking, held)
                if why:
                    admitted.reasons.append(why)
            tier, skipped = self.pool.first_available(ranking, holder)
            admitted.passed_over(skipped)
            if tier is None:
                raise Unavailable(
                    "no tier can take the request: "
                    + ", ".join(f"{n} ({pb.ReasonCode.Name(r)})" for n, r in skipped)
                    + "; retry after the breakers' cooldown "
                    + f"({self.cfg.circuit_breaker.cooldown_seconds:g} s)"
                )
            if skipped:
                logger.warning("passed over %s: %s serves", ", ".join(n for n, _ in skipped), tier)
            admitted.tier = tier
            return admitted

        return admit

    def _larger(self, tier: str, outcome: Outcome) -> list[str]:
        """The tiers an escalation from `tier` may go to, in order."""
        return [t for t in self._tiers[self._tiers.index(tier) + 1 :] if t in outcome.usable]

    def _wider(
        self, tier: str, window: int | None, outcome: Outcome, escalations_left: int
    ) -> str | None:
        """After `tier` refused the request as longer than its context window (`window`: the
        one it named, else its configured one): only tiers with a larger window (or none
        configured) stay usable; the first of them that can take it now, if the request may
        still move."""
        if window is not None:
            outcome.usable = frozenset(
                t for t in outcome.usable if (w := self.cfg.tier(t).window()) is None or w > window
            )
        if escalations_left <= 0:
            return None
        following, _ = self.pool.first_available(self._larger(tier, outcome), None)
        return following

    async def _answer(self, tier_name: str, routed: Routed) -> AsyncGenerator[RouteEvent, None]:
        """The answer of the first tier that gives one the request may keep, escalating (and
        failing over) along the ranking."""
        request, outcome, holder = routed.request, routed.outcome, routed.holder
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
                    placed = serving is not None or await place(
                        self.cfg,
                        self.pool,
                        tier_name,
                        following is not None,
                        routed.deadline,
                        first,
                    )
                except BaseException:  # refused, or the client left while it waited
                    self.pool.release(tier_name, holder)
                    raise
                if not placed:
                    self.pool.release(tier_name, holder)  # overload: no verdict on the tier
                    metrics.OVERLOAD.labels(tier_name, "spilled").inc()
                    outcome.overloaded(tier_name, tier_started)
                    outcome.spent(first, tier_started)
                else:
                    hold = tier.validation != "none" and following is not None
                    if first and hold and following is not None:
                        hedge = self.attempts.hedge(tier, following, routed)
                    racing = hedge if serving is None else None
                    attempt = self.attempts.answer(tier, routed, first, hold, serving, racing)
                    try:
                        async with contextlib.aclosing(attempt) as answering:
                            async for event in answering:
                                yield event
                    except TierFailed as failure:
                        if failure.error.kind == "too_long":
                            window = failure.error.window or tier.window()
                            following = self._wider(tier.name, window, outcome, escalations_left)
                        self.attempts.failed(failure, tier_name, routed, tier_started, following)
                    except BaseException:
                        self.pool.release(tier_name, holder)  # the client left: no verdict
                        raise
                    else:
                        self.pool.record(tier_name, True, holder)
                        self._measured.observe(tier_name, outcome.category, ERROR_RATE, 0.0)
                    finally:
                        if serving is None:
                            self.pool.slots[tier_name].release()
                        outcome.spent(first, tier_started)
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
                    yield Escalated(escalation(previous, tier_name, outcome))
                except BaseException:  # the client left: free a half-open probe slot
                    self.pool.release(tier_name, holder)
                    raise
        finally:
            if hedge is not None:
                hedge.stop()  # whatever ended the request, no call is left running
