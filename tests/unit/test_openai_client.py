"""An OpenAI-compatible upstream's faults, read as the tier-client interface's kinds: a small
scripted HTTP server (real uvicorn on loopback) plays a refusal, overload with and without a
hint, a bad request, a refused key and a stream cut mid-answer; a closed port plays a refused
connection. The real upstream (vLLM's own server): tests/integration/router/test_upstream.py."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tierroute.core.config import config_from_dict
from tierroute.router.front.server import bind
from tierroute.router.tiers.client import TierError
from tierroute.router.tiers.openai_client import OpenAiTierClient, chat_body, learn_window
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

SCRIPT: dict[str, object] = {}


async def chat(request: Request) -> Response:
    SCRIPT["body"] = await request.json()
    SCRIPT["auth"] = request.headers.get("authorization")
    what = SCRIPT.get("what", "ok")
    if what == "busy":
        return JSONResponse({"error": {"message": "too many requests"}}, 429, {"retry-after": "3"})
    if what == "unavailable":
        return JSONResponse({"error": {"message": "engine is down"}}, 503)
    if what == "draining":
        return JSONResponse({"error": {"message": "draining"}}, 503, {"retry-after": "2"})
    if what == "too_long":
        message = "This model's maximum context length is 2048 tokens."
        return JSONResponse({"object": "error", "message": message}, 400)
    if what == "bad_parameter":
        message = "top_p must be in (0, 1], got 1.5."
        return JSONResponse({"object": "error", "message": message}, 400)
    if what == "key":
        return JSONResponse({"error": {"message": "Unauthorized"}}, 401)

    async def events() -> AsyncIterator[bytes]:
        for word in ("Par", "is"):
            delta = {
                "choices": [
                    {
                        "delta": {"content": word},
                        "logprobs": {"content": [{"token": word, "logprob": -0.25}]},
                        "finish_reason": None,
                    }
                ]
            }
            yield f"data: {json.dumps(delta)}\n\n".encode()
        if what == "cut":
            raise RuntimeError("the upstream died mid-answer")
        end = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(end)}\n\n".encode()
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
        yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> Response:
    return JSONResponse({"data": [{"id": "m", "max_model_len": 4096}, {"id": "other"}]})


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    SCRIPT.clear()
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/models", models)])  # fmt: skip
    # Listening before uvicorn's first tick (as the HTTP front's own bind does): connections
    # queue until it serves them, so there is nothing to wait for.
    sock = bind("127.0.0.1:0")
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    await task


def client(base_url: str, **tier: object) -> OpenAiTierClient:
    cfg = config_from_dict(
        {
            "tiers": [
                {
                    "name": "up",
                    "kind": "openai",
                    "base_url": base_url,
                    "model": "m",
                    "price_per_1k_input_usd": 1.0,
                    "price_per_1k_output_usd": 2.0,
                    "headers": {"x-team": "search"},
                    **tier,
                }
            ]
        }
    )
    return OpenAiTierClient(cfg.tiers[0], base_url, "sk-secret", "the environment variable K")


REQUEST = tier_pb.GenerateRequest(
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    sampling={"max_tokens": 8, "temperature": 0.0, "stop": ["\n"], "seed": 3},
    logprobs=True,
)


async def generate(c: OpenAiTierClient) -> list[tier_pb.GenerateResponse]:
    return [r async for r in c.generate(REQUEST, 10.0)]


async def test_a_stream_becomes_chunks_with_logprobs_then_a_priced_summary(base_url: str) -> None:
    c = client(base_url)
    responses = await generate(c)
    await c.close()
    assert [r.chunk.text for r in responses[:-1]] == ["Par", "is"]
    assert [lp.logprob for r in responses[:-1] for lp in r.chunk.logprobs] == [-0.25, -0.25]
    done = responses[-1].complete
    assert (done.prompt_tokens, done.completion_tokens) == (9, 2)
    assert done.cost_usd == pytest.approx((9 * 1.0 + 2 * 2.0) / 1000)
    body = SCRIPT["body"]
    assert isinstance(body, dict)
    assert body["stop"] == ["\n"] and body["seed"] == 3 and body["max_tokens"] == 8
    assert body["logprobs"] is True and body["stream"] is True
    assert SCRIPT["auth"] == "Bearer sk-secret"


@pytest.mark.parametrize(
    ("what", "kind", "retry_after"),
    [
        ("busy", "overloaded", 3.0),
        ("draining", "overloaded", 2.0),
        ("unavailable", "unavailable", None),
        ("too_long", "too_long", None),
        ("bad_parameter", "bad_request", None),
        ("cut", "unavailable", None),
    ],
)
async def test_each_fault_is_read_as_its_kind(
    base_url: str, what: str, kind: str, retry_after: float | None
) -> None:
    SCRIPT["what"] = what
    c = client(base_url)
    with pytest.raises(TierError) as caught:
        await generate(c)
    await c.close()
    assert caught.value.kind == kind
    assert caught.value.retry_after_s == retry_after
    if what == "too_long":
        assert "maximum context length" in caught.value.message


async def test_a_refused_key_names_where_it_was_read_never_the_key(base_url: str) -> None:
    SCRIPT["what"] = "key"
    c = client(base_url)
    with pytest.raises(TierError) as caught:
        await generate(c)
    await c.close()
    assert caught.value.kind == "unavailable"
    assert "the environment variable K" in str(caught.value)
    assert "sk-secret" not in str(caught.value)


async def test_a_refused_connection_is_unavailable_and_the_replica_down_for_a_moment() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    c = client(f"http://127.0.0.1:{port}/v1")
    assert c.reachable()
    with pytest.raises(TierError) as caught:
        await generate(c)
    assert caught.value.kind == "unavailable"
    assert not c.reachable()
    await c.close()


async def test_describe_reads_the_model_and_its_window_from_the_models_list(
    base_url: str,
) -> None:
    c = client(base_url)
    described = await c.describe(10.0)
    assert described.model == "m" and described.max_context_tokens == 4096
    missing = client(base_url, model="absent")
    with pytest.raises(TierError) as caught:
        await missing.describe(10.0)
    assert "absent" in str(caught.value) and "other" in str(caught.value)
    await c.close()
    await missing.close()


async def test_a_tier_without_a_configured_window_takes_the_one_its_server_reports(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # closed: a replica that is down
    unset = client(base_url)
    assert unset.tier.window() is None
    down = OpenAiTierClient(unset.tier, dead, "sk-secret", "K")
    await learn_window([down, unset], 10.0)  # the first replica that answers says
    assert unset.tier.window() == 4096
    assert "could not read the context window" in caplog.text and dead in caplog.text
    # A configured window is kept; one larger than the server's is named with the fix.
    larger = client(base_url, context_window=16384)
    await learn_window([larger], 10.0)
    assert larger.tier.window() == 16384
    assert "tiers[up].context_window is 16384" in caplog.text and "serves 4096" in caplog.text
    smaller = client(base_url, context_window=1024)
    await learn_window([smaller], 10.0)
    assert smaller.tier.window() == 1024
    # No replica answers: the window stays unset, and the tier is called as usual.
    nothing = client(dead)
    await learn_window([nothing], 10.0)
    assert nothing.tier.window() is None
    for c in (unset, down, larger, smaller, nothing):
        await c.close()


def test_a_self_reported_tier_asks_for_the_envelope_as_a_json_schema() -> None:
    cfg = config_from_dict(
        {"tiers": [{"name": "up", "kind": "openai", "base_url": "http://h/v1", "model": "m"}]}
    )
    body = chat_body(cfg.tiers[0], tier_pb.GenerateRequest(prompt="hi", json_schema='{"a": 1}'))
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["response_format"]["json_schema"]["schema"] == {"a": 1}
    assert "temperature" not in body and "logprobs" not in body
