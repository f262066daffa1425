"""The stall check on a tier call: a tier that sent no first token in time, and nothing on any
of its streams meanwhile, is stalled (a failure); one that answers other streams is busy, and
the call keeps waiting within its budget (tiers/pool.py's FirstTokenTimer measures both)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from tierroute.router.tiers.client import TierError
from tierroute.router.tiers.pool import FirstTokenTimer
from tierroute.tier.v1 import tier_service_pb2 as tier_pb


async def first_message(
    responses: AsyncIterator[tier_pb.GenerateResponse],
    timer: FirstTokenTimer,
    called: float,
    clock: Callable[[], float] = time.monotonic,
) -> tier_pb.GenerateResponse:
    """The call's first message (not a `waiting` one); TimeoutError once the tier counts as
    stalled (nothing on any of its streams, `waiting` messages included, for the first-token
    timeout), never merely because it is busy."""
    reading = asyncio.ensure_future(anext(responses))
    try:
        while True:
            now = clock()
            if timer.stalled(now, now - called):
                raise TimeoutError
            # Until the timeout is reached, or until it would be reached by the tier's silence.
            wait = max(
                timer.timeout() - (now - called), timer.timeout() - (now - timer.last_message)
            )
            done, _ = await asyncio.wait({reading}, timeout=max(wait, 0.01))
            if done:
                response = reading.result()
                now = clock()
                timer.heard(now)
                if response.HasField("waiting"):  # queued in a busy engine: keep waiting
                    reading = asyncio.ensure_future(anext(responses))
                    continue
                timer.observe(now - called)
                return response
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading


def stalled(timer: FirstTokenTimer) -> TierError:
    """What a tier that sent no first token in time counts as: a stall."""
    p95 = timer.p95()
    measured = "none measured yet" if p95 is None else f"its recent p95 is {p95 * 1000:.0f} ms"
    return TierError(
        "stalled",
        f"no first token within {timer.timeout() * 1000:.0f} ms and no message "
        f"on any of its streams meanwhile ({measured}; escalation.first_token_timeout_*): "
        "taken as stalled",
        label="UNAVAILABLE",
    )


async def prepend(
    first: tier_pb.GenerateResponse, rest: AsyncIterator[tier_pb.GenerateResponse]
) -> AsyncIterator[tier_pb.GenerateResponse]:
    yield first
    async for response in rest:
        yield response
