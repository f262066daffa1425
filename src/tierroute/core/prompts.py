"""Validation of the prompt-or-messages input shared by every RPC that takes a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tierroute.core.errors import InvalidArgument, TooLarge

ROLES = ("system", "user", "assistant")


class _Message(Protocol):
    role: str
    content: str


def check_prompt(prompt: str, messages: Sequence[_Message], max_chars: int) -> None:
    """Raise InvalidArgument unless exactly one of prompt/messages is set and both are sane."""
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


def routing_text(prompt: str, messages: Sequence[_Message]) -> str:
    """The text a routing decision is made on: the prompt, or the last user turn."""
    if prompt:
        return prompt
    return next(m.content for m in reversed(messages) if m.role == "user")


def normalize(text: str) -> str:
    """Whitespace-folded text, so trivially different spellings share a cache entry."""
    return " ".join(text.split())
