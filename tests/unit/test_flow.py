"""The Route flow over scripted tier clients (tiers/client.py): every path of a Route in a
second, with no engine: deliver, escalate, fail over before and after tokens, a stall, a hedge,
prefix commit, and a client that leaves. The decider and the validator are scripted too (their
real counterparts: tests/integration/router/test_route.py, with vLLM engines)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.helpers.budgets import make_config
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import Config
from tierroute.core.errors import InvalidArgument, Unavailable
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.flow import RouteFlow
from tierroute.router.route.judge import Judge
from tierroute.router.route.state import Decided, Escalated, Finished, RouteEvent, Token
from tierroute.router.scoring.decider import Decider
from tierroute.router.scoring.scored import Scored, Scoring
from tierroute.router.tiers.client import TierError, refused
from tierroute.router.tiers.pool import Replica, TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.validator.v1 import validator_service_pb2 as val_pb

Step = tier_pb.GenerateResponse | TierError | asyncio.Event


def answer(*words: str) -> list[Step]:
    """A tier's answer: a chunk per word (with a token log-prob each), then its summary."""
    chunks: list[Step] = [
        tier_pb.GenerateResponse(
            chunk=tier_pb.GenerateChunk(
                text=w, logprobs=[common_pb.TokenLogprob(token=w, logprob=-0.1)]
            )
        )
        for w in words
    ]
    done = tier_pb.GenerateComplete(
        prompt_tokens=5, completion_tokens=len(words), finish_reason=common_pb.FINISH_REASON_STOP
    )
    return [*chunks, tier_pb.GenerateResponse(complete=done)]


class Call:
    """One scripted generation: its steps in order; a TierError is raised, an Event waited on
    (a tier that hangs until it is set)."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[tier_pb.GenerateResponse]:
        for step in self.steps:
            if isinstance(step, TierError):
                raise step
            if isinstance(step, asyncio.Event):
                await step.wait()
                continue
            yield step

    def cancel(self) -> None:
        self.cancelled = True


class Client:
    """A tier replica that answers each call with the next script (else a plain answer)."""

    operation = "scripted/Generate"

    def __init__(self, name: str) -> None:
        self.address = f"scripted:{name}"
        self.scripts: deque[list[Step]] = deque()
        self.calls: list[tuple[tier_pb.GenerateRequest, Call]] = []

    def generate(
        self,
        request: tier_pb.GenerateRequest,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Call:
        call = Call(self.scripts.popleft() if self.scripts else answer(self.address))
        self.calls.append((request, call))
        return call

    async def describe(self, seconds: float | None) -> tier_pb.DescribeResponse:
        return tier_pb.DescribeResponse(model="scripted")

    def reachable(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class ScriptedDecider(Decider):
    """The real input checks, policy, selection and decision; the score is the test's."""

    value = 2.0

    async def score(self, text: str, bypass_cache: bool = False) -> Scoring:
        return Scoring(Scored(self.value, "", False), time.perf_counter(), "scripted", "scripted")


