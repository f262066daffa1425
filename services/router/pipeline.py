"""The Route pipeline: decide, generate, validate, escalate; every accepted request ends in a
complete answer or an explicit error.

A tier whose answers are validated (its `validation` is not "none", and a larger tier can take
over) is asked for JSON {"response_content", "confidence_score"} (self_reported) or for token
log-probabilities (logprob). Its answer is held back until the validator has judged it, then
delivered as chunks, or replaced by an escalation event and the next tier's live stream. Other
tiers stream live. A tier that fails before any chunk reached the client is skipped (an
escalation with reason TIER_FAILURE); after chunks were sent the stream ends with UNAVAILABLE,
saying how much was delivered (in the message, and as a partial RouteSummary in the trailing
metadata key `tierroute-partial-summary-bin`).

Each tier has a circuit breaker (breaker.py). A tier whose breaker is open, or whose channel is
in TRANSIENT_FAILURE, is passed over: at the start (the decision says so in its reason codes)
and when escalating or failing over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace

from tierroute import tracing
from tierroute.config import Config, TierConfig
from tierroute.errors import DeadlineExceeded, InvalidArgument, Unavailable
from tierroute.prompts import routing_text
from tierroute.router.breaker import CircuitBreaker
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
PARTIAL_SUMMARY_KEY = "tierroute-partial-summary-bin"
GENERATE_METHOD = tier_pb.DESCRIPTOR.services_by_name["TierService"].full_name + "/Generate"
VALIDATE_METHOD = val_pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name + "/Validate"
# Failures that count against a tier's breaker; INVALID_ARGUMENT and CANCELLED are not its fault.
_TIER_FAULTS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

_ESCALATION_FOR = {
    val_pb.VALIDATION_REASON_LOW_CONFIDENCE: pb.ESCALATION_REASON_LOW_CONFIDENCE,
    val_pb.VALIDATION_REASON_PARSE_FAILURE: pb.ESCALATION_REASON_PARSE_FAILURE,
    val_pb.VALIDATION_REASON_SCHEMA_VIOLATION: pb.ESCALATION_REASON_SCHEMA_VIOLATION,
    val_pb.VALIDATION_REASON_EMPTY_ANSWER: pb.ESCALATION_REASON_EMPTY_ANSWER,
}


class TierFailed(Exception):
    """A tier call failed; `sent_chars` is how much of its answer had reached the client."""

    def __init__(self, tier: str, error: grpc.aio.AioRpcError, sent_chars: int, budget: bool):
        super().__init__(f"tier {tier!r} failed: {error.code().name}: {error.details()}")
        self.error = error
        self.sent_chars = sent_chars
        # DEADLINE_EXCEEDED from our own per-tier budget (the tier's fault), not the client's.
        self.tier_fault = error.code() in _TIER_FAULTS and (
            error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or budget
        )


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
        """The summary; before anything was delivered (a partial one), it names no tier."""
        delivered = next((a for a in reversed(self.attempts) if a.delivered), pb.TierAttempt())
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
            validation=delivered.validation,
        )


class Pipeline:
    """Channels to every tier and the validator, their breakers, and the Route flow."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._tier_channels = {
            t.name: grpc.aio.insecure_channel(t.address, options=CHANNEL_OPTIONS) for t in cfg.tiers
        }
        self._tiers = {
            name: tier_grpc.TierServiceStub(ch) for name, ch in self._tier_channels.items()
        }
        self.breakers = {t.name: CircuitBreaker(t.name, cfg.circuit_breaker) for t in cfg.tiers}
        self._validator_channel = grpc.aio.insecure_channel(
            cfg.validator.address or cfg.validator.listen, options=CHANNEL_OPTIONS
        )
        self._validator = val_grpc.ValidatorServiceStub(self._validator_channel)

    async def close(self) -> None:
        for channel in [*self._tier_channels.values(), self._validator_channel]:
            await channel.close()

    def tier_index(self, name: str) -> int:
        for i, t in enumerate(self.cfg.tiers):
            if t.name == name:
                return i
        names = ", ".join(t.name for t in self.cfg.tiers)
        raise InvalidArgument(f"force_tier {name!r} is not a tier (tiers: {names})")

    def _skip_reason(self, tier: TierConfig, holder: object | None) -> pb.ReasonCode | None:
        """Why `tier` cannot take a request now (None: it can). With a `holder` (the request)
        this admits it, taking the breaker's half-open probe; without, it only looks."""
        breaker = self.breakers[tier.name]
        if not (breaker.would_allow() if holder is None else breaker.allow(holder)):
            return pb.REASON_CODE_CIRCUIT_OPEN
        state = self._tier_channels[tier.name].get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            if holder is not None:
                breaker.release(holder)
            return pb.REASON_CODE_TIER_UNAVAILABLE
        return None

    def admit(self, decision: pb.RoutingDecision, holder: object) -> None:
        """Move the decision to a tier that can serve: the chosen one, else the next larger,
        else the next smaller; the reason codes say why. UNAVAILABLE if none can."""
        chosen = self.tier_index(decision.tier)
        tiers = self.cfg.tiers
        skipped: list[str] = []
        for tier in [*tiers[chosen:], *reversed(tiers[:chosen])]:
            reason = self._skip_reason(tier, holder)
            if reason is None:
                if skipped:
                    logger.warning("passed over %s: %s serves", ", ".join(skipped), tier.name)
                decision.tier = tier.name
                return
            skipped.append(f"{tier.name} ({pb.ReasonCode.Name(reason)})")
            if reason not in decision.reason_codes:
                decision.reason_codes.append(reason)
        raise Unavailable(
            "no tier can take the request: "
            + ", ".join(skipped)
            + "; retry after the breakers' cooldown "
            + f"({self.cfg.circuit_breaker.cooldown_seconds:g} s)"
        )

    def _next_tier(self, after: TierConfig) -> TierConfig | None:
        """The next larger tier that can take an escalation (looking only)."""
        for tier in self.cfg.tiers[self.tier_index(after.name) + 1 :]:
            if self._skip_reason(tier, None) is None:
                return tier
        return None

    async def run(
        self,
        request: pb.RouteRequest,
        decision: pb.RoutingDecision,
        started: float,
        context: grpc.aio.ServicerContext,
        holder: object,
    ) -> AsyncGenerator[pb.RouteResponse, None]:
        """Everything after the decision (already admitted to its tier, as `holder`): chunks,
        escalations, then the summary."""
        score_ms = (time.perf_counter() - started) * 1000.0
        tier = self.cfg.tier(decision.tier)
        escalations_left = 0 if request.disable_escalation else self.cfg.escalation.max_retries
        outcome = Outcome()
        first = True
        while True:
            following = self._next_tier(tier) if escalations_left > 0 else None
            tier_started = time.perf_counter()
            breaker = self.breakers[tier.name]
            try:
                if self.cfg.validation_of(tier) != "none" and following is not None:
                    async for event in self._validated(tier, request, context, outcome, first):
                        yield event
                else:
                    async for event in self._live(tier, request, context, outcome, first):
                        yield event
            except TierFailed as failure:
                if failure.tier_fault:
                    breaker.record(False, holder)
                else:
                    breaker.release(holder)
                outcome.attempts.append(
                    pb.TierAttempt(
                        tier=tier.name,
                        escalation_reason=pb.ESCALATION_REASON_TIER_FAILURE,
                        latency_ms=(time.perf_counter() - tier_started) * 1000.0,
                    )
                )
                if failure.sent_chars or following is None:
                    raise _status_for(failure, outcome.summary(started, score_ms)) from failure
                logger.warning("%s; failing over", failure)
                outcome.escalation_reason = pb.ESCALATION_REASON_TIER_FAILURE
            except BaseException:
                breaker.release(holder)  # cancelled by the client: no verdict on the tier
                raise
            else:
                breaker.record(True, holder)
            finally:
                elapsed = (time.perf_counter() - tier_started) * 1000.0
                if first:
                    outcome.first_tier_ms = elapsed
                else:
                    outcome.escalation_ms += elapsed
            if outcome.attempts[-1].delivered:
                yield pb.RouteResponse(summary=outcome.summary(started, score_ms))
                return
            # Not delivered: only possible where a following tier existed.
            escalations_left -= 1
            first = False
            tier = self._admit_next(tier, outcome, started, score_ms, holder)
            try:
                yield self._escalation(outcome.attempts[-1].tier, tier.name, outcome)
            except BaseException:  # the client left: free a half-open probe slot
                self.breakers[tier.name].release(holder)
                raise

    def _admit_next(
        self, after: TierConfig, outcome: Outcome, started: float, score_ms: float, holder: object
    ) -> TierConfig:
        for tier in self.cfg.tiers[self.tier_index(after.name) + 1 :]:
            if self._skip_reason(tier, holder) is None:
                return tier
        raise Unavailable(
            f"tier {after.name!r} could not answer "
            f"({pb.EscalationReason.Name(outcome.escalation_reason)}) and no larger tier can "
            "take the request now (circuit open or unreachable)",
            ((PARTIAL_SUMMARY_KEY, outcome.summary(started, score_ms).SerializeToString()),),
        )

    def _escalation(self, from_tier: str, to_tier: str, outcome: Outcome) -> pb.RouteResponse:
        logger.info(
            "escalating %s -> %s: %s",
            from_tier,
            to_tier,
            pb.EscalationReason.Name(outcome.escalation_reason),
        )
        trace.get_current_span().add_event(
            "escalation",
            {
                "tierroute.from_tier": from_tier,
                "tierroute.to_tier": to_tier,
                "tierroute.escalation_reason": pb.EscalationReason.Name(outcome.escalation_reason),
                "tierroute.confidence": outcome.confidence,
            },
        )
        return pb.RouteResponse(
            escalation=pb.Escalation(
                from_tier=from_tier,
                to_tier=to_tier,
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

    def _timeout(self, context: grpc.aio.ServicerContext, budget_ms: int) -> tuple[float, bool]:
        """Seconds the next call may take, and whether our budget (not the client's) binds."""
        budget = budget_ms / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise DeadlineExceeded("the client's deadline passed before the tier was called")
            if remaining < budget:
                return remaining, False
        return budget, True

    async def _call(
        self,
        tier: TierConfig,
        generate: tier_pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
        first: bool,
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        """One Generate call in a CLIENT span; gRPC errors become TierFailed."""
        escalation = self.cfg.escalation
        timeout, budget = self._timeout(
            context, escalation.timeout_ms if first else escalation.escalation_timeout_ms
        )
        attributes: dict[str, str | int | float | bool] = {
            "tierroute.tier": tier.name,
            "tierroute.escalation": not first,
        }
        with tracing.client_span(GENERATE_METHOD, __name__, attributes) as (span, metadata):
            call = self._tiers[tier.name].Generate(generate, timeout=timeout, metadata=metadata)
            try:
                async for response in call:
                    if response.HasField("complete"):
                        c = response.complete
                        span.set_attribute("tierroute.completion_tokens", c.completion_tokens)
                        span.set_attribute("tierroute.prompt_tokens", c.prompt_tokens)
                        span.set_attribute("tierroute.cost_usd", c.cost_usd)
                    yield response
            except grpc.aio.AioRpcError as error:
                raise TierFailed(tier.name, error, 0, budget) from error
            finally:
                call.cancel()  # a client that went away, or an escalation: stop the tier's work

    async def _live(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        context: grpc.aio.ServicerContext,
        outcome: Outcome,
        first: bool,
    ) -> AsyncIterator[pb.RouteResponse]:
        sent_chars = 0
        complete = None
        try:
            generate = self._generate_request(tier, request, "none")
            async for response in self._call(tier, generate, context, first):
                if response.HasField("chunk"):
                    if response.chunk.text:
                        outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
                        sent_chars += len(response.chunk.text)
                        yield pb.RouteResponse(
                            chunk=pb.TokenChunk(text=response.chunk.text, tier=tier.name)
                        )
                else:
                    complete = response.complete
        except TierFailed as failure:
            failure.sent_chars = sent_chars
            raise
        outcome.attempts.append(
            _attempt(tier, complete, delivered=True, validation=pb.VALIDATION_STATUS_NOT_VALIDATED)
        )

    async def _validated(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        context: grpc.aio.ServicerContext,
        outcome: Outcome,
        first: bool,
    ) -> AsyncIterator[pb.RouteResponse]:
        parts: list[str] = []
        logprobs: list[tier_pb.TokenLogprob] = []
        complete = None
        validation = self.cfg.validation_of(tier)
        generate = self._generate_request(tier, request, validation)
        async for response in self._call(tier, generate, context, first):
            if response.HasField("chunk"):
                parts.append(response.chunk.text)
                logprobs.extend(response.chunk.logprobs)
            else:
                complete = response.complete
        answer = "".join(parts)
        judged_at = time.perf_counter()
        status = pb.VALIDATION_STATUS_PASSED
        try:
            verdict = await self._validate(tier, request, answer, logprobs, context)
        except grpc.aio.AioRpcError as error:
            if self.cfg.escalation.on_validator_unavailable == "deliver":
                logger.warning(
                    "validator unavailable (%s): delivering %s's answer unvalidated",
                    error.code().name,
                    tier.name,
                )
                content = _unwrap(answer) if validation == "self_reported" else answer
                verdict = val_pb.ValidateResponse(verdict=val_pb.VERDICT_DELIVER, content=content)
                status = pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
            else:
                logger.warning("validator unavailable (%s): escalating", error.code().name)
                verdict = val_pb.ValidateResponse(verdict=val_pb.VERDICT_ESCALATE)
            reason = pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE
        else:
            reason = _ESCALATION_FOR.get(verdict.reason, pb.ESCALATION_REASON_UNSPECIFIED)
        finally:
            outcome.validate_ms += (time.perf_counter() - judged_at) * 1000.0
        outcome.confidence = verdict.confidence
        if verdict.verdict == val_pb.VERDICT_DELIVER:
            outcome.attempts.append(_attempt(tier, complete, delivered=True, validation=status))
            outcome.first_chunk_at = outcome.first_chunk_at or time.perf_counter()
            yield pb.RouteResponse(chunk=pb.TokenChunk(text=verdict.content, tier=tier.name))
            return
        outcome.escalation_reason = reason
        if reason == pb.ESCALATION_REASON_VALIDATOR_UNAVAILABLE:
            status = pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
        else:
            status = pb.VALIDATION_STATUS_FAILED
        outcome.attempts.append(
            _attempt(tier, complete, delivered=False, reason=reason, validation=status)
        )

    async def _validate(
        self,
        tier: TierConfig,
        request: pb.RouteRequest,
        answer: str,
        logprobs: list[tier_pb.TokenLogprob],
        context: grpc.aio.ServicerContext,
    ) -> val_pb.ValidateResponse:
        timeout, _ = self._timeout(context, self.cfg.escalation.validate_timeout_ms)
        with tracing.client_span(VALIDATE_METHOD, __name__, {"tierroute.tier": tier.name}) as (
            span,
            metadata,
        ):
            verdict: val_pb.ValidateResponse = await self._validator.Validate(
                val_pb.ValidateRequest(
                    request_id=request.request_id,
                    prompt=routing_text(request.prompt, request.messages),
                    answer=answer,
                    logprobs=logprobs,
                    policy=self._policy(tier),
                ),
                timeout=timeout,
                metadata=metadata,
            )
            span.set_attribute("tierroute.verdict", val_pb.Verdict.Name(verdict.verdict))
            span.set_attribute("tierroute.confidence", verdict.confidence)
            return verdict


def _unwrap(answer: str) -> str:
    """The response_content of a self-reported JSON answer; the raw text if it is not one."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return answer
    content = doc.get("response_content") if isinstance(doc, dict) else None
    return content if isinstance(content, str) else answer


def _attempt(
    tier: TierConfig,
    complete: tier_pb.GenerateComplete | None,
    delivered: bool,
    validation: pb.ValidationStatus,
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
        validation=validation,
    )


def _status_for(failure: TierFailed, partial: pb.RouteSummary) -> Exception:
    code = failure.error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(failure.error.details() or str(failure))
    error = DeadlineExceeded if code == grpc.StatusCode.DEADLINE_EXCEEDED else Unavailable
    if failure.sent_chars:
        return error(
            f"{failure} after {failure.sent_chars} characters of its answer were sent: "
            "what was delivered is incomplete (partial summary in the trailing metadata "
            f"{PARTIAL_SUMMARY_KEY!r})",
            ((PARTIAL_SUMMARY_KEY, partial.SerializeToString()),),
        )
    if error is DeadlineExceeded:
        return error(f"{failure}; the deadline passed")
    return error(f"{failure}; no other tier could serve the request")
