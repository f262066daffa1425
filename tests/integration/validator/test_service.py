"""The validator over real gRPC on loopback, and as its own process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from tests.helpers.services import DEFAULT_CONFIG, start_service, started
from tests.helpers.tools import grpcurl, run
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import load_config
from tierroute.runtime.host import Host
from tierroute.validator.service import host
from tierroute.validator.v1 import validator_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2_grpc as pb_grpc


@pytest_asyncio.fixture(scope="module")
async def validator() -> AsyncIterator[tuple[Host, str]]:
    cfg = load_config(
        DEFAULT_CONFIG,
        environ={
            "TIERROUTE__VALIDATOR__LISTEN": "127.0.0.1:0",
            "TIERROUTE__VALIDATOR__METRICS_LISTEN": "127.0.0.1:0",
        },
    )
    server, address = await started(host(cfg))
    yield server, address
    await server.stop(0)


async def test_validate_delivers_and_escalates_over_grpc(
    validator: tuple[Host, str],
) -> None:
    async with grpc.aio.insecure_channel(validator[1]) as channel:
        stub = pb_grpc.ValidatorServiceStub(channel)
        policy = pb.ValidationPolicy(kind=pb.POLICY_KIND_SELF_REPORTED)
        good = json.dumps({"response_content": "Paris", "confidence_score": 0.9})
        r = await stub.Validate(pb.ValidateRequest(answer=good, policy=policy), timeout=5)
        assert (r.verdict, r.content) == (pb.VERDICT_DELIVER, "Paris")
        r = await stub.Validate(pb.ValidateRequest(answer="{oops", policy=policy), timeout=5)
        assert (r.verdict, r.reason) == (pb.VERDICT_ESCALATE, pb.VALIDATION_REASON_PARSE_FAILURE)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Validate(pb.ValidateRequest(answer="x"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "policy.kind is required" in info.value.details()


async def test_a_partial_answer_close_to_the_bar_is_undecided_over_grpc(
    validator: tuple[Host, str],
) -> None:
    logprobs = [common_pb.TokenLogprob(token="t", logprob=lp) for lp in (-0.2, -0.6, -0.2, -0.6)]
    # mean log-prob -0.4 against log(0.67) = -0.40: within one standard error (0.115)
    policy = pb.ValidationPolicy(
        kind=pb.POLICY_KIND_LOGPROB, min_confidence=0.67, prefix_margin=1.0
    )
    request = pb.ValidateRequest(answer="The capital", logprobs=logprobs, policy=policy)
    async with grpc.aio.insecure_channel(validator[1]) as channel:
        stub = pb_grpc.ValidatorServiceStub(channel)
        whole = await stub.Validate(request, timeout=5)
        assert whole.verdict == pb.VERDICT_DELIVER  # 0.670 >= 0.67
        request.partial = True
        r = await stub.Validate(request, timeout=5)
        assert (r.verdict, r.reason) == (pb.VERDICT_UNDECIDED, pb.VALIDATION_REASON_TOO_CLOSE)
        request.policy.prefix_margin = -0.5
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Validate(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prefix_margin is -0.5" in info.value.details()


async def test_grpcurl_lists_and_calls_validate(validator: tuple[Host, str]) -> None:
    code, out, err = await run(grpcurl(), "-plaintext", validator[1], "list")
    assert code == 0, err
    assert "tierroute.validator.v1.ValidatorService" in out.split()
    body = json.dumps(
        {
            "answer": json.dumps({"response_content": "4", "confidence_score": 0.2}),
            "policy": {"kind": "POLICY_KIND_SELF_REPORTED"},
        }
    )
    code, out, err = await run(
        grpcurl(),
        "-plaintext",
        "-d",
        body,
        validator[1],
        "tierroute.validator.v1.ValidatorService/Validate",
    )
    assert code == 0, err
    assert json.loads(out)["verdict"] == "VERDICT_ESCALATE"


def test_process_serves_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    svc = start_service(
        ["tierroute.validator", "--config", str(DEFAULT_CONFIG), "--listen", "127.0.0.1:0"],
        tmp_path / "validator.log",
    )
    assert svc.health_seen[-1] == 1  # SERVING
    assert svc.stop(timeout=30) == 0
    assert "draining" in svc.log.read_text()
