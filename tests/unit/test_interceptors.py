"""The interceptor chain on a real grpc.aio server on loopback, with small scripted servicers:
error mapping, RPC spans by OpenTelemetry's conventions, admission, undecodable requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tierroute.core.errors import InvalidArgument, Unavailable
from tierroute.runtime.host import Host, Serving
from tierroute.runtime.interceptors import RETRY_PUSHBACK_KEY
from tierroute.tier.v1 import tier_service_pb2 as tier_pb
from tierroute.tier.v1 import tier_service_pb2_grpc as tier_grpc
from tierroute.validator.v1 import validator_service_pb2 as pb
from tierroute.validator.v1 import validator_service_pb2_grpc as pb_grpc

SECRET = "the database password is hunter2"
MESSAGE_LIMIT = 1 << 20


class Scripted(pb_grpc.ValidatorServiceServicer):
    """Does what the request's `answer` says."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def Validate(
        self, request: pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateResponse:
        if request.answer == "bad":
            raise InvalidArgument("answer: say what to fix")
        if request.answer.startswith("quote:"):
            raise InvalidArgument(f"answer {request.answer!r} is not allowed")
        if request.answer == "down":
            raise Unavailable("the backend is down; retry later")
        if request.answer == "crash":
            raise RuntimeError(SECRET)
        if request.answer == "hold":
            self.holding.set()
            await self.release.wait()
        trace.get_current_span().set_attribute("tierroute.handled", request.answer)
        return pb.ValidateResponse(verdict=pb.VERDICT_DELIVER, content=request.answer)


class Streaming(tier_grpc.TierServiceServicer):
    async def Generate(
        self, request: tier_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tier_pb.GenerateResponse]:
        yield tier_pb.GenerateResponse(chunk=tier_pb.GenerateChunk(text="partial"))
        raise RuntimeError(SECRET)


class Both:
    service_names: Sequence[str] = (
        "tierroute.validator.v1.ValidatorService",
        "tierroute.tier.v1.TierService",
    )

    def __init__(self) -> None:
        self.scripted = Scripted()

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ValidatorServiceServicer_to_server(self.scripted, server)
        tier_grpc.add_TierServiceServicer_to_server(Streaming(), server)

    async def load(self, host: Host) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest_asyncio.fixture(scope="module")
async def served(spans: InMemorySpanExporter) -> AsyncIterator[tuple[Both, str]]:
    service = Both()
    host = Host(
        service,
        Serving(
            "127.0.0.1:0", 0, 1, "test.max_concurrent_requests", "test",
            max_message_bytes=MESSAGE_LIMIT, message_setting="test.max_message_bytes",
        ),
    )  # fmt: skip
    port = await host.start()
    await host.load()
    yield service, f"127.0.0.1:{port}"
    service.scripted.release.set()
    await host.stop(0)


async def validate(address: str, answer: str) -> pb.ValidateResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await pb_grpc.ValidatorServiceStub(channel).Validate(
            pb.ValidateRequest(answer=answer), timeout=10
        )


def clear(spans: InMemorySpanExporter) -> None:
    spans.clear()
    spans.cleared_at = time.time_ns()  # type: ignore[attr-defined]


async def server_span(spans: InMemorySpanExporter, method: str, nth: int) -> trace.Span:
    """The `nth` (from 1) finished server span of `method` started since `spans.clear()`. The
    client may see the status before the server has ended the span: wait for it (bounded),
    never for a fixed time. (An earlier test's span may end after the clear: it started
    before it, so it is not counted.)"""
    since = getattr(spans, "cleared_at", 0)
    async with asyncio.timeout(30):
        while True:
            found = [
                s
                for s in spans.get_finished_spans()
                if s.name.endswith(method) and (s.start_time or 0) >= since
            ]
            if len(found) >= nth:
                return found[nth - 1]  # type: ignore[return-value]
            await asyncio.sleep(0.01)


