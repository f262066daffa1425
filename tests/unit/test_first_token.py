"""The first-token timeout: derived from the tier's measured time to first token, within the
configured floor and ceiling, and a stalled tier told apart from a busy one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tierroute.core.config import ConfigError, EscalationConfig, config_from_dict
from tierroute.router.route.stall import first_message as _first
from tierroute.router.tiers.pool import FirstTokenTimer
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

CFG = EscalationConfig(
    first_token_timeout_factor=4.0,
    first_token_timeout_floor_ms=200,
    first_token_timeout_ceiling_ms=2_000,
)


def test_the_ceiling_holds_until_enough_first_tokens_were_measured() -> None:
    timer = FirstTokenTimer(CFG)
    for _ in range(FirstTokenTimer.MIN_SAMPLES - 1):
        timer.observe(0.01)
        assert timer.timeout() == 2.0
    timer.observe(0.01)
    assert timer.timeout() == 0.2  # 4 x 10 ms is below the floor


def test_the_timeout_is_the_factor_times_the_p95_within_floor_and_ceiling() -> None:
    timer = FirstTokenTimer(CFG)
    for ms in range(10, 201, 10):  # 10..200 ms: p95 is 190 ms
        timer.observe(ms / 1000.0)
    assert timer.p95() == pytest.approx(0.19)
    assert timer.timeout() == pytest.approx(0.76)
    for _ in range(FirstTokenTimer.WINDOW):  # a slow spell fills the window: capped
        timer.observe(5.0)
    assert timer.timeout() == 2.0


def test_a_floor_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ConfigError, match="first_token_timeout_floor_ms"):
        config_from_dict(
            {
                "escalation": {
                    "first_token_timeout_floor_ms": 5000,
                    "first_token_timeout_ceiling_ms": 10,
                }
            }
        )


async def _never() -> AsyncIterator[tier_pb.GenerateResponse]:
    await asyncio.Event().wait()
    yield tier_pb.GenerateResponse()  # pragma: no cover


async def test_a_silent_tier_is_stalled_after_the_timeout() -> None:
    timer = FirstTokenTimer(CFG)
    loop = asyncio.get_running_loop()
    called = loop.time()
    with pytest.raises(TimeoutError):
        await _first(_never(), timer, called)
    assert loop.time() - called >= 2.0  # the ceiling: nothing measured yet


async def test_a_busy_tier_is_waited_for_while_it_answers_other_streams() -> None:
    """Its other streams send messages: the call waits far past the timeout for its first
    token. On a clock of the test's own, so how busy the machine is cannot matter."""
    timer = FirstTokenTimer(CFG)
    for _ in range(FirstTokenTimer.MIN_SAMPLES):
        timer.observe(0.01)
    timeout = timer.timeout()
    assert timeout == 0.2
    clock = [0.0]

    async def late() -> AsyncIterator[tier_pb.GenerateResponse]:
        # Other streams get a message every 100 ms; this one's first token comes after 5 s.
        while clock[0] < 5.0:
            clock[0] += 0.1
            timer.heard(clock[0])
            await asyncio.sleep(0.001)
        yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text="hi"))

    response = await _first(late(), timer, 0.0, clock=lambda: clock[0])
    assert response.chunk.text == "hi"
    assert timer.samples[-1] >= 5.0 > 20 * timeout


async def test_a_tier_silent_on_every_stream_is_stalled_though_it_answered_before() -> None:
    timer = FirstTokenTimer(CFG)
    for _ in range(FirstTokenTimer.MIN_SAMPLES):
        timer.observe(0.01)
    clock = [0.0]
    timer.heard(0.0)

    async def silent() -> AsyncIterator[tier_pb.GenerateResponse]:
        while True:
            clock[0] += 0.1  # time passes, nothing is heard
            await asyncio.sleep(0.001)
            if clock[0] > 60:  # pragma: no cover - the test would fail below
                break
        yield tier_pb.GenerateResponse()

    with pytest.raises(TimeoutError):
        await _first(silent(), timer, 0.0, clock=lambda: clock[0])
    assert clock[0] < 60  # given up while the tier was silent, not at the end of the stream


async def test_waiting_messages_keep_a_queued_call_from_being_taken_as_stalled() -> None:
    """The tier says `waiting` every second while a request is queued behind others: heard,
    so not stalled, and not the first token either."""
    timer = FirstTokenTimer(CFG)
    for _ in range(FirstTokenTimer.MIN_SAMPLES):
        timer.observe(0.01)
    clock = [0.0]

    async def queued() -> AsyncIterator[tier_pb.GenerateResponse]:
        for _ in range(50):  # 5 s of waiting, 25 times the 0.2 s timeout
            clock[0] += 0.1
            await asyncio.sleep(0.001)
            yield tier_pb.GenerateResponse(waiting=tier_pb.GenerateWaiting(engine_requests=9))
        yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text="hi"))

    response = await _first(queued(), timer, 0.0, clock=lambda: clock[0])
    assert response.chunk.text == "hi"
    assert timer.samples[-1] >= 4.9  # the first token's time, the wait included
