"""Deadlines without a transport: the client's deadline as an absolute time, and the budget
each step may take under it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tierroute.core.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """When the client stops waiting (time.monotonic()), or None for no deadline."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def budget(self, budget_ms: float, what: str) -> tuple[float, bool]:
        """Seconds the next step (`what`) may take: our budget, capped by the client's
        deadline; and whether our budget (not the client's deadline) is what binds."""
        budget = budget_ms / 1000.0
        remaining = self.remaining()
        if remaining is not None:
            if remaining <= 0:
                raise DeadlineExceeded(f"the client's deadline passed before {what}")
            if remaining < budget:
                return remaining, False
        return budget, True
