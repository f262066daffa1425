"""Per-client limits (route/limits.py) on a clock the test moves: the request rate, tokens per
minute charged when a request ends, requests in progress, and the retry delay each gives."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.clock import Clock
from tierroute.core.config import config_from_dict
from tierroute.core.errors import RETRY_PUSHBACK_KEY, Overloaded
from tierroute.router.route.limits import ClientLimits


def limits(clock: Clock, **router: Any) -> ClientLimits:
    cfg = config_from_dict(
        {"router": router, "tiers": [{"name": "t", "address": "127.0.0.1:1", "model": "m"}]}
    )
    return ClientLimits(cfg.router, clock)


def test_no_limits_configured_is_inactive() -> None:
    assert not limits(Clock()).active


def test_the_request_rate_is_a_bucket_per_client_with_a_retry_delay() -> None:
    clock = Clock()
    lim = limits(clock, client_limits={"requests_per_second": 2})
    lim.admit("a").done(0)
    lim.check_rate("a")  # the burst is 2
    with pytest.raises(Overloaded, match=r"client 'a' is over 2 requests per second") as caught:
        lim.admit("a")
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert dict(caught.value.trailing_metadata)[RETRY_PUSHBACK_KEY] == "500"
    lim.admit("b").done(0)  # another client is served
    clock.now += 0.5
    lim.admit("a").done(0)


def test_tokens_are_charged_when_a_request_ends_and_refill_over_the_minute() -> None:
    clock = Clock()
    lim = limits(
        clock,
        client_limits={"tokens_per_minute": 600},
        client_limits_overrides={"big": {"tokens_per_minute": 6000}},
    )
    ticket = lim.admit("a")
    lim.admit("a").done(0)  # admitted while the first is in progress: nothing charged yet
    ticket.done(900)  # 300 over
    with pytest.raises(Overloaded, match="used its 600 tokens per minute") as caught:
        lim.admit("a")
    assert caught.value.retry_after_s == pytest.approx(30.0)  # 300 tokens at 10 per second
    ticket.done(900)  # a second done is a no-op
    lim.admit("big").done(900)
    lim.admit("big").done(0)  # its own, larger, limit
    clock.now += 30.0
    lim.admit("a").done(0)


def test_requests_in_progress_are_capped_and_freed_when_they_end() -> None:
    lim = limits(Clock(), client_limits={"max_in_progress": 2})
    first, second = lim.admit("a"), lim.admit("a")
    with pytest.raises(Overloaded, match="2 requests in progress"):
        lim.admit("a")
    lim.admit("b").done(0)
    first.done(0)
    lim.admit("a").done(0)
    second.done(0)
