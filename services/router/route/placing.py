"""A place for a request at a tier, within the tier's concurrency limit (tiers/slots.py): taken
at once, or waited for as long as the request can afford; then moved on or refused."""

from __future__ import annotations

import time

from tierroute.core.config import Config
from tierroute.core.errors import DeadlineExceeded, Overloaded
from tierroute.router import metrics
from tierroute.router.route.budgets import Deadline
from tierroute.router.tiers.pool import TierPool


async def place(
    cfg: Config, pool: TierPool, tier: str, can_move_on: bool, deadline: Deadline, first: bool
) -> bool:
    """A place at `tier`. Where a larger tier can take the request, it waits
    `escalation.queue_wait_ms` (False: move on); else it waits within the tier's budget, then
    is refused (Overloaded, with a retry hint)."""
    slots = pool.slots[tier]
    if slots.try_acquire():
        return True
    esc = cfg.escalation
    wait_ms = (
        esc.queue_wait_ms
        if can_move_on
        else esc.first_tier_timeout_ms
        if first
        else esc.escalation_timeout_ms
    )
    timeout, ours = deadline.budget(wait_ms, f"a place at tier {tier!r} came free")
    queued_at = time.perf_counter()
    try:
        placed = await slots.acquire(timeout)
    finally:
        metrics.QUEUE_SECONDS.labels(tier).observe(time.perf_counter() - queued_at)
    if placed or can_move_on:
        return placed
    if not ours:
        raise DeadlineExceeded(
            f"the client's deadline passed while the request waited for a place at tier "
            f"{tier!r} ({slots.in_flight} calls in flight, its limit {slots.limit()})"
        )
    metrics.OVERLOAD.labels(tier, "refused").inc()
    p95 = pool.first_token[tier].p95()
    retry_after = max(1.0, p95 or 1.0)
    raise Overloaded(
        f"tier {tier!r} is at its concurrency limit ({slots.limit()} calls in flight, "
        f"{slots.waiting} more waiting; tiers[{tier}].max_in_flight) and no place came free "
        f"within {timeout * 1000:.0f} ms; retry after {retry_after:.0f} s",
        retry_after_s=retry_after,
    )