class ScriptedJudge(Judge):
    """The validator's verdicts, in order (then DELIVER); what it was asked, kept."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.verdicts: deque[int] = deque()
        self.asked: list[tuple[str, bool]] = []

    async def _call(
        self,
        tier: Any,
        request_id: str,
        prompt: str,
        answer: str,
        logprobs: list[common_pb.TokenLogprob],
        timeout: float,  # noqa: ASYNC109 - the real one's signature
        partial: bool,
    ) -> val_pb.ValidateResponse:
        self.asked.append((answer, partial))
        verdict = self.verdicts.popleft() if self.verdicts else val_pb.VERDICT_DELIVER
        reason = (
            val_pb.VALIDATION_REASON_LOW_CONFIDENCE
            if verdict == val_pb.VERDICT_ESCALATE
            else val_pb.VALIDATION_REASON_CONFIDENT
        )
        return val_pb.ValidateResponse(
            verdict=verdict, reason=reason, confidence=0.5, content=answer
        )


class Router:
    def __init__(
        self,
        small: dict[str, Any] | None = None,
        large: dict[str, Any] | None = None,
        **escalation: Any,
    ) -> None:
        self.cfg = make_config(
            {
                "router": {"complexity_threshold": 4.0},
                "tiers": [
                    {"name": "small", "address": "s:1", "model": "m", **(small or {})},
                    {"name": "large", "address": "l:1", "model": "m", **(large or {})},
                ],
                "escalation": {"min_confidence": 0.7, **escalation},
            }
        )
        self.small, self.large = Client("small"), Client("large")
        self.pool = TierPool(self.cfg)
        self.pool.replicas = {"small": [Replica(self.small)], "large": [Replica(self.large)]}
        self.decider = ScriptedDecider(self.cfg)
        self.judge = ScriptedJudge(self.cfg)
        self.flow = RouteFlow(self.cfg, self.decider, self.pool, self.judge)

    async def route(self, **fields: Any) -> list[RouteEvent]:
        request = pb.RouteRequest(prompt="What is the capital of France?", **fields)
        return [e async for e in self.flow.route(request, Deadline.after(60))]

    async def close(self) -> None:
        await self.judge.close()


def text(events: list[RouteEvent], tier: str | None = None) -> str:
    return "".join(e.text for e in events if isinstance(e, Token) and tier in (None, e.tier))


def summary(events: list[RouteEvent]) -> pb.RouteSummary:
    assert isinstance(events[0], Decided) and isinstance(events[-1], Finished)
    return events[-1].summary


async def test_an_unvalidated_tier_streams_live_and_is_delivered() -> None:
    router = Router()
    router.small.scripts.append(answer("Paris", " is", " it."))
    events = await router.route()
    await router.close()
    assert text(events) == "Paris is it." and summary(events).tier == "small"
    assert [type(e) for e in events] == [Decided, Token, Token, Token, Finished]
    assert router.large.calls == []


async def test_a_rejected_answer_is_never_sent_and_the_larger_tier_answers() -> None:
    router = Router({"validation": "logprob"})
    router.small.scripts.append(answer("Lyon"))
    router.large.scripts.append(answer("Paris"))
    router.judge.verdicts.append(val_pb.VERDICT_ESCALATE)
    events = await router.route()
    await router.close()
    assert text(events) == "Paris" and "Lyon" not in text(events)
    escalated = [e.escalation for e in events if isinstance(e, Escalated)]
    assert [(e.from_tier, e.to_tier, e.reason) for e in escalated] == [
        ("small", "large", pb.ESCALATION_REASON_LOW_CONFIDENCE)
    ]
    assert router.small.calls[0][0].logprobs, "a logprob tier is asked for its log-probs"
    assert summary(events).attempts[0].validation == pb.VALIDATION_STATUS_FAILED


def replica_calls(tier: str, outcome: str) -> float:
    labels = {"tier": tier, "replica": f"scripted:{tier}", "outcome": outcome}
    return REGISTRY.get_sample_value("tierroute_replica_calls_total", labels) or 0.0


async def test_a_tier_that_fails_before_answering_is_failed_over_and_counted() -> None:
    router = Router()
    router.small.scripts.append([TierError("unavailable", "connection refused")])
    before = replica_calls("small", "unavailable"), replica_calls("large", "ok")
    events = await router.route()
    await router.close()
    assert summary(events).tier == "large"
    assert summary(events).escalation_reason == pb.ESCALATION_REASON_TIER_FAILURE
    assert router.pool.breakers["small"]._consecutive == 1
    # Each replica's calls, by how they ended (which upstream fails, in Prometheus).
    assert replica_calls("small", "unavailable") - before[0] == 1
    assert replica_calls("large", "ok") - before[1] == 1


async def test_an_overloaded_tier_moves_the_request_on_without_a_breaker_failure() -> None:
    router = Router()
    router.small.scripts.append([TierError("overloaded", "busy", retry_after_s=2.0)])
    events = await router.route()
    await router.close()
    assert summary(events).tier == "large"
    assert summary(events).escalation_reason == pb.ESCALATION_REASON_TIER_OVERLOADED
    assert router.pool.breakers["small"]._consecutive == 0


async def test_a_tier_that_fails_after_tokens_ends_the_request_saying_how_much_was_sent() -> None:
    router = Router()
    router.small.scripts.append(
        [*answer("Paris")[:1], TierError("unavailable", "connection reset")]
    )
    sent: list[RouteEvent] = []
    request = pb.RouteRequest(prompt="What is the capital of France?")
    with pytest.raises(Unavailable, match="5 characters into its answer"):
        async for event in router.flow.route(request, Deadline.after(60)):
            sent.append(event)
    await router.close()
    assert text(sent) == "Paris" and router.large.calls == []


async def test_a_bad_request_is_the_clients_error_and_never_failed_over() -> None:
    router = Router()
    router.small.scripts.append([TierError("bad_request", "prompt too long for the context")])
    with pytest.raises(Exception, match="prompt too long") as caught:
        await router.route()
    await router.close()
    assert type(caught.value).__name__ == "InvalidArgument"
    assert router.large.calls == [] and router.pool.breakers["small"]._consecutive == 0


# How our tier service and vLLM's OpenAI server refuse a request longer than the model's window.
TOO_LONG = {
    "ours": "the prompt does not fit: 2100 prompt tokens + max_tokens 48 = 2148 > the model's "
    "context of 2048 tokens; shorten the prompt or lower max_tokens",
    "vllm": "Input length (2100) exceeds model's maximum context length (2048).",
    "vllm-engine": "The decoder prompt (length 2100) is longer than the maximum model length of "
    "2048. Make sure that `max_model_len` is no smaller than the number of text tokens.",
    "openai": "This model's maximum context length is 2048 tokens. However, your messages "
    "resulted in 2100 tokens. Please reduce the length of the messages.",
}


@pytest.mark.parametrize("server", sorted(TOO_LONG))
async def test_a_context_too_long_for_a_tier_moves_to_one_with_a_larger_window(
    server: str,
) -> None:
    # The small tier's config overstates its window (16384); each server names its own (2048).
    router = Router({"context_window": 16384}, {"context_window": 4096})
    router.small.scripts.append([refused(TOO_LONG[server], "HTTP 400")])
    events = await router.route()
    await router.close()
    assert summary(events).tier == "large" and text(events) == "scripted:large"
    assert summary(events).escalation_reason == pb.ESCALATION_REASON_CONTEXT_TOO_LONG
    assert router.pool.breakers["small"]._consecutive == 0, "the request's size, not a fault"


async def test_a_context_too_long_with_no_larger_window_is_the_clients_error() -> None:
    router = Router({"context_window": 2048}, {"context_window": 2048})
    router.small.scripts.append([refused(TOO_LONG["vllm"], "HTTP 400")])
    with pytest.raises(InvalidArgument, match="no tier with a larger context window") as caught:
        await router.route()
    await router.close()
    assert "maximum context length (2048)" in str(caught.value)
    assert router.large.calls == [] and router.pool.breakers["small"]._consecutive == 0


def test_other_refusals_stay_bad_requests() -> None:
    assert refused("top_p must be in (0, 1], got 1.5.", "HTTP 400").kind == "bad_request"
    unnamed = refused("context_length_exceeded", "HTTP 400")
    assert unnamed.kind == "too_long" and unnamed.window is None  # then the configured one


async def test_a_refusal_that_names_no_window_is_compared_by_the_configured_ones() -> None:
    router = Router({"context_window": 2048}, {"context_window": 8192})
    router.small.scripts.append([refused("context_length_exceeded", "HTTP 400")])
    events = await router.route()
    await router.close()
    assert summary(events).tier == "large"
    assert summary(events).escalation_reason == pb.ESCALATION_REASON_CONTEXT_TOO_LONG


async def test_a_stalled_tier_is_abandoned_and_the_larger_tier_answers() -> None:
    # The subject is the stall: a first-token timeout of 50 ms, against a tier that never
    # answers (an event nobody sets), so the outcome cannot depend on the machine's speed.
    router = Router(first_token_timeout_floor_ms=50, first_token_timeout_ceiling_ms=50)
    router.small.scripts.append([asyncio.Event()])
    events = await router.route()
    await router.close()
    assert summary(events).tier == "large" and text(events, "small") == ""
    assert router.small.calls[0][1].cancelled, "the stalled call is cancelled"
    assert router.pool.breakers["small"]._consecutive == 1


async def test_a_hedge_is_cancelled_and_charged_when_the_small_answer_is_delivered() -> None:
    router = Router({"validation": "logprob", "hedge_margin": 1.0})
    router.decider.value = 3.5  # within the margin of the small tier's bound (4.0)
    router.small.scripts.append(answer("Paris"))
    release = asyncio.Event()  # the large tier's answer never comes before the verdict
    router.large.scripts.append([release, *answer("Paris, France")])
    events = await router.route()
    await router.close()
    s = summary(events)
    assert s.tier == "small" and text(events) == "Paris"
    hedged = [a for a in s.attempts if a.hedged]
    assert [(a.tier, a.delivered) for a in hedged] == [("large", False)]
    assert router.large.calls[0][1].cancelled


async def test_a_hedge_answers_with_its_head_start_when_the_small_answer_is_rejected() -> None:
    router = Router({"validation": "logprob", "hedge_margin": 1.0})
    router.decider.value = 3.5
    router.small.scripts.append(answer("Lyon"))
    router.large.scripts.append(answer("Paris"))
    router.judge.verdicts.append(val_pb.VERDICT_ESCALATE)
    events = await router.route()
    await router.close()
    s = summary(events)
    assert s.tier == "large" and text(events) == "Paris"
    assert len(router.large.calls) == 1, "the hedge's call is the answer: no second call"
    assert s.attempts[-1].hedged and s.attempts[-1].delivered


async def test_prefix_commit_judges_the_first_tokens_then_streams_the_rest_live() -> None:
    router = Router({"validation": "logprob", "commit": "prefix", "commit_prefix_tokens": 2})
    router.small.scripts.append(answer("The", " capital", " is", " Paris."))
    events = await router.route()
    await router.close()
    assert router.judge.asked == [("The capital", True)], "judged once, on the prefix"
    assert [e.text for e in events if isinstance(e, Token)] == ["The capital", " is", " Paris."]
    assert summary(events).attempts[0].validation == pb.VALIDATION_STATUS_PASSED


async def test_a_client_that_leaves_cancels_the_tier_call_and_counts_no_failure() -> None:
    router = Router()
    router.small.scripts.append([*answer("Paris")[:1], asyncio.Event()])
    events = router.flow.route(pb.RouteRequest(prompt="hi"), Deadline.after(60))
    assert isinstance(await anext(events), Decided)
    assert isinstance(await anext(events), Token)
    await events.aclose()  # the client leaves mid-answer
    await router.close()
    assert router.small.calls[0][1].cancelled
    assert router.pool.breakers["small"]._consecutive == 0
    assert router.pool.slots["small"].in_flight == 0


def decisions(tier: str, reason: str) -> float:
    labels = {"tier": tier, "reason": reason}
    return REGISTRY.get_sample_value("tierroute_routing_decisions_total", labels) or 0.0


def fail(breaker: Any) -> None:
    """Open `breaker`: its threshold of consecutive failures."""
    for _ in range(breaker.cfg.failure_threshold):
        breaker.record(False, object())


async def test_a_tier_whose_breaker_is_open_is_passed_over_in_the_decision_itself() -> None:
    router = Router()
    fail(router.pool.breakers["small"])
    router.large.scripts.append(answer("Paris"))
    before = decisions("large", "circuit_open")
    events = await router.route()
    await router.close()
    # What the client is told is the decision as admitted, built once: large, and why.
    decided = events[0]
    assert isinstance(decided, Decided)
    assert decided.decision.tier == "large"
    # The score's own reason (below small's threshold), then admission's.
    assert list(decided.decision.reason_codes) == [
        pb.REASON_CODE_SCORE_BELOW_THRESHOLD,
        pb.REASON_CODE_CIRCUIT_OPEN,
    ]
    assert list(decided.decision.reasons) == ["circuit_open:small"]
    assert summary(events).tier == "large" and router.small.calls == []
    assert decisions("large", "circuit_open") - before == 1  # counted as it was made


async def test_tiers_the_validator_would_judge_are_passed_over_while_it_is_down() -> None:
    router = Router({"validation": "logprob"})
    fail(router.judge.breaker)
    router.large.scripts.append(answer("Paris"))
    events = await router.route()
    await router.close()
    decided = events[0]
    assert isinstance(decided, Decided) and decided.decision.tier == "large"
    assert list(decided.decision.reasons) == ["validator_unavailable:small"]
    assert router.small.calls == [] and summary(events).tier == "large"
    # Escalation off: a judged tier's answer would be delivered unjudged, so it is not skipped.
    router = Router({"validation": "logprob"})
    fail(router.judge.breaker)
    router.small.scripts.append(answer("Paris"))
    events = await router.route(disable_escalation=True)
    await router.close()
    assert summary(events).tier == "small"


async def test_no_tier_to_admit_is_unavailable_naming_each_tier_and_why() -> None:
    router = Router()
    fail(router.pool.breakers["small"])
    fail(router.pool.breakers["large"])
    with pytest.raises(Unavailable) as caught:
        await router.route()
    await router.close()
    assert "small (REASON_CODE_CIRCUIT_OPEN)" in str(caught.value)
    assert "large (REASON_CODE_CIRCUIT_OPEN)" in str(caught.value)
    assert "cooldown" in str(caught.value)
