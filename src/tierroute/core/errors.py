"""The project's errors, each with its gRPC status and its HTTP status side by side; the message
tells the caller what to fix, and names nothing of one transport. Each front turns them into
its own statuses in one place: gRPC in tierroute.runtime.interceptors.ErrorMapping, HTTP in
the front's shapes (services/router/front/shapes.py)."""

from __future__ import annotations

import math


class ServiceError(Exception):
    """An error with a status; the message tells the caller what to fix."""

    # The gRPC status's name (grpc.StatusCode[status]), and the HTTP status with OpenAI's
    # error type for it.
    status: str = "INTERNAL"
    http: tuple[int, str] = (500, "server_error")

    def __init__(
        self,
        message: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
        grpc_note: str = "",
    ):
        super().__init__(message)
        # Sent with the status: machine-readable detail (for example what was delivered).
        self.trailing_metadata = trailing_metadata
        # Said after the message over gRPC only (where the trailing metadata is, say); the
        # message itself names nothing of one transport.
        self.grpc_note = grpc_note


class InvalidArgument(ServiceError):
    status = "INVALID_ARGUMENT"
    http = (400, "invalid_request_error")


class TooLarge(InvalidArgument):
    """Input over a size limit (INVALID_ARGUMENT over gRPC, 413 over HTTP)."""

    http = (413, "invalid_request_error")


# Trailing metadata of a RESOURCE_EXHAUSTED: when to retry, in ms (grpc's retry pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class Overloaded(ServiceError):
    status = "RESOURCE_EXHAUSTED"
    http = (429, "rate_limit_error")

    def __init__(
        self,
        message: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
        retry_after_s: float | None = None,
    ) -> None:
        if retry_after_s is not None:
            pushback = str(max(1, math.ceil(retry_after_s * 1000)))
            trailing_metadata = (*trailing_metadata, (RETRY_PUSHBACK_KEY, pushback))
        super().__init__(message, trailing_metadata)
        # Seconds until the request would be admitted (HTTP Retry-After), when known.
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    status = "UNAVAILABLE"
    http = (503, "service_unavailable")


class DeadlineExceeded(ServiceError):
    status = "DEADLINE_EXCEEDED"
    http = (504, "timeout")
