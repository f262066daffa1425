"""The router's input limits (characters, messages, prompt tokens, max_tokens) and the text a
conversation is routed on. Each limit is refused with TooLarge or InvalidArgument naming the
setting to change; the real suite's HTTP statuses for them are in
tests/integration/router/test_http_front.py."""

from __future__ import annotations

from typing import Any

import pytest

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.asked import EARLIER_TURNS
from tierroute.core.config import config_from_dict
from tierroute.core.errors import InvalidArgument, TooLarge
from tierroute.core.prompts import routing_text
from tierroute.core.sampling import check_sampling
from tierroute.router.selection.decision import Decisions
from tierroute.router.selection.fit import BYTES_PER_TOKEN_ESTIMATE


def decider(windows: tuple[int, int] | None = None, **router: Any) -> Decisions:
    tiers = [
        {"name": "small", "address": "127.0.0.1:1", "model": "m", "max_score": 4},
        {"name": "large", "address": "127.0.0.1:2", "model": "m"},
    ]
    for tier, window in zip(tiers, windows or (), strict=False):
        tier["engine_args"] = {"max_model_len": window}
    return Decisions(
        config_from_dict({"router": {"listen": "127.0.0.1:0", **router}, "tiers": tiers})
    )


def turns(*texts: str) -> list[common_pb.ChatMessage]:
    roles = ["user", "assistant"]
    return [common_pb.ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(texts)]


def test_a_conversation_is_routed_on_its_last_turn_then_earlier_ones_within_a_budget() -> None:
    chat = turns("Prove that there are infinitely many primes.", "Suppose not...", "Why?")
    assert routing_text("", chat, 0) == "Why?"
    e = f"\n\n{EARLIER_TURNS}\n\n"
    assert routing_text("", chat, 256) == f"Why?{e}Prove that there are infinitely many primes."
    assert routing_text("", chat, 5) == f"Why?{e}Prove"  # the earlier turn is cut to the budget
    # Newest first, assistant turns never: they are the model's, not the user's.
    chat = turns("first question", "answer", "second question", "answer", "and now?")
    assert routing_text("", chat, 256) == f"and now?{e}second question\n\nfirst question"
    assert routing_text("", chat, 15) == f"and now?{e}second question"
    assert routing_text("a prompt", [], 256) == "a prompt"
    # The decider applies router.routing_context_chars.
    assert decider(routing_context_chars=0).check_input("", chat) == "and now?"
    assert decider().check_input("", chat).startswith(f"and now?{e}second question")


def test_too_many_messages_are_refused_with_the_setting_to_change() -> None:
    d = decider(max_messages=4)
    d.check_input("", turns("a", "b", "c", "d"))
    with pytest.raises(TooLarge, match=r"too many messages: 5, the limit is 4 \(router\.max_"):
        d.check_input("", turns("a", "b", "c", "d", "e"))


def test_a_prompt_over_the_token_limit_is_refused_and_one_under_it_uncounted() -> None:
    d = decider(max_prompt_tokens=100)
    d.check_input("word " * 60, [])  # 300 bytes: 100 tokens by the estimate (m: no tokenizer)
    with pytest.raises(TooLarge, match=r"the limit is 100 \(router.max_prompt_tokens\)") as caught:
        d.check_input("word " * 80, [])
    assert f"one per {BYTES_PER_TOKEN_ESTIMATE} bytes, estimated" in str(caught.value)
    with pytest.raises(TooLarge, match=r"router\.max_prompt_tokens"):
        d.check_input("", turns("word " * 40, "ok", "word " * 40))  # the messages together
    decider().check_input("word " * 6000, [])  # unset: the context windows are the bound


def test_characters_are_limited_over_all_messages() -> None:
    d = decider(max_prompt_chars=100)
    with pytest.raises(TooLarge, match=r"the messages hold 120 characters.*max_prompt_chars"):
        d.check_input("", turns("x" * 60, "y" * 60))


def test_max_tokens_over_the_cap_is_refused() -> None:
    sampling = common_pb.SamplingParams(max_tokens=5000)
    check_sampling(sampling, 0.7, None)
    with pytest.raises(InvalidArgument, match="the most a request may ask for is 4096"):
        check_sampling(sampling, 0.7, 4096)


def test_the_cap_on_max_tokens_is_the_setting_or_the_largest_context_window() -> None:
    assert decider().cfg.output_tokens_limit() is None  # no context configured, no setting
    assert decider(max_output_tokens=512).cfg.output_tokens_limit() == 512
    assert decider((2048, 8192), max_output_tokens=512).cfg.output_tokens_limit() == 512
    assert decider((2048, 8192)).cfg.output_tokens_limit() == 8192
    assert decider((2048,)).cfg.output_tokens_limit() is None  # large's window is unknown
