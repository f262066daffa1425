"""The validator service: ValidatorService.Validate over gRPC."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc
from opentelemetry import trace

from tierroute.core.config import Config
from tierroute.runtime.host import Host, Serving, Spec, run_service
from tierroute.runtime.tls import server_credentials
from tierroute.validator.policies import judge
from tierroute.validator.v1 import validator_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name


class ValidatorServicer(pb_grpc.ValidatorServiceServicer):
    async def Validate(
        self, request: pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateResponse:
        judgement = judge(request)
        trace.get_current_span().set_attributes(
            {
                "tierroute.verdict": pb.Verdict.Name(judgement.verdict),
                "tierroute.confidence": judgement.confidence,
                "tierroute.reason": pb.ValidationReason.Name(judgement.reason),
            }
        )
        return judgement.to_proto()


class ValidatorService:
    service_names: Sequence[str] = (SERVICE_NAME,)

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ValidatorServiceServicer_to_server(ValidatorServicer(), server)

    async def load(self, host: Host) -> None:
        """Nothing to load: the policies are pure functions."""

    async def close(self) -> None:
        pass


def serving(cfg: Config) -> Serving:
    v = cfg.validator
    return Serving(
        listen=v.listen,
        shutdown_grace_seconds=v.shutdown_grace_seconds,
        max_concurrent_requests=v.max_concurrent_requests,
        limit_setting="validator.max_concurrent_requests",
        telemetry_name="tierroute-validator",
        tls=server_credentials(cfg.tls, mutual=True),
    )


def host(cfg: Config) -> Host:
    """A validator on its own gRPC server (not started)."""
    return Host(ValidatorService(), serving(cfg))


def build(
    cfg: Config, args: argparse.Namespace, extra: list[str]
) -> tuple[ValidatorService, Serving]:
    return ValidatorService(), serving(cfg)


SPEC = Spec("validator", build)


def main(argv: list[str] | None = None) -> int:
    return run_service(SPEC, argv)
