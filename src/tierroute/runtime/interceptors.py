"""The interceptor chain every tierroute service runs, in this order (outermost first):

1. `Tracing`: a SERVER span per RPC by OpenTelemetry's RPC conventions (`rpc.system`,
   `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), child of the caller's W3C trace
   context; a client's mistake (INVALID_ARGUMENT, NOT_FOUND, ...) is not a span error. The
   same start and end count the RPC in the Prometheus metrics (runtime/metrics.py).
2. `Authentication` (when the service has clients): UNAUTHENTICATED without a known bearer
   token (tierroute.runtime.auth).
3. `Admission`: at most `limit` RPCs in flight; past it RESOURCE_EXHAUSTED with a retry hint.
4. `Deadlines`: a call whose deadline has already passed is refused before any work.
5. `ErrorMapping`: the project's errors become their status and message; anything else is
   logged with its traceback and the trace id, and the client gets INTERNAL with the trace id
   only, never the exception's text.

It also turns a request that cannot be decoded (corrupt protobuf, invalid UTF-8 in a string
field) into INVALID_ARGUMENT that says so, instead of grpc's bare UNKNOWN and a traceback.

Health checking and reflection pass through untouched. A handler holds only its own job: it
raises `tierroute.core.errors` exceptions and may add attributes to the current span.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import trace

from tierroute.core.errors import RETRY_PUSHBACK_KEY, ServiceError
from tierroute.runtime import metrics, telemetry
from tierroute.runtime.admission import InFlight
from tierroute.runtime.auth import Clients, caller
from tierroute.runtime.decoding import EXEMPT, Decoding

logger = logging.getLogger(__name__)

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]

# Server-side span status by OpenTelemetry's gRPC conventions: these codes are the server's
# failure; the rest (a bad argument, a missing entity, a client that cancelled) are not.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class _Wrapping(grpc.aio.ServerInterceptor):
    """Wraps the behaviour of every unary-unary and unary-stream method but the exempt ones."""

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        return behavior

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        return behavior

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self.wrap_unary(handler.unary_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self.wrap_stream(handler.unary_stream, method))
        return handler


def status_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status the RPC ended with (OK when none was set)."""
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return _BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)


def split_method(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def trace_id() -> str:
    """The current trace id (32 hex digits), for logs and for an INTERNAL error's message."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else uuid.uuid4().hex


class Tracing(_Wrapping):
    def __init__(self, tracer_name: str = "tierroute.runtime") -> None:
        self._tracer_name = tracer_name

    def _start(
        self, method: str, context: grpc.aio.ServicerContext, kind: str
    ) -> tuple[trace.Span, metrics.Rpc]:
        metadata = (
            (k, v.decode() if isinstance(v, bytes) else v)
            for k, v in (context.invocation_metadata() or ())
        )
        service, name = split_method(method)
        span = telemetry.server_span(
            method.lstrip("/"),
            metadata,
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            self._tracer_name,
        )
        return span, metrics.rpc_started(kind, service, name, time.perf_counter())

    @staticmethod
    def _finish(
        started: tuple[trace.Span, metrics.Rpc],
        context: grpc.aio.ServicerContext,
        exc: BaseException | None,
    ) -> None:
        span, rpc = started
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED  # the client went away
        elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
            code = grpc.StatusCode.UNKNOWN
        else:
            code = status_of(context)
        rpc.finish(code, time.perf_counter())
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        span.end()

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = self._start(method, context, "unary")
            span = started[0]
            failure: BaseException | None = None
            try:
                with telemetry.current(span):
                    return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._finish(started, context, failure)

        return traced

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._start(method, context, "server_stream")
            span = started[0]
            failure: BaseException | None = None
            responses = behavior(request, context)
            try:
                while True:
                    # The span is current only while the handler runs, never across a yield:
                    # a stream closed from elsewhere then has no context to detach.
                    with telemetry.current(span):
                        try:
                            item = await anext(responses)
                        except StopAsyncIteration:
                            break
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                try:
                    await responses.aclose()  # type: ignore[attr-defined]
                finally:
                    self._finish(started, context, failure)

        return traced


class Admission(_Wrapping):
    """At most `in_flight.limit` requests in flight, counted with the process's other fronts
    (runtime/admission.py)."""

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            self.in_flight.refusal(),
            ((RETRY_PUSHBACK_KEY, str(self.in_flight.retry_after_ms)),),
        )

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not self.in_flight.enter():
                await self._refuse(context)
            try:
                return await behavior(request, context)
            finally:
                self.in_flight.leave()

        return admitted

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if not self.in_flight.enter():
                await self._refuse(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self.in_flight.leave()

        return admitted


class Authentication(_Wrapping):
    """Bearer tokens (runtime/auth.py): a call without a known token gets UNAUTHENTICATED
    before any work; the client's name goes on the span (`tierroute.client`) and in
    auth.CLIENT for the handler's logs. Health checking and reflection stay open (probes)."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        value = next(
            (v for k, v in (context.invocation_metadata() or ()) if k.lower() == "authorization"),
            None,
        )
        header = value if isinstance(value, str) else None
        if caller(self.clients, header, context.peer() or "", "gRPC") is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token: send the metadata `authorization: Bearer "
                "<token>` (`tierroute --token`, or TIERROUTE_TOKEN)",
            )

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(context)
            return await behavior(request, context)

        return authenticated

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        async def authenticated(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await self._check(context)
            async for item in behavior(request, context):
                yield item

        return authenticated


class Deadlines(_Wrapping):
    """A call that arrives with its deadline already passed gets DEADLINE_EXCEEDED at once."""

    @staticmethod
    async def _check(context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the call's deadline had passed before it was handled; send it with a longer one",
            )

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(context)
            return await behavior(request, context)

        return bounded

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._check(context)
            async for item in behavior(request, context):
                yield item

        return bounded


# The most UTF-8 bytes of a status message. It travels percent-encoded in a header (up to 3x
# larger), and a client refuses headers past 16 KiB (8 KiB by default, softly) with a
# RESOURCE_EXHAUSTED of its own that hides ours: a message that quotes a huge input is cut.
MAX_MESSAGE_BYTES = 1024


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message`, cut to `limit` UTF-8 bytes, saying how much was cut."""
    raw = message.encode()
    if len(raw) <= limit:
        return message
    kept = raw[: limit - 40].decode(errors="ignore")
    return f"{kept}... ({len(message) - len(kept)} characters cut)"


class ErrorMapping(_Wrapping):
    """Project errors -> status + message; anything else -> INTERNAL + trace id, logged once."""

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
        if isinstance(exc, ServiceError):
            await context.abort(
                grpc.StatusCode[exc.status],
                bounded(str(exc) + exc.grpc_note),
                exc.trailing_metadata,
            )
        tid = trace_id()
        logger.error("%s failed unexpectedly (trace id %s)", method, tid, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in {method.lstrip('/')}; the service's log has the details under "
            f"trace id {tid}",
        )

    def wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return mapped

    def wrap_stream(self, behavior: Stream, method: str) -> Stream:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return mapped


def chain(
    in_flight: InFlight,
    clients: Clients | None = None,
    message_limit: tuple[int, str] | None = None,
) -> Sequence[grpc.aio.ServerInterceptor]:
    """The chain, in order. Adding TLS identity or a rate limit is one more entry here.
    `message_limit`: the largest request accepted, in bytes, and the setting that names it."""
    return [
        Decoding(*(message_limit or (None, ""))),
        Tracing(),
        *([Authentication(clients)] if clients is not None else []),
        Admission(in_flight),
        Deadlines(),
        ErrorMapping(),
    ]
