"""The tier pool: a tier's replicas (a channel each) and its circuit breaker, and which tier
and which replica can take a request.

A tier whose breaker is open, or none of whose replicas can be reached, is passed over. Each
request passes a `holder` (an object of its own): in half-open, the breaker's one probe belongs
to the request that took it (breaker.py). The pool also measures each tier's time to first
token, from which a stalled tier is told from a busy one (`first_token_timeout`).

Within a tier, a request goes to the replica with the fewest requests in flight. A replica that
fails `replica_ejection_failures` times in a row is ejected for `replica_ejection_seconds`,
doubled at each ejection that follows a failed probe, up to `replica_ejection_max_seconds`
(outlier ejection, as Envoy does); once that time has passed it takes requests again, and its
first success clears its record. The flow retries a call on another replica when the tier
failed before answering anything (route/attempt.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from tierroute.core.config import Config, EscalationConfig
from tierroute.router.tiers.breaker import CircuitBreaker
from tierroute.router.tiers.client import TierClient, connect
from tierroute.router.tiers.slots import (
    INITIAL_PER_REPLICA,
    MAX_PER_REPLICA,
    AdaptiveLimit,
    TierSlots,
)
from tierroute.router.v1 import router_service_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    """One process serving a tier: its client (tiers/client.py) and its record."""

    client: TierClient
    in_flight: int = 0
    failures: int = 0  # in a row
    ejections: int = 0  # in a row, without a success between
    ejected_until: float = -math.inf  # time.monotonic()

    @property
    def address(self) -> str:
        return self.client.address

    def reachable(self) -> bool:
        return self.client.reachable()


class FirstTokenTimer:
    """How long a call to one tier may wait for its first token before the tier counts as
    stalled, told apart from a busy tier: a tier that sent anything on any stream within that
    time is busy, and the call keeps waiting (within its budget); a tier that sent nothing on
    any stream is stalled."""

    # Answers remembered, and how many are needed before the measurement is trusted.
    WINDOW = 64
    MIN_SAMPLES = 5

    def __init__(self, cfg: EscalationConfig) -> None:
        self.cfg = cfg
        self.samples: deque[float] = deque(maxlen=self.WINDOW)
        self.last_message = -math.inf  # time.monotonic() of the tier's latest message

    def observe(self, seconds: float) -> None:
        """A first token arrived `seconds` after the call."""
        self.samples.append(seconds)

    def heard(self, now: float) -> None:
        """The tier sent a message (on any stream)."""
        self.last_message = now

    def p95(self) -> float | None:
        if len(self.samples) < self.MIN_SAMPLES:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def timeout(self) -> float:
        """Seconds to wait for the first token: factor x p95, within [floor, ceiling]; the
        ceiling until enough first tokens were measured."""
        floor = self.cfg.first_token_timeout_floor_ms / 1000.0
        ceiling = self.cfg.first_token_timeout_ceiling_ms / 1000.0
        p95 = self.p95()
        if p95 is None:
            return ceiling
        return min(ceiling, max(floor, self.cfg.first_token_timeout_factor * p95))

    def stalled(self, now: float, waited: float) -> bool:
        """Whether a call that has waited `waited` seconds for its first token should give up:
        the timeout has passed and the tier has sent nothing on any stream for that long."""
        timeout = self.timeout()
        return waited >= timeout and now - self.last_message >= timeout


class TierPool:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        # Every tier is a list of replicas: its `address`, then its `replicas`.
        self.replicas: dict[str, list[Replica]] = {}
        for t in cfg.tiers:
            self.replicas[t.name] = []
            for address in t.dial_addresses():
                self.replicas[t.name].append(Replica(connect(t, address, cfg.tls)))
        self.breakers = {
            t.name: CircuitBreaker(f"tier {t.name!r}", cfg.circuit_breaker) for t in cfg.tiers
        }
        self.first_token = {t.name: FirstTokenTimer(cfg.escalation) for t in cfg.tiers}
        target_s = cfg.escalation.first_token_timeout_floor_ms / 1000.0
        self.slots: dict[str, TierSlots] = {}
        for t in cfg.tiers:
            n = len(t.dial_addresses())
            if t.max_in_flight is not None:
                self.slots[t.name] = TierSlots(t.name, t.max_in_flight * n, None)
            else:
                adaptive = AdaptiveLimit(
                    INITIAL_PER_REPLICA * n, MAX_PER_REPLICA * n, target_s, clock
                )
                self.slots[t.name] = TierSlots(t.name, None, adaptive)

    async def close(self) -> None:
        for replicas in self.replicas.values():
            for replica in replicas:
                await replica.client.close()

    def pick(self, tier: str, tried: Collection[Replica] = ()) -> Replica | None:
        """The replica of `tier` the next call goes to: of those not `tried` and not ejected,
        the one with the fewest calls in flight (reachable ones first); None if none is left."""
        now = self.clock()
        candidates = [r for r in self.replicas[tier] if r not in tried and r.ejected_until <= now]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        return min(candidates, key=lambda r: (not r.reachable(), r.in_flight))

    def replica_result(self, tier: str, replica: Replica, success: bool) -> None:
        """How a call to `replica` ended (a tier fault, or not)."""
        if success:
            replica.failures = replica.ejections = 0
            return
        replica.failures += 1
        b = self.cfg.circuit_breaker
        if replica.failures < b.replica_ejection_failures or len(self.replicas[tier]) == 1:
            return
        seconds = min(
            b.replica_ejection_seconds * 2**replica.ejections, b.replica_ejection_max_seconds
        )
        replica.ejections += 1
        replica.failures = 0
        replica.ejected_until = self.clock() + seconds
        logger.warning(
            "tier %s: replica %s failed %d times in a row: ejected for %g s (ejection %d)",
            tier,
            replica.address,
            b.replica_ejection_failures,
            seconds,
            replica.ejections,
        )

    def skip_reason(self, tier: str, holder: object | None) -> pb.ReasonCode | None:
        """Why `tier` cannot take a request now (None: it can). With a `holder` (the request)
        this admits it, taking the breaker's half-open probe; without, it only looks."""
        breaker = self.breakers[tier]
        if not (breaker.would_allow() if holder is None else breaker.allow(holder)):
            return pb.REASON_CODE_CIRCUIT_OPEN
        replica = self.pick(tier)
        if replica is None or not replica.reachable():
            if holder is not None:
                breaker.release(holder)
            return pb.REASON_CODE_TIER_UNAVAILABLE
        return None

    def first_available(
        self, tiers: Sequence[str], holder: object | None
    ) -> tuple[str | None, list[tuple[str, pb.ReasonCode]]]:
        """The first of `tiers` that can take the request (admitted as `holder`, or only looked
        at with None), and the ones passed over before it, with why."""
        skipped: list[tuple[str, pb.ReasonCode]] = []
        for tier in tiers:
            reason = self.skip_reason(tier, holder)
            if reason is None:
                return tier, skipped
            skipped.append((tier, reason))
        return None, skipped

    def record(self, tier: str, success: bool, holder: object) -> None:
        self.breakers[tier].record(success, holder)

    def release(self, tier: str, holder: object) -> None:
        """`holder`'s request ended with no verdict on `tier` (cancelled, a client error)."""
        self.breakers[tier].release(holder)
