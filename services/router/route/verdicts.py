"""Verdicts: the one place that asks the validator about a held-back answer (or a prefix of
one) and reads its answer as the route flow needs it: deliver or escalate, the validation
status the summary records, and the escalation reason. A validator that cannot be asked is
handled here too, by `escalation.on_validator_unavailable` (deliver unvalidated, or escalate).
"""

from __future__ import annotations

import logging
import time

import grpc

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core import envelope
from tierroute.core.config import Config, TierConfig
from tierroute.core.prompts import last_user_turn
from tierroute.router.route.judge import ESCALATION_FOR, Judge, ValidatorDown
from tierroute.router.route.state import Routed
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2 as val_pb

logger = logging.getLogger(__name__)

Verdict = tuple[val_pb.ValidateResponse, pb.ValidationStatus, pb.EscalationReason]


class Verdicts:
    def __init__(self, cfg: Config, judge: Judge) -> None:
        self.cfg = cfg
        self.judge = judge

    async def verdict(
        self,
        tier: TierConfig,
        routed: Routed,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        partial: bool = False,
    ) -> Verdict:
        """The validator's verdict on an answer (or, `partial`, a prefix of one, which may be
        undecided), kept in the request's outcome once it decides."""
        verdict, status, reason = await self._judge(tier, routed, answer, logprobs, partial)
        if verdict.verdict == val_pb.VERDICT_UNDECIDED:
            return verdict, status, reason
        outcome = routed.outcome
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

    async def _judge(
        self,
        tier: TierConfig,
        routed: Routed,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        partial: bool,
    ) -> Verdict:
        """The validator's verdict on a held-back answer, the validation status to record, and
        the escalation reason if it is not delivered."""
        request = routed.request
        judged_at = time.perf_counter()
        try:
            timeout, _ = routed.deadline.budget(
                self.cfg.escalation.validate_timeout_ms, "the validator was called"
            )
            verdict = await self.judge.validate(
                tier,
                request.request_id,
                last_user_turn(request.prompt, request.messages),
                answer,
                logprobs,
                timeout,
                routed.holder,
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
            routed.outcome.validate_ms += (time.perf_counter() - judged_at) * 1000.0
        if verdict.verdict in (val_pb.VERDICT_DELIVER, val_pb.VERDICT_UNDECIDED):
            return verdict, pb.VALIDATION_STATUS_PASSED, pb.ESCALATION_REASON_UNSPECIFIED
        reason = ESCALATION_FOR.get(verdict.reason, pb.ESCALATION_REASON_UNSPECIFIED)
        return verdict, pb.VALIDATION_STATUS_FAILED, reason
