"""The rules for sampling parameters, written once: the router checks a request by them before
any tier is called, and each tier checks what it is sent by the same rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from tierroute.core.errors import InvalidArgument

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
DEFAULT_TOP_P = 1.0


class _Sampling(Protocol):
    max_tokens: int
    temperature: float
    top_p: float
    stop: Sequence[str]

    def HasField(self, name: str) -> bool: ...


def check_sampling(
    s: _Sampling, default_temperature: float, max_tokens_limit: int | None = None
) -> tuple[float, float]:
    """The temperature and top_p to use (the request's, else the defaults). Raises
    InvalidArgument, saying what to fix, for anything no tier would accept."""
    temperature = s.temperature if s.HasField("temperature") else default_temperature
    top_p = s.top_p if s.HasField("top_p") else DEFAULT_TOP_P
    if math.isnan(temperature) or not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(f"sampling.temperature is {temperature:g}; use 0 to 2")
    if math.isnan(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"sampling.top_p is {top_p:g}; use a value in (0, 1]")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(
            f"sampling.stop has {len(s.stop)} strings; at most {MAX_STOP_STRINGS}"
        )
    if any(not stop for stop in s.stop):
        raise InvalidArgument("sampling.stop holds an empty string; remove it")
    if max_tokens_limit is not None and s.max_tokens > max_tokens_limit:
        raise InvalidArgument(
            f"sampling.max_tokens is {s.max_tokens}; the most a request may ask for is "
            f"{max_tokens_limit} (router.max_output_tokens, or the largest tier's context "
            "window); lower max_tokens"
        )
    return temperature, top_p


def check_logprobs(logprobs: bool, top_logprobs: int) -> None:
    if top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs is {top_logprobs}; at most {MAX_TOP_LOGPROBS}")
    if top_logprobs and not logprobs:
        raise InvalidArgument("top_logprobs needs logprobs: set logprobs to true")
