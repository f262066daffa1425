"""What the router asks of a tier, whatever serves it: the tier-client interface.

The route flow, hedging, shadow mode and `tierroute bench-tiers` talk to a tier only through a
`TierClient`: start a generation, read its responses, cancel it, describe the tier. Every
failure arrives as a `TierError` with one of `KINDS`, never as a transport's own exception, so
the breaker, replicas and outlier ejection (tiers/pool.py) and the stall check (route/attempt.py)
sit above any implementation. Our tier service over gRPC is one implementation
(tiers/grpc_client.py); an OpenAI-compatible HTTP server is another.

A generation's responses are the tier service's own messages (`tier_pb.GenerateResponse`:
`chunk` with text and token log-probs, `waiting` while queued, `complete` with usage and cost
last), whatever the transport, so that nothing above this interface knows which kind of tier
answered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

from tierroute.core.config import ConfigError, TierConfig, TlsConfig
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

Kind = Literal[
    "unavailable", "overloaded", "bad_request", "too_long", "deadline", "stalled", "cancelled"
]
KINDS: tuple[Kind, ...] = (
    "unavailable",  # refused, reset, a server error: the tier's fault (breaker, failover)
    "overloaded",  # the tier refused it for load (a retry hint): not a breaker failure
    "bad_request",  # the request's fault (a bad parameter): never failover
    "too_long",  # longer than the tier's context window: only a tier with a larger one may try
    "deadline",  # the call's timeout ran out
    "stalled",  # no first token and no sign of life in time (route/attempt.py)
    "cancelled",  # the call was cancelled (the client left, an escalation)
)


# How servers say a request is longer than their model's context window: our tier service ("the
# prompt does not fit"), vLLM's OpenAI server ("This model's maximum context length is 2048
# tokens", "longer than the maximum model length"), OpenAI ("context_length_exceeded"), and
# the wording of other OpenAI-compatible servers.
_TOO_LONG = re.compile(
    r"does not fit|maximum context length|maximum model length|context_length_exceeded"
    r"|context (window|length) (is )?exceeded|exceeds the context|too many tokens",
    re.IGNORECASE,
)
# The window such a refusal names: vLLM's "maximum context length is 1024" or "(1024)", its
# engine's "maximum model length of 1024", our tier's "the model's context of 2048 tokens".
_WINDOW = re.compile(
    r"maximum (?:context|model) length (?:is |of )?\(?(\d+)|model's context of (\d+)",
    re.IGNORECASE,
)


class TierError(Exception):
    """A tier call failed. `kind` is one of KINDS; `message` says what happened, in words a
    user can act on; `retry_after_s` is the tier's hint where it gave one (overloaded);
    `label` names the failure as its transport did (a gRPC status, an HTTP status)."""

    # too_long: the window the tier said it has, where it said (its config may overstate it)
    window: int | None = None

    def __init__(
        self, kind: Kind, message: str, retry_after_s: float | None = None, label: str = ""
    ) -> None:
        self.label = label or kind.upper()
        super().__init__(f"{self.label}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


def refused(message: str, label: str) -> TierError:
    """A request the tier refused as its own fault: `too_long` when the tier said it does not
    fit the context window (with the window, where the tier named it), else `bad_request`."""
    if not _TOO_LONG.search(message):
        return TierError("bad_request", message, label=label)
    error = TierError("too_long", message, label=label)
    said = _WINDOW.search(message)
    if said is not None:
        error.window = int(said.group(1) or said.group(2))
    return error


class TierCall(Protocol):
    """One generation in progress: its responses, in order, then the end; TierError on a
    failure. `cancel` stops the tier's work (a no-op once the call has ended)."""

    def __aiter__(self) -> AsyncIterator[tier_pb.GenerateResponse]: ...

    def cancel(self) -> None: ...


class TierClient(Protocol):
    """One replica of a tier, wherever it runs."""

    # Where it is dialled (a host:port, a URL), for logs, metrics and spans.
    address: str
    # The span name of one generation (OpenTelemetry: the RPC's method, or "chat <model>").
    operation: str

    def generate(
        self,
        request: tier_pb.GenerateRequest,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> TierCall:
        """Start a generation; `headers` carry the trace context."""
        ...

    async def describe(self, seconds: float | None) -> tier_pb.DescribeResponse:
        """The model it serves and its context window (asked within `seconds`); TierError if it
        cannot be asked."""
        ...

    def reachable(self) -> bool:
        """Whether a call may be tried now (False: known to be down; never blocks)."""
        ...

    async def close(self) -> None: ...


def connect(tier: TierConfig, address: str, tls: TlsConfig) -> TierClient:
    """A client of one replica of `tier`, dialled at `address`, of the tier's kind. ConfigError
    if an OpenAI-compatible tier's API key cannot be read."""
    if tier.kind == "openai":
        from tierroute.router.tiers.openai_client import OpenAiTierClient

        try:
            key, source = tier.api_key()
        except ValueError as error:
            raise ConfigError(f"invalid configuration: {error}") from None
        return OpenAiTierClient(tier, address, key, source)
    from tierroute.router.tiers.grpc_client import GrpcTierClient

    return GrpcTierClient(address, tls)
