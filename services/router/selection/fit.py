"""Whether a request fits a tier's context window, counted as the tier will count it.

A tier whose model is a local folder with a `tokenizer.json` has its prompt counted with that
tokenizer (the `tokenizers` library, no model), plus an allowance for the chat template; any
other tier by an estimate of one token per three bytes of UTF-8. A prompt whose UTF-8 length
already fits needs no counting at all (a byte-level tokenizer never makes more tokens than
bytes), so short prompts cost nothing here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierroute.core import envelope
from tierroute.core.config import Config
from tierroute.core.errors import InvalidArgument, TooLarge

logger = logging.getLogger(__name__)

# What a chat template adds: a fixed part (a default system turn, the assistant's header) and
# a part per message (role markers). Generous for the templates of SmolLM2, Llama 3 and Qwen.
TEMPLATE_TOKENS = 48
MESSAGE_TOKENS = 8
BYTES_PER_TOKEN_ESTIMATE = 3


class _Message(Protocol):
    role: str
    content: str


@dataclass(frozen=True)
class Need:
    """What a request needs of one tier."""

    prompt_tokens: int  # counted where it decides whether the request fits, else estimated
    max_tokens: int
    fits: bool


class _Counter:
    """Counts one model's tokens in a list of texts."""

    def __init__(self, model: str) -> None:
        self.tokenizer = None
        path = Path(model) / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(path))
            self.tokenizer.no_truncation()
            self.tokenizer.no_padding()

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count(self, texts: Sequence[str]) -> int:
        if self.tokenizer is None:
            return sum(math.ceil(len(t.encode()) / BYTES_PER_TOKEN_ESTIMATE) for t in texts)
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return sum(len(e.ids) for e in encoded)


class Fit:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._by_model: dict[str, _Counter] = {}
        self._counters: dict[str, _Counter] = {}
        for tier in cfg.tiers:
            if tier.window() is not None:
                self._counter(tier.name)
        self._instruction = [envelope.INSTRUCTION]
        # router.max_prompt_tokens is counted as the largest tier counts.
        self._limit = cfg.router.max_prompt_tokens
        self._limit_counter = _Counter(cfg.tiers[-1].model) if self._limit and cfg.tiers else None

    def _counter(self, name: str) -> _Counter:
        """The counter of tier `name`'s tokens (made on first use: a window an upstream
        reports is learned after the router is built)."""
        if name not in self._counters:
            tier = self.cfg.tier(name)
            if tier.model not in self._by_model:
                self._by_model[tier.model] = _Counter(tier.model)
            self._counters[name] = counter = self._by_model[tier.model]
            if not counter.exact:
                logger.info(
                    "tier %s: no tokenizer.json in %r; its prompts are counted as one token "
                    "per %d bytes for its context window of %s",
                    name,
                    tier.model,
                    BYTES_PER_TOKEN_ESTIMATE,
                    tier.window(),
                )
        return self._counters[name]

    def check_tokens(self, prompt: str, messages: Sequence[_Message]) -> None:
        """TooLarge when the prompt has more tokens than router.max_prompt_tokens. A prompt of
        no more UTF-8 bytes than the limit is under it uncounted."""
        limit, counter = self._limit, self._limit_counter
        if limit is None or counter is None:
            return
        texts = [m.content for m in messages] if messages else [prompt]
        if sum(len(t.encode()) for t in texts) <= limit:
            return
        tokens = counter.count(texts)
        if tokens > limit:
            how = "" if counter.exact else f" (one per {BYTES_PER_TOKEN_ESTIMATE} bytes, estimated)"
            raise TooLarge(
                f"prompt too long: {tokens} tokens{how}, the limit is {limit} "
                "(router.max_prompt_tokens); shorten the prompt"
            )

    def needs(
        self, prompt: str, messages: Sequence[_Message], max_tokens: int = 0
    ) -> dict[str, Need]:
        """What the request needs of each tier: its prompt tokens (with the chat template),
        the answer's max_tokens (the request's, or the tier's default), and whether the two
        fit the tier's context window."""
        texts = [m.content for m in messages] if messages else [prompt]
        counted: dict[tuple[int, bool], int] = {}
        out: dict[str, Need] = {}
        for tier in self.cfg.tiers:
            answer = max_tokens or tier.max_tokens
            enveloped = tier.validation == "self_reported"
            tier_texts = [*self._instruction, *texts] if enveloped else texts
            extra = TEMPLATE_TOKENS + MESSAGE_TOKENS * len(tier_texts)
            size = sum(len(t.encode()) for t in tier_texts)
            estimate = math.ceil(size / 4) + extra  # for cost: about four bytes a token
            window = tier.window()
            if window is None:
                out[tier.name] = Need(estimate, answer, True)
            elif size + extra + answer <= window:  # fits whatever the exact count
                out[tier.name] = Need(estimate, answer, True)
            else:
                counter = self._counter(tier.name)
                key = (id(counter), enveloped)
                if key not in counted:
                    counted[key] = counter.count(tier_texts)
                tokens = counted[key] + extra
                out[tier.name] = Need(tokens, answer, tokens + answer <= window)
        return out

    def check_any(self, needs: dict[str, Need]) -> None:
        """InvalidArgument, saying what to fix, when the request fits no tier."""
        if any(n.fits for n in needs.values()):
            return
        parts = ", ".join(
            f"{name}: {n.prompt_tokens} prompt tokens + max_tokens {n.max_tokens} > "
            f"{self.cfg.tier(name).window()}"
            for name, n in needs.items()
        )
        raise InvalidArgument(
            f"the request fits no tier's context window ({parts}); shorten the prompt or "
            "lower max_tokens"
        )
