"""The validator service: ValidatorService.Validate over gRPC."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from tierroute.core.config import Config
from tierroute.runtime.host import Host, Serving, Spec, run_service
from tierroute.runtime.tls import server_credentials
from tierroute.validator.policies import judge
from tierroute.validator.v1 import validator_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ValidatorService"].full_name

VERDICTS = Counter(
    "tierroute_validator_verdicts",
    "Answers judged, by policy, verdict (deliver, escalate, undecided) and reason.",
    ("policy", "verdict", "reason"),
)
CONFIDENCE = Histogram(
    "tierroute_validator_confidence",
    "The confidence of the answers judged (0 to 1), by policy.",
    ("policy",),
    buckets=tuple(x / 10 for x in range(1, 11)),
)


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


class ValidatorServicer(pb_grpc.ValidatorServiceServicer):
    async def Validate(
        self, request: pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateResponse:
        judgement = judge(request)
        policy = _name(pb.PolicyKind, request.policy.kind, "POLICY_KIND_")
        VERDICTS.labels(
            policy,
            _name(pb.Verdict, judgement.verdict, "VERDICT_"),
            _name(pb.ValidationReason, judgement.reason, "VALIDATION_REASON_"),
        ).inc()
        CONFIDENCE.labels(policy).observe(judgement.confidence)
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
        metrics_listen=v.metrics_listen,
        metrics_tls=cfg.tls,
        metrics_setting="validator.metrics_listen",
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
