"""Shadow mode: what routing costs in quality, measured on the operator's own traffic.

A configured fraction (`shadow.fraction`) of the answers a tier below the large one delivered
are asked of the large (last) tier again (the same messages and sampling), in the background,
once the user's request has ended: the user's answer is never delayed or changed. Shadow calls
are the lowest priority work the router does:

- at most `shadow.max_in_flight` run at once; an answer offered beyond that is dropped
  (reason `budget`);
- none starts while `shadow.busy_in_flight` live tier calls are in progress (on the large tier,
  or on any tier with `shadow.yield_to: any`, for tiers that share hardware), reason `busy`;
  and one that runs is cancelled the moment a live call makes it so (reason `preempted`);
- none is sent to a large tier whose breaker is open or that cannot be reached (`tier_down`),
  and a call that fails (`failed`) touches neither the breakers nor the measured figures the
  router routes on: shadow traffic can neither open a circuit nor slow a decision.

The two answers are compared exactly (case, spacing and end punctuation folded) when both are
short (`shadow.exact_max_chars`), otherwise by the cosine similarity of their embeddings (the
router's embedder); they agree at `shadow.min_similarity` or above. Per band of the complexity
score (`BANDS`) the metrics count agreements, and `1 - agreement` is the estimated regret: the
share of the band's small-tier answers the large tier would have answered differently (an upper
bound on the quality routing gave up there, taking the large tier as right). Each comparison
lands on the request's row of the routing log, where `tierroute calibrate --from-log` reads it
as a label and `tierroute report` shows agreement per band.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tierroute.core.config import Config
from tierroute.router import metrics
from tierroute.router.tiers.client import TierError
from tierroute.router.tiers.pool import TierPool
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

logger = logging.getLogger(__name__)

# Bands of the complexity score (0-10) that agreement and regret are reported by.
BANDS = ((0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0))
UNSCORED = "unscored"
_FOLD = re.compile(r"\s+")
_END = " .!?;:,\"'`*"


def band(score: float | None) -> str:
    """The name of the band `score` falls in ("4-6"); UNSCORED without a score."""
    if score is None:
        return UNSCORED
    for low, high in BANDS:
        if score < high:
            return f"{low:g}-{high:g}"
    low, high = BANDS[-1]
    return f"{low:g}-{high:g}"


def fold(answer: str) -> str:
    """An answer as exact comparison sees it: case, runs of spacing, end punctuation folded."""
    return _FOLD.sub(" ", answer).strip().strip(_END).casefold()


@dataclass(frozen=True)
class Comparison:
    """How the small tier's answer compared with the large tier's."""

    tier: str  # the large tier that answered in the shadow
    method: str  # "exact" or "embedding"
    similarity: float  # 1 or 0 for exact; the cosine similarity for embedding
    agreed: bool
    band: str


def compare(
    small: str,
    large: str,
    exact_max_chars: int,
    min_similarity: float,
    embed: Callable[[list[str]], np.ndarray],
) -> tuple[str, float, bool]:
    """(method, similarity, agreed) for two answers (see the module's docstring)."""
    a, b = fold(small), fold(large)
    if max(len(a), len(b)) <= exact_max_chars:
        same = a == b
        return "exact", float(same), same
    if a == b:  # no need to embed what is the same text
        return "embedding", 1.0, True
    vectors = np.asarray(embed([small, large]), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    similarity = float(vectors[0] @ vectors[1] / max(float(norms[0] * norms[1]), 1e-12))
    similarity = min(max(similarity, -1.0), 1.0)
    return "embedding", similarity, similarity >= min_similarity


class Shadow:
    """Runs the shadow calls of one router (RouteFlow offers it every answer it ends)."""

    def __init__(
        self,
        cfg: Config,
        pool: TierPool,
        generate_request: Callable[[pb.RouteRequest, str], tier_pb.GenerateRequest],
        embed: Callable[[list[str]], np.ndarray],
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg.shadow
        self.pool = pool
        self.large = cfg.tiers[-1].name if cfg.tiers else ""
        self._generate_request = generate_request
        self.embed = embed
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Comparison | None]] = set()
        self._closed = False

    @property
    def on(self) -> bool:
        return self.cfg.fraction > 0 and bool(self.large)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def _live(self) -> int:
        """Live tier calls in progress that shadow calls give way to."""
        tiers = [self.large] if self.cfg.yield_to == "large" else list(self.pool.replicas)
        return sum(r.in_flight for t in tiers for r in self.pool.replicas[t])

    def live_call_started(self, tier: str) -> None:
        """A live call to `tier` has started (the flow calls this): shadow calls that now
        stand in its way are cancelled."""
        if not self._tasks or (self.cfg.yield_to == "large" and tier != self.large):
            return
        if self._live() >= self.cfg.busy_in_flight:
            for task in list(self._tasks):
                if task.cancel():
                    metrics.SHADOW_DROPPED.labels("preempted").inc()

    def offer(
        self,
        request: pb.RouteRequest,
        answer: str,
        answered_by: str,
        score: float | None,
        done: Callable[[Comparison | None], None],
    ) -> bool:
        """Offer an answer `answered_by` delivered for the request. False: not shadowed (not
        sampled, or dropped; counted), and `done` is not called. True: a shadow call was
        started, and `done` is called once, with the comparison or None (it failed, or was
        cancelled)."""
        if (
            not self.on
            or self._closed
            or not answer
            or answered_by in ("", self.large)
            or self._rng.random() >= self.cfg.fraction
        ):
            return False
        reason = ""
        if len(self._tasks) >= self.cfg.max_in_flight:
            reason = "budget"
        elif self._live() >= self.cfg.busy_in_flight:
            reason = "busy"
        elif self.pool.skip_reason(self.large, None) is not None:
            reason = "tier_down"
        if reason:
            metrics.SHADOW_DROPPED.labels(reason).inc()
            return False
        task = asyncio.create_task(self._run(request, answered_by, answer, score))
        self._tasks.add(task)

        def finished(task: asyncio.Task[Comparison | None]) -> None:
            # Here, not in the task: a task cancelled before it ran never runs its finally.
            self._tasks.discard(task)
            failed = task.cancelled() or task.exception() is not None
            if not task.cancelled() and task.exception() is not None:
                logger.error("shadow comparison failed", exc_info=task.exception())
            done(None if failed else task.result())

        task.add_done_callback(finished)
        return True

    async def _run(
        self, request: pb.RouteRequest, answered_by: str, answer: str, score: float | None
    ) -> Comparison | None:
        metrics.SHADOW_IN_FLIGHT.inc()
        try:
            large = await self._ask_large(self._generate_request(request, answered_by))
            if large is None:
                return None
            method, similarity, agreed = await asyncio.to_thread(
                compare, answer, large, self.cfg.exact_max_chars, self.cfg.min_similarity,
                self.embed,
            )  # fmt: skip
        finally:
            metrics.SHADOW_IN_FLIGHT.dec()
        comparison = Comparison(self.large, method, similarity, agreed, band(score))
        metrics.shadowed(comparison.band, agreed, similarity)
        logger.debug(
            "shadow: %s %s (%s similarity %.3f, score band %s)",
            self.large,
            "agrees" if agreed else "disagrees",
            method,
            similarity,
            comparison.band,
        )
        return comparison

    async def _ask_large(self, generate: tier_pb.GenerateRequest) -> str | None:
        """The large tier's answer to `generate`, or None (the call failed: counted)."""
        replica = self.pool.pick(self.large)
        if replica is None:
            metrics.SHADOW_DROPPED.labels("tier_down").inc()
            return None
        parts: list[str] = []
        attributes: dict[str, str | int | float | bool] = {
            "tierroute.tier": self.large,
            "tierroute.shadow": True,
        }
        started = time.perf_counter()
        client = replica.client
        with telemetry.client_span(client.operation, __name__, attributes) as (span, headers):
            call = client.generate(generate, self.cfg.timeout_seconds, headers)
            try:
                async for response in call:
                    if response.HasField("chunk"):
                        parts.append(response.chunk.text)
            except TierError as error:
                metrics.SHADOW_DROPPED.labels("failed").inc()
                logger.info("shadow call to %s failed (%s): not compared", self.large, error)
                return None
            finally:
                call.cancel()
            span.set_attribute("tierroute.shadow.ms", (time.perf_counter() - started) * 1000)
        return "".join(parts)

    async def close(self) -> None:
        """Cancel the shadow calls in flight (their requests' rows are still recorded)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            if task.cancel():
                metrics.SHADOW_DROPPED.labels("shutdown").inc()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
