"""Per-tier circuit breakers: stop sending requests to a tier that keeps failing, probe it again
after a cooldown.

closed -> open: `failure_threshold` consecutive failures, or an error rate of at least
`error_rate_threshold` over the last `window_seconds` once `min_requests` calls were made in it.
open -> half-open: `cooldown_seconds` after opening; one probe request is let through.
half-open -> closed on the probe's success, -> open (a new cooldown) on its failure.

Each request passes a `holder` (any object of its own): in half-open only the request that
took the probe settles the breaker or frees the probe; results of requests admitted before the
breaker opened, or never admitted (a forced tier), do not count then.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

from tierroute.core.config import BreakerConfig

logger = logging.getLogger(__name__)


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One tier's (or the validator's) breaker. Not thread-safe: used from the router's event
    loop only. `name` is how the logs call what it guards ("tier 'small'", "the validator")."""

    def __init__(
        self, name: str, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._clock = clock
        self._state = State.CLOSED
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._opened_at = 0.0
        self._probe: object | None = None  # the request holding the half-open probe

    @property
    def state(self) -> State:
        cooled = self._clock() - self._opened_at >= self.cfg.cooldown_seconds
        if self._state is State.OPEN and cooled:
            self._move(State.HALF_OPEN, "cooldown over; the next request probes the tier")
        return self._state

    def peek(self) -> State:
        """The state, as `state` would report it, without moving it (safe to read from another
        thread: the metrics scrape)."""
        state = self._state
        if state is State.OPEN and self._clock() - self._opened_at >= self.cfg.cooldown_seconds:
            return State.HALF_OPEN
        return state

    def allow(self, holder: object) -> bool:
        """Whether `holder` may send a request to this tier now; in half-open, it takes the
        one probe (if free)."""
        if not self.cfg.enabled:
            return True
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and self._probe is None:
            self._probe = holder
            return True
        return False

    def would_allow(self) -> bool:
        """What allow() would answer, without taking the half-open probe slot."""
        if not self.cfg.enabled:
            return True
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and self._probe is None)

    def release(self, holder: object) -> None:
        """`holder`'s request ended with no verdict on the tier (cancelled, bad input)."""
        if self._probe is holder:
            self._probe = None

    def record(self, success: bool, holder: object) -> None:
        if not self.cfg.enabled:
            return
        if self._state is State.HALF_OPEN and self._probe is not holder:
            return  # admitted before the breaker opened, or never admitted: not the probe
        now = self._clock()
        self._calls.append((now, not success))
        while self._calls and now - self._calls[0][0] > self.cfg.window_seconds:
            self._calls.popleft()
        self._consecutive = 0 if success else self._consecutive + 1
        if self._state is State.HALF_OPEN:
            self._probe = None
            if success:
                self._calls.clear()
                self._move(State.CLOSED, "the probe succeeded")
            else:
                self._open("the probe failed")
            return
        if self._state is not State.CLOSED or success:
            return
        if self._consecutive >= self.cfg.failure_threshold:
            self._open(f"{self._consecutive} consecutive failures")
            return
        failed = sum(f for _, f in self._calls)
        if len(self._calls) >= self.cfg.min_requests:
            rate = failed / len(self._calls)
            if rate >= self.cfg.error_rate_threshold:
                self._open(
                    f"{failed} of the last {len(self._calls)} calls failed "
                    f"(within {self.cfg.window_seconds:g} s)"
                )

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._move(State.OPEN, f"{why}; retrying in {self.cfg.cooldown_seconds:g} s")

    def _move(self, state: State, why: str) -> None:
        logger.warning(
            "circuit breaker for %s: %s -> %s (%s)",
            self.name,
            self._state.value,
            state.value,
            why,
        )
        self._state = state
