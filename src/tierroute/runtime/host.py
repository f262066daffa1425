"""One service host for every tierroute process: load -> serve -> health SERVING -> graceful
drain on SIGTERM, with health checking, reflection and the interceptor chain written once.

Each service's `__main__` is `run_service(SPEC)`; `SPEC.build(cfg, args, extra)` returns what
the host serves (a `Service`) and how (`Serving`). Tests drive a `Host` step by step:
`await host.start()`, `await host.load()`, `await host.stop()`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierroute.core.config import Config, ConfigError, TlsConfig, load_config
from tierroute.runtime import telemetry
from tierroute.runtime.admission import InFlight
from tierroute.runtime.auth import Clients
from tierroute.runtime.interceptors import chain
from tierroute.runtime.metrics import MetricsServer

logger = logging.getLogger(__name__)

# Keepalive so long token streams survive idle proxies and dead peers are noticed (the same
# reasoning as vLLM's gRPC server): ping every 30 s, give up after 10 s without an answer.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # grpc core queues calls until the Python server takes them, one at a time; past 1,000
    # queued it refuses calls at random, and past 3,000 all of them, each with a bare CANCELLED
    # and no log line (server.cc, pending_backlog_protector_). A burst then loses calls that our
    # own admission limit would have answered with RESOURCE_EXHAUSTED and a retry hint: lift
    # core's limits so admission is the one that applies.
    ("grpc.server.max_pending_requests", 2**31 - 1),
    ("grpc.server.max_pending_requests_hard_limit", 2**31 - 1),
]
# A request over a service's message limit (Serving.max_message_bytes) reaches the Decoding
# interceptor, which refuses it with INVALID_ARGUMENT naming the setting; grpc core itself
# refuses (RESOURCE_EXHAUSTED, naming no setting) only past this many times the limit, so that
# a huge message is never buffered whole.
TRANSPORT_LIMIT_FACTOR = 4
DEFAULT_MESSAGE_BYTES = 16 * 1024 * 1024


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The server's channel arguments for a service whose requests may be this large."""
    transport = max(TRANSPORT_LIMIT_FACTOR * max_message_bytes, max_message_bytes + (1 << 20))
    return [*SERVER_OPTIONS, ("grpc.max_receive_message_length", min(transport, 2**31 - 1))]


# The same keepalive on the client side of the router's calls to tiers and the validator.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class Front(Protocol):
    """A front of the process beside its gRPC port."""

    async def stop(self, grace: float) -> None:
        """Stop accepting; let requests in progress finish within `grace` seconds."""


