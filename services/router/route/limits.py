"""Per-client limits (router.client_limits): requests per second and tokens per minute as token
buckets, and a cap on a client's requests in progress. Both fronts (gRPC, HTTP) share them:
the route flow admits every Route here, the gRPC Score is counted against the request rate.

A client is its bearer token's name (runtime/auth.py), or, on a router without tokens, the
address it connects from. Past a limit the request is refused before any work with
RESOURCE_EXHAUSTED (HTTP 429) and the seconds until it would be admitted (Retry-After, and
`grpc-retry-pushback-ms`). Tokens are charged when a request ends, with what it used over
every tier; a client whose bucket is below zero waits until it refills.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tierroute.core.config import ClientLimitsConfig, RouterConfig
from tierroute.core.errors import Overloaded


@dataclass
class Bucket:
    """`capacity` tokens, refilled at `rate` per second."""

    capacity: float
    rate: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0: now)."""
        self.refill(now)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


@dataclass
class _Client:
    requests: Bucket | None
    tokens: Bucket | None
    in_progress: int = 0


@dataclass
class Ticket:
    """One admitted request: `done(tokens)` charges what it used and frees its place."""

    limits: ClientLimits
    client: str
    released: bool = field(default=False)

    def done(self, tokens: int) -> None:
        if not self.released:
            self.released = True
            self.limits._done(self.client, tokens)


class ClientLimits:
    def __init__(self, cfg: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._default = cfg.client_limits
        self._overrides = cfg.client_limits_overrides
        self._clock = clock
        self._clients: dict[str, _Client] = {}

    @property
    def active(self) -> bool:
        return any(_any(c) for c in [self._default, *self._overrides.values()])

    def _state(self, client: str) -> tuple[_Client, ClientLimitsConfig]:
        cfg = self._overrides.get(client, self._default)
        state = self._clients.get(client)
        if state is None:
            now = self._clock()
            requests = tokens = None
            if cfg.requests_per_second is not None:
                burst = cfg.burst or max(1, math.ceil(cfg.requests_per_second))
                requests = Bucket(burst, cfg.requests_per_second, burst, now)
            if cfg.tokens_per_minute is not None:
                tpm = cfg.tokens_per_minute
                tokens = Bucket(tpm, tpm / 60.0, tpm, now)
            state = self._clients[client] = _Client(requests, tokens)
        return state, cfg

    def check_rate(self, client: str) -> None:
        """Count one request against the client's rate (a Score); Overloaded past it."""
        state, cfg = self._state(client)
        self._take_request(client, state, cfg)

    def admit(self, client: str) -> Ticket:
        """Admit one Route: rate, tokens left and requests in progress; Overloaded if not."""
        state, cfg = self._state(client)
        now = self._clock()
        if cfg.max_in_progress is not None and state.in_progress >= cfg.max_in_progress:
            raise _over(
                f"client {client!r} has {state.in_progress} requests in progress, its limit "
                "(router.client_limits.max_in_progress)",
                1.0,
            )
        if state.tokens is not None:
            wait = state.tokens.wait_for(0.0, now)
            if wait > 0:
                raise _over(
                    f"client {client!r} used its {cfg.tokens_per_minute} tokens per minute "
                    "(router.client_limits.tokens_per_minute)",
                    wait,
                )
        self._take_request(client, state, cfg)
        state.in_progress += 1
        return Ticket(self, client)

    def _take_request(self, client: str, state: _Client, cfg: ClientLimitsConfig) -> None:
        if state.requests is None:
            return
        wait = state.requests.wait_for(1.0, self._clock())
        if wait > 0:
            raise _over(
                f"client {client!r} is over {cfg.requests_per_second:g} requests per second "
                "(router.client_limits.requests_per_second)",
                wait,
            )
        state.requests.level -= 1.0

    def _done(self, client: str, tokens: int) -> None:
        state = self._clients[client]
        state.in_progress -= 1
        if state.tokens is not None and tokens > 0:
            state.tokens.refill(self._clock())
            state.tokens.level -= tokens


def _any(cfg: ClientLimitsConfig) -> bool:
    return any(
        v is not None for v in (cfg.requests_per_second, cfg.tokens_per_minute, cfg.max_in_progress)
    )


def _over(what: str, wait_s: float) -> Overloaded:
    wait_s = max(wait_s, 0.001)
    return Overloaded(
        f"{what}; retry after {wait_s:.3g} s",
        retry_after_s=wait_s,
    )
