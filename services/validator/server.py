"""The validator service: ValidatorService.Validate over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import grpc

from tierroute import tracing
from tierroute.config import Config, ConfigError, load_config
from tierroute.errors import unary_errors
from tierroute.serving import ServiceHost, serve_until_signal, setup_logging
from tierroute.validator.policies import judge
from tierroute.validator.v1 import validator_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name


class ValidatorServicer(pb_grpc.ValidatorServiceServicer):
    @unary_errors
    async def Validate(
        self, request: pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateResponse:
        with tracing.server_span(f"{SERVICE_NAME}/Validate", context, __name__) as span:
            judgement = judge(request)
            span.set_attribute("tierroute.verdict", pb.Verdict.Name(judgement.verdict))
            span.set_attribute("tierroute.confidence", judgement.confidence)
            span.set_attribute("tierroute.reason", pb.ValidationReason.Name(judgement.reason))
            return judgement.to_proto()


class ValidatorServer:
    def __init__(self, cfg: Config, listen: str | None = None) -> None:
        self.cfg = cfg
        self.host = ServiceHost(listen or cfg.validator.listen, [SERVICE_NAME])
        pb_grpc.add_ValidatorServiceServicer_to_server(ValidatorServicer(), self.host.server)

    async def start(self) -> int:
        return await self.host.start()

    async def load(self) -> None:
        """Nothing to load: the policies are pure functions."""

    async def stop(self, grace: float | None = None) -> None:
        await self.host.stop(self.cfg.validator.shutdown_grace_seconds if grace is None else grace)

    async def release(self) -> None:
        tracing.shutdown_tracing()

    async def serve(self, port_file: Path | None = None) -> None:
        await serve_until_signal(
            self.host, self.load, self.release, self.cfg.validator.shutdown_grace_seconds, port_file
        )


async def _serve(cfg: Config, listen: str | None, port_file: Path | None) -> None:
    tracing.setup_tracing("tierroute-validator", cfg.monitoring.otlp_endpoint)
    await ValidatorServer(cfg, listen).serve(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tierroute validator service")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--listen", help="host:port, overrides validator.listen")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"tierroute-validator: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.monitoring.log_level)
    asyncio.run(_serve(cfg, args.listen, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