class Service(Protocol):
    """What a host serves: its gRPC services, and how its model is loaded and released."""

    service_names: Sequence[str]

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to `server`."""

    async def load(self, host: Host) -> None:
        """Load what requests need (a model, an engine); health is NOT_SERVING meanwhile.
        `host` lets a service report NOT_SERVING later (an engine that died)."""

    async def close(self) -> None:
        """Release what `load` acquired; in-flight calls have drained."""


@dataclass(frozen=True)
class Serving:
    """How one process serves: where it binds, its drain time and in-flight limit."""

    listen: str
    shutdown_grace_seconds: float
    max_concurrent_requests: int
    # The setting a user changes to raise the in-flight limit (named in RESOURCE_EXHAUSTED).
    limit_setting: str
    # service.name in traces.
    telemetry_name: str
    # Who may call (bearer tokens, runtime/auth.py); None: anyone.
    clients: Clients | None = None
    # TLS for the port (runtime/tls.py); None: plaintext.
    tls: grpc.ServerCredentials | None = None
    # host:port of the Prometheus `/metrics` endpoint (runtime/metrics.py); empty: none. Over
    # TLS with `metrics_tls`'s certificate when that is enabled.
    metrics_listen: str = ""
    metrics_tls: TlsConfig | None = None
    # The setting that names metrics_listen, for errors.
    metrics_setting: str = "metrics_listen"
    # The largest request message accepted, in bytes, and the setting that raises it (named
    # in the INVALID_ARGUMENT of a larger one).
    max_message_bytes: int = DEFAULT_MESSAGE_BYTES
    message_setting: str = "the service's message limit"


@dataclass(frozen=True)
class Spec:
    """A service program: its name, its own command-line flags, and how it is built."""

    name: str
    build: Callable[[Config, argparse.Namespace, list[str]], tuple[Service, Serving]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Whether flags the host does not know go to `build` (the tier's vLLM engine flags).
    passes_extra_flags: bool = False
    epilog: str | None = None


class Host:
    """One grpc.aio server: the service's servicers, the interceptor chain, health and
    reflection."""

    def __init__(self, service: Service, serving: Serving) -> None:
        self.service = service
        self.serving = serving
        # One count for every front of the process: the gRPC port and any other (add_front).
        self.admission = InFlight(serving.max_concurrent_requests, serving.limit_setting)
        interceptors = chain(
            self.admission, serving.clients, (serving.max_message_bytes, serving.message_setting)
        )
        self._fronts: list[Front] = []
        self.server = grpc.aio.server(
            options=server_options(serving.max_message_bytes), interceptors=interceptors
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        service.register(self.server)
        reflection.enable_server_reflection(
            [
                *service.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = 0
        self.metrics: MetricsServer | None = None

    async def start(self) -> int:
        """Bind and start serving; every service reports NOT_SERVING until `load` is done."""
        listen = self.serving.listen
        if self.serving.tls is not None:
            self.port = self.server.add_secure_port(listen, self.serving.tls)
        else:
            self.port = self.server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        if self.serving.metrics_listen:
            self.metrics = MetricsServer.start(
                self.serving.metrics_listen, self.serving.metrics_tls, self.serving.metrics_setting
            )
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        host = listen.rsplit(":", 1)[0]
        logger.info(
            "listening on %s:%d (%s)", host, self.port, ", ".join(self.service.service_names)
        )
        return self.port

    @property
    def address(self) -> str:
        return f"{self.serving.listen.rsplit(':', 1)[0]}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Calls of this server's own services in progress."""
        return self.admission.count

    def add_front(self, front: Front) -> None:
        """Another front of this process (the router's HTTP front): it stops accepting when
        the gRPC port does, and drains beside it."""
        self._fronts.append(front)

    async def wait_idle(self, poll: float = 0.01) -> None:
        """Return once no call of this server's own services is in progress."""
        while self.admission.count:  # noqa: ASYNC110 - the count changes without an event
            await asyncio.sleep(poll)

    async def load(self) -> None:
        await self.service.load(self)
        await self.set_serving()
        logger.info("ready")

    async def set_serving(self, serving: bool = True) -> None:
        await self._set_all(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_all(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ["", *self.service.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds (the
        configured drain time by default), then release the service."""
        await self.health.enter_graceful_shutdown()
        grace = self.serving.shutdown_grace_seconds if grace is None else grace
        # Every front stops accepting at once, and their requests drain side by side.
        await asyncio.gather(self.server.stop(grace), *(f.stop(grace) for f in self._fronts))
        self._fronts.clear()
        await self.service.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None

    async def serve(self, port_file: Path | None = None) -> None:
        """Start, load (NOT_SERVING meanwhile), serve until SIGTERM/SIGINT, drain, release."""
        await self.start()
        write_port_file(port_file, self.port)
        loader = asyncio.create_task(self.load())
        stopper = asyncio.create_task(wait_for_signal())
        done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if loader in done:
            loader.result()  # a failed load ends the process with its traceback
            await stopper
        else:
            loader.cancel()
        logger.info(
            "signal received: draining for up to %.1f s", self.serving.shutdown_grace_seconds
        )
        await self.stop()
        logger.info("stopped")


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def write_port_file(path: Path | None, port: int) -> None:
    """Tell a parent process (tests, `make run`) which port was bound when asked for port 0."""
    if path is not None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.rename(path)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def run_service(spec: Spec, argv: list[str] | None = None) -> int:
    """The whole program of a service: flags, config, logging, tracing, serve until a signal.
    A bad flag or config exits 2 with a message that names it."""
    prog = f"tierroute-{spec.name}"
    parser = argparse.ArgumentParser(
        prog=prog, description=f"tierroute {spec.name} service", epilog=spec.epilog
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--listen", help="host:port to bind, overrides the config")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument(
        "--metrics-listen", help="host:port of the Prometheus /metrics port, overrides the config"
    )
    if spec.add_arguments is not None:
        spec.add_arguments(parser)
    if spec.passes_extra_flags:
        args, extra = parser.parse_known_args(argv)
    else:
        args, extra = parser.parse_args(argv), []
    try:
        cfg = load_config(args.config, part=spec.name)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.monitoring.log_level)

    async def main() -> int:
        # grpc.aio servers and channels belong to the loop they are made in: the service is
        # built inside asyncio.run.
        try:
            service, serving = spec.build(cfg, args, extra)
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        if args.listen:
            serving = replace(serving, listen=args.listen)
        if args.metrics_listen:
            serving = replace(serving, metrics_listen=args.metrics_listen)
        telemetry.setup_tracing(serving.telemetry_name, cfg.monitoring.otlp_endpoint)
        try:
            await Host(service, serving).serve(args.port_file)
        except ConfigError as exc:  # found while loading (an upstream that cannot serve it)
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        finally:
            telemetry.shutdown_tracing()
        return 0

    return asyncio.run(main())
