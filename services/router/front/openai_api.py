"""The OpenAI-compatible HTTP front: `POST /v1/chat/completions` (JSON, or server-sent events
with `stream: true`), `GET /v1/models`, `GET /healthz`, `GET /readyz`.

An adapter only: a request becomes a RouteRequest and goes through the same `route` the gRPC
Route uses (route/flow.py), so routing, escalation and failover exist once. The decision is
shown without breaking OpenAI's schema, in headers (`x-tierroute-tier`, `x-tierroute-score`,
`x-tierroute-reasons`) and in an extension field, `tierroute`, on the response (on the last
chunk of a stream).

Errors are OpenAI's error JSON, `{"error": {"message", "type", "param", "code"}}`, with the
matching HTTP status: 400 a bad request, 404 an unknown model, 413 a body or prompt over the
limit, 429 over the in-flight limit (with Retry-After), 503 no tier available, 504 the deadline
passed. A stream that fails after it started ends with an `error` event (which OpenAI's clients
raise), then `data: [DONE]` is not sent: the stream is not complete.

Starlette (ASGI) on uvicorn: the two are what FastAPI, vLLM's own OpenAI server and most of the
Python serving world run on, both are kept by the Encode team, and both are already in the
environment through vLLM. Plain Starlette keeps the request parsing here, so every error is
OpenAI's shape and says what to fix.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict
from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Overloaded,
    ServiceError,
    TooLarge,
    Unavailable,
)
from tierroute.router import metrics
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.flow import Decided, Escalated, Finished, RouteEvent, Token
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.auth import CLIENT, Clients
from tierroute.runtime.interceptors import trace_id

logger = logging.getLogger(__name__)

AUTO = "auto"
_PATHS = frozenset({"/v1/chat/completions", "/v1/models", "/healthz", "/readyz"})
RETRY_AFTER_SECONDS = 1
_FINISH = {
    common_pb.FINISH_REASON_STOP: "stop",
    common_pb.FINISH_REASON_LENGTH: "length",
    common_pb.FINISH_REASON_REPETITION: "stop",
    common_pb.FINISH_REASON_ABORT: "stop",
}
# What a ServiceError is over HTTP: (status, OpenAI error type).
_STATUS: dict[type[ServiceError], tuple[int, str]] = {
    TooLarge: (413, "invalid_request_error"),
    InvalidArgument: (400, "invalid_request_error"),
    Overloaded: (429, "rate_limit_error"),
    Unavailable: (503, "service_unavailable"),
    DeadlineExceeded: (504, "timeout"),
}


class Router(Protocol):
    """What the front needs of the router: the flow, its tiers, whether it is ready."""

    def route(self, request: pb.RouteRequest, deadline: Deadline) -> AsyncGenerator[RouteEvent]: ...

    @property
    def tiers(self) -> list[str]: ...

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    timeout_seconds: float = 300.0
    max_in_flight: int = 512
    max_header_bytes: int = 16 << 10
    # Who may call (bearer tokens); None: anyone.
    clients: Clients | None = None
    max_json_depth: int = 64


class HttpError(Exception):
    """An error to answer with OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


def from_service_error(error: ServiceError) -> HttpError:
    status, kind = next(
        (v for cls, v in _STATUS.items() if isinstance(error, cls)), (500, "server_error")
    )
    headers = {}
    if status == 429:
        wait = getattr(error, "retry_after_s", None)
        headers["retry-after"] = str(math.ceil(wait) if wait else RETRY_AFTER_SECONDS)
    return HttpError(status, str(error), kind, code=kind if status >= 429 else None,
                     headers=headers)  # fmt: skip


def app(router: Router, limits: Limits) -> ASGIApp:
    """The ASGI app over `router`."""
    front = _Front(router, limits)
    routes = Starlette(
        routes=[
            Route("/v1/chat/completions", front.chat_completions, methods=["POST"]),
            Route("/v1/models", front.models, methods=["GET"]),
            Route("/healthz", front.healthz, methods=["GET"]),
            Route("/readyz", front.readyz, methods=["GET"]),
        ],
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    return _Edge(routes, limits.max_header_bytes)


class _Edge:
    """Around every HTTP request: a SERVER span (continuing the caller's W3C trace context;
    the route flow's spans are its children) that lasts until the last byte of a stream, and
    the header-size limit (431), checked before anything reads the request."""

    def __init__(self, inner: ASGIApp, max_header_bytes: int) -> None:
        self.inner = inner
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        headers = scope["headers"]
        method, path = scope["method"], scope["path"]
        route = path if path in _PATHS else "unknown"
        arrived = time.perf_counter()
        span = telemetry.tracer(__name__).start_span(
            f"{method} {route}",
            context=propagate.extract({k.decode("latin-1"): v.decode("latin-1")
                                       for k, v in headers}),
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
        )  # fmt: skip
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False):
                size = sum(len(k) + len(v) for k, v in headers)
                if size > self.max_header_bytes:
                    logger.info("HTTP: refused a request with %d bytes of headers", size)
                    error = HttpError(
                        431, f"the request's headers are {size} bytes; the limit is "
                        f"{self.max_header_bytes} (router.http_max_header_bytes)",
                        code="headers_too_large",
                    )  # fmt: skip
                    await error.response()(scope, receive, sent)
                    return
                await self.inner(scope, receive, sent)
        finally:
            if status >= 500 or status == 0:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status or 'none'}"))
            span.end()
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - arrived)


