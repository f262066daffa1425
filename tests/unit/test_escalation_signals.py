"""The escalation-signal study's answer check and signals (benchmarks/escalation.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks.escalation import right, signals
from tierroute.common.v1 import common_pb2 as common_pb


@pytest.mark.parametrize(
    ("content", "answers", "expected"),
    [
        ("The answer is 42.", ["42"], True),
        ("4200", ["42"], False),  # a whole number, not a substring
        ("It's Paris!", ["paris"], True),
        ("Leonardo da Vinci painted it", ["da vinci"], True),
        ("twenty-four hours", ["24", "twenty-four"], True),
        ("I don't know", ["7", "seven"], False),
    ],
)
def test_an_answer_is_right_when_it_contains_an_accepted_one(
    content: str, answers: list[str], expected: bool
) -> None:
    assert right(content, answers) is expected


def token(text: str, logprob: float, *alternatives: float) -> common_pb.TokenLogprob:
    return common_pb.TokenLogprob(
        token=text, logprob=logprob, top=[common_pb.TopLogprob(logprob=a) for a in alternatives]
    )


def envelope_tokens(first: float, second: float, flat: bool = False) -> list:
    """'{"response_content": "Paris", "confidence_score": 0.9}' as tokens, the answer's two
    with the given log-probs, the schema's forced ones at -9."""
    top = (-0.7, -0.7) if flat else (-0.1, -3.0)
    return [
        token('{"response_content": "', -9.0),
        token("Par", first, *top),
        token("is", second, *top),
        token('", "confidence_score": 0.9}', -9.0),
    ]


def test_signals_read_the_envelope_and_the_answers_own_log_probabilities() -> None:
    text = json.dumps({"response_content": "Paris", "confidence_score": 0.9})
    content, values = signals(text, envelope_tokens(-0.1, -2.0))
    assert content == "Paris"
    assert values["self-reported"] == 0.9
    assert values["mean log-prob"] == pytest.approx(-1.05), "the forced tokens are left out"
    assert values["min log-prob"] == -2.0
    assert values["entropy"] < 0  # minus the mean entropy: a flatter distribution scores lower
    _, unsure = signals(text, envelope_tokens(-0.1, -2.0, flat=True))
    assert unsure["entropy"] < values["entropy"]


def test_an_answer_that_is_not_an_envelope_reports_no_confidence() -> None:
    content, values = signals("Paris", [token("Paris", -0.5)])
    assert content == "Paris" and values["self-reported"] == 0.0
    assert values["mean log-prob"] == -0.5
