"""The OpenAI-compatible HTTP front over a scripted router (faults on cue), through the real
uvicorn server and the real `openai` client: request parsing, every error's status and shape,
streaming, a stream that fails after it started, the in-flight limit, and that the flow is
always closed. The real suite behind it: tests/integration/router/test_http_front.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from prometheus_client import REGISTRY

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import config_from_dict
from tierroute.core.errors import DeadlineExceeded, InvalidArgument, TooLarge, Unavailable
from tierroute.router.front.server import HttpFront
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.state import Decided, Finished, RouteEvent, Token
from tierroute.router.v1 import router_service_pb2 as pb

Script = Callable[[pb.RouteRequest], AsyncIterator[RouteEvent]]


def decision(tier: str = "small") -> pb.RoutingDecision:
    return pb.RoutingDecision(
        tier=tier,
        complexity_score=2.5,
        reason_codes=[pb.REASON_CODE_SCORE_BELOW_THRESHOLD],
        reasons=["below_quality_bar:tiny"],
    )


async def answer(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
    tier = request.force_tier or "small"
    yield Decided(decision(tier))
    for word in ("Paris", " is", " the", " capital."):
        yield Token(word, tier)
    yield Finished(
        pb.RouteSummary(
            tier=tier,
            usage=common_pb.Usage(prompt_tokens=12, completion_tokens=4),
            finish_reason=common_pb.FINISH_REASON_LENGTH,
        )
    )


class Scripted:
    """A router whose Route follows `script`; it counts the flows still open."""

    def __init__(self) -> None:
        self.script: Script = answer
        self.requests: list[pb.RouteRequest] = []
        self.open = 0
        self.ready = True
        self.tiers = ["small", "large"]

    async def route(
        self, request: pb.RouteRequest, deadline: Deadline
    ) -> AsyncGenerator[RouteEvent]:
        self.requests.append(request)
        self.open += 1
        try:
            async for event in self.script(request):
                yield event
        finally:
            self.open -= 1


@pytest_asyncio.fixture
async def front() -> AsyncIterator[tuple[Scripted, str]]:
    router = Scripted()
    cfg = config_from_dict(
        {
            "router": {
                "http_listen": "127.0.0.1:0",
                "max_concurrent_requests": 1,
                "http_max_body_bytes": 4096,
            },
            "tiers": [
                {"name": "small", "address": "127.0.0.1:1", "model": "m"},
                {"name": "large", "address": "127.0.0.1:2", "model": "m"},
            ],
        }
    )
    http = await HttpFront.start(cfg, router)
    yield router, f"http://127.0.0.1:{http.port}"
    await http.stop()
    assert router.open == 0, "a flow was left open"


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


HELLO = [{"role": "user", "content": "What is the capital of France?"}]


async def test_a_completion_carries_the_answer_usage_and_decision(
    front: tuple[Scripted, str],
) -> None:
    router, base = front
    raw = await client(base).chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, max_tokens=4, temperature=0.0, seed=7, stop=["\n"]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is the capital."
    assert completion.choices[0].finish_reason == "length"
    assert completion.model == "small"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    assert raw.headers["x-tierroute-tier"] == "small"
    assert raw.headers["x-tierroute-score"] == "2.5000"
    assert raw.headers["x-tierroute-reasons"] == "score_below_threshold,below_quality_bar:tiny"
    extra = completion.model_extra or {}
    assert extra["tierroute"]["decision"]["tier"] == "small"
    sent = router.requests[0]
    assert sent.force_tier == "" and sent.messages[0].content == HELLO[0]["content"]
    assert sent.sampling.max_tokens == 4 and sent.sampling.temperature == 0.0
    assert sent.sampling.seed == 7 and list(sent.sampling.stop) == ["\n"]


@pytest.mark.parametrize("depth", [65, 1000])
async def test_a_body_nested_too_deep_is_refused_with_openai_s_error_not_a_traceback(
    front: tuple[Scripted, str], caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    """A 2 KB body nested 1,000 deep made the parser itself give up (a RecursionError and a
    traceback per request); 65 is one past the limit (router.http_max_json_depth)."""
    router, base = front
    nested = "[" * (depth - 2) + "]" * (depth - 2)
    body = '{"model": "auto", "messages": [{"role": "user", "content": "hi", "x": ' + nested + "}]}"
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "json_too_deep" and "router.http_max_json_depth" in error["message"]
    assert not router.requests and "Traceback" not in caplog.text
    # At the limit it is parsed (and refused only for what it says).
    fits = "[" * 60 + "]" * 60
    ok = '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "x": ' + fits + "}"
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/v1/chat/completions", content=ok)
    assert r.status_code == 200, r.text


async def test_a_defect_is_a_500_in_openai_s_shape_with_the_trace_id_only(
    front: tuple[Scripted, str], caplog: pytest.LogCaptureFixture
) -> None:
    router, _ = front

    async def broken(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        yield Decided(decision())
        raise RuntimeError("the database password is hunter2")

    router.script = broken
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{front[1]}/v1/chat/completions", json={"model": "auto", "messages": HELLO}
        )
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["type"] == "server_error" and "trace id" in error["message"]
    assert "hunter2" not in r.text and "hunter2" in caplog.text  # logged, never sent


async def test_a_whole_answer_cut_short_says_nothing_was_returned_and_no_grpc_words(
    front: tuple[Scripted, str],
) -> None:
    router, base = front

    async def stalls(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        yield Decided(decision())
        yield Token("Paris is the", "small")
        raise DeadlineExceeded(
            "tier 'small' failed: DEADLINE_EXCEEDED, 12 characters into its answer: the answer "
            "is incomplete",
            grpc_note=" (the partial summary is in the trailing metadata)",
        )

    router.script = stalls
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/v1/chat/completions", json={"model": "auto", "messages": HELLO}
        )
    assert r.status_code == 504
    message = r.json()["error"]["message"]
    assert "12 characters of the answer had arrived; an incomplete answer is not returned" in (
        message
    )
    assert "metadata" not in message and "trailer" not in message


async def test_naming_a_tier_answers_from_it_without_escalation_and_says_so(
    front: tuple[Scripted, str],
) -> None:
    router, base = front
    completion = await client(base).chat.completions.create(model="small", messages=HELLO)
    assert completion.model == "small"
    assert router.requests[0].force_tier == "small" and router.requests[0].disable_escalation
    with pytest.raises(openai.BadRequestError, match="pins that tier"):
        await client(base).chat.completions.create(
            model="small", messages=HELLO, extra_body={"tierroute": {"disable_escalation": False}}
        )


async def test_naming_a_tier_pins_it_and_the_extension_carries_an_slo(
    front: tuple[Scripted, str],
) -> None:
    router, base = front
    completion = await client(base).chat.completions.create(
        model="large",
        messages=HELLO,
        extra_body={"tierroute": {"max_ttft_ms": 500, "disable_escalation": True}},
    )
    assert completion.model == "large"
    sent = router.requests[0]
    assert sent.force_tier == "large" and sent.disable_escalation
    assert sent.slo.max_ttft_ms == 500 and not sent.slo.HasField("max_cost_per_1k")


async def test_a_stream_is_openai_chunks_with_usage_and_done(front: tuple[Scripted, str]) -> None:
    _, base = front
    stream = await client(base).chat.completions.create(
        model="auto", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    async with httpx.AsyncClient() as http:
        body = {"model": "auto", "messages": HELLO, "stream": True}
        r = await http.post(f"{base}/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")


async def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(
    front: tuple[Scripted, str],
) -> None:
    router, base = front

    async def dies(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        yield Decided(decision())
        yield Token("Par", "small")
        raise Unavailable("tier 'small' failed after 3 characters were delivered")

    router.script = dies
    stream = await client(base).chat.completions.create(model="auto", messages=HELLO, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="after 3 characters"):
        async for chunk in stream:
            seen.append(chunk)
    assert any(c.choices and c.choices[0].delta.content == "Par" for c in seen)
    async with httpx.AsyncClient() as http:
        body = {"model": "auto", "messages": HELLO, "stream": True}
        r = await http.post(f"{base}/v1/chat/completions", json=body)
    assert "[DONE]" not in r.text
    last = json.loads(r.text.strip().splitlines()[-1].removeprefix("data: "))
    assert last["error"]["type"] == "service_unavailable"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidArgument("sampling.temperature is 5; use 0 to 2"), 400, openai.BadRequestError),
        (TooLarge("prompt too long: 40000 characters"), 413, openai.APIStatusError),
        (Unavailable("no tier is available: small: circuit open"), 503, openai.InternalServerError),
        (DeadlineExceeded("the client's deadline passed"), 504, openai.InternalServerError),
    ],
)
async def test_the_flow_s_errors_are_openai_errors_with_their_status(
    front: tuple[Scripted, str], error: Exception, status: int, kind: type[Exception]
) -> None:
    router, base = front

    async def fails(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        raise error
        yield  # an async generator

    router.script = fails
    for stream in (False, True):
        with pytest.raises(kind) as caught:
            await client(base).chat.completions.create(model="auto", messages=HELLO, stream=stream)
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
        assert str(error) in caught.value.message


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"messages": HELLO}, 400, "`model` is required"),
        ({"model": "huge", "messages": HELLO}, 404, "the model 'huge' does not exist"),
        ({"model": "auto", "messages": []}, 400, "`messages` must be a non-empty array"),
        ({"model": "auto", "messages": [{"role": "user", "content": 3}]}, 400, "content"),
        ({"model": "auto", "messages": HELLO, "max_tokens": 0}, 400, "`max_tokens` is 0"),
        ({"model": "auto", "messages": HELLO, "temperature": "hot"}, 400, "`temperature`"),
        ({"model": "auto", "messages": HELLO, "n": 2}, 400, "one choice"),
        ({"model": "auto", "messages": HELLO, "tierroute": {"fast": 1}}, 400, "unknown fields"),
        (
            {"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "text only",
        ),
    ],
)
async def test_bad_requests_are_refused_before_the_router_is_asked(
    front: tuple[Scripted, str], body: dict[str, Any], status: int, says: str
) -> None:
    router, base = front
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    assert router.requests == []


async def test_a_body_over_the_limit_or_not_json_is_refused(front: tuple[Scripted, str]) -> None:
    router, base = front
    async with httpx.AsyncClient() as http:
        big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await http.post(f"{base}/v1/chat/completions", json=big)
        assert r.status_code == 413 and "router.http_max_body_bytes" in r.json()["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted as it comes
            for _ in range(5):
                yield b" " * 1000

        r = await http.post(f"{base}/v1/chat/completions", content=chunked())
        assert r.status_code == 413
        r = await http.post(f"{base}/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = await http.get(f"{base}/v1/nothing")
        assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    assert router.requests == []


async def test_over_the_in_flight_limit_a_request_gets_429_with_retry_after(
    front: tuple[Scripted, str],
) -> None:
    router, base = front
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        yield Decided(decision())
        started.set()
        await release.wait()
        yield Finished(pb.RouteSummary(tier="small"))

    router.script = slow
    first = asyncio.create_task(client(base).chat.completions.create(model="auto", messages=HELLO))
    await started.wait()
    with pytest.raises(openai.RateLimitError) as caught:
        await client(base).chat.completions.create(model="auto", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "1"
    release.set()
    await first
    router.script = answer
    await client(base).chat.completions.create(model="auto", messages=HELLO)  # the slot is back


async def test_a_client_that_leaves_mid_stream_closes_the_flow(front: tuple[Scripted, str]) -> None:
    router, base = front
    closed = asyncio.Event()
    started = asyncio.Event()

    async def endless(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        yield Decided(decision())
        try:
            while True:
                yield Token("la ", "small")
                started.set()
                await asyncio.sleep(0)
        finally:
            closed.set()

    router.script = endless
    async with httpx.AsyncClient() as http:
        body = {"model": "auto", "messages": HELLO, "stream": True}
        async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            async for _ in r.aiter_bytes():
                break
    await asyncio.wait_for(closed.wait(), 30)
    await started.wait()


async def test_models_health_and_readiness(front: tuple[Scripted, str]) -> None:
    router, base = front
    models = await client(base).models.list()
    assert [m.id for m in models.data] == ["auto", "small", "large"]
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/readyz")).status_code == 200
        router.ready = False
        r = await http.get(f"{base}/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_headers_over_the_limit_get_431_before_anything_reads_the_request(
    front: tuple[Scripted, str],
) -> None:
    router, base = front
    path = {"method": "POST", "path": "/v1/chat/completions"}
    refused = REGISTRY.get_sample_value("tierroute_http_requests_total", {**path, "code": "431"})
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "auto", "messages": HELLO},
            headers={"x-padding": "p" * 20_000},
        )
        assert r.status_code == 431, r.text
        # Counted once the response is complete (the edge's last step after sending it).
        assert (
            REGISTRY.get_sample_value("tierroute_http_requests_total", {**path, "code": "431"})
            == (refused or 0) + 1
        )
        error = r.json()["error"]
        assert "router.http_max_header_bytes" in error["message"]
        assert error["code"] == "headers_too_large"
        # Under the limit, the same request is served.
        r = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "auto", "messages": HELLO},
            headers={"x-padding": "p" * 1000},
        )
        assert r.status_code == 200, r.text
    assert len(router.requests) == 1


class _Ended(SpanProcessor):
    """Spans as they end, and an event each time one does (no polling for them)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.changed = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
        self.changed.set()

    async def one(self, name: str, trace_id: int) -> ReadableSpan:
        async with asyncio.timeout(30):
            while True:
                for span in self.spans:
                    if span.name == name and span.context.trace_id == trace_id:
                        return span
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def ended() -> Iterator[_Ended]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    processor = _Ended()
    provider.add_span_processor(processor)
    yield processor
    processor.spans.clear()


