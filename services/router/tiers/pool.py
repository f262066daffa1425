"""The tier pool: a channel and a circuit breaker per tier, and which tier can take a request.

A tier whose breaker is open, or whose channel is in TRANSIENT_FAILURE, is passed over. Each
request passes a `holder` (an object of its own): in half-open, the breaker's one probe belongs
to the request that took it (breaker.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tierroute.core.config import Config
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
