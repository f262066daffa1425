"""Errors that map to gRPC status codes, and the one place where that mapping happens."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with a gRPC status; the message tells the caller what to fix."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()):
        super().__init__(message)
        # Sent with the status: machine-readable detail (for example what was delivered).
        self.trailing_metadata = trailing_metadata


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> Awaitable[None]:
    if isinstance(exc, ServiceError):
        return context.abort(exc.code, str(exc), exc.trailing_metadata)
    logger.exception("%s failed unexpectedly", method)
    return context.abort(
        grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}"
    )


def unary_errors(
    handler: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Turn exceptions raised by a unary handler into the matching status and message."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, handler.__qualname__)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def stream_errors(
    handler: Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """Turn exceptions raised by a server-streaming handler into a status and message."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in handler(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, handler.__qualname__)

    return wrapper