async def _not_found(request: Request, exc: Exception) -> Response:
    return HttpError(
        404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"
    ).response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return HttpError(
        405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
    ).response()


class _Front:
    def __init__(self, router: Router, limits: Limits) -> None:
        self.router = router
        self.limits = limits
        self.in_flight = 0

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.router.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading"}, 503, headers={"retry-after": "1"})

    def _client(self, request: Request) -> str:
        """The caller: its token's client name, or without tokens `peer:<address>`; HttpError
        401 without a known bearer token. The token is never logged nor echoed."""
        clients = self.limits.clients
        if clients is None:
            peer = "peer:" + (request.client.host if request.client else "unknown")
            CLIENT.set(peer)
            trace.get_current_span().set_attribute("tierroute.client", peer)
            return peer
        header = request.headers.get("authorization")
        name = clients.from_header(header)
        if name is None:
            logger.info("HTTP: refused a request: %s bearer token", "unknown" if header else "no")
            raise HttpError(
                401,
                "missing or unknown API key: send `Authorization: Bearer <token>` (the OpenAI "
                "clients' api_key)",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        CLIENT.set(name)
        trace.get_current_span().set_attribute("tierroute.client", name)
        return name

    async def models(self, request: Request) -> Response:
        try:
            self._client(request)
        except HttpError as error:
            return error.response()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "tierroute"}
            for name in (AUTO, *self.router.tiers)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(self, request: Request) -> Response:
        try:
            self._client(request)
        except HttpError as error:
            return error.response()
        if self.in_flight >= self.limits.max_in_flight:
            return HttpError(
                429,
                f"the router has {self.in_flight} requests in flight, its limit "
                f"(router.max_concurrent_requests); retry after {RETRY_AFTER_SECONDS} s",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            ).response()
        self.in_flight += 1
        release: Callable[[], None] | None = self._release
        try:
            body = await self._body(request)
            route_request, stream, include_usage = parse(body, self.router.tiers)
            route_request.request_id = request.headers.get("x-request-id", "")
            conversation = request.headers.get("x-tierroute-conversation") or body.get("user")
            if isinstance(conversation, str):
                route_request.conversation_id = conversation[:256]
            deadline = Deadline.after(self.limits.timeout_seconds)
            events = self.router.route(route_request, deadline)
            try:
                decided = await anext(events)  # the decision, or the request's error
            except ServiceError as error:
                raise from_service_error(error) from None
            assert isinstance(decided, Decided)
            completion = _Completion(decided.decision)
            if stream:
                # From here the response owns the slot and the flow: whatever ends it (the
                # last event, an error, the client leaving), both are let go.
                release = None
                return _EventStream(
                    self._stream(completion, events, include_usage),
                    cleanup=lambda: _close(events, self._release),
                    media_type="text/event-stream",
                    headers={**completion.headers(), "cache-control": "no-cache"},
                )
            try:
                async for event in events:
                    completion.add(event)
            except ServiceError as error:
                failed = from_service_error(error)
                if completion.text:  # nothing of it was sent: this answer is all-or-nothing
                    failed.args = (
                        f"{failed}. {sum(map(len, completion.text))} characters of the answer "
                        "had arrived; an incomplete answer is not returned (ask again, or with "
                        "stream: true to receive an answer as it arrives)",
                    )
                raise failed from None
            return JSONResponse(completion.whole(), headers=completion.headers())
        except HttpError as error:
            return error.response()
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # a defect: OpenAI's error shape, the details in the log only
            return _internal(exc).response()
        finally:
            if release is not None:
                release()

    def _release(self) -> None:
        self.in_flight -= 1

    async def _body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        limit = self.limits.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(
                413, f"request body is {declared} bytes; the limit is {limit} "
                "(router.http_max_body_bytes)", code="body_too_large",
            )  # fmt: skip
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limit:
                raise HttpError(
                    413, f"request body is over {limit} bytes (router.http_max_body_bytes)",
                    code="body_too_large",
                )  # fmt: skip
        depth = self.limits.max_json_depth
        too_deep = HttpError(
            400, f"the body nests arrays and objects deeper than {depth} levels, the limit "
            "(router.http_max_json_depth)", code="json_too_deep",
        )  # fmt: skip
        try:
            body = json.loads(raw)
        except RecursionError:  # far deeper than the limit: the parser itself gave up
            raise too_deep from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if json_depth(body) > depth:
            raise too_deep
        return body

    async def _stream(
        self,
        completion: _Completion,
        events: AsyncGenerator[RouteEvent],
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        try:
            yield sse(completion.chunk({"role": "assistant", "content": ""}))
            try:
                async for event in events:
                    if isinstance(event, Token) and event.text:
                        yield sse(completion.chunk({"content": event.text}))
                    completion.add(event)
            except ServiceError as error:
                logger.info("stream %s ended by an error: %s", completion.id, error)
                yield sse(from_service_error(error).body())
                return
            except Exception as exc:  # a defect: the stream ends with an error event
                yield sse(_internal(exc).body())
                return
            yield sse(completion.chunk({}, completion.finish_reason(), extension=True))
            if include_usage:
                yield sse({**completion.chunk_head(), "choices": [], "usage": completion.usage()})
            yield b"data: [DONE]\n\n"
        finally:
            await events.aclose()  # the client left: the flow stops and releases its tier


def _internal(exc: Exception) -> HttpError:
    """An unexpected failure: logged once with its traceback and the trace id; the client
    gets the trace id only."""
    tid = trace_id()
    logger.error("HTTP request failed unexpectedly (trace id %s)", tid, exc_info=exc)
    return HttpError(
        500,
        f"internal error; the router's log has the details under trace id {tid}",
        "server_error",
        code="internal_error",
    )


async def _close(events: AsyncGenerator[RouteEvent], release: Callable[[], None]) -> None:
    try:
        await events.aclose()
    finally:
        release()


class _EventStream(StreamingResponse):
    """A streaming response that runs `cleanup` once it ends, however it ends (even when the
    client left before its first byte, so its body never started)."""

    def __init__(
        self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


def json_depth(doc: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON document (a scalar: 0), walked
    without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def sse(doc: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


class _Completion:
    """One answer as OpenAI's chat.completion (or its chunks)."""

    def __init__(self, decision: pb.RoutingDecision) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.decision = decision
        self.tier = decision.tier
        self.text: list[str] = []
        self.escalations: list[pb.Escalation] = []
        self.summary: pb.RouteSummary | None = None

    def add(self, event: RouteEvent) -> None:
        if isinstance(event, Token):
            self.text.append(event.text)
            self.tier = event.tier
        elif isinstance(event, Escalated):
            self.escalations.append(event.escalation)
            self.tier = event.escalation.to_tier
        elif isinstance(event, Finished):
            self.summary = event.summary
            self.tier = event.summary.tier or self.tier

    def headers(self) -> dict[str, str]:
        d = self.decision
        return {
            "x-tierroute-tier": d.tier,
            "x-tierroute-score": f"{d.complexity_score:.4f}",
            "x-tierroute-reasons": ",".join(
                [pb.ReasonCode.Name(r).removeprefix("REASON_CODE_").lower() for r in d.reason_codes]
                + list(d.reasons)
            ),
        }

    def finish_reason(self) -> str:
        reason = self.summary.finish_reason if self.summary else common_pb.FINISH_REASON_UNSPECIFIED
        return _FINISH.get(reason, "stop")

    def usage(self) -> dict[str, int]:
        u = self.summary.usage if self.summary else common_pb.Usage()
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }

    def extension(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "decision": MessageToDict(self.decision, preserving_proto_field_name=True)
        }
        if self.escalations:
            doc["escalations"] = [
                MessageToDict(e, preserving_proto_field_name=True) for e in self.escalations
            ]
        if self.summary is not None:
            doc["summary"] = MessageToDict(self.summary, preserving_proto_field_name=True)
        return doc

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.tier,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.text)},
                    "finish_reason": self.finish_reason(),
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
            "tierroute": self.extension(),
        }

    def chunk_head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.tier,
        }

    def chunk(
        self, delta: dict[str, Any], finish: str | None = None, extension: bool = False
    ) -> dict[str, Any]:
        doc = {
            **self.chunk_head(),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if extension:
            doc["tierroute"] = self.extension()
        return doc


# --- the request ---

_SLO_FIELDS = ("max_ttft_ms", "max_cost_per_1k")


def parse(body: Any, tiers: list[str]) -> tuple[pb.RouteRequest, bool, bool]:
    """A chat.completions body as a RouteRequest, and whether to stream and to send usage.
    HttpError, naming the field, for anything the router cannot serve."""
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise HttpError(400, f"`model` is required: {AUTO!r} or a tier ({', '.join(tiers)})",
                        param="model")  # fmt: skip
    if model != AUTO and model not in tiers:
        raise HttpError(
            404,
            f"the model {model!r} does not exist: use {AUTO!r} (the router decides) or a tier: "
            f"{', '.join(tiers)}",
            param="model",
            code="model_not_found",
        )
    # A tier named as the model answers: that tier only, never escalated (the decision's
    # reasons say so: forced_tier, escalation_disabled).
    pinned = model != AUTO
    request = pb.RouteRequest(force_tier=model if pinned else "", disable_escalation=pinned)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "`messages` must be a non-empty array of {role, content}",
                        param="messages")  # fmt: skip
    for i, m in enumerate(messages):
        request.messages.append(_message(m, i))
    n = body.get("n", 1)
    if n not in (1, None):
        raise HttpError(400, f"`n` is {n!r}; the router answers with one choice (n: 1)", param="n")
    s = request.sampling
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not _is_int(max_tokens) or not 1 <= max_tokens < 2**32:
            raise HttpError(400, f"`max_tokens` is {max_tokens!r}; use a positive integer",
                            param="max_tokens")  # fmt: skip
        s.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _is_number(value):
                raise HttpError(400, f"`{name}` is {value!r}; use a number", param=name)
            setattr(s, name, float(value))
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
            raise HttpError(400, "`stop` must be a string or an array of non-empty strings",
                            param="stop")  # fmt: skip
        s.stop.extend(stops)
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -(2**63) <= seed < 2**63:
            raise HttpError(400, f"`seed` is {seed!r}; use an integer", param="seed")
        s.seed = seed
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise HttpError(400, f"`stream` is {stream!r}; use true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise HttpError(400, "`stream_options` must be an object", param="stream_options")
    include_usage = bool(options.get("include_usage", False))
    _extension(body.get("tierroute"), request)
    return request, bool(stream), include_usage


def _extension(ext: Any, request: pb.RouteRequest) -> None:
    """The `tierroute` extension field: an SLO, no escalation, no cache."""
    if ext is None:
        return
    if not isinstance(ext, dict):
        raise HttpError(400, "`tierroute` must be an object", param="tierroute")
    known = {*_SLO_FIELDS, "disable_escalation", "bypass_cache"}
    unknown = sorted(set(ext) - known)
    if unknown:
        raise HttpError(
            400, f"`tierroute` has unknown fields {unknown}; known: {sorted(known)}",
            param="tierroute",
        )  # fmt: skip
    for name in _SLO_FIELDS:
        if ext.get(name) is not None:
            if not _is_number(ext[name]):
                raise HttpError(400, f"`tierroute.{name}` is {ext[name]!r}; use a number",
                                param=f"tierroute.{name}")  # fmt: skip
            setattr(request.slo, name, float(ext[name]))
    for name in ("disable_escalation", "bypass_cache"):
        if name in ext:
            if not isinstance(ext[name], bool):
                raise HttpError(400, f"`tierroute.{name}` must be true or false",
                                param=f"tierroute.{name}")  # fmt: skip
            if name == "disable_escalation" and request.force_tier and not ext[name]:
                raise HttpError(
                    400, f"`model` {request.force_tier!r} pins that tier, which answers without "
                    "escalation; use model 'auto' to let the router escalate",
                    param="tierroute.disable_escalation",
                )  # fmt: skip
            setattr(request, name, ext[name])


def _message(m: Any, i: int) -> common_pb.ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise HttpError(400, f"`{where}` must be an object with role and content", param=where)
    role, content = m.get("role"), m.get("content")
    if role == "developer":  # OpenAI's newer name for the system turn
        role = "system"
    if not isinstance(role, str):
        raise HttpError(400, f"`{where}.role` must be a string", param=f"{where}.role")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HttpError(
                    400, f"`{where}.content[{j}]` is not a text part; the router takes text only",
                    param=f"{where}.content",
                )  # fmt: skip
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise HttpError(400, f"`{where}.content` must be a string or text parts",
                        param=f"{where}.content")  # fmt: skip
    return common_pb.ChatMessage(role=role, content=content)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
