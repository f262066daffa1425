"""The tier service on a real vLLM engine (SmolLM2-135M on CPU), over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS
from tests.helpers.otlp import OTLPReceiver
from tests.helpers.services import DEFAULT_CONFIG, ROOT, ServiceProcess, start_tier
from tests.helpers.tools import grpcurl, run
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.runtime.reaper import shared_memory_of
from tierroute.tier.v1 import tier_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.tier

FRANCE = [common_pb.ChatMessage(role="user", content="What is the capital of France?")]
COUNT = [common_pb.ChatMessage(role="user", content="Count from 1 to 1000, separated by commas.")]


@pytest_asyncio.fixture(scope="module")
async def stub(small_tier: ServiceProcess) -> AsyncIterator[pb_grpc.TierServiceStub]:
    async with grpc.aio.insecure_channel(small_tier.address) as channel:
        yield pb_grpc.TierServiceStub(channel)


async def generate(
    stub: pb_grpc.TierServiceStub, metadata: tuple[tuple[str, str], ...] = (), **fields: object
) -> tuple[list[pb.GenerateChunk], pb.GenerateComplete]:
    chunks: list[pb.GenerateChunk] = []
    complete = None
    async for response in stub.Generate(
        pb.GenerateRequest(**fields), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
    ):
        if response.HasField("chunk"):
            assert complete is None, "a chunk came after complete"
            chunks.append(response.chunk)
        elif response.HasField("waiting"):
            assert not chunks, "waiting came after the first chunk"
        else:
            complete = response.complete
    assert complete is not None, "the stream ended without a complete message"
    return chunks, complete


def greedy(max_tokens: int = 48) -> common_pb.SamplingParams:
    return common_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens)


def test_health_was_not_serving_while_the_engine_loaded(small_tier: ServiceProcess) -> None:
    assert small_tier.health_seen == [
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]


async def test_describe_reports_model_limits_prices_and_readiness(
    stub: pb_grpc.TierServiceStub,
) -> None:
    d = await stub.Describe(pb.DescribeRequest(), timeout=10)
    assert d.tier == "small"
    assert d.model.endswith("models/smollm2-135m-instruct")
    assert d.max_context_tokens == 2048
    assert d.price_per_1k_input_usd == pytest.approx(0.0001)
    assert d.price_per_1k_output_usd == pytest.approx(0.0002)
    assert d.dtype == "float32" and d.device == "cpu" and d.ready  # configs/default.yaml
    assert d.default_max_tokens == 256


async def test_capital_of_france_mentions_paris_with_usage_and_cost(
    stub: pb_grpc.TierServiceStub,
) -> None:
    chunks, complete = await generate(stub, messages=FRANCE, sampling=greedy())
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    assert complete.finish_reason == common_pb.FINISH_REASON_STOP
    assert complete.prompt_tokens > 5
    assert complete.completion_tokens == sum(c.token_count for c in chunks) > 0
    assert 0 < complete.time_to_first_token_ms <= complete.total_time_ms
    expected = (complete.prompt_tokens * 0.0001 + complete.completion_tokens * 0.0002) / 1000
    assert complete.cost_usd == pytest.approx(expected)
    assert complete.model.endswith("smollm2-135m-instruct")


async def test_streamed_deltas_equal_a_non_streamed_run_at_temperature_zero(
    stub: pb_grpc.TierServiceStub,
) -> None:
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about the sea."}],
        [{"role": "user", "content": "Explain what a CPU does in two sentences."}],
    ]
    reference = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(ROOT / "tests" / "integration" / "tier" / "reference_generate.py"),
            str(DEFAULT_CONFIG),
            "small",
            "48",
        ],
        input=json.dumps(conversations),
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    lines = [ln for ln in reference.stdout.splitlines() if ln.startswith("REFERENCE ")]
    assert lines, reference.stderr[-3000:]
    expected = json.loads(lines[-1].removeprefix("REFERENCE "))
    for messages, want in zip(conversations, expected, strict=True):
        chunks, _ = await generate(
            stub, messages=[common_pb.ChatMessage(**m) for m in messages], sampling=greedy(48)
        )
        assert "".join(c.text for c in chunks) == want


async def test_structured_output_parses_against_its_schema(stub: pb_grpc.TierServiceStub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "response_content": {"type": "string", "maxLength": 60},
            "confidence_score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["response_content", "confidence_score"],
        "additionalProperties": False,
    }
    chunks, complete = await generate(
        stub, messages=FRANCE, sampling=greedy(160), json_schema=json.dumps(schema)
    )
    assert complete.finish_reason == common_pb.FINISH_REASON_STOP
    answer = json.loads("".join(c.text for c in chunks))
    jsonschema.validate(answer, schema)


async def test_logprobs_come_back_per_token_with_top_alternatives(
    stub: pb_grpc.TierServiceStub,
) -> None:
    chunks, complete = await generate(
        stub, messages=FRANCE, sampling=greedy(16), logprobs=True, top_logprobs=3
    )
    entries = [lp for c in chunks for lp in c.logprobs]
    assert len(entries) == complete.completion_tokens
    for i, c in enumerate(chunks):
        assert len(c.logprobs) == c.token_count
        tokens = "".join(lp.token for lp in c.logprobs)
        # The end-of-turn token is counted and has a logprob, but is not text.
        final = i == len(chunks) - 1 and complete.finish_reason == common_pb.FINISH_REASON_STOP
        assert tokens == c.text or (final and tokens == c.text + "<|im_end|>")
    for lp in entries:
        assert lp.logprob <= 0.0
        assert len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        # Greedy decoding picks the most likely token.
        assert lp.logprob == pytest.approx(lp.top[0].logprob)
    no_logprobs, _ = await generate(stub, messages=FRANCE, sampling=greedy(8))
    assert all(not c.logprobs for c in no_logprobs)


async def test_eight_concurrent_streams_complete_with_their_own_token_counts(
    stub: pb_grpc.TierServiceStub,
) -> None:
    limits = [8, 9, 10, 11, 12, 13, 14, 15]
    results = await asyncio.gather(
        *(generate(stub, messages=COUNT, sampling=greedy(n), request_id=f"c{n}") for n in limits)
    )
    for n, (chunks, complete) in zip(limits, results, strict=True):
        assert complete.finish_reason == common_pb.FINISH_REASON_LENGTH
        assert complete.completion_tokens == n
        assert sum(c.token_count for c in chunks) == n


async def active(stub: pb_grpc.TierServiceStub) -> int:
    return (await stub.Describe(pb.DescribeRequest(), timeout=10)).active_requests


async def wait_idle(stub: pb_grpc.TierServiceStub, within_s: float = 10.0) -> bool:
    for _ in range(int(within_s / 0.1)):
        if await active(stub) == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_client_cancel_aborts_the_request_in_the_engine(
    stub: pb_grpc.TierServiceStub,
) -> None:
    assert await wait_idle(stub)
    call = stub.Generate(
        pb.GenerateRequest(messages=COUNT, sampling=greedy(1500)), timeout=CALL_TIMEOUT_SECONDS
    )
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 3:
            break
    assert await active(stub) == 1  # still generating for us
    call.cancel()
    assert await wait_idle(stub), "the engine kept generating after the client cancelled"


async def test_deadline_aborts_the_request_in_the_engine(stub: pb_grpc.TierServiceStub) -> None:
    assert await wait_idle(stub)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate_with_timeout(stub, 1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await wait_idle(stub), "the engine kept generating after the deadline passed"


async def generate_with_timeout(stub: pb_grpc.TierServiceStub, deadline_s: float) -> None:
    async for _ in stub.Generate(
        pb.GenerateRequest(messages=COUNT, sampling=greedy(1500)), timeout=deadline_s
    ):
        pass


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "empty prompt"),
        ({"prompt": "hi", "messages": FRANCE}, "not both"),
        ({"prompt": "hi", "sampling": common_pb.SamplingParams(temperature=3)}, "temperature is 3"),
        ({"prompt": "hi", "sampling": common_pb.SamplingParams(top_p=0)}, "top_p is 0"),
        ({"prompt": "hi", "sampling": common_pb.SamplingParams(stop=["x", ""])}, "empty string"),
        ({"prompt": "hi", "sampling": common_pb.SamplingParams(stop=["x"] * 17)}, "at most 16"),
        ({"prompt": "hi", "logprobs": True, "top_logprobs": 21}, "at most 20"),
        ({"prompt": "hi", "top_logprobs": 2}, "set logprobs to true"),
        ({"prompt": "hi", "json_schema": "{not json"}, "json_schema is not valid JSON"),
        ({"prompt": "hi", "json_schema": "[1, 2]"}, "must be a JSON object"),
        ({"messages": [common_pb.ChatMessage(role="robot", content="hi")]}, "messages[0].role"),
        (
            {"prompt": "hi", "sampling": common_pb.SamplingParams(max_tokens=5000)},
            "max_tokens 5000 = 5001 > the model's context of 2048 tokens",
        ),
        ({"prompt": "hello " * 2100}, "> the model's context of 2048 tokens"),
    ],
)
async def test_bad_input_is_invalid_argument_before_generation(
    stub: pb_grpc.TierServiceStub, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(stub, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


async def test_trace_context_continues_into_the_tier_and_the_engine(
    stub: pb_grpc.TierServiceStub, otlp_receiver: OTLPReceiver
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await generate(
        stub,
        metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),),
        messages=FRANCE,
        sampling=greedy(8),
    )
    server = await asyncio.to_thread(
        otlp_receiver.wait_for, lambda s: s.trace_id == trace_id and s.name.endswith("/Generate")
    )
    assert len(server) == 1
    span = server[0]
    assert span.parent_span_id == parent_id
    assert span.service == "tierroute-tier-small"
    assert span.attributes["tierroute.tier"] == "small"
    assert span.attributes["gen_ai.usage.output_tokens"] == 8
    # vLLM's own request span continues from the tier's span through trace_headers.
    engine = await asyncio.to_thread(
        otlp_receiver.wait_for,
        lambda s: s.trace_id == trace_id and s.parent_span_id == span.span_id,
    )
    assert engine, "vLLM did not continue the trace from the tier's span"


async def test_grpcurl_calls_describe(small_tier: ServiceProcess) -> None:

    code, out, err = await run(
        grpcurl(), "-plaintext", small_tier.address, "tierroute.tier.v1.TierService/Describe"
    )
    assert code == 0, err
    assert json.loads(out)["tier"] == "small"


def own_tier(tmp_path, name: str) -> ServiceProcess:  # type: ignore[no-untyped-def]
    """A tier process of the test's own, for tests that end it."""
    return start_tier(tmp_path / f"{name}.log")


