"""How many requests each tier takes at once from this router, and the queue in front of it.

A tier's engine starts every request it is sent, but past some number in flight it cannot
start them in time: prefill queues behind prefill, every stream slows, and requests run into
their budgets while they wait inside the engine, where the router cannot tell waiting from
failing. So the router holds the queue itself: a tier takes at most `limit` calls at once, the
rest wait here in arrival order (the flow decides how long, and what happens after: route/flow.py).

The limit is the tier's `max_in_flight` (per replica, times its replicas) when configured;
otherwise it is measured (`AdaptiveLimit`): additive increase, multiplicative decrease on the
time to first token the router sees. A first token within the target (the first-token timeout's
floor, the time a healthy tier may take) while the limit was in use raises it (by one per answer
until the first overshoot, then by one per `limit` answers); a first token later than that
lowers it to three quarters, at most once per target interval (the answers already in flight
were admitted under the old limit).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

# The adaptive limit, per replica: where it starts and the most it may reach (vLLM's default
# max_num_seqs: the most sequences one engine schedules at once).
INITIAL_PER_REPLICA = 8
MAX_PER_REPLICA = 256
DECREASE = 0.75


class AdaptiveLimit:
    """A concurrency limit measured from time to first token (AIMD with a slow start)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        target_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.value = float(initial)
        self.maximum = float(maximum)
        self.target_s = target_s
        self._clock = clock
        self._slow_start = True
        self._decreased_at = -math.inf

    def observe(self, ttft_s: float, in_flight: int) -> None:
        """A call's first token came `ttft_s` after it started, with `in_flight` calls out."""
        if ttft_s > self.target_s:
            now = self._clock()
            if now - self._decreased_at >= self.target_s:
                self.value = max(1.0, self.value * DECREASE)
                self._decreased_at = now
                self._slow_start = False
            return
        if in_flight + 1 < math.floor(self.value):
            return  # the limit was not what held the tier back: nothing learned about it
        step = 1.0 if self._slow_start else 1.0 / self.value
        self.value = min(self.maximum, self.value + step)


class TierSlots:
    """One tier's places: at most `limit()` calls at once, the others waiting in order."""

    def __init__(self, tier: str, fixed: int | None, adaptive: AdaptiveLimit | None) -> None:
        assert (fixed is None) != (adaptive is None), "one limit: fixed or adaptive"
        self.tier = tier
        self.fixed = fixed
        self.adaptive = adaptive
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def limit(self) -> int:
        if self.fixed is not None:
            return self.fixed
        assert self.adaptive is not None
        return max(1, math.floor(self.adaptive.value))

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    def free(self) -> bool:
        """Whether a call could start now without waiting (nobody is ahead of it)."""
        return self.in_flight < self.limit() and not self.waiting

    def try_acquire(self) -> bool:
        """Take a place if one is free now (never ahead of a waiting request)."""
        if not self.free():
            return False
        self.in_flight += 1
        return True

    async def acquire(self, timeout_s: float | None) -> bool:
        """Take a place, waiting at most `timeout_s` (None: without bound) behind the requests
        already waiting; False if none came in time. Cancellation leaves no place taken."""
        if self.try_acquire():
            return True
        if timeout_s is not None and timeout_s <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return True  # handed a place just as the wait ran out: keep it
            waiter.cancel()
            return False
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a place, but the request went away: pass it on
            else:
                waiter.cancel()
            raise
        finally:
            self._drop_finished()
        return True

    def release(self) -> None:
        """A call ended: its place goes to the first waiting request, if the limit allows."""
        self.in_flight -= 1
        self._hand_out()

    def observe(self, ttft_s: float) -> None:
        """A first token arrived: an adaptive limit learns from it (it may now admit more)."""
        if self.adaptive is not None:
            self.adaptive.observe(ttft_s, self.in_flight)
            self._hand_out()

    def _hand_out(self) -> None:
        while self._waiters and self.in_flight < self.limit():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _drop_finished(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
