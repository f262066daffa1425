"""The OpenAI-compatible HTTP front against the real suite: the router in-process with its HTTP
port open, two real vLLM tiers, called with the real `openai` client and with `curl -N`."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import pytest_asyncio

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, make_config
from tests.helpers.services import EMBEDDER_DIR, ServiceProcess, started
from tests.helpers.tools import run
from tierroute.router.service import host
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.auth import add_client

pytestmark = pytest.mark.tier

SIMPLE = [{"role": "user", "content": "What is the capital of France?"}]


def http_data(small: str, large: str, **router: Any) -> dict[str, Any]:
    tier = {"model": "smollm2", "max_tokens": 24, "temperature": 0.0,
            "engine_args": {"max_model_len": 2048}}  # fmt: skip
    return {
        "router": {
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "model": str(EMBEDDER_DIR),
            **router,
        },
        "tiers": [
            {"name": "small", "address": small, **tier},
            {"name": "large", "address": large, **tier},
        ],
    }


def http_config(small: str, large: str, **router: Any) -> Any:
    return make_config(http_data(small, large, **router))


@pytest_asyncio.fixture(scope="module")
async def base(small_tier: ServiceProcess, large_tier: ServiceProcess) -> AsyncIterator[str]:
    cfg = http_config(
        small_tier.address,
        large_tier.address,
        max_messages=8,
        max_prompt_tokens=1000,
        max_output_tokens=1024,
    )
    server, _ = await started(host(cfg))
    port = server.service.http.port  # type: ignore[attr-defined]
    yield f"http://127.0.0.1:{port}"
    await server.stop(0)


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


async def test_auto_routes_and_answers_with_the_decision_in_headers_and_extension(
    base: str,
) -> None:
    raw = await client(base).chat.completions.with_raw_response.create(
        model="auto", messages=SIMPLE, max_tokens=16
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0 and 0 < completion.usage.completion_tokens <= 16
    assert raw.headers["x-tierroute-tier"] == "small" == completion.model
    assert 0 <= float(raw.headers["x-tierroute-score"]) <= 4.0
    assert "score_below_threshold" in raw.headers["x-tierroute-reasons"]
    ext = (completion.model_extra or {})["tierroute"]
    assert ext["decision"]["tier"] == "small" and ext["summary"]["tier"] == "small"


async def test_a_stream_through_the_openai_client_matches_the_answer(base: str) -> None:
    kwargs: dict[str, Any] = {"model": "large", "messages": SIMPLE, "max_tokens": 12, "seed": 1}
    whole = await client(base).chat.completions.create(**kwargs)
    stream = await client(base).chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Greedy (the tiers' temperature is 0): the stream is the same answer, token for token.
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert {c.model for c in chunks} == {"large"}


async def test_curl_streams_server_sent_events_ending_with_done(base: str) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    body = json.dumps({"model": "auto", "messages": SIMPLE, "max_tokens": 8, "stream": True})
    code, out, err = await run(
        curl, "-sS", "-N", "-i", "-H", "content-type: application/json", "-d", body,
        f"{base}/v1/chat/completions", timeout=CALL_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert code == 0, err
    head, _, events = out.partition("\r\n\r\n")
    assert "text/event-stream" in head and "x-tierroute-tier: small" in head.lower()
    lines = [ln for ln in events.splitlines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


async def test_errors_are_openai_errors(base: str) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client(base).chat.completions.create(model="gpt-4o", messages=SIMPLE)
    with pytest.raises(openai.BadRequestError, match=r"temperature is 5; use 0 to 2"):
        await client(base).chat.completions.create(model="auto", messages=SIMPLE, temperature=5)
    too_long = [{"role": "user", "content": "x " * 20_000}]
    with pytest.raises(openai.APIStatusError, match="prompt too long") as caught:
        await client(base).chat.completions.create(model="auto", messages=too_long)
    assert caught.value.status_code == 413


async def test_each_input_limit_is_refused_with_the_setting_to_change(base: str) -> None:
    over: list[tuple[dict[str, Any], int, str]] = [
        ({"messages": SIMPLE * 9}, 413, "too many messages: 9, the limit is 8"),
        ({"messages": [{"role": "user", "content": "word " * 900}]}, 413,
         "the limit is 1000 (router.max_prompt_tokens)"),
        ({"messages": SIMPLE, "max_tokens": 1025}, 400,
         "the most a request may ask for is 1024 (router.max_output_tokens"),
    ]  # fmt: skip
    async with httpx.AsyncClient(timeout=60) as http:
        for body, status, says in over:
            r = await http.post(f"{base}/v1/chat/completions", json={"model": "auto", **body})
            assert r.status_code == status, r.text
            assert says in r.json()["error"]["message"]
        r = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE},
            headers={"x-big": "b" * 17_000},
        )
        assert r.status_code == 431 and "router.http_max_header_bytes" in r.text
        # At the limits, served.
        r = await http.post(
            f"{base}/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE * 8, "max_tokens": 4},
        )
        assert r.status_code == 200, r.text


async def test_models_lists_auto_and_the_tiers(base: str) -> None:
    models = await client(base).models.list()
    assert [m.id for m in models.data] == ["auto", "small", "large"]


async def test_no_tier_available_is_503_and_a_passed_deadline_504(
    small_tier: ServiceProcess,
) -> None:
    # Both tiers on ports where nothing listens.
    server, _ = await started(host(http_config("127.0.0.1:1", "127.0.0.1:2")))
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await client(f"http://127.0.0.1:{server.service.http.port}").chat.completions.create(  # type: ignore[attr-defined]
                model="auto", messages=SIMPLE
            )
        assert caught.value.status_code == 503
    finally:
        await server.stop(0)
    cfg = http_config(small_tier.address, small_tier.address, http_timeout_seconds=0.001)
    server, _ = await started(host(cfg))
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await client(f"http://127.0.0.1:{server.service.http.port}").chat.completions.create(  # type: ignore[attr-defined]
                model="small", messages=SIMPLE
            )
        assert caught.value.status_code == 504
    finally:
        await server.stop(0)


async def test_a_client_over_its_limit_gets_429_while_another_is_served(
    small_tier: ServiceProcess, large_tier: ServiceProcess, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    keys = {name: add_client(tokens, name) for name in ("app", "search", "batch")}
    cfg = http_config(
        small_tier.address,
        large_tier.address,
        auth_tokens_file=str(tokens),
        # One request per ~17 minutes each: no refill happens while the test runs.
        client_limits={"requests_per_second": 0.001},
        client_limits_overrides={"batch": {"tokens_per_minute": 10}},
    )
    server, address = await started(host(cfg))
    base = f"http://127.0.0.1:{server.service.http.port}"  # type: ignore[attr-defined]
    try:

        def as_(name: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=keys[name], max_retries=0)

        await as_("app").chat.completions.create(model="small", messages=SIMPLE, max_tokens=4)
        with pytest.raises(openai.RateLimitError, match="requests per second") as caught:
            await as_("app").chat.completions.create(model="small", messages=SIMPLE)
        assert int(caught.value.response.headers["retry-after"]) > 60
        # Another client is served meanwhile; over gRPC the first is refused too.
        await as_("search").chat.completions.create(model="small", messages=SIMPLE, max_tokens=4)
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.RouterServiceStub(channel).Score(
                    pb.ScoreRequest(prompt="hi"),
                    metadata=(("authorization", f"Bearer {keys['app']}"),),
                )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(refused.value.trailing_metadata() or ())
        assert int(trailers["grpc-retry-pushback-ms"]) > 60_000
        # Tokens per minute: the first request uses more than 10 (prompt and answer).
        done = await as_("batch").chat.completions.create(
            model="small", messages=SIMPLE, max_tokens=4
        )
        assert done.usage is not None and done.usage.total_tokens > 10
        with pytest.raises(openai.RateLimitError, match="10 tokens per minute"):
            await as_("batch").chat.completions.create(model="small", messages=SIMPLE)
    finally:
        await server.stop(0)


async def test_a_conversation_keeps_its_tier_across_turns_and_router_replicas(
    small_tier: ServiceProcess, large_tier: ServiceProcess, tmp_path: Path
) -> None:
    # Two routers sharing one metrics store (a SQLite file; Redis behaves alike).
    store = str(tmp_path / "metrics.sqlite")
    cfg = http_config(small_tier.address, large_tier.address, metrics_store=store)
    first, _ = await started(host(cfg))
    second, _ = await started(host(cfg))
    try:

        def at(server: Any) -> openai.AsyncOpenAI:
            port = server.service.http.port
            return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")

        chat = {"x-tierroute-conversation": "chat-7"}
        # Turn 1 is pinned to the large tier.
        await at(first).chat.completions.create(
            model="large", messages=SIMPLE, max_tokens=4, extra_headers=chat
        )
        # Turn 2 is easy (the score picks small) and goes to the other router: it stays large.
        raw = await at(second).chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, max_tokens=4, extra_headers=chat
        )
        assert raw.headers["x-tierroute-tier"] == "large"
        assert "conversation_affinity:large" in raw.headers["x-tierroute-reasons"]
        assert raw.parse().model == "large"
        # Another conversation, or none, is routed on its own.
        for headers in ({"x-tierroute-conversation": "chat-8"}, {}):
            other = await at(second).chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE, max_tokens=4, extra_headers=headers
            )
            assert other.headers["x-tierroute-tier"] == "small"
    finally:
        await first.stop(0)
        await second.stop(0)


async def test_a_tier_named_as_the_model_answers_even_where_auto_would_escalate(
    small_tier: ServiceProcess, large_tier: ServiceProcess, validator_process: ServiceProcess
) -> None:
    """The small tier's answers are judged against a bar none of them clears: `auto` escalates
    every one to the large tier, while model "small" is answered by the small tier, at its
    price, and the response says escalation was off."""
    cfg = http_data(small_tier.address, large_tier.address)
    cfg["tiers"][0] |= {"validation": "logprob"}
    cfg["escalation"] = {"min_confidence": 0.999}
    cfg["validator"] = {"address": validator_process.address}
    server, _ = await started(host(make_config(cfg)))
    try:
        base = f"http://127.0.0.1:{server.service.http.port}"  # type: ignore[attr-defined]
        auto = await client(base).chat.completions.create(
            model="auto", messages=SIMPLE, max_tokens=8
        )
        assert auto.model == "large"
        assert (auto.model_extra or {})["tierroute"]["summary"]["escalated"]
        raw = await client(base).chat.completions.with_raw_response.create(
            model="small", messages=SIMPLE, max_tokens=8
        )
        pinned = raw.parse()
        assert pinned.model == "small" and pinned.choices[0].message.content
        ext = (pinned.model_extra or {})["tierroute"]
        assert ext["summary"]["tier"] == "small" and not ext["summary"].get("escalated")
        assert [a["tier"] for a in ext["summary"]["attempts"]] == ["small"]
        assert "escalation_disabled" in raw.headers["x-tierroute-reasons"]
        assert "forced_tier:small" in ext["decision"]["reasons"]
    finally:
        await server.stop(0)
