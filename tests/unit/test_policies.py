"""The validation policies on hand-made answers."""

from __future__ import annotations

import json
import math

import pytest

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.errors import InvalidArgument
from tierroute.validator.policies import judge, logprob_confidence
from tierroute.validator.v1 import validator_service_pb2 as pb

SELF = pb.ValidationPolicy(kind=pb.POLICY_KIND_SELF_REPORTED)


def answer(content: str, confidence: object) -> str:
    return json.dumps({"response_content": content, "confidence_score": confidence})


def self_reported(text: str, **policy: object) -> pb.ValidateResponse:
    p = pb.ValidationPolicy(kind=pb.POLICY_KIND_SELF_REPORTED, **policy)
    return judge(pb.ValidateRequest(answer=text, policy=p)).to_proto()


def test_confident_json_answer_is_delivered_with_its_content() -> None:
    r = self_reported(answer("Paris.", 0.93))
    assert (r.verdict, r.reason) == (pb.VERDICT_DELIVER, pb.VALIDATION_REASON_CONFIDENT)
    assert r.content == "Paris." and r.confidence == pytest.approx(0.93)


def test_default_threshold_is_seventy_percent_and_configurable() -> None:
    assert self_reported(answer("x", 0.70)).verdict == pb.VERDICT_DELIVER
    low = self_reported(answer("x", 0.69))
    assert (low.verdict, low.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_LOW_CONFIDENCE)
    assert self_reported(answer("x", 0.69), min_confidence=0.5).verdict == pb.VERDICT_DELIVER


def test_unparseable_answer_escalates_unless_fallback_is_off() -> None:
    r = self_reported('{"response_content": "Paris", "confidence_score": ')
    assert (r.verdict, r.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_PARSE_FAILURE)
    assert "not valid JSON" in r.detail
    kept = self_reported("Paris, I think", fallback_on_parse_error=False)
    assert (kept.verdict, kept.reason) == (pb.VERDICT_DELIVER, pb.VALIDATION_REASON_PARSE_FAILURE)
    assert kept.content == "Paris, I think" and kept.confidence == 0.0


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[1, 2]", "not an object"),
        (json.dumps({"confidence_score": 0.9}), "response_content is missing"),
        (json.dumps({"response_content": "x"}), "confidence_score is missing"),
        (answer("x", "high"), "confidence_score is missing or not a number"),
        (answer("x", True), "confidence_score is missing or not a number"),
        (answer("x", 1.5), "outside [0, 1]"),
    ],
)
def test_wrong_shape_is_a_schema_violation(text: str, detail: str) -> None:
    r = self_reported(text)
    assert (r.verdict, r.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_SCHEMA_VIOLATION)
    assert detail in r.detail


@pytest.mark.parametrize("text", ["", "   \n", answer("  ", 0.99)])
def test_empty_answer_escalates(text: str) -> None:
    r = self_reported(text)
    assert (r.verdict, r.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_EMPTY_ANSWER)


def logprob_request(
    logprobs: list[float], text: str = "Paris", **policy: object
) -> pb.ValidateRequest:
    return pb.ValidateRequest(
        answer=text,
        logprobs=[common_pb.TokenLogprob(token="t", logprob=lp) for lp in logprobs],
        policy=pb.ValidationPolicy(kind=pb.POLICY_KIND_LOGPROB, **policy),
    )


def test_logprob_mean_is_the_geometric_mean_probability() -> None:
    r = judge(logprob_request([math.log(0.9), math.log(0.8)]))
    assert r.confidence == pytest.approx(math.sqrt(0.9 * 0.8))
    assert r.verdict == pb.VERDICT_DELIVER
    low = judge(logprob_request([math.log(0.9), math.log(0.1)]))
    assert low.confidence == pytest.approx(0.3)
    assert (low.verdict, low.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_LOW_CONFIDENCE)


def partial_request(logprobs: list[float], margin: float, **policy: object) -> pb.ValidateRequest:
    r = logprob_request(logprobs, prefix_margin=margin, **policy)
    r.partial = True
    return r


