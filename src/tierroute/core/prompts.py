"""Validation of the prompt-or-messages input shared by every RPC that takes a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tierroute.core.asked import EARLIER_TURNS
from tierroute.core.errors import InvalidArgument, TooLarge

ROLES = ("system", "user", "assistant")


class _Message(Protocol):
    role: str
    content: str


def check_prompt(
    prompt: str, messages: Sequence[_Message], max_chars: int, max_messages: int | None = None
) -> None:
    """Raise InvalidArgument unless exactly one of prompt/messages is set and both are sane;
    TooLarge over `max_chars` characters or `max_messages` messages."""
    if prompt and messages:
        raise InvalidArgument("set either `prompt` or `messages`, not both")
    if not prompt and not messages:
        raise InvalidArgument("empty prompt: set `prompt` to the text, or `messages` to the chat")
    if prompt:
        if not prompt.strip():
            raise InvalidArgument("empty prompt: `prompt` holds only whitespace")
        if len(prompt) > max_chars:
            raise TooLarge(
                f"prompt too long: {len(prompt)} characters, the limit is {max_chars} "
                "(router.max_prompt_chars)"
            )
        return
    if max_messages is not None and len(messages) > max_messages:
        raise TooLarge(
            f"too many messages: {len(messages)}, the limit is {max_messages} "
            "(router.max_messages); send fewer turns"
        )
    total = 0
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role is {m.role!r}; use one of {', '.join(ROLES)}"
            )
        if not m.content.strip():
            raise InvalidArgument(f"messages[{i}].content is empty")
        total += len(m.content)
    if total > max_chars:
        raise TooLarge(
            f"prompt too long: the messages hold {total} characters, the limit is {max_chars} "
            "(router.max_prompt_chars)"
        )
    if not any(m.role == "user" for m in messages):
        raise InvalidArgument("messages need at least one turn with role 'user'")


def last_user_turn(prompt: str, messages: Sequence[_Message]) -> str:
    """The question asked: the prompt, or the last user turn."""
    if prompt:
        return prompt
    return next(m.content for m in reversed(messages) if m.role == "user")


def routing_text(prompt: str, messages: Sequence[_Message], context_chars: int = 0) -> str:
    """The text a routing decision is made on. A prompt: itself. Messages: the last user turn,
    then the user turns before it, newest first, while they add at most `context_chars`
    characters (the last one cut short), so that a short follow-up ("and in Rust?") is scored
    with what it follows (after the line `EARLIER_TURNS`, see `tierroute.core.asked`). The
    last turn comes first because the embedder reads only the start of its text
    (router.embed_max_tokens): a long question is scored on itself alone. System and assistant
    turns are not scored: they go to the tier, not to the router."""
    question = last_user_turn(prompt, messages)
    if prompt or context_chars <= 0:
        return question
    users = [m.content for m in messages if m.role == "user"]
    parts: list[str] = []
    room = context_chars
    for earlier in reversed(users[:-1]):
        if room <= 0:
            break
        parts.append(earlier[:room])
        room -= len(parts[-1])
    if not parts:
        return question
    # The marker keeps the earlier turns with the request when `asked` splits the last turn.
    return "\n\n".join([question, EARLIER_TURNS, *parts])


def normalize(text: str) -> str:
    """Whitespace-folded text, so trivially different spellings share a cache entry: spaces
    folded within each line, blank lines between paragraphs kept as one. The line breaks stay:
    they are how `tierroute.core.asked` tells a pasted text from the question about it."""
    out: list[str] = []
    blank = False
    for line in text.splitlines():
        folded = " ".join(line.split())
        if not folded:
            blank = True
            continue
        if blank and out:
            out.append("")
        out.append(folded)
        blank = False
    return "\n".join(out)
