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
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tierroute.core.errors import (
    ServiceError,
)
from tierroute.router import metrics
from tierroute.router.front.shapes import (
    AUTO,
    RETRY_AFTER_SECONDS,
    Completion,
    HttpError,
    from_service_error,
    json_depth,
    parse,
    sse,
)
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.state import Decided, RouteEvent, Token
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime import telemetry
from tierroute.runtime.admission import InFlight
from tierroute.runtime.auth import Clients, caller
from tierroute.runtime.interceptors import trace_id

logger = logging.getLogger(__name__)

_PATHS = frozenset({"/v1/chat/completions", "/v1/models", "/healthz", "/readyz"})


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
    max_in_flight: int = 512  # when the front does not share its process's count
    max_header_bytes: int = 16 << 10
    # Who may call (bearer tokens); None: anyone.
    clients: Clients | None = None
    max_json_depth: int = 64
    # The count of requests in flight this front shares with the process's gRPC port.
    in_flight: InFlight | None = None


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
        span = telemetry.server_span(
            f"{method} {route}",
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers),
            {
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
            __name__,
        )
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
            await send(message)

        try:
            with telemetry.current(span):
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
        self.admission = limits.in_flight or InFlight(
            limits.max_in_flight, "router.max_concurrent_requests"
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.router.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading"}, 503, headers={"retry-after": "1"})

    def _client(self, request: Request) -> str:
        """The caller: its token's client name, or without tokens `peer:<address>`; HttpError
        401 without a known bearer token. The token is never logged nor echoed."""
        header = request.headers.get("authorization")
        peer = request.client.host if request.client else "unknown"
        name = caller(self.limits.clients, header, peer, "HTTP")
        if name is None:
            raise HttpError(
                401,
                "missing or unknown API key: send `Authorization: Bearer <token>` (the OpenAI "
                "clients' api_key)",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
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
        if not self.admission.enter():  # one count with the gRPC port's requests
            return HttpError(
                429,
                self.admission.refusal(),
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            ).response()
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
            completion = Completion(decided.decision)
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
        self.admission.leave()

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
        completion: Completion,
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


# --- the request ---