def test_a_prefix_too_close_to_the_bar_is_undecided_and_a_clear_one_decides() -> None:
    # mean log-prob -0.4, sample sd 0.2: the standard error of 4 tokens is 0.1
    wobbly = [-0.2, -0.6, -0.2, -0.6]
    sd_error = 0.2 / math.sqrt(len(wobbly)) * math.sqrt(4 / 3)
    bar = math.exp(-0.4 + 0.5 * sd_error)  # half a standard error above the mean
    close = judge(partial_request(wobbly, 1.0, min_confidence=bar))
    assert (close.verdict, close.reason) == (pb.VERDICT_UNDECIDED, pb.VALIDATION_REASON_TOO_CLOSE)
    assert close.confidence == pytest.approx(math.exp(-0.4))
    assert "within 1 standard errors" in close.detail
    # the same prefix with a smaller margin, or judged as a whole answer, decides
    assert judge(partial_request(wobbly, 0.25, min_confidence=bar)).verdict == pb.VERDICT_ESCALATE
    assert judge(partial_request(wobbly, 0.0, min_confidence=bar)).verdict == pb.VERDICT_ESCALATE
    whole = logprob_request(wobbly, prefix_margin=1.0, min_confidence=bar)
    assert judge(whole).verdict == pb.VERDICT_ESCALATE
    # two standard errors clear of the bar, on either side
    above = math.exp(-0.4 - 2 * sd_error)
    below = math.exp(-0.4 + 2 * sd_error)
    assert judge(partial_request(wobbly, 1.0, min_confidence=above)).verdict == pb.VERDICT_DELIVER
    assert judge(partial_request(wobbly, 1.0, min_confidence=below)).verdict == pb.VERDICT_ESCALATE


def test_a_prefix_judged_by_its_weakest_window_always_decides() -> None:
    # A window's minimum can only fall as the answer grows: the prefix's verdict stands.
    r = judge(
        partial_request(
            [-0.2, -0.6, -0.2, -0.6],
            10.0,
            min_confidence=math.exp(-0.35),
            aggregation=pb.LOGPROB_AGGREGATION_MIN_WINDOW,
            window=2,
        )
    )
    assert r.verdict == pb.VERDICT_ESCALATE


def test_min_window_catches_a_weak_stretch_the_mean_hides() -> None:
    confident = [math.log(0.99)] * 20
    weak = [math.log(0.2)] * 3
    logprobs = confident + weak + confident
    mean = logprob_confidence(logprobs, pb.LOGPROB_AGGREGATION_MEAN, 3)
    window = logprob_confidence(logprobs, pb.LOGPROB_AGGREGATION_MIN_WINDOW, 3)
    assert mean > 0.8
    assert window == pytest.approx(0.2)
    r = judge(logprob_request(logprobs, aggregation=pb.LOGPROB_AGGREGATION_MIN_WINDOW, window=3))
    assert r.verdict == pb.VERDICT_ESCALATE


def test_min_window_longer_than_the_answer_uses_the_whole_answer() -> None:
    lps = [math.log(0.5), math.log(0.8)]
    assert logprob_confidence(lps, pb.LOGPROB_AGGREGATION_MIN_WINDOW, 8) == pytest.approx(
        math.sqrt(0.4)
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ValidateRequest(answer="x"), "policy.kind is required"),
        (pb.ValidateRequest(answer="x", policy=pb.ValidationPolicy()), "policy.kind is required"),
        (logprob_request([]), "needs `logprobs`"),
        (logprob_request([0.5]), "log-probabilities are <= 0"),
        (logprob_request([-0.1], min_confidence=1.5), "min_confidence is 1.5"),
        (logprob_request([-0.1], prefix_margin=-1), "prefix_margin is -1"),
        (logprob_request([-0.1], prefix_margin=math.nan), "prefix_margin is nan"),
    ],
)
def test_requests_that_cannot_be_judged_are_invalid(
    request_: pb.ValidateRequest, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        judge(request_)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[" * 100_000, "nested too deeply"),  # once a RecursionError, so INTERNAL
        ('{"response_content": "' + "x" * 1_000_001 + '", "confidence_score": 1}', "at most"),
    ],
)
def test_an_answer_too_deep_or_too_long_to_parse_is_a_parse_failure_verdict(
    text: str, detail: str
) -> None:
    r = self_reported(text)
    assert (r.verdict, r.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_PARSE_FAILURE)
    assert detail in r.detail
