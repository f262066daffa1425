"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from tests.helpers.clock import Clock
from tierroute.core.config import BreakerConfig
from tierroute.router.tiers.breaker import CircuitBreaker, State

ME = object()  # the request in most steps


def breaker(**cfg: object) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker("small", BreakerConfig(**cfg), clock), clock  # type: ignore[arg-type]


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    b, _ = breaker(failure_threshold=3, min_requests=100)
    for _ in range(2):
        b.record(False, ME)
    b.record(True, ME)
    for _ in range(2):
        b.record(False, ME)
    assert b.state is State.CLOSED and b.allow(ME)
    b.record(False, ME)
    assert b.state is State.OPEN
    assert not b.allow(ME) and not b.would_allow()


def test_error_rate_over_the_window_opens_it_once_enough_calls_were_made() -> None:
    b, clock = breaker(failure_threshold=100, error_rate_threshold=0.5, min_requests=6)
    for success in (True, False, True, False, True):
        b.record(success, ME)
        clock.now += 1
    assert b.state is State.CLOSED, "5 calls: under min_requests"
    b.record(False, ME)  # 3 of 6 failed
    assert b.state is State.OPEN


def test_calls_older_than_the_window_do_not_count() -> None:
    b, clock = breaker(failure_threshold=100, min_requests=4, window_seconds=10)
    for _ in range(3):
        b.record(False, ME)  # under min_requests: stays closed
    clock.now += 11
    for _ in range(3):
        b.record(True, ME)
    b.record(False, ME)
    # Counting every call, 4 of 7 failed (over 0.5); within the window, 1 of 4.
    assert b.state is State.CLOSED


def test_half_open_lets_one_probe_through_and_closes_on_its_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b, clock = breaker(failure_threshold=1, cooldown_seconds=5)
    with caplog.at_level(logging.WARNING, logger="tierroute.router.breaker"):
        b.record(False, ME)
        clock.now += 4.9
        assert not b.allow(ME)
        clock.now += 0.2
        assert b.state is State.HALF_OPEN
        assert b.would_allow() and b.allow(ME), "the probe"
        assert not b.allow(ME) and not b.would_allow(), "only one probe at a time"
        b.record(True, ME)
    assert b.state is State.CLOSED and b.allow(ME)
    moves = [r.getMessage() for r in caplog.records]
    assert "closed -> open" in moves[0] and "1 consecutive failures" in moves[0]
    assert "open -> half_open" in moves[1]
    assert "half_open -> closed" in moves[2] and "the probe succeeded" in moves[2]


def test_a_failed_probe_reopens_it_for_a_new_cooldown() -> None:
    b, clock = breaker(failure_threshold=1, cooldown_seconds=5)
    b.record(False, ME)
    clock.now += 5
    assert b.allow(ME)
    b.record(False, ME)
    assert b.state is State.OPEN
    clock.now += 4
    assert not b.allow(ME)
    clock.now += 1
    assert b.allow(ME)


def test_a_released_probe_frees_the_slot_for_the_next_request() -> None:
    b, _ = breaker(failure_threshold=1, cooldown_seconds=0)
    b.record(False, ME)
    assert b.allow(ME) and not b.allow(ME)
    b.release(ME)  # the probe was cancelled by its client: no verdict
    assert b.state is State.HALF_OPEN and b.allow(ME)


def test_disabled_breaker_always_allows() -> None:
    b, _ = breaker(enabled=False, failure_threshold=1)
    for _ in range(10):
        b.record(False, ME)
    assert b.allow(ME) and b.state is State.CLOSED


def test_only_the_probe_holder_settles_a_half_open_breaker() -> None:
    b, clock = breaker(failure_threshold=1, cooldown_seconds=5)
    earlier, probe, forced = object(), object(), object()
    assert b.allow(earlier)  # admitted while closed
    b.record(False, ME)
    clock.now += 5
    assert b.allow(probe) and not b.allow(ME)
    b.record(True, earlier)  # a result from before the breaker opened: ignored
    b.release(forced)  # a request that never held the probe frees nothing
    assert b.state is State.HALF_OPEN and not b.would_allow()
    b.record(False, probe)
    assert b.state is State.OPEN
