"""Prometheus metrics: every service's `/metrics` port, and the RPC metrics all of them share.

Each process exposes prometheus_client's default registry on its own port (`metrics_listen` of
the router, a tier, the validator; `--metrics-listen` on the command line), plaintext or over
the service's TLS certificate. A tier process's registry also holds vLLM's own engine metrics
(`vllm:*`), which vLLM registers there. Names and units follow Prometheus's conventions (base
units, `_total` counters, `_seconds` durations); the RPC metrics are those of
grpc-ecosystem/go-grpc-prometheus, so dashboards made for gRPC servers work unchanged:

- `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`),
  `grpc_server_handling_seconds` (histogram), labelled `grpc_type`, `grpc_service`,
  `grpc_method`; and `tierroute_rpc_in_flight` (gauge).

Health checking and reflection are not counted (the interceptors' exempt services).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from tierroute.core.config import ConfigError, TlsConfig

logger = logging.getLogger(__name__)

# From 1 ms to 5 min: a Score is milliseconds, a Route of a long answer on a CPU is minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip

_RPC = ("grpc_type", "grpc_service", "grpc_method")
RPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _RPC)
RPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by status code.", (*_RPC, "grpc_code")
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its last response, by the server.",
    _RPC,
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("tierroute_rpc_in_flight", "RPCs in progress on the server.", _RPC)


@dataclass(frozen=True)
class Rpc:
    """One RPC's labels, and when it started."""

    labels: tuple[str, str, str]
    started: float

    def finish(self, code: grpc.StatusCode, now: float) -> None:
        RPC_HANDLED.labels(*self.labels, code.name).inc()
        RPC_SECONDS.labels(*self.labels).observe(now - self.started)
        RPC_IN_FLIGHT.labels(*self.labels).dec()


def rpc_started(kind: str, service: str, method: str, now: float) -> Rpc:
    labels = (kind, service, method)
    RPC_STARTED.labels(*labels).inc()
    RPC_IN_FLIGHT.labels(*labels).inc()
    return Rpc(labels, now)


# Listening sockets of this process's metrics servers. vLLM forks its engine processes (on CPU):
# a forked child closes its copies, so that a tier killed before its engine's processes does not
# leave them holding the port its restart must bind.
_LISTENING: weakref.WeakSet[WSGIServer] = weakref.WeakSet()


def _close_in_child() -> None:
    for server in list(_LISTENING):
        with contextlib.suppress(OSError):
            server.socket.close()


os.register_at_fork(after_in_child=_close_in_child)


class MetricsServer:
    """prometheus_client's HTTP server for `/metrics`, in its own thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    @classmethod
    def start(cls, listen: str, tls: TlsConfig | None = None, setting: str = "") -> MetricsServer:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"{setting or 'metrics_listen'} {listen!r}: write host:port")
        secure = tls is not None and tls.enabled
        try:
            server, thread = start_http_server(
                int(port),
                addr=host.strip("[]"),
                certfile=str(tls.cert) if secure and tls is not None else None,
                keyfile=str(tls.key) if secure and tls is not None else None,
            )
        except OSError as error:
            raise ConfigError(f"{setting or 'metrics_listen'} {listen!r}: {error}") from None
        _LISTENING.add(server)
        metrics = cls(server, thread)
        scheme = "https" if secure else "http"
        logger.info("Prometheus metrics on %s://%s:%d/metrics", scheme, host, metrics.port)
        return metrics

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
