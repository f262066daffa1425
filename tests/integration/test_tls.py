"""TLS on every hop with certificates from `tierroute certs`: the validator and a real vLLM
tier require mutual TLS (a client without a certificate, with one from another CA, or in
plaintext is refused); the router dials them with its client certificate and serves its own
gRPC API and the HTTP front over TLS; a Route and an OpenAI call go through end to end."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.budgets import make_config
from tests.helpers.services import (
    DEFAULT_CONFIG,
    EMBEDDER_DIR,
    ServiceProcess,
    start_service,
    started,
)
from tests.helpers.tools import cli, run
from tierroute.core.config import Config
from tierroute.router.service import host as router_host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.host import Host
from tierroute.validator.service import host as validator_host
from tierroute.validator.v1 import validator_service_pb2 as val_pb
from tierroute.validator.v1 import validator_service_pb2_grpc as val_grpc

pytestmark = pytest.mark.tier


def tls_section(certs: Path) -> dict[str, Any]:
    return {
        "enabled": True,
        "ca": str(certs / "ca.pem"),
        "cert": str(certs / "server.pem"),
        "key": str(certs / "server-key.pem"),
        "client_cert": str(certs / "client.pem"),
        "client_key": str(certs / "client-key.pem"),
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import asyncio

    tmp = tmp_path_factory.mktemp("certs")
    for name in ("ours", "theirs"):
        code, out, err = asyncio.run(
            cli("certs", "--out", str(tmp / name), "--host", "127.0.0.1", "--host", "localhost")
        )
        assert code == 0, err
        assert "ca.pem" in out
    assert (tmp / "ours" / "server-key.pem").stat().st_mode & 0o077 == 0
    return {"ours": tmp / "ours", "theirs": tmp / "theirs"}


def read(path: Path) -> bytes:
    return path.read_bytes()


def credentials(certs: Path, client: bool = True) -> grpc.ChannelCredentials:
    if not client:
        return grpc.ssl_channel_credentials(read(certs / "ca.pem"))
    return grpc.ssl_channel_credentials(
        read(certs / "ca.pem"), read(certs / "client-key.pem"), read(certs / "client.pem")
    )


@pytest_asyncio.fixture(scope="module")
async def validator(certs: dict[str, Path]) -> AsyncIterator[str]:
    cfg = make_config({"validator": {"listen": "127.0.0.1:0"}, "tls": tls_section(certs["ours"])})
    server: Host
    server, address = await started(validator_host(cfg))
    yield address
    await server.stop(0)


async def validate(channel: grpc.aio.Channel) -> val_pb.ValidateResponse:
    request = val_pb.ValidateRequest(
        prompt="What is the capital of France?",
        answer='{"response_content": "Paris", "confidence_score": 0.9}',
        policy=val_pb.ValidationPolicy(kind=val_pb.POLICY_KIND_SELF_REPORTED, min_confidence=0.5),
    )
    return await val_grpc.ValidatorServiceStub(channel).Validate(request, timeout=10)


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_from_another_ca(
    validator: str, certs: dict[str, Path]
) -> None:
    async with grpc.aio.secure_channel(validator, credentials(certs["ours"])) as channel:
        assert (await validate(channel)).verdict == val_pb.VERDICT_DELIVER
    refused = [
        grpc.aio.secure_channel(validator, credentials(certs["ours"], client=False)),
        grpc.aio.secure_channel(validator, credentials(certs["theirs"])),
        grpc.aio.insecure_channel(validator),
    ]
    for channel in refused:
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await validate(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_probe_the_manifests_run_checks_health_over_mutual_tls(
    validator: str, certs: dict[str, Path]
) -> None:
    """`tierroute probe`, as deploy/kubernetes runs it in the image: SERVING over mutual TLS
    with the client certificate; without it the validator refuses, and the probe fails."""
    ours = certs["ours"]
    tls = ["--tls-ca", str(ours / "ca.pem"), "--timeout", "10"]
    client = ["--tls-cert", str(ours / "client.pem"), "--tls-key", str(ours / "client-key.pem")]
    code, out, err = await cli(
        "--address", validator, *tls, "probe", *client, "--tls-server-name", "127.0.0.1"
    )
    assert code == 0, err
    assert out.strip() == f"{validator} (server): SERVING"
    code, out, err = await cli("--address", validator, *tls, "probe")
    assert code == 1 and "UNAVAILABLE" in err, (out, err)
    code, _, err = await cli("--address", validator, *tls, "probe", "--tls-cert", "c.pem")
    assert code == 2 and "--tls-cert and --tls-key together" in err


@pytest.fixture(scope="module")
def tls_tier(
    certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The embedded default's small tier as its own process, requiring mutual TLS."""
    env = {f"TIERROUTE__TLS__{k.upper()}": str(v) for k, v in tls_section(certs["ours"]).items()}
    args = ["tierroute.tier", "--config", str(DEFAULT_CONFIG), "--tier", "small"]
    svc = start_service(
        [*args, "--listen", "127.0.0.1:0"],
        tmp_path_factory.mktemp("tier") / "tls-tier.log",
        env=env,
        credentials=credentials(certs["ours"]),
    )
    yield svc
    svc.stop()