async def test_sigterm_drains_in_flight_streams_then_stops_the_engine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tier = await asyncio.to_thread(own_tier, tmp_path, "drain")
    try:
        async with grpc.aio.insecure_channel(tier.address) as channel:
            stub = pb_grpc.TierServiceStub(channel)
            call = stub.Generate(
                pb.GenerateRequest(messages=COUNT, sampling=greedy(200)),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            first = await call.read()
            while first.HasField("waiting"):  # queued or in prefill: not yet streaming
                first = await call.read()
            assert first.HasField("chunk")
            tier.process.send_signal(signal.SIGTERM)
            tokens = first.chunk.token_count
            complete = None
            while (response := await call.read()) != grpc.aio.EOF:
                if response.HasField("chunk"):
                    tokens += response.chunk.token_count
                else:
                    complete = response.complete
            assert complete is not None, "the in-flight stream was cut by the shutdown"
            assert complete.finish_reason in (
                common_pb.FINISH_REASON_STOP,
                common_pb.FINISH_REASON_LENGTH,
            ), common_pb.FinishReason.Name(complete.finish_reason)
            assert complete.completion_tokens == tokens > 50
        code = await asyncio.to_thread(tier.process.wait, 60)
    finally:
        tier.stop()
    assert code == 0
    log = tier.log.read_text()
    assert "draining" in log and "stopped" in log
    # The engine left on its own: not killed, and its exit not reported as its death.
    assert "force killing" not in log and "EngineDeadError" not in log
    assert "still running after grace period" not in log
    assert " ERROR " not in log, log[-3000:]


async def test_a_dead_engine_is_unavailable_and_health_says_not_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import psutil

    tier = await asyncio.to_thread(own_tier, tmp_path, "dead")
    try:
        engine_cores = [
            p
            for p in psutil.Process(tier.process.pid).children(recursive=True)
            if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
        ]
        assert engine_cores, "no EngineCore child process found"
        for p in engine_cores:
            p.kill()
        async with grpc.aio.insecure_channel(tier.address) as channel:
            stub = pb_grpc.TierServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            # Health turns without any request having to discover the death first.
            status = None
            for _ in range(150):
                status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await generate(stub, messages=FRANCE, sampling=greedy(8))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "failed" in info.value.details()
            # Describe still answers, and says the tier is not ready.
            assert not (await stub.Describe(pb.DescribeRequest(), timeout=5)).ready
    finally:
        tier.stop()


def _wait_for_engine_process(proc: subprocess.Popen[bytes], timeout: float) -> list[Any]:
    """The tier's child processes once vLLM's engine core is among them (the tier is then
    listening and loading)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the tier exited while loading"
        children = psutil.Process(proc.pid).children(recursive=True)
        names = []
        for child in children:
            try:
                names.append(" ".join(child.cmdline()) + child.name())
            except psutil.Error:
                continue
        if any("EngineCore" in n or "VLLM" in n.upper() for n in names):
            return children
        time.sleep(0.1)  # polling for the event, not standing in for it
    raise AssertionError(f"no engine process appeared within {timeout:.0f} s")


def test_sigterm_while_the_engine_loads_leaves_no_engine_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import psutil

    port_file = tmp_path / "loading.port"
    with (tmp_path / "loading.log").open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tierroute.tier",
                "--config",
                str(DEFAULT_CONFIG),
                "--tier",
                "small",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Wait for the event itself: the engine's core process exists (the tier spawns it while
        # loading), however long this machine takes to get there. The load takes ~30 s after.
        children = _wait_for_engine_process(proc, timeout=240)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text().strip()}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        children += [
            c for c in psutil.Process(proc.pid).children(recursive=True) if c not in children
        ]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(180)
    finally:
        proc.kill()
    assert code == 0, (tmp_path / "loading.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(children, 30)
    assert not alive, f"engine processes left running: {[p.pid for p in alive]}"


def test_a_killed_tier_takes_its_engine_processes_with_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import psutil

    tier = start_tier(tmp_path / "doomed.log")
    descendants: list[Any] = []
    try:
        descendants = psutil.Process(tier.process.pid).children(recursive=True)
        names = []
        for p in descendants:
            with contextlib.suppress(psutil.Error):
                names.append(p.name() + " " + " ".join(p.cmdline()))
        assert any("VLLM" in n.upper() for n in names), names
        assert any("tierroute.runtime.reaper" in n for n in names), names
        segments = set().union(*(shared_memory_of(p.pid) for p in descendants))
        assert segments, "the engine maps shared memory on this platform"
        tier.process.kill()  # SIGKILL: the tier gets no chance to shut its engine down
        tier.process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=60)
    finally:
        for p in descendants:  # never leave an engine behind, even when the test fails
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert not alive, f"left running after the tier was killed: {[p.pid for p in alive]}"
    left = [s for s in segments if Path(s).exists()]
    assert not left, f"shared memory left behind: {left}"
    pids = [tier.process.pid, *(p.pid for p in descendants)]
    semaphores = [str(f) for pid in pids for f in Path("/dev/shm").glob(f"sem.loky-{pid}-*")]
    assert not semaphores, f"semaphores left behind: {semaphores}"
