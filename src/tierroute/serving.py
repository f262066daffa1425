"""What every tierroute service does the same way: a grpc.aio server with health checking and
reflection, started, marked SERVING once its model is loaded, and drained on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

logger = logging.getLogger(__name__)

# Keepalive so long token streams survive idle proxies and dead peers are noticed (the same
# reasoning as vLLM's gRPC server): ping every 30 s, give up after 10 s without an answer.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
# The same keepalive on the client side of the router's calls to tiers and the validator.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class ServiceHost:
    """One gRPC server: the service's own servicers plus health and reflection."""

    def __init__(self, listen: str, service_names: list[str]) -> None:
        self.listen = listen
        self.service_names = service_names
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; every service reports NOT_SERVING until `set_serving`."""
        self.port = self.server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        host = self.listen.rsplit(":", 1)[0]
        logger.info("listening on %s:%d (%s)", host, self.port, ", ".join(self.service_names))
        return self.port

    async def set_serving(self, serving: bool = True) -> None:
        await self._set_all(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_all(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, and give in-flight calls `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


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


async def serve_until_signal(
    host: ServiceHost,
    load: Callable[[], Coroutine[Any, Any, None]],
    release: Callable[[], Awaitable[None]],
    grace: float,
    port_file: Path | None = None,
) -> None:
    """Start, load the model (NOT_SERVING meanwhile), serve until a signal, drain, release."""
    port = await host.start()
    write_port_file(port_file, port)
    loader = asyncio.create_task(load())
    stopper = asyncio.create_task(wait_for_signal())
    done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done:
        loader.result()  # a failed load ends the process with its traceback
        await host.set_serving()
        logger.info("ready")
        await stopper
    else:
        loader.cancel()
    logger.info("signal received: draining for up to %.1f s", grace)
    await host.stop(grace)
    await release()
    logger.info("stopped")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
