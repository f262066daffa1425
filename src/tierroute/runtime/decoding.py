"""The first interceptor of every service: a request that does not decode (corrupt protobuf,
invalid UTF-8) or is larger than the service's message limit is answered INVALID_ARGUMENT
saying so, before any handler, span or admission sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

# Services that every server carries and that are not the project's own work.
EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _Undecodable:
    """Stands for a request whose bytes did not decode; the first interceptor to see it aborts."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Oversize:
    """Stands for a request over the message limit, which is not decoded at all."""

    def __init__(self, size: int) -> None:
        self.size = size


class Decoding(grpc.aio.ServerInterceptor):
    """Requests that do not decode, or that are larger than the service's message limit,
    become INVALID_ARGUMENT (saying which) before any interceptor runs."""

    def __init__(self, max_bytes: int | None = None, setting: str = "") -> None:
        self.max_bytes = max_bytes
        self.setting = setting

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_deserializer is None
            or handler.request_streaming
            or handler_call_details.method.startswith(EXEMPT)
        ):
            return handler
        decode = handler.request_deserializer
        limit = self.max_bytes

        def tolerant(data: bytes) -> Any:
            if limit is not None and len(data) > limit:
                return _Oversize(len(data))
            try:
                return decode(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as exc:
                return _Undecodable(exc)

        async def refuse(
            context: grpc.aio.ServicerContext, request: _Undecodable | _Oversize
        ) -> None:
            if isinstance(request, _Oversize):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request message is {request.size} bytes, over the limit of {limit} "
                    f"bytes ({self.setting}): send a shorter prompt or fewer messages, or raise "
                    "the setting",
                )
            assert isinstance(request, _Undecodable)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request could not be decoded as {handler_call_details.method.lstrip('/')}'s "
                f"request message ({type(request.error).__name__}): send a well-formed protobuf "
                "whose string fields are valid UTF-8",
            )

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def checked_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable | _Oversize):
                    await refuse(context, request)
                return await unary(request, context)

            return handler._replace(request_deserializer=tolerant, unary_unary=checked_unary)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def checked_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable | _Oversize):
                    await refuse(context, request)
                async for item in stream(request, context):
                    yield item

            return handler._replace(request_deserializer=tolerant, unary_stream=checked_stream)
        return handler