def router_config(tier: str, validator: str, certs: Path) -> Config:
    tier_cfg = {"address": tier, "model": "smollm2", "max_tokens": 16, "temperature": 0.0,
                "engine_args": {"max_model_len": 2048}}  # fmt: skip
    return make_config(
        {
            "router": {
                "listen": "127.0.0.1:0",
                "http_listen": "127.0.0.1:0",
                "model": str(EMBEDDER_DIR),
            },
            "tiers": [
                {"name": "small", "validation": "self_reported", **tier_cfg},
                {"name": "large", **tier_cfg},
            ],
            "validator": {"address": validator},
            "tls": tls_section(certs),
        }
    )


async def test_a_route_goes_over_tls_on_every_hop(
    tls_tier: ServiceProcess, validator: str, certs: dict[str, Path]
) -> None:
    router, address = await started(
        router_host(router_config(tls_tier.address, validator, certs["ours"]))
    )
    try:
        # The router's own API: server TLS; callers verify it with the CA, no certificate.
        async with grpc.aio.secure_channel(
            address, credentials(certs["ours"], client=False)
        ) as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            events = [
                e
                async for e in stub.Route(
                    pb.RouteRequest(prompt="What is the capital of France?"), timeout=240
                )
            ]
        summary = events[-1].summary
        assert summary.usage.completion_tokens > 0, events
        # small is validated: the router reached the validator over mutual TLS too.
        assert summary.attempts[0].validation != pb.VALIDATION_STATUS_VALIDATOR_UNAVAILABLE
        assert "".join(e.chunk.text for e in events if e.HasField("chunk"))
        # Plaintext to a TLS port fails.
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        # The HTTP front is HTTPS, verified with the same CA.
        port = router.service.http.port  # type: ignore[attr-defined]
        verify = ssl.create_default_context(cafile=str(certs["ours"] / "ca.pem"))
        async with httpx.AsyncClient(verify=verify) as http:
            client = openai.AsyncOpenAI(
                base_url=f"https://127.0.0.1:{port}/v1", api_key="-", http_client=http,
                max_retries=0,
            )  # fmt: skip
            done = await client.chat.completions.create(
                model="large", messages=[{"role": "user", "content": "Hi!"}], max_tokens=8
            )
            assert done.choices[0].message.content
        wrong = ssl.create_default_context(cafile=str(certs["theirs"] / "ca.pem"))
        async with httpx.AsyncClient(verify=wrong) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"https://127.0.0.1:{port}/healthz")
        # The CLI with --tls-ca.
        code, out, err = await cli(
            "--address", address, "--tls-ca", str(certs["ours"] / "ca.pem"), "score", "Hi!"
        )
        assert code == 0 and out.startswith("tier "), err
        code, _, err = await run("curl", "-sS", f"https://127.0.0.1:{port}/healthz")
        assert code != 0  # curl does not know our CA
    finally:
        await router.stop(0)
