"""One tier's attempt at a request: the call (through the tier-client interface, in a CLIENT
span), its stall check, retries on another replica, prefix commit, and the hedge.

An answer is streamed live, or held back until the validator has judged it (verdicts.py):
delivered, or replaced by the next tier's; or, with the tier's `commit: prefix`, judged on its
first `commit_prefix_tokens` tokens, then streamed live from there (committed), or escalated
before anything was sent (the tier's call cancelled); a prefix too close to call (UNDECIDED) is
judged again every `commit_prefix_tokens` more tokens, and on the whole answer if none decides.
Within a tier, a call that fails on one replica before anything reached the client is retried
on another; the tier's breaker sees only the final result (`failed`, or flow.py on success).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core import envelope
from tierroute.core.config import Config, TierConfig
from tierroute.router import metrics
from tierroute.router.route.failures import TierFailed, error_for
from tierroute.router.route.hedge import Hedge
from tierroute.router.route.shadow import Shadow
from tierroute.router.route.stall import first_message, prepend, stalled
from tierroute.router.route.state import Routed, Token, tier_attempt
from tierroute.router.route.verdicts import Verdicts
from tierroute.router.tiers.client import TierError
from tierroute.router.tiers.measured import ERROR_RATE, TPOT_MS, TTFT_MS, Measurements
from tierroute.router.tiers.pool import Replica, TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.validator.v1 import validator_service_pb2 as val_pb

logger = logging.getLogger(__name__)


def generate_request(
    tier: TierConfig, request: pb.RouteRequest, validation: str
) -> tier_pb.GenerateRequest:
    """What `tier` is asked for `request`, validated by `validation` (its answer envelope for
    self_reported, token log-probs for logprob)."""
    messages = list(request.messages) or [
        common_pb.ChatMessage(role="user", content=request.prompt)
    ]
    structured = validation == "self_reported"
    if structured:
        messages = [common_pb.ChatMessage(role="system", content=envelope.INSTRUCTION), *messages]
    # The tier's configured defaults for what the client left unset (the tier service applies
    # the same ones when it reads the same config; here they also hold when not).
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


class Attempts:
    """Calls to tiers on a request's behalf."""

    def __init__(
        self,
        cfg: Config,
        pool: TierPool,
        measured: Measurements,
        verdicts: Verdicts,
        shadow: Shadow,
        bound: Callable[[str], float],
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.measured = measured
        self.verdicts = verdicts
        self.shadow = shadow
        self._bound = bound  # a tier's upper score bound, for hedging

    async def call(
        self,
        tier: TierConfig,
        replica: Replica,
        generate: tier_pb.GenerateRequest,
        routed: Routed,
        first: bool,
    ) -> AsyncGenerator[tier_pb.GenerateResponse, None]:
        """One generation in a CLIENT span; failures become TierFailed."""
        escalation = self.cfg.escalation
        timeout, budget = routed.deadline.budget(
            escalation.first_tier_timeout_ms if first else escalation.escalation_timeout_ms,
            f"tier {tier.name!r} was called",
        )
        category = routed.outcome.category
        attributes: dict[str, str | int | float | bool] = {
            "tierroute.tier": tier.name,
            "tierroute.replica": replica.address,
            "tierroute.escalation": not first,
        }
        if tier.kind == "openai":  # OpenTelemetry's GenAI client conventions name the upstream
            attributes |= {"gen_ai.operation.name": "chat", "gen_ai.request.model": tier.model}
            attributes["server.address"] = replica.address
        timer = self.pool.first_token[tier.name]
        client = replica.client
        ended = "cancelled"  # unless it ends otherwise: its reader stopped (an escalation)
        with telemetry.client_span(client.operation, __name__, attributes) as (span, headers):
            call = client.generate(generate, timeout, headers)
            called = time.monotonic()
            try:
                responses = aiter(call)
                try:
                    first_response = await first_message(responses, timer, called)
                except StopAsyncIteration:
                    ended = "ok"
                    return
                except TimeoutError:
                    ended = "stalled"
                    raise TierFailed(tier.name, stalled(timer), True) from None
                ttft_ms = timer.samples[-1] * 1000.0
                self.pool.slots[tier.name].observe(ttft_ms / 1000.0)
                span.set_attribute("tierroute.time_to_first_token_ms", ttft_ms)
                self.measured.observe(tier.name, category, TTFT_MS, ttft_ms)
                async for response in prepend(first_response, responses):
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
                            self.measured.observe(tier.name, category, TPOT_MS, per_token)
                    yield response
                ended = "ok"
            except TierError as error:
                ended = error.kind
                span.set_attribute("tierroute.tier_error", error.kind)
                # The tier answered other calls meanwhile: what ran out was the wait, not the tier
                busy = timer.last_message > called
                raise TierFailed(tier.name, error, budget, busy) from error
            finally:
                call.cancel()  # a client that went away, or an escalation: stop the tier's work
                metrics.REPLICA_CALLS.labels(tier.name, replica.address, ended).inc()

    def hedge(self, tier: TierConfig, following: str, routed: Routed) -> Hedge | None:
        """The next larger tier, asked now, if the request's score lies within `tier`'s
        hedge_margin of its bound and a replica of it is left."""
        margin, score = tier.hedge_margin, routed.outcome.score
        if margin is None or score is None:
            return None
        if abs(self._bound(tier.name) - score) > margin:
            return None
        replica = self.pool.pick(following)
        if replica is None or not self.pool.slots[following].try_acquire():
            return None  # no replica left, or the larger tier is at its limit: no hedge
        larger = self.cfg.tier(following)
        self.shadow.live_call_started(following)
        generate = generate_request(larger, routed.request, "none")
        call = self.call(larger, replica, generate, routed, False)
        logger.info("hedging %s with %s (score %.2f)", tier.name, following, score)
        return Hedge(larger, replica, call, self.pool.slots[following].release)

    async def answer(
        self,
        tier: TierConfig,
        routed: Routed,
        first: bool,
        hold: bool,
        serving: Hedge | None = None,
        racing: Hedge | None = None,
    ) -> AsyncGenerator[Token, None]:
        """One tier's answer: streamed live, or (`hold`) held back until the validator has
        judged it. Appends the attempt to the outcome. `serving`: a hedge already calling this
        tier, whose responses are the answer; `racing`: a larger tier's hedge, stopped the
        moment this answer is committed."""
        outcome = routed.outcome
        validation = tier.validation if hold else "none"
        generate = generate_request(tier, routed.request, validation)
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
                stream = self.call(tier, replica, generate, routed, first)
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
                # closed early (a rejected prefix): the tier's call is cancelled
                async with contextlib.aclosing(stream) as calling:
                    async for response in calling:
                        if response.HasField("complete"):
                            complete = response.complete
                        elif holding:
                            parts.append(response.chunk.text)
                            logprobs.extend(response.chunk.logprobs)
                            if prefix_at and len(logprobs) >= prefix_at:
                                prefix = "".join(parts)
                                verdict, status, reason = await self.verdicts.verdict(
                                    tier, routed, prefix, logprobs, partial=True
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
            outcome.attempts.append(
                tier_attempt(tier, so_far, False, status, reason, len(logprobs))
            )
            return
        if committed is not None:  # the prefix's tokens: none were added once it was judged
            outcome.attempts.append(
                tier_attempt(tier, complete, True, committed, judged=len(logprobs))
            )
            return
        if not hold:
            outcome.attempts.append(
                tier_attempt(tier, complete, True, pb.VALIDATION_STATUS_NOT_VALIDATED)
            )
            return
        verdict, status, reason = await self.verdicts.verdict(
            tier, routed, "".join(parts), logprobs
        )
        # the whole answer: its log-probabilities, or (self_reported) its tokens
        judged = len(logprobs) or (complete.completion_tokens if complete is not None else 0)
        if verdict.verdict == val_pb.VERDICT_DELIVER:
            if racing is not None:
                racing.stop()
            outcome.attempts.append(tier_attempt(tier, complete, True, status, judged=judged))
            outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
            yield Token(verdict.content, tier.name)
            return
        outcome.escalation_reason = reason
        outcome.attempts.append(tier_attempt(tier, complete, False, status, reason, judged))

    def failed(
        self,
        failure: TierFailed,
        tier: str,
        routed: Routed,
        started: float,
        following: str | None,
    ) -> None:
        """A tier's attempt failed: counted against its breaker where it was the tier's fault,
        recorded in the outcome; raised as the request's error unless another tier can take
        over (nothing of it reached the client, and it was not the request's fault)."""
        outcome = routed.outcome
        too_long = failure.error.kind == "too_long"
        reason = (
            pb.ESCALATION_REASON_CONTEXT_TOO_LONG if too_long else pb.ESCALATION_REASON_TIER_FAILURE
        )
        if failure.tier_fault:
            self.pool.record(tier, False, routed.holder)
            self.measured.observe(tier, outcome.category, ERROR_RATE, 1.0)
        else:
            self.pool.release(tier, routed.holder)
        if failure.overloaded:
            refused = failure.error.kind == "overloaded"
            metrics.OVERLOAD.labels(tier, "tier_refused" if refused else "queued_past_budget").inc()
            outcome.overloaded(tier, started)
        else:
            outcome.attempts.append(
                pb.TierAttempt(
                    tier=tier,
                    escalation_reason=reason,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                )
            )
        if failure.sent_chars or following is None or failure.error.kind == "bad_request":
            raise error_for(failure, outcome) from failure
        logger.warning("%s; %s", failure, "trying " + following if too_long else "failing over")
        if not failure.overloaded:
            outcome.escalation_reason = reason

    def _retry_on_another(
        self, failure: TierFailed, tier: TierConfig, tried: list[Replica]
    ) -> bool:
        """Whether a failed call is retried on another replica of its tier: the replica's fault
        or its load (not the request's, not a spent budget), nothing of it reached the client,
        and another replica that is not ejected is left."""
        kind = failure.error.kind
        return (
            (failure.tier_fault or kind == "overloaded")
            and failure.sent_chars == 0
            and kind != "deadline"
            and self.pool.pick(tier.name, tried) is not None
        )