async def test_an_unexpected_error_is_internal_with_the_trace_id_and_no_exception_text(
    served: tuple[Both, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as info:
        await validate(served[1], "crash")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    assert SECRET not in details and "RuntimeError" not in details
    trace_id = details.rsplit("trace id ", 1)[1]
    assert len(trace_id) == 32
    # The log has what the client was not told, under the same trace id.
    assert SECRET in caplog.text and trace_id in caplog.text


async def test_a_project_error_keeps_its_status_and_message(served: tuple[Both, str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await validate(served[1], "bad")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "answer: say what to fix"


async def test_a_message_quoting_a_huge_input_is_cut_so_the_client_still_reads_the_status(
    served: tuple[Both, str],
) -> None:
    """Unbounded, it exceeds the client's header limit and the client sees a RESOURCE_EXHAUSTED
    of its own instead of our status (found by the chaos suite's fuzzing)."""
    _, address = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await validate(address, "quote:" + "é" * 100_000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("answer 'quote:ééé") and details.endswith("characters cut)")
    assert len(details.encode()) <= 1024


async def test_spans_follow_the_rpc_conventions_and_a_client_mistake_is_not_an_error(
    served: tuple[Both, str], spans: InMemorySpanExporter
) -> None:
    clear(spans)
    await validate(served[1], "fine")
    ok = await server_span(spans, "Validate", 1)
    assert ok.name == "tierroute.validator.v1.ValidatorService/Validate"
    assert ok.kind == trace.SpanKind.SERVER
    assert ok.attributes is not None
    assert ok.attributes["rpc.system"] == "grpc"
    assert ok.attributes["rpc.service"] == "tierroute.validator.v1.ValidatorService"
    assert ok.attributes["rpc.method"] == "Validate"
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert ok.attributes["tierroute.handled"] == "fine", "the handler's span is the RPC's"
    assert ok.status.status_code == trace.StatusCode.UNSET

    with pytest.raises(grpc.aio.AioRpcError):
        await validate(served[1], "bad")
    bad = await server_span(spans, "Validate", 2)
    assert bad.attributes is not None and bad.attributes["rpc.grpc.status_code"] == 3
    assert bad.status.status_code == trace.StatusCode.UNSET

    for nth, (answer, code) in enumerate((("down", 14), ("crash", 13)), 3):
        with pytest.raises(grpc.aio.AioRpcError):
            await validate(served[1], answer)
        failed = await server_span(spans, "Validate", nth)
        assert failed.attributes is not None and failed.attributes["rpc.grpc.status_code"] == code
        assert failed.status.status_code == trace.StatusCode.ERROR


async def test_a_stream_that_fails_midway_ends_internal_after_its_chunks(
    served: tuple[Both, str], spans: InMemorySpanExporter
) -> None:
    received = []
    clear(spans)
    async with grpc.aio.insecure_channel(served[1]) as channel:
        call = tier_grpc.TierServiceStub(channel).Generate(tier_pb.GenerateRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in call:
                received.append(response.chunk.text)
    assert received == ["partial"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (info.value.details() or "")
    span = await server_span(spans, "Generate", 1)
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 13


async def test_past_the_in_flight_limit_is_resource_exhausted_with_a_retry_hint(
    served: tuple[Both, str],
) -> None:
    service, address = served
    held = asyncio.create_task(validate(address, "hold"))
    await service.scripted.holding.wait()  # the one allowed call is in flight
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await validate(address, "second")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "test.max_concurrent_requests" in (info.value.details() or "")
    trailers = dict(info.value.trailing_metadata() or ())
    assert int(trailers[RETRY_PUSHBACK_KEY]) > 0
    service.scripted.release.set()
    assert (await held).content == "hold"
    assert (await validate(address, "third")).content == "third", "the slot was given back"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # not a protobuf at all
        b"\x1a\x02\xc3\x28",  # field 3 (answer, a string) holding invalid UTF-8
    ],
)
async def test_an_undecodable_request_is_invalid_argument(
    served: tuple[Both, str], body: bytes
) -> None:
    async with grpc.aio.insecure_channel(served[1]) as channel:
        raw = channel.unary_unary(
            "/tierroute.validator.v1.ValidatorService/Validate",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(body, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in (info.value.details() or "")


@pytest.mark.parametrize("size", [MESSAGE_LIMIT + 1, 3 * MESSAGE_LIMIT])
async def test_a_request_over_the_message_limit_is_invalid_argument_naming_the_setting(
    served: tuple[Both, str], size: int
) -> None:
    answer = "x" * size
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await validate(served[1], answer)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert f"over the limit of {MESSAGE_LIMIT} bytes (test.max_message_bytes)" in details
    assert len(answer) < len(pb.ValidateRequest(answer=answer).SerializeToString())
    # At the limit it is served.
    fits = "y" * (MESSAGE_LIMIT - 8)
    assert (await validate(served[1], fits)).content == fits


def handled(method: str, code: str) -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "tierroute.validator.v1.ValidatorService",
        "grpc_method": method,
        "grpc_code": code,
    }
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_each_rpc_is_counted_in_prometheus_with_its_status_and_duration(
    served: tuple[Both, str], spans: InMemorySpanExporter
) -> None:
    rpc = {"grpc_type": "unary", "grpc_service": "tierroute.validator.v1.ValidatorService",
           "grpc_method": "Validate"}  # fmt: skip
    before = {code: handled("Validate", code) for code in ("OK", "INVALID_ARGUMENT", "INTERNAL")}
    started = REGISTRY.get_sample_value("grpc_server_started_total", rpc) or 0.0
    timed = REGISTRY.get_sample_value("grpc_server_handling_seconds_count", rpc) or 0.0
    clear(spans)
    for nth, answer in enumerate(("fine", "fine", "bad", "crash"), 1):
        try:
            await validate(served[1], answer)
        except grpc.aio.AioRpcError:
            pass
        await server_span(spans, "Validate", nth)  # the server is done with it
    after = {code: handled("Validate", code) for code in before}
    assert {c: after[c] - before[c] for c in before} == {
        "OK": 2, "INVALID_ARGUMENT": 1, "INTERNAL": 1
    }  # fmt: skip
    assert REGISTRY.get_sample_value("grpc_server_started_total", rpc) == started + 4
    assert REGISTRY.get_sample_value("grpc_server_handling_seconds_count", rpc) == timed + 4
    assert REGISTRY.get_sample_value("tierroute_rpc_in_flight", rpc) == 0
    # Health checks are not counted.
    assert (
        REGISTRY.get_sample_value(
            "grpc_server_started_total",
            {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"},
        )
        is None
    )
