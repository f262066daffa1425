"""Validation policies: is a tier's answer good enough to deliver, or should it be escalated?

- self-reported: the answer is JSON {"response_content": str, "confidence_score": 0..1} and the
  model's own confidence is compared with the threshold.
- log-probability: confidence is computed from the answer's token log-probabilities (the
  geometric mean token probability, or its minimum over a sliding window), because models'
  self-reported confidence is known to be poorly calibrated.

A partial answer (the prefix of an answer still being generated, for the router's prefix
commit) judged by the geometric mean may be UNDECIDED: when its mean log-probability lies
within `prefix_margin` standard errors of log(threshold), the prefix does not tell what the
whole answer's verdict will be, and the caller asks again with more of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tierroute.core import envelope
from tierroute.core.errors import InvalidArgument
from tierroute.validator.v1 import validator_service_pb2 as pb

DEFAULT_MIN_CONFIDENCE = 0.70
DEFAULT_WINDOW = 8


@dataclass(frozen=True)
class Judgement:
    verdict: pb.Verdict
    confidence: float
    reason: pb.ValidationReason
    content: str
    detail: str = ""

    def to_proto(self) -> pb.ValidateResponse:
        return pb.ValidateResponse(
            verdict=self.verdict,
            confidence=self.confidence,
            reason=self.reason,
            content=self.content,
            detail=self.detail,
        )


def _threshold(policy: pb.ValidationPolicy) -> float:
    value = policy.min_confidence or DEFAULT_MIN_CONFIDENCE
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise InvalidArgument(f"policy.min_confidence is {value:g}; use a value in [0, 1]")
    return value


def _by_confidence(confidence: float, threshold: float, content: str) -> Judgement:
    if confidence < threshold:
        return Judgement(
            pb.VERDICT_ESCALATE,
            confidence,
            pb.VALIDATION_REASON_LOW_CONFIDENCE,
            content,
            f"confidence {confidence:.3f} is below the threshold {threshold:.3f}",
        )
    return Judgement(pb.VERDICT_DELIVER, confidence, pb.VALIDATION_REASON_CONFIDENT, content)


def self_reported(answer: str, policy: pb.ValidationPolicy) -> Judgement:
    threshold = _threshold(policy)
    fallback = (
        policy.fallback_on_parse_error if policy.HasField("fallback_on_parse_error") else True
    )
    if not answer.strip():
        return Judgement(
            pb.VERDICT_ESCALATE, 0.0, pb.VALIDATION_REASON_EMPTY_ANSWER, "", "the answer is empty"
        )
    try:
        env = envelope.parse(answer)
    except envelope.NotJSON as exc:
        if fallback:
            return Judgement(
                pb.VERDICT_ESCALATE, 0.0, pb.VALIDATION_REASON_PARSE_FAILURE, answer, str(exc)
            )
        return Judgement(
            pb.VERDICT_DELIVER, 0.0, pb.VALIDATION_REASON_PARSE_FAILURE, answer, str(exc)
        )
    except envelope.WrongShape as exc:
        return Judgement(
            pb.VERDICT_ESCALATE, 0.0, pb.VALIDATION_REASON_SCHEMA_VIOLATION, answer, str(exc)
        )
    if not env.content.strip():
        return Judgement(
            pb.VERDICT_ESCALATE,
            env.confidence,
            pb.VALIDATION_REASON_EMPTY_ANSWER,
            "",
            f"{envelope.CONTENT_KEY} is empty",
        )
    return _by_confidence(env.confidence, threshold, env.content)


def logprob_confidence(
    logprobs: Sequence[float], aggregation: pb.LogprobAggregation, window: int
) -> float:
    """exp(mean logprob), or the lowest such value over `window` consecutive tokens."""
    if aggregation == pb.LOGPROB_AGGREGATION_MIN_WINDOW and len(logprobs) > window:
        total = sum(logprobs[:window])
        lowest = total
        for i in range(window, len(logprobs)):
            total += logprobs[i] - logprobs[i - window]
            lowest = min(lowest, total)
        return math.exp(lowest / window)
    return math.exp(sum(logprobs) / len(logprobs))


def too_close(logprobs: Sequence[float], threshold: float, margin: float) -> bool:
    """Whether a prefix's mean log-probability lies within `margin` standard errors (the
    sample standard deviation over sqrt(n)) of log(threshold): too close to call."""
    if margin <= 0 or len(logprobs) < 2 or threshold <= 0:
        return False
    n = len(logprobs)
    mean = sum(logprobs) / n
    variance = sum((lp - mean) ** 2 for lp in logprobs) / (n - 1)
    return abs(mean - math.log(threshold)) < margin * math.sqrt(variance / n)


def by_logprob(
    answer: str,
    logprobs: Sequence[float],
    policy: pb.ValidationPolicy,
    partial: bool = False,
) -> Judgement:
    threshold = _threshold(policy)
    margin = policy.prefix_margin
    if not margin >= 0 or math.isinf(margin):
        raise InvalidArgument(
            f"policy.prefix_margin is {margin:g}; use a number of standard errors >= 0"
        )
    if not answer.strip():
        return Judgement(
            pb.VERDICT_ESCALATE, 0.0, pb.VALIDATION_REASON_EMPTY_ANSWER, "", "the answer is empty"
        )
    if not logprobs:
        raise InvalidArgument(
            "policy POLICY_KIND_LOGPROB needs `logprobs`: ask the tier for them (logprobs: true)"
        )
    for i, lp in enumerate(logprobs):
        if math.isnan(lp) or lp > 0:
            raise InvalidArgument(f"logprobs[{i}].logprob is {lp}; log-probabilities are <= 0")
    window = policy.window or DEFAULT_WINDOW
    confidence = logprob_confidence(logprobs, policy.aggregation, window)
    mean = policy.aggregation != pb.LOGPROB_AGGREGATION_MIN_WINDOW
    if partial and mean and too_close(logprobs, threshold, margin):
        return Judgement(
            pb.VERDICT_UNDECIDED,
            confidence,
            pb.VALIDATION_REASON_TOO_CLOSE,
            answer,
            f"confidence {confidence:.3f} of {len(logprobs)} tokens is within {margin:g} "
            f"standard errors of the threshold {threshold:.3f}",
        )
    return _by_confidence(confidence, threshold, answer)


def judge(request: pb.ValidateRequest) -> Judgement:
    """Apply the request's policy to its answer. Raises InvalidArgument for a bad request."""
    if not request.HasField("policy") or request.policy.kind == pb.POLICY_KIND_UNSPECIFIED:
        raise InvalidArgument(
            "policy.kind is required: POLICY_KIND_SELF_REPORTED or POLICY_KIND_LOGPROB"
        )
    if request.policy.kind == pb.POLICY_KIND_SELF_REPORTED:
        return self_reported(request.answer, request.policy)
    if request.policy.kind == pb.POLICY_KIND_LOGPROB:
        return by_logprob(
            request.answer,
            [lp.logprob for lp in request.logprobs],
            request.policy,
            request.partial,
        )
    raise InvalidArgument(f"policy.kind {request.policy.kind} is not a known policy")
