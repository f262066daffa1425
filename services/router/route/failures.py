"""How a tier's failure reads: `TierFailed` (whose fault, how much had reached the client) and
the error that ends a request no other tier could take over (`error_for`)."""

from __future__ import annotations

from tierroute.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Overloaded,
    ServiceError,
    Unavailable,
)
from tierroute.router.route.state import PARTIAL_SUMMARY_KEY, Outcome
from tierroute.router.tiers.client import TierError


class TierFailed(Exception):
    """A tier call failed; `sent_chars` is how much of its answer had reached the client.

    `overloaded`: the tier refused the call for load, or our own budget ran out while the
    tier, answering other streams all along, had not yet answered this one: the request waited
    in the tier's queue. That is load, not failure: the breaker does not count it and the
    replica is not ejected for it; the request may still move to a larger tier.
    """

    def __init__(self, tier: str, error: TierError, budget: bool, busy: bool = False) -> None:
        super().__init__(f"tier {tier!r} failed: {error}")
        self.error = error
        self.budget = budget
        self.sent_chars = 0
        kind = error.kind
        self.overloaded = kind == "overloaded" or (kind == "deadline" and budget and busy)
        # A deadline from our own per-tier budget is the tier's fault; the client's is not.
        self.tier_fault = not self.overloaded and (
            kind in ("unavailable", "stalled") or (kind == "deadline" and budget)
        )


def error_for(failure: TierFailed, outcome: Outcome) -> ServiceError:
    """The error that ends a request whose tier failed and that no other tier can take."""
    kind = failure.error.kind
    if kind == "bad_request":
        return InvalidArgument(failure.error.message or str(failure))
    if kind == "too_long":
        return InvalidArgument(
            f"{failure}; no tier with a larger context window could take the request: shorten "
            "the prompt or lower max_tokens (a tier's context_window larger than its server's "
            "own makes the router send it requests that server refuses)"
        )
    if failure.overloaded and not failure.sent_chars:
        return Overloaded(
            f"{failure}: the tier is overloaded and no other tier could take the request; "
            f"retry after {failure.error.retry_after_s or 1.0:g} s",
            retry_after_s=failure.error.retry_after_s or 1.0,
        )
    error = DeadlineExceeded if kind == "deadline" else Unavailable
    if failure.sent_chars:
        return error(
            f"{failure}, {failure.sent_chars} characters into its answer: the answer is incomplete",
            outcome.partial(),
            grpc_note=" (the chunks sent are what was delivered; the partial summary is in the "
            f"trailing metadata {PARTIAL_SUMMARY_KEY!r})",
        )
    if error is DeadlineExceeded:
        if failure.budget:
            return error(
                f"{failure}: it did not finish within its budget "
                "(escalation.first_tier_timeout_ms, or escalation_timeout_ms after an "
                "escalation) and no other tier could take over"
            )
        return error(f"{failure}; the client's deadline passed")
    return error(f"{failure}; no other tier could serve the request")
