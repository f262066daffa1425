"""A tier's concurrency limit and the queue in front of it (tiers/slots.py): places handed out
in arrival order, waits that end without leaking a place, and the limit measured from first
tokens. Time is the test's own clock; waits end by events, never by elapsed time."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.clock import Clock
from tierroute.router.tiers.slots import AdaptiveLimit, TierSlots


def fixed(n: int) -> TierSlots:
    return TierSlots("small", n, None)


async def test_places_are_handed_out_in_arrival_order_as_calls_end() -> None:
    slots = fixed(1)
    assert slots.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await slots.acquire(None)
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert slots.waiting == 2 and not slots.free()
    slots.release()
    await first
    assert order == ["first"] and slots.in_flight == 1
    slots.release()
    await second
    assert order == ["first", "second"] and slots.in_flight == 1 and slots.waiting == 0


async def test_a_request_does_not_jump_the_queue() -> None:
    slots = fixed(1)
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, not left free for a newcomer
    assert not slots.try_acquire()
    assert await waiter and slots.in_flight == 1


async def test_a_zero_wait_returns_at_once_when_full() -> None:
    slots = fixed(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert await slots.acquire(0) is False
    assert slots.in_flight == 2 and slots.waiting == 0


async def test_a_cancelled_waiter_takes_no_place_and_one_handed_a_place_passes_it_on() -> None:
    slots = fixed(1)
    assert slots.try_acquire()
    gone = asyncio.create_task(slots.acquire(None))
    stays = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release()
    assert await stays and slots.in_flight == 1
    # Handed a place in the same step as it is cancelled: the place goes to the next.
    late = asyncio.create_task(slots.acquire(None))
    nxt = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    slots.release()  # hands the place to `late`...
    late.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await late
    assert await nxt and slots.in_flight == 1


def test_the_adaptive_limit_grows_while_first_tokens_are_on_time_and_the_limit_binds() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, 10, target_s=2.0, clock=clock)
    limit.observe(0.5, in_flight=0)  # far below the limit: nothing learned
    assert limit.value == 4
    for _ in range(3):  # slow start: one more per on-time answer at the limit
        limit.observe(0.5, in_flight=int(limit.value) - 1)
    assert limit.value == 7
    for _ in range(20):
        limit.observe(0.5, in_flight=int(limit.value))
    assert limit.value == 10  # capped


def test_the_adaptive_limit_falls_on_late_first_tokens_at_most_once_per_target() -> None:
    clock = Clock()
    limit = AdaptiveLimit(16, 64, target_s=2.0, clock=clock)
    limit.observe(5.0, in_flight=16)
    assert limit.value == 12
    limit.observe(5.0, in_flight=12)  # admitted under the old limit: not counted again
    assert limit.value == 12
    clock.advance(2.0)
    limit.observe(5.0, in_flight=12)
    assert limit.value == 9
    # After a decrease, growth is additive: about one per `limit` on-time answers.
    for _ in range(9):
        limit.observe(0.5, in_flight=9)
    assert 9.9 < limit.value < 10.1
    for _ in range(50):
        clock.advance(2.0)
        limit.observe(60.0, in_flight=1)
    assert limit.value == 1.0  # never below one


async def test_an_adaptive_limit_that_grows_admits_a_waiter() -> None:
    slots = TierSlots("small", None, AdaptiveLimit(1, 8, target_s=2.0, clock=Clock()))
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    assert slots.waiting == 1
    slots.observe(0.1)  # on time, at the limit: the limit grows to 2 and the waiter is in
    assert await waiter and slots.in_flight == 2 and slots.limit() == 2
