"""One edge for both fronts of a process: its gRPC port and its HTTP front count requests in
flight against one limit, and both stop accepting when the host stops, draining side by side.
A real grpc.aio server and the real uvicorn front on loopback, with scripted handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
import httpx
import pytest
import pytest_asyncio

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import config_from_dict
from tierroute.router.front.server import HttpFront
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.state import Decided, Finished, RouteEvent, Token
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime.host import Host, Serving
from tierroute.validator.v1 import validator_service_pb2 as val_pb
from tierroute.validator.v1 import validator_service_pb2_grpc as val_grpc

HELLO = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


class Held:
    """Holds each call until `release` is set; `until(n)` returns once n calls are held."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.count = 0
        self._changed = asyncio.Condition()

    async def hold(self) -> None:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()
        await self.release.wait()

    async def until(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.count >= n)


class Validator(val_grpc.ValidatorServiceServicer):
    def __init__(self, held: Held) -> None:
        self.held = held

    async def Validate(
        self, request: val_pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> val_pb.ValidateResponse:
        if request.answer == "hold":
            await self.held.hold()
        return val_pb.ValidateResponse(verdict=val_pb.VERDICT_DELIVER, content=request.answer)


class Router:
    """The HTTP front's router: answers at once, or holds the answer (prompt "hold")."""

    tiers = ["small", "large"]
    ready = True

    def __init__(self, held: Held) -> None:
        self.held = held

    async def route(
        self, request: pb.RouteRequest, deadline: Deadline
    ) -> AsyncGenerator[RouteEvent]:
        yield Decided(pb.RoutingDecision(tier="small"))
        if request.messages[-1].content == "hold":
            await self.held.hold()
        yield Token("ok", "small")
        yield Finished(pb.RouteSummary(tier="small", finish_reason=common_pb.FINISH_REASON_STOP))


class Service:
    service_names: Sequence[str] = ("tierroute.validator.v1.ValidatorService",)

    def __init__(self, held: Held) -> None:
        self.held = held

    def register(self, server: grpc.aio.Server) -> None:
        val_grpc.add_ValidatorServiceServicer_to_server(Validator(self.held), server)

    async def load(self, host: Host) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture
async def edge() -> AsyncIterator[tuple[Host, Held, str, str]]:
    """A host whose limit is 2 requests in flight, with an HTTP front sharing its count."""
    held = Held()
    host = Host(Service(held), Serving("127.0.0.1:0", 30, 2, "test.max_concurrent_requests", "t"))
    port = await host.start()
    await host.load()
    cfg = config_from_dict(
        {
            "router": {"http_listen": "127.0.0.1:0"},
            "tiers": [
                {"name": "small", "address": "127.0.0.1:1", "model": "m"},
                {"name": "large", "address": "127.0.0.1:2", "model": "m"},
            ],
        }
    )
    front = await HttpFront.start(cfg, Router(held), None, host.admission)
    host.add_front(front)
    try:
        yield host, held, f"127.0.0.1:{port}", f"http://127.0.0.1:{front.port}"
    finally:
        held.release.set()
        await host.stop(0)
        await front.stop()


async def validate(address: str, answer: str) -> val_pb.ValidateResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await val_grpc.ValidatorServiceStub(channel).Validate(
            val_pb.ValidateRequest(answer=answer), timeout=30
        )


async def chat(base: str, content: str) -> httpx.Response:
    body = {**HELLO, "messages": [{"role": "user", "content": content}]}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{base}/v1/chat/completions", json=body)


async def test_grpc_and_http_requests_count_against_one_limit(
    edge: tuple[Host, Held, str, str],
) -> None:
    host, held, address, base = edge
    grpc_call = asyncio.create_task(validate(address, "hold"))
    await held.until(1)
    http_call = asyncio.create_task(chat(base, "hold"))
    await held.until(2)  # both held, so both admitted: admission comes before the handler
    assert host.admission.count == 2
    # The limit (2) is reached by one request on each front: both fronts refuse the third.
    refused = await chat(base, "hi")
    assert refused.status_code == 429, refused.text
    assert "test.max_concurrent_requests" in refused.json()["error"]["message"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await validate(address, "hi")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "test.max_concurrent_requests" in (caught.value.details() or "")
    held.release.set()
    assert (await grpc_call).content == "hold"
    answered = await http_call
    assert (
        answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] == "ok"
    )
    assert host.admission.count == 0
    assert (await chat(base, "hi")).status_code == 200  # the places are back


async def test_stopping_the_host_stops_both_fronts_accepting_and_drains_both(
    edge: tuple[Host, Held, str, str],
) -> None:
    host, held, address, base = edge
    in_progress = asyncio.create_task(chat(base, "hold"))
    await held.until(1)
    stopping = asyncio.create_task(host.stop(30))
    # Both fronts stop accepting while the HTTP request is still in progress.
    async with asyncio.timeout(30):
        while True:
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    await http.get(f"{base}/healthz")
            except httpx.ConnectError:
                break
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # Connected just as the listener closed, and the stopping front closed that
                # connection unanswered (reset, or closed before a response): ask again until
                # the port refuses.
                continue
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await validate(address, "hi")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not stopping.done() and not in_progress.done()
    held.release.set()
    answered = await in_progress  # drained, not cut off
    assert (
        answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] == "ok"
    )
    await stopping
