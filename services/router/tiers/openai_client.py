"""An OpenAI-compatible server as a tier (`kind: openai`): `vllm serve`, a vLLM fleet behind its
own router, a hosted API. Chat completions, streamed; its faults read as the tier-client
interface's kinds (tiers/client.py), so that failover, breakers, replicas, escalation and
validation work on it as on our own tier service.

The HTTP client is httpx: asyncio-native, one connection pool per replica with keep-alive, and
the raw response in hand: the status and `Retry-After` of a refusal, the server's own error
message, fields the OpenAI SDK would drop (vLLM's `max_model_len`), and a stream closed the
moment the router stops reading it (the upstream engine then aborts the request). The SDK's own
retries would also hide failures from the breaker.

Faults: a refused or reset connection and 5xx are the tier failing; 429, and 503 with
`Retry-After`, are load (overloaded, with the hint); 400 is the request's fault: a context too
long for the model (`too_long`: a tier with a larger window may take it) or a bad parameter;
401/403 say the API key was refused, naming where it was read from (never the key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import TierConfig
from tierroute.router.tiers.client import TierError, refused
from tierroute.tier.v1 import tier_service_pb2 as tier_pb

logger = logging.getLogger(__name__)

_FINISH = {
    "stop": common_pb.FINISH_REASON_STOP,
    "length": common_pb.FINISH_REASON_LENGTH,
    "abort": common_pb.FINISH_REASON_ABORT,
    "tool_calls": common_pb.FINISH_REASON_STOP,
    "content_filter": common_pb.FINISH_REASON_ABORT,
}
# Keep-alive connections per replica, and how long an idle one is kept.
POOL_CONNECTIONS = 64
KEEPALIVE_SECONDS = 30.0
# After a refused connection the replica counts as down this long, then is tried again.
DOWN_SECONDS = 1.0


def chat_body(tier: TierConfig, request: tier_pb.GenerateRequest) -> dict[str, Any]:
    """The chat completion request for `request`: its messages, its sampling one to one, log
    probabilities where asked, the answer envelope's schema as a JSON-schema response format."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    if not messages:
        messages = [{"role": "user", "content": request.prompt}]
    s = request.sampling
    body: dict[str, Any] = {
        "model": tier.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if s.max_tokens:
        body["max_tokens"] = s.max_tokens
    if s.HasField("temperature"):
        body["temperature"] = s.temperature
    if s.HasField("top_p"):
        body["top_p"] = s.top_p
    if s.stop:
        body["stop"] = list(s.stop)
    if s.HasField("seed"):
        body["seed"] = s.seed
    if request.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    if request.json_schema:
        schema = json.loads(request.json_schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    return body


def _message_of(response: httpx.Response, text: str) -> str:
    """The server's own error message, from OpenAI's error shape or vLLM's older one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500] or response.reason_phrase
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if doc.get("message"):
            return str(doc["message"])[:500]
    return text.strip()[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date, or none: no hint


class OpenAiCall:
    """One streamed chat completion; its events as the tier service's GenerateResponses."""

    def __init__(self, client: OpenAiTierClient, body: dict[str, Any], timeout: float | None):
        self._client = client
        self._body = body
        self._timeout = timeout
        self._stream: AsyncIterator[tier_pb.GenerateResponse] | None = None
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> AsyncIterator[tier_pb.GenerateResponse]:
        self._stream = self._responses()
        return self._stream

    async def _responses(self) -> AsyncIterator[tier_pb.GenerateResponse]:
        client = self._client
        started = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] = {}
        finish = ""
        timeout = client.timeout(self._timeout)
        try:
            async with client.http.stream(
                "POST", "chat/completions", json=self._body, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise client.refusal(response, text)
                client.down_until = 0.0
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise TierError("unavailable", _message_of(response, data), label="HTTP")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        text = (choice.get("delta") or {}).get("content") or ""
                        logprobs = [
                            common_pb.TokenLogprob(token=t.get("token", ""), logprob=t["logprob"])
                            for t in ((choice.get("logprobs") or {}).get("content") or [])
                        ]
                        if text or logprobs:
                            first = first or time.perf_counter()
                            yield tier_pb.GenerateResponse(
                                chunk=tier_pb.GenerateChunk(
                                    text=text, logprobs=logprobs, token_count=len(logprobs)
                                )
                            )
        except httpx.TimeoutException as error:
            raise TierError("deadline", f"{client.where}: {type(error).__name__}") from None
        except (httpx.TransportError, json.JSONDecodeError) as error:
            if isinstance(error, httpx.ConnectError):
                client.down_until = time.monotonic() + DOWN_SECONDS
            raise TierError(
                "unavailable", f"{client.where}: {type(error).__name__}: {error}", label="HTTP"
            ) from None
        end = time.perf_counter()
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
        tier = client.tier
        yield tier_pb.GenerateResponse(
            complete=tier_pb.GenerateComplete(
                finish_reason=_FINISH.get(finish, common_pb.FINISH_REASON_UNSPECIFIED),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                time_to_first_token_ms=((first or end) - started) * 1000.0,
                total_time_ms=(end - started) * 1000.0,
                cost_usd=(
                    prompt_tokens * tier.price_per_1k_input_usd
                    + completion_tokens * tier.price_per_1k_output_usd
                )
                / 1000.0,
                model=tier.model,
            )
        )

    def cancel(self) -> None:
        """Close the stream (the upstream sees the connection go and aborts the request)."""
        stream = self._stream
        if stream is None or self._closing is not None:
            return
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            self._closing = asyncio.ensure_future(aclose())
            self._client.closing.add(self._closing)
            self._closing.add_done_callback(self._client.closing.discard)


class OpenAiTierClient:
    """One replica of a tier served by an OpenAI-compatible server at `base_url` (".../v1")."""

    def __init__(self, tier: TierConfig, base_url: str, api_key: str | None, key_source: str):
        self.tier = tier
        self.address = base_url
        self.operation = f"chat {tier.model}"  # OpenTelemetry GenAI: "{operation} {model}"
        self.where = f"tier {tier.name!r} at {base_url}"
        self._key_source = key_source
        headers = dict(tier.headers)
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=self.timeout(None),
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=POOL_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )
        self.down_until = 0.0  # time.monotonic() until which a refused connection says down
        self.closing: set[asyncio.Task[None]] = set()

    def timeout(self, total: float | None) -> httpx.Timeout:
        """Connect within the tier's connect timeout; each read within its read timeout, and
        never past the call's own `total` budget."""
        read = self.tier.read_timeout_seconds
        if total is not None:
            read = min(read, total)
        return httpx.Timeout(read, connect=self.tier.connect_timeout_seconds)

    def refusal(self, response: httpx.Response, text: str) -> TierError:
        """What a non-200 answer means, as a tier-client failure."""
        status = response.status_code
        label = f"HTTP {status}"
        message = f"{self.where}: {_message_of(response, text)}"
        if status in (401, 403):
            return TierError(
                "unavailable",
                f"{self.where} refused the API key read from {self._key_source} "
                f"({_message_of(response, text)}): check it",
                label=label,
            )
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            return TierError("overloaded", message, _retry_after(response), label=label)
        if status in (400, 404, 413, 422):
            return refused(message, label)
        return TierError("unavailable", message, label=label)

    def generate(
        self,
        request: tier_pb.GenerateRequest,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> OpenAiCall:
        body = chat_body(self.tier, request)
        return OpenAiCall(self, body, timeout)

    async def describe(self, seconds: float | None) -> tier_pb.DescribeResponse:
        """From `GET /models`: the model, and its context window where the server reports it
        (vLLM's `max_model_len`), else the configured one."""
        card = await self.card(seconds)
        window = int(card.get("max_model_len") or self.tier.window() or 0)
        return tier_pb.DescribeResponse(
            tier=self.tier.name,
            model=self.tier.model,
            max_context_tokens=window,
            price_per_1k_input_usd=self.tier.price_per_1k_input_usd,
            price_per_1k_output_usd=self.tier.price_per_1k_output_usd,
            ready=True,
            default_max_tokens=self.tier.max_tokens,
            default_temperature=self.tier.temperature,
        )

    async def card(self, seconds: float | None) -> dict[str, Any]:
        """The tier's model as `GET /models` lists it (TierError: not reachable, refused, or
        the model is not served there)."""
        try:
            response = await self.http.get("models", timeout=self.timeout(seconds))
        except httpx.TimeoutException:
            raise TierError("deadline", f"{self.where}: GET /models timed out") from None
        except httpx.TransportError as error:
            raise TierError("unavailable", f"{self.where}: {error}", label="HTTP") from None
        if response.status_code != 200:
            raise self.refusal(response, response.text)
        models = response.json().get("data") or []
        card = next((m for m in models if m.get("id") == self.tier.model), None)
        if card is None:
            served = ", ".join(str(m.get("id")) for m in models) or "none"
            raise TierError(
                "bad_request",
                f"{self.where} does not serve model {self.tier.model!r} "
                f"(tiers[{self.tier.name}].model; it serves: {served})",
            )
        return dict(card)

    def reachable(self) -> bool:
        return time.monotonic() >= self.down_until

    async def close(self) -> None:
        for task in list(self.closing):
            await asyncio.gather(task, return_exceptions=True)
        await self.http.aclose()


async def check_logprobs(client: OpenAiTierClient, seconds: float) -> str | None:
    """Whether an upstream validated by log-probabilities returns them: one small request that
    asks for them. The problem, in words naming the setting (None: fine, or the upstream could
    not be asked now, which is logged; the breaker and failover handle a tier that is down)."""
    probe = tier_pb.GenerateRequest(
        messages=[common_pb.ChatMessage(role="user", content="Say OK.")],
        sampling=common_pb.SamplingParams(max_tokens=2, temperature=0.0),
        logprobs=True,
    )
    seen = False
    try:
        async for response in client.generate(probe, seconds):
            seen = seen or bool(response.chunk.logprobs)
    except TierError as error:
        if error.kind == "bad_request":
            return (
                f"tiers[{client.tier.name}].validation is logprob, and {client.address} "
                f"refused a request for token log-probabilities: {error.message}"
            )
        logger.warning("could not check %s for log-probabilities now: %s", client.where, error)
        return None
    if not seen:
        return (
            f"tiers[{client.tier.name}].validation is logprob, but {client.address} returned no "
            "token log-probabilities (logprobs: true); use validation self_reported or none, "
            "or a server that returns them"
        )
    return None


async def learn_window(clients: Sequence[OpenAiTierClient], seconds: float) -> None:
    """The tier's context window from its server (the first replica that answers `GET
    /models` with a `max_model_len`) where the configuration sets none; a warning where the
    configured one is larger than the server's. None answering: logged, the window stays the
    configured one (or none), and the tier is called as usual."""
    tier = clients[0].tier
    configured = tier.configured_window()
    for client in clients:
        try:
            served = (await client.card(seconds)).get("max_model_len")
        except TierError as error:
            logger.warning("could not read the context window of %s now: %s", client.where, error)
            continue
        if not isinstance(served, int) or served <= 0:
            if configured is None:
                logger.info(
                    "%s reports no max_model_len: its window is unbounded to the router; "
                    "set tiers[%s].context_window",
                    client.where,
                    tier.name,
                )
            return
        if configured is None:
            tier.learn_served_window(served)
            logger.info("%s serves a context window of %d tokens", client.where, served)
        elif configured > served:
            logger.warning(
                "tiers[%s].context_window is %d, but %s serves %d tokens: a request between "
                "the two is sent there, refused and moved to a wider tier; set %d",
                tier.name,
                configured,
                client.where,
                served,
                served,
            )
        return
