"""Bearer tokens on the router's gRPC API, its HTTP front and the CLI, with the real router (real
embedder) on loopback: a missing or wrong token is refused, a right one accepted, health stays
open for probes, and no token appears in a log, an error or the tokens file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.services import router_config, started
from tests.helpers.tools import cli
from tierroute.core.config import ConfigError
from tierroute.router.service import SERVICE_NAME, RouterService, host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.auth import add_client

PROMPT = "What is the capital of France?"


@pytest_asyncio.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    app = add_client(tokens, "billing-app")
    other = add_client(tokens, "search")
    cfg = router_config(auth_tokens_file=str(tokens), http_listen="127.0.0.1:0")
    server, address = await started(host(cfg))
    port = server.service.http.port  # type: ignore[attr-defined]
    yield {
        "address": address,
        "http": f"http://127.0.0.1:{port}",
        "tokens": tokens,
        "app": app,
        "other": other,
    }
    await server.stop(0)


async def score(address: str, token: str | None) -> pb.ScoreResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        return await stub.Score(pb.ScoreRequest(prompt=PROMPT), metadata=metadata, timeout=30)


async def test_grpc_refuses_a_missing_or_wrong_token_and_serves_a_right_one(
    secured: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for token in (None, "trk_not-a-token", secured["app"][:-2]):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await score(secured["address"], token)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in (caught.value.details() or "")
            assert secured["app"][:-2] not in (caught.value.details() or "")
        for token in (secured["app"], secured["other"]):
            assert (await score(secured["address"], token)).decision.tier
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused a call: no bearer token" in logged
    for secret in (secured["app"], secured["other"], secured["app"][:-2]):
        assert secret not in logged
    assert secured["app"] not in secured["tokens"].read_text()


async def test_health_and_reflection_stay_open_for_probes(secured: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(secured["address"]) as channel:
        check = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
    assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_http_front_wants_the_token_as_the_api_key(secured: dict[str, Any]) -> None:
    base = f"{secured['http']}/v1"
    hello = [{"role": "user", "content": PROMPT}]
    for key in ("unused", secured["other"] + "x"):
        client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="missing or unknown API key"):
            await client.chat.completions.create(model="auto", messages=hello)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    client = openai.AsyncOpenAI(base_url=base, api_key=secured["app"], max_retries=0)
    assert [m.id for m in (await client.models.list()).data] == ["auto", "small", "large"]
    # Past auth, the request reaches the tiers: this router's are nowhere (ports 1 and 2).
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="auto", messages=hello)
    assert caught.value.status_code == 503
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/chat/completions", json={"model": "auto", "messages": hello})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await http.get(f"{secured['http']}/healthz")).status_code == 200
        assert (await http.get(f"{secured['http']}/readyz")).status_code == 200


async def test_the_cli_sends_its_token(secured: dict[str, Any]) -> None:
    code, out, err = await cli("--address", secured["address"], "score", PROMPT)
    assert code == 1 and "bearer token" in err, err
    code, out, err = await cli(
        "--address", secured["address"], "--token", secured["app"], "score", PROMPT
    )
    assert code == 0 and out.startswith("tier "), err


async def test_tierroute_token_new_prints_the_token_once(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    code, out, err = await cli("token", "new", "ops", "--file", str(tokens))
    assert code == 0, err
    token = out.strip()
    assert token.startswith("trk_") and token not in tokens.read_text()
    assert "shown once" in err
    code, _, err = await cli("token", "new", "ops", "--file", str(tokens))
    assert code == 2 and "already has a client 'ops'" in err


def test_a_router_with_a_bad_tokens_file_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"router auth: tokens file .* does not exist"):
        RouterService(router_config(auth_tokens_file=str(tmp_path / "nothing.yaml")))
