"""The Route pipeline: decide, generate, validate, escalate; every accepted request ends in a
complete answer or an explicit error.

A tier whose answers are validated (its `validation` is not "none", and a larger tier can take
over) is asked for JSON {"response_content", "confidence_score"} (self_reported) or for token
log-probabilities (logprob). Its answer is held back until the validator has judged it, then
delivered as chunks, or replaced by an escalation event and the next tier's live stream. Other
tiers stream live. A tier that fails before any chunk reached the client is skipped (an
escalation with reason TIER_FAILURE); after chunks were sent the stream ends with UNAVAILABLE,
saying how much was delivered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from tierroute.config import Config, TierConfig
from tierroute.errors import DeadlineExceeded, InvalidArgument, Unavailable
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.serving import CHANNEL_OPTIONS
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc
from tierroute.validator.v1 import validator_service_pb2 as val_pb
from tierroute.validator.v1 import validator_service_pb2_grpc as val_grpc

logger = logging.getLogger(__name__)

ANSWER_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "response_content": {"type": "string"},
            "confidence_score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["response_content", "confidence_score"],
        "additionalProperties": False,
    }
)
ANSWER_INSTRUCTION = (
    "Answer in JSON with two keys: response_content (your answer) and confidence_score "
    "(a number from 0 to 1: how sure you are that the answer is correct)."
)
VALIDATE_TIMEOUT_S = 5.0

_ESCALATION_FOR = {
    val_pb.VALIDATION_REASON_LOW_CONFIDENCE: pb.ESCALATION_REASON_LOW_CONFIDENCE,
    val_pb.VALIDATION_REASON_PARSE_FAILURE: pb.ESCALATION_REASON_PARSE_FAILURE,
    val_pb.VALIDATION_REASON_SCHEMA_VIOLATION: pb.ESCALATION_REASON_SCHEMA_VIOLATION,
    val_pb.VALIDATION_REASON_EMPTY_ANSWER: pb.ESCALATION_REASON_EMPTY_ANSWER,
}


class TierFailed(Exception):
    """A tier call failed; `sent` says whether chunks of it had reached the client."""

    def __init__(self, tier: str, error: grpc.aio.AioRpcError, sent: bool) -> None:
        super().__init__(f"tier {tier!r} failed: {error.code().name}: {error.details()}")
        self.error = error
        self.sent = sent


@dataclass
class Outcome:
    """What the client will be told in the summary."""

    attempts: list[pb.TierAttempt] = field(default_factory=list)
    validate_ms: float = 0.0
    first_tier_ms: float = 0.0
    escalation_ms: float = 0.0
    first_chunk_at: float | None = None
    confidence: float = 0.0
    escalation_reason: pb.EscalationReason = pb.ESCALATION_REASON_UNSPECIFIED

    def summary(self, started: float, score_ms: float) -> pb.RouteSummary:
        delivered = next(a for a in reversed(self.attempts) if a.delivered)
        now = time.perf_counter()
        return pb.RouteSummary(
            tier=delivered.tier,
            escalated=self.escalation_reason != pb.ESCALATION_REASON_UNSPECIFIED,
            escalation_reason=self.escalation_reason,
            usage=pb.Usage(
                prompt_tokens=sum(a.usage.prompt_tokens for a in self.attempts),
                completion_tokens=sum(a.usage.completion_tokens for a in self.attempts),
            ),
            cost_usd=sum(a.cost_usd for a in self.attempts),
            latencies=pb.StageLatencies(
                score_ms=score_ms,
                generate_ms=self.first_tier_ms,
                validate_ms=self.validate_ms,
                escalation_ms=self.escalation_ms,
                total_ms=(now - started) * 1000.0,
                time_to_first_token_ms=((self.first_chunk_at or now) - started) * 1000.0,
            ),
            finish_reason=delivered.finish_reason,
            confidence=self.confidence,
            attempts=self.attempts,
        )


class Pipeline:
    """Channels to every tier and the validator, and the Route flow over them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channels = [
            grpc.aio.insecure_channel(t.address, options=CHANNEL_OPTIONS) for t in cfg.tiers
        ]
        self._tiers = {
            t.name: tier_grpc.TierServiceStub(ch)
            for t, ch in zip(cfg.tiers, self._channels, strict=True)
        }
        validator_channel = grpc.aio.insecure_channel(
            cfg.validator.address or cfg.validator.listen, options=CHANNEL_OPTIONS
        )
        self._channels.append(validator_channel)
        self._validator = val_grpc.ValidatorServiceStub(validator_channel)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def tier_index(self, name: str) -> int:
        for i, t in enumerate(self.cfg.tiers):
            if t.name == name:
                return i
        names = ", ".join(t.name for t in self.cfg.tiers)
        raise InvalidArgument(f"force_tier {name!r} is not a tier (tiers: {names})")

    async def run(
        self,
        request: pb.RouteRequest,
        decision: pb.RoutingDecision,
        started: float,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RouteResponse]:
        """Everything after the decision: chunks, escalations, then the summary."""
        score_ms = (time.perf_counter() - started) * 1000.0
        first = self.tier_index(decision.tier)
        order = self.cfg.tiers[first:]
        escalations_left = 0 if request.disable_escalation else self.cfg.escalation.max_retries
        outcome = Outcome()
        for position, tier in enumerate(order):
            can_escalate = escalations_left > 0 and position < len(order) - 1
            tier_started = time.perf_counter()
            try:
                if self.cfg.validation_of(tier) != "none" and can_escalate:
                    async for event in self._validated(tier, request, context, outcome):
                        yield event
                else:
                    async for event in self._live(tier, request, context, outcome):
                        yield event
            except TierFailed as failure:
                outcome.attempts.append(
                    pb.TierAttempt(
                        tier=tier.name, escalation_reason=pb.ESCALATION_REASON_TIER_FAILURE
                    )
                )
                if failure.sent or not can_escalate:
                    raise _status_for(failure) from failure
                logger.warning("%s; failing over", failure)
                outcome.escalation_reason = pb.ESCALATION_REASON_TIER_FAILURE
            finally:
                elapsed = (time.perf_counter() - tier_started) * 1000.0
                if position == 0:
                    outcome.first_tier_ms = elapsed
                else:
                    outcome.escalation_ms += elapsed
            if outcome.attempts[-1].delivered:
                yield pb.RouteResponse(summary=outcome.summary(started, score_ms))
                return
            # Not delivered: only possible where escalation was allowed.
            escalations_left -= 1
            yield self._escalation(tier, order[position + 1], outcome)
        raise AssertionError("unreachable: the last tier delivers or raises")

    def _escalation(
        self, from_tier: TierConfig, to_tier: TierConfig, outcome: Outcome
    ) -> pb.RouteResponse:
        logger.info(
            "escalating %s -> %s: %s",
            from_tier.name,
            to_tier.name,
            pb.EscalationReason.Name(outcome.escalation_reason),
        )
        return pb.RouteResponse(
            escalation=pb.Escalation(
                from_tier=from_tier.name,
                to_tier=to_tier.name,
                reason=outcome.escalation_reason,
                confidence=outcome.confidence,
            )
        )

    def _generate_request(
        self, tier: TierConfig, request: pb.RouteRequest, validation: str
    ) -> tier_pb.GenerateRequest:
        messages = list(request.messages) or [
            tier_pb.ChatMessage(role="user", content=request.prompt)
        ]
        structured = validation == "self_reported"
        if structured:
            messages = [tier_pb.ChatMessage(role="system", content=ANSWER_INSTRUCTION), *messages]
        # The tier's configured defaults for what the client left unset (the tier service
        # applies the same ones when it reads the same config; here they also hold when not).
        sampling = tier_pb.SamplingParams()
        sampling.CopyFrom(request.sampling)
        if not sampling.max_tokens:
            sampling.max_tokens = tier.max_tokens
        if not sampling.HasField("temperature"):
            sampling.temperature = tier.temperature
        return tier_pb.GenerateRequest(
            request_id=request.request_id,
            messages=messages,
            sampling=sampling,
            json_schema=ANSWER_SCHEMA if structured else "",
            logprobs=validation == "logprob",
        )

    def _policy(self, tier: TierConfig) -> val_pb.ValidationPolicy:
        escalation = self.cfg.escalation
        if self.cfg.validation_of(tier) == "logprob":
            return val_pb.ValidationPolicy(
                kind=val_pb.POLICY_KIND_LOGPROB,
                min_confidence=escalation.min_confidence,
                aggregation=(
                    val_pb.LOGPROB_AGGREGATION_MIN_WINDOW
                    if tier.logprob_aggregation == "min_window"
                    else val_pb.LOGPROB_AGGREGATION_MEAN
                ),
                window=tier.logprob_window,
            )
        return val_pb.ValidationPolicy(
            kind=val_pb.POLICY_KIND_SELF_REPORTED,
            min_confidence=escalation.min_confidence,
            fallback_on_parse_error=escalation.fallback_on_parse_error,
        )

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        budget = self.cfg.escalation.timeout_ms / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise DeadlineExceeded("the client's deadline passed before the tier was called")
            budget = min(budget, remaining)
        return budget

    async def _call(
        self,
        tier: TierConfig,
        generate: tier_pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        call = self._tiers[tier.name].Generate(generate, timeout=self._timeout(context))
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()  # a client that went away, or an escalation: stop the tier's work

    async def _live(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        context: grpc.aio.ServicerContext,
        outcome: Outcome,
    ) -> AsyncIterator[pb.RouteResponse]:
        sent = False
        complete = None
        try:
            async for response in self._call(
                tier, self._generate_request(tier, request, "none"), context
            ):
                if response.HasField("chunk"):
                    if response.chunk.text:
                        outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
                        sent = True
                        yield pb.RouteResponse(
                            chunk=pb.TokenChunk(text=response.chunk.text, tier=tier.name)
                        )
                else:
                    complete = response.complete
        except grpc.aio.AioRpcError as error:
            raise TierFailed(tier.name, error, sent) from error
        outcome.attempts.append(_attempt(tier, complete, delivered=True))

    async def _validated(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        context: grpc.aio.ServicerContext,
        outcome: Outcome,
    ) -> AsyncIterator[pb.RouteResponse]:
        parts: list[str] = []
        logprobs: list[tier_pb.TokenLogprob] = []
        complete = None
        generate = self._generate_request(tier, request, self.cfg.validation_of(tier))
        try:
            async for response in self._call(tier, generate, context):
                if response.HasField("chunk"):
                    parts.append(response.chunk.text)
                    logprobs.extend(response.chunk.logprobs)
                else:
                    complete = response.complete
        except grpc.aio.AioRpcError as error:
            raise TierFailed(tier.name, error, sent=False) from error
        answer = "".join(parts)
        judged_at = time.perf_counter()
        try:
            verdict = await self._validator.Validate(
                val_pb.ValidateRequest(
                    request_id=request.request_id,
                    prompt=request.prompt or request.messages[-1].content,
                    answer=answer,
                    logprobs=logprobs,
                    policy=self._policy(tier),
                ),
                timeout=VALIDATE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            logger.warning("validator unavailable (%s): escalating", error.code().name)
            verdict = val_pb.ValidateResponse(verdict=val_pb.VERDICT_ESCALATE)
            reason = pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE
        else:
            reason = _ESCALATION_FOR.get(verdict.reason, pb.ESCALATION_REASON_UNSPECIFIED)
        finally:
            outcome.validate_ms += (time.perf_counter() - judged_at) * 1000.0
        outcome.confidence = verdict.confidence
        if verdict.verdict == val_pb.VERDICT_DELIVER:
            outcome.attempts.append(_attempt(tier, complete, delivered=True))
            outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
            yield pb.RouteResponse(chunk=pb.TokenChunk(text=verdict.content, tier=tier.name))
            return
        outcome.escalation_reason = reason
        outcome.attempts.append(_attempt(tier, complete, delivered=False, reason=reason))


def _attempt(
    tier: TierConfig,
    complete: tier_pb.GenerateComplete | None,
    delivered: bool,
    reason: pb.EscalationReason = pb.ESCALATION_REASON_UNSPECIFIED,
) -> pb.TierAttempt:
    c = complete or tier_pb.GenerateComplete()
    return pb.TierAttempt(
        tier=tier.name,
        usage=pb.Usage(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens),
        cost_usd=c.cost_usd,
        finish_reason=c.finish_reason,
        latency_ms=c.total_time_ms,
        delivered=delivered,
        escalation_reason=reason,
    )


def _status_for(failure: TierFailed) -> Exception:
    code = failure.error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{failure}; the deadline passed")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(failure.error.details() or str(failure))
    if failure.sent:
        return Unavailable(
            f"{failure} after part of the answer was sent; what was delivered is incomplete"
        )
    return Unavailable(f"{failure}; no other tier could serve the request")
