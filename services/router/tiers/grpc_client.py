"""Our tier service (services/tier) as a tier client: Generate and Describe over gRPC, its
status codes read as the tier-client interface's kinds of failure (tiers/client.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from tierroute.core.config import TlsConfig
from tierroute.router.tiers.client import Kind, TierError, refused
from tierroute.runtime.host import CHANNEL_OPTIONS
from tierroute.runtime.tls import aio_channel
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc

GENERATE_METHOD = tier_pb.DESCRIPTOR.services_by_name["TierService"].full_name + "/Generate"

# What each status code says about the tier; any other code counts as the tier failing.
_KIND: dict[grpc.StatusCode, Kind] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.INVALID_ARGUMENT: "bad_request",
    grpc.StatusCode.OUT_OF_RANGE: "bad_request",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
    grpc.StatusCode.CANCELLED: "cancelled",
}


def tier_error(error: grpc.aio.AioRpcError) -> TierError:
    """The tier-client failure a gRPC error stands for; its text keeps the status's name."""
    code = error.code()
    kind = _KIND.get(code, "unavailable")
    if kind == "bad_request":
        return refused(error.details() or "", code.name)
    return TierError(kind, error.details() or "", label=code.name)


class GrpcCall:
    """One Generate call; gRPC errors raised as TierError."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[tier_pb.GenerateResponse]:
        try:
            async for response in self._call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise tier_error(error) from error

    def cancel(self) -> None:
        self._call.cancel()


class GrpcTierClient:
    """A replica of our tier service, dialled at `address` (TLS as the router's `tls`)."""

    operation = GENERATE_METHOD

    def __init__(self, address: str, tls: TlsConfig) -> None:
        self.address = address
        self.channel = aio_channel(address, tls, CHANNEL_OPTIONS)
        self._stub = tier_grpc.TierServiceStub(self.channel)

    def generate(
        self,
        request: tier_pb.GenerateRequest,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> GrpcCall:
        return GrpcCall(self._stub.Generate(request, timeout=timeout, metadata=tuple(headers)))

    async def describe(self, seconds: float | None) -> tier_pb.DescribeResponse:
        try:
            response: tier_pb.DescribeResponse = await self._stub.Describe(
                tier_pb.DescribeRequest(), timeout=seconds
            )
        except grpc.aio.AioRpcError as error:
            raise tier_error(error) from error
        return response

    def reachable(self) -> bool:
        state = self.channel.get_state(try_to_connect=True)
        return state != grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def close(self) -> None:
        await self.channel.close()
