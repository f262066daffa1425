"""A clock of the test's own: whatever takes a `clock` (breakers, caches, limits, the pool)
reads `now`, which only the test moves. How busy the machine is cannot change what it reads."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
