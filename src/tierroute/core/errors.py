"""The project's errors, each with its gRPC status; the message tells the caller what to fix.
(They are turned into statuses in one place: tierroute.runtime.interceptors.ErrorMapping.)"""

from __future__ import annotations

import math

import grpc


class ServiceError(Exception):
    """An error with a gRPC status; the message tells the caller what to fix."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

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
    code = grpc.StatusCode.INVALID_ARGUMENT


class TooLarge(InvalidArgument):
    """Input over a size limit (INVALID_ARGUMENT over gRPC, 413 over HTTP)."""


# Trailing metadata of a RESOURCE_EXHAUSTED: when to retry, in ms (grpc's retry pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

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
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
