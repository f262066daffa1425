"""The router's side of validation: which policy a tier's answers are judged by, and the call
to the validator service."""

from __future__ import annotations

import grpc

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config, TierConfig
from tierroute.router.tiers.breaker import CircuitBreaker
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.host import CHANNEL_OPTIONS
from tierroute.runtime.tls import aio_channel
from tierroute.validator.v1 import validator_service_pb2 as val_pb
from tierroute.validator.v1 import validator_service_pb2_grpc as val_grpc

VALIDATE_METHOD = val_pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name + "/Validate"

ESCALATION_FOR = {
    val_pb.VALIDATION_REASON_LOW_CONFIDENCE: pb.ESCALATION_REASON_LOW_CONFIDENCE,
    val_pb.VALIDATION_REASON_PARSE_FAILURE: pb.ESCALATION_REASON_PARSE_FAILURE,
    val_pb.VALIDATION_REASON_SCHEMA_VIOLATION: pb.ESCALATION_REASON_SCHEMA_VIOLATION,
    val_pb.VALIDATION_REASON_EMPTY_ANSWER: pb.ESCALATION_REASON_EMPTY_ANSWER,
}


# Validator failures that mean it is down (its breaker counts them); INVALID_ARGUMENT is ours.
_OUTAGES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class ValidatorDown(Exception):
    """The validator cannot judge now: its breaker is open, or the call failed."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Judge:
    """A channel to the validator, its circuit breaker, and the policy of each tier."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channel = aio_channel(cfg.validator.dial(), cfg.tls, CHANNEL_OPTIONS)
        self._stub = val_grpc.ValidatorServiceStub(self._channel)
        # While the validator is down the router stops asking it, and probes it back after
        # the cooldown (the same settings as the tiers' breakers).
        self.breaker = CircuitBreaker("the validator", cfg.circuit_breaker)

    @property
    def down(self) -> bool:
        """Whether a request would be refused the validator now (its breaker is open)."""
        return not self.breaker.would_allow()

    async def close(self) -> None:
        await self._channel.close()

    def policy(self, tier: TierConfig) -> val_pb.ValidationPolicy:
        escalation = self.cfg.escalation
        if tier.validation == "logprob":
            return val_pb.ValidationPolicy(
                kind=val_pb.POLICY_KIND_LOGPROB,
                min_confidence=escalation.min_confidence,
                aggregation=(
                    val_pb.LOGPROB_AGGREGATION_MIN_WINDOW
                    if tier.logprob_aggregation == "min_window"
                    else val_pb.LOGPROB_AGGREGATION_MEAN
                ),
                window=tier.logprob_window,
                prefix_margin=tier.commit_prefix_margin if tier.commit == "prefix" else 0.0,
            )
        return val_pb.ValidationPolicy(
            kind=val_pb.POLICY_KIND_SELF_REPORTED,
            min_confidence=escalation.min_confidence,
            fallback_on_parse_error=escalation.fallback_on_parse_error,
        )

    async def validate(
        self,
        tier: TierConfig,
        request_id: str,
        prompt: str,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        timeout: float,  # noqa: ASYNC109 - passed on to the gRPC call as its deadline
        holder: object,
        partial: bool = False,
    ) -> val_pb.ValidateResponse:
        """The validator's verdict (`partial`: on a prefix of the answer, which may be
        undecided). Raises ValidatorDown when its breaker is open (the call is not made) or it
        cannot be reached; `holder` is the request, for the breaker."""
        if not self.breaker.allow(holder):
            raise ValidatorDown("its circuit breaker is open")
        try:
            verdict = await self._call(tier, request_id, prompt, answer, logprobs, timeout, partial)
        except grpc.aio.AioRpcError as error:
            if error.code() in _OUTAGES:
                self.breaker.record(False, holder)
                raise ValidatorDown(error.code().name) from error
            self.breaker.release(holder)
            raise
        except BaseException:
            self.breaker.release(holder)
            raise
        self.breaker.record(True, holder)
        return verdict

    async def _call(
        self,
        tier: TierConfig,
        request_id: str,
        prompt: str,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        timeout: float,  # noqa: ASYNC109 - passed on to the gRPC call as its deadline
        partial: bool,
    ) -> val_pb.ValidateResponse:
        with telemetry.client_span(VALIDATE_METHOD, __name__, {"tierroute.tier": tier.name}) as (
            span,
            metadata,
        ):
            verdict: val_pb.ValidateResponse = await self._stub.Validate(
                val_pb.ValidateRequest(
                    request_id=request_id,
                    prompt=prompt,
                    answer=answer,
                    logprobs=logprobs,
                    policy=self.policy(tier),
                    partial=partial,
                ),
                timeout=timeout,
                metadata=metadata,
            )
            span.set_attribute("tierroute.verdict", val_pb.Verdict.Name(verdict.verdict))
            span.set_attribute("tierroute.confidence", verdict.confidence)
            return verdict