async def test_each_http_request_is_a_server_span_continuing_the_caller_s_trace(
    front: tuple[Scripted, str], ended: _Ended
) -> None:
    router, base = front

    async def traced(request: pb.RouteRequest) -> AsyncIterator[RouteEvent]:
        with trace.get_tracer("test").start_as_current_span("flow"):
            async for event in answer(request):
                yield event

    router.script = traced
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    for stream in (False, True):
        parent = f"00-{trace_id:032x}-{0xB7AD6B7169203331 + stream:016x}-01"
        body = {"model": "auto", "messages": HELLO, "stream": stream}
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{base}/v1/chat/completions", json=body, headers={"traceparent": parent}
            )
        assert r.status_code == 200, r.text
        span = await ended.one("POST /v1/chat/completions", trace_id)
        ended.spans.remove(span)
        assert span.kind == trace.SpanKind.SERVER
        assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331 + stream
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["tierroute.client"] == "peer:127.0.0.1"
        flow = await ended.one("flow", trace_id)
        ended.spans.remove(flow)
        assert flow.parent is not None and flow.parent.span_id == span.context.span_id
        # The span covers the whole answer: a stream's span ends after its last chunk.
        assert span.end_time >= flow.end_time

    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "nope", "messages": HELLO},
            headers={"traceparent": f"00-{trace_id + 1:032x}-{1:016x}-01"},
        )
    assert r.status_code == 404
    span = await ended.one("POST /v1/chat/completions", trace_id + 1)
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.is_ok or span.status.status_code == trace.StatusCode.UNSET
