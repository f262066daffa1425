"""The router's side of validation: which policy a tier's answers are judged by, and the call
to the validator service."""

from __future__ import annotations

import grpc

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config, TierConfig
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.host import CHANNEL_OPTIONS
from tierroute.validator.v1 import validator_service_pb2 as val_pb
from tierroute.validator.v1 import validator_service_pb2_grpc as val_grpc

VALIDATE_METHOD = val_pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name + "/Validate"

ESCALATION_FOR = {
    val_pb.VALIDATION_REASON_LOW_CONFIDENCE: pb.ESCALATION_REASON_LOW_CONFIDENCE,
    val_pb.VALIDATION_REASON_PARSE_FAILURE: pb.ESCALATION_REASON_PARSE_FAILURE,
    val_pb.VALIDATION_REASON_SCHEMA_VIOLATION: pb.ESCALATION_REASON_SCHEMA_VIOLATION,
    val_pb.VALIDATION_REASON_EMPTY_ANSWER: pb.ESCALATION_REASON_EMPTY_ANSWER,
}


class Judge:
    """A channel to the validator and the policy of each tier."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channel = grpc.aio.insecure_channel(cfg.validator.dial(), options=CHANNEL_OPTIONS)
        self._stub = val_grpc.ValidatorServiceStub(self._channel)

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
    ) -> val_pb.ValidateResponse:
        """The validator's verdict; grpc.aio.AioRpcError when it cannot be reached."""
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
                ),
                timeout=timeout,
                metadata=metadata,
            )
            span.set_attribute("tierroute.verdict", val_pb.Verdict.Name(verdict.verdict))
            span.set_attribute("tierroute.confidence", verdict.confidence)
            return verdict
