"""The HTTP front's server: uvicorn in the router's own event loop, on a socket bound here (so
the port is known, and connections queue, before uvicorn's first tick). The router process's
host owns the signals; uvicorn is told not to install its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from tierroute.core.config import Config, ConfigError
from tierroute.router.front.openai_api import Limits, Router, app
from tierroute.runtime.admission import InFlight
from tierroute.runtime.auth import Clients

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the router's host handles SIGTERM/SIGINT
        yield


def bind(listen: str) -> socket.socket:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"router.http_listen {listen!r}: write host:port (port 0: any free)")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as error:
        sock.close()
        raise ConfigError(f"router.http_listen {listen!r}: cannot listen: {error}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpFront:
    def __init__(self, server: _Server, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._server = server
        self._sock = sock
        self._task = task
        self.port: int = sock.getsockname()[1]

    @classmethod
    async def start(
        cls,
        cfg: Config,
        router: Router,
        clients: Clients | None = None,
        in_flight: InFlight | None = None,
    ) -> HttpFront:
        """Serve `router` on router.http_listen; `in_flight`: the count of requests in flight
        shared with the process's gRPC port (None: its own)."""
        r = cfg.router
        sock = bind(r.http_listen)
        limits = Limits(
            r.http_max_body_bytes,
            r.http_timeout_seconds,
            r.max_concurrent_requests,
            r.http_max_header_bytes,
            clients,
            r.http_max_json_depth,
            in_flight,
        )
        config = uvicorn.Config(
            app(router, limits),
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
            # h11's own bound on a request head, above the front's (431 with OpenAI's error
            # JSON); httptools reads any head and leaves the bound to the front.
            h11_max_incomplete_event_size=2 * r.http_max_header_bytes + 4096,
            timeout_graceful_shutdown=max(1, round(r.shutdown_grace_seconds)),
            ssl_certfile=str(cfg.tls.cert) if cfg.tls.enabled else None,
            ssl_keyfile=str(cfg.tls.key) if cfg.tls.enabled else None,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="http-front")
        front = cls(server, sock, task)
        host = r.http_listen.rpartition(":")[0]
        scheme = "https" if cfg.tls.enabled else "http"
        logger.info("HTTP front (OpenAI API) listening on %s://%s:%d", scheme, host, front.port)
        return front

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let requests in progress finish (within `grace` seconds, the
        configured drain time by default)."""
        if grace is not None:
            self._server.config.timeout_graceful_shutdown = max(1, round(grace))
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._sock.close()
