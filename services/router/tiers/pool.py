"""The tier pool: a channel and a circuit breaker per tier, and which tier can take a request.

A tier whose breaker is open, or whose channel is in TRANSIENT_FAILURE, is passed over. Each
request passes a `holder` (an object of its own): in half-open, the breaker's one probe belongs
to the request that took it (breaker.py). The pool also measures each tier's time to first
token, from which a stalled tier is told from a busy one (`first_token_timeout`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tierroute.core.config import Config, EscalationConfig
from tierroute.router.tiers.breaker import CircuitBreaker
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime.host import CHANNEL_OPTIONS
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replica:
    """One process serving a tier: where it is dialled, and the channel to it."""

    address: str
    channel: grpc.aio.Channel
    stub: tier_grpc.TierServiceStub


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
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # Every tier is a list of replicas; today each tier has one (its `address`).
        self.replicas: dict[str, list[Replica]] = {}
        for t in cfg.tiers:
            channel = grpc.aio.insecure_channel(t.address, options=CHANNEL_OPTIONS)
            self.replicas[t.name] = [
                Replica(t.address, channel, tier_grpc.TierServiceStub(channel))
            ]
        self.breakers = {
            t.name: CircuitBreaker(f"tier {t.name!r}", cfg.circuit_breaker) for t in cfg.tiers
        }
        self.first_token = {t.name: FirstTokenTimer(cfg.escalation) for t in cfg.tiers}

    async def close(self) -> None:
        for replicas in self.replicas.values():
            for replica in replicas:
                await replica.channel.close()

    def pick(self, tier: str) -> Replica:
        """The replica of `tier` a request goes to."""
        return self.replicas[tier][0]

    def stub(self, tier: str) -> tier_grpc.TierServiceStub:
        return self.pick(tier).stub

    def skip_reason(self, tier: str, holder: object | None) -> pb.ReasonCode | None:
        """Why `tier` cannot take a request now (None: it can). With a `holder` (the request)
        this admits it, taking the breaker's half-open probe; without, it only looks."""
        breaker = self.breakers[tier]
        if not (breaker.would_allow() if holder is None else breaker.allow(holder)):
            return pb.REASON_CODE_CIRCUIT_OPEN
        state = self.pick(tier).channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
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
