"""Hedging: a larger tier asked beside a smaller tier's held-back answer.

When a request's score lies close to the smaller tier's bound (its `hedge_margin`), the route
flow starts the next larger tier's Generate at once. Its responses are read into a buffer by
a task of their own. The smaller tier's commit decision settles the race: delivered, the
hedge is stopped (the tier's call cancelled) and what it generated so far is charged as a
`hedged` attempt; escalated, the larger tier answers from the buffer, with the head start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import TypeAlias

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import TierConfig
from tierroute.router.tiers.pool import Replica
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

Response: TypeAlias = tier_pb.GenerateResponse


class Hedge:
    """One larger tier's call, running ahead of being needed."""

    def __init__(
        self,
        tier: TierConfig,
        replica: Replica,
        call: AsyncGenerator[Response, None],
        release: Callable[[], None],
    ) -> None:
        self.tier = tier
        # Gives back the place the call holds within the tier's concurrency limit.
        self._release = release
        self.replica = replica
        self.started = time.perf_counter()
        self.tokens = 0
        self.used = False  # its responses were handed to an attempt
        self._queue: asyncio.Queue[Response | BaseException | None] = asyncio.Queue()
        replica.in_flight += 1
        self._task = asyncio.get_running_loop().create_task(self._pump(call), name="hedge")
        # However the task ends (even cancelled before it ever ran), its call is let go.
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._queue.put_nowait(None)  # the end of its responses
        self.replica.in_flight -= 1
        self._release()

    async def _pump(self, call: AsyncGenerator[Response, None]) -> None:
        try:
            async with contextlib.aclosing(call) as responses:
                async for response in responses:
                    if response.HasField("chunk"):
                        self.tokens += response.chunk.token_count
                    self._queue.put_nowait(response)
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # TierFailed: raised where the responses are read
            self._queue.put_nowait(failure)

    async def responses(self) -> AsyncGenerator[Response, None]:
        """The call's responses, those already received first; its failure raised as the
        call's own would be. Closing this early stops the call."""
        self.used = True
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop()

    def stop(self) -> None:
        """Cancel the call (a no-op once it has ended)."""
        self._task.cancel()

    async def lost(self) -> pb.TierAttempt:
        """Stop the call, and the attempt to charge for it: the tokens it generated so far."""
        self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return pb.TierAttempt(
            tier=self.tier.name,
            usage=common_pb.Usage(completion_tokens=self.tokens),
            cost_usd=self.tokens * self.tier.price_per_1k_output_usd / 1000.0,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            delivered=False,
            hedged=True,
        )
