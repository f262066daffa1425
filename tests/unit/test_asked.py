"""What a message asks, apart from what it quotes (tierroute.core.asked): the question after a
pasted text, before it, outside a fenced block, under a marker; what stays whole (a word
problem, a question with its options, a chatty paragraph); and the kind of what was set aside."""

from __future__ import annotations

import pytest

from tierroute.core.asked import asked, is_ask, kind_of
from tierroute.core.prompts import normalize, routing_text

CONTRACT = (
    "Either party may terminate this lease by giving the other party written notice of not\n"
    "less than sixty days. Notice must be delivered by registered mail to the address listed in\n"
    "Schedule A. If the Tenant terminates early, the Tenant shall pay a fee of one month's rent."
)
LOG = (
    "2026-11-28 03:14:09 WARN orders db pool exhausted\n"
    "2026-11-28 03:14:11 ERROR orders timeout acquiring connection\n"
    "2026-11-28 03:14:11 ERROR api-gw status=503 latency=2107ms\n"
    "2026-11-28 03:14:12 INFO batch nightly-reconcile started"
)
TABLE = (
    "| Plan | Price | Users |\n|------|-------|-------|\n| Starter | $19 | 3 |\n"
    "| Team | $79 | 15 |\n| Business | $249 | 50 |"
)
CODE = "def add_item(item, items=[]):\n    items.append(item)\n    return items"


CHINESE = "\u89e3\u7ea6\u9700\u8981\u63d0\u524d\u591a\u5c11\u5929\u901a\u77e5\uff1f"


@pytest.mark.parametrize(
    ("template", "request_", "kind"),
    [
        ("{c}\n\n{r}", "How many days of notice are needed?", "prose"),
        ("{r}\n\n{c}", "What is the notice period?", "prose"),
        (LOG + "\n\n{r}", "Which request got a 503?", "log"),
        ("{r}\n\n" + TABLE, "Summarise this table.", "table"),
        ("{r}\n\n```python\n" + CODE + "\n```", "Rename items to basket.", "code"),
        ("Context:\n{c}\n\nQuestion: {r}", "is mail required?", "prose"),
        ('{r}\n"""\n{c}\n"""', "Which fee applies? The text:", "prose"),
        # one paragraph, hard-wrapped lines: the last line asks
        ("{c}\n{r}", "What fee does an early exit cost?", "prose"),
        # other languages
        ("{c}\n\n{r}", "\u00bfCu\u00e1ntos d\u00edas de preaviso hacen falta?", "prose"),
        ("{c}\n\n{r}", CHINESE, "prose"),
    ],
)
def test_the_question_is_told_apart_from_the_text_it_asks_about(
    template: str, request_: str, kind: str
) -> None:
    a = asked(normalize(template.format(c=CONTRACT, r=request_)))
    assert a.request == request_
    assert a.kind == kind and a.context_words > len(request_.split())


@pytest.mark.parametrize(
    "text",
    [
        # a word problem: one paragraph, its question depends on every sentence
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?",
        # a question with its answer options
        "Which of the following is TRUE for G?\nA. g = g^-1\nB. g = g^2\nC. G is finite\n"
        "D. none\nAnswer:",
        # a chatty paragraph: scored whole, its words are what the router learns from
        "Hey there! I hope your week is going well, mine has been long and the printer broke. "
        "Anyway, how do you spell 'congratulations'?",
        # two paragraphs, neither a short ask
        f"{CONTRACT}\n\n{CONTRACT}",
        # a short message
        "Prove that the square root of 2 is irrational.",
    ],
)
def test_what_has_no_separate_request_is_scored_whole(text: str) -> None:
    a = asked(normalize(text))
    assert a.request == normalize(text) and a.context == "" and a.kind == ""


def test_a_long_request_is_not_split_off_as_if_it_were_a_question() -> None:
    long_ask = "Explain " + "why this matters and what to do " * 12 + "?"
    a = asked(normalize(f"{CONTRACT}\n\n{long_ask}"))
    assert a.context == ""


def test_a_follow_up_keeps_the_turns_it_follows_in_its_request() -> None:
    class Turn:
        def __init__(self, role: str, content: str) -> None:
            self.role, self.content = role, content

    hard = "Implement a lock-free concurrent hash map with resizing in C++."
    chat = [Turn("user", hard), Turn("assistant", "..."), Turn("user", "And in Rust?")]
    a = asked(normalize(routing_text("", chat, 600)))
    assert a.request == f"And in Rust?\n\n{hard}" and a.context == ""
    # A last turn with its own pasted text is split as a message is; earlier turns join the ask.
    chat[-1] = Turn("user", f"{CONTRACT}\n\nHow many days of notice are needed?")
    a = asked(normalize(routing_text("", chat, 600)))
    assert a.request == f"How many days of notice are needed?\n\n{hard}"
    assert a.context == normalize(CONTRACT) and a.kind == "prose"


def test_asks_and_kinds() -> None:
    assert is_ask("Could you check this") and is_ask("Wie viele Tage?") and is_ask("translate it")
    assert not is_ask("The tenant pays the fee.")
    assert kind_of(LOG) == "log" and kind_of(TABLE) == "table" and kind_of(CODE) == "code"
    assert kind_of(CONTRACT) == "prose" and kind_of("") == ""


def test_normalize_folds_spaces_but_keeps_the_paragraphs() -> None:
    assert normalize("  a   b \n\n\n  c\t d\n e ") == "a b\n\nc d\ne"
    assert normalize("one line") == "one line"
