"""`make run`: start every service of the suite from one config, keep them running, and stop
them in order.

Supervision. A service that exits, or that was SERVING and then fails its health check for
`suite.unhealthy_restart_seconds` (no answer, or NOT_SERVING as a tier whose engine died
reports), is restarted after a backoff: `suite.restart_backoff_seconds`, doubled after each
restart that did not stay up `suite.stable_seconds`, up to `suite.restart_backoff_max_seconds`.
Each restart is reported: a log line says why, and the runner's own health service
(`suite.health_listen`) reports that service NOT_SERVING until it is back, and the suite ("")
NOT_SERVING meanwhile. The other services keep serving (the router fails over around a tier
that is down). At the first start, a service that exits before it was ever SERVING stops the
suite: a misconfiguration is reported, not retried forever.

Stopping (Ctrl-C or SIGTERM, and only then) drains in order: the router first, so no new work
reaches the others, then the validator, then the tiers, each given its configured grace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierroute.core.config import Config, ConfigError, load_config
from tierroute.runtime.host import setup_logging
from tierroute.runtime.tls import aio_channel, server_credentials

logger = logging.getLogger("tierroute.suite")

# How often each service's health is checked, and how long one check may take, in seconds.
POLL_SECONDS = 1.0
CHECK_TIMEOUT_SECONDS = 3.0
# Extra time over a service's drain grace for its engine to shut down before it is killed.
ENGINE_STOP_SECONDS = 30.0
# The order services are stopped in: whoever sends work first stops first.
STOP_ORDER = ("router", "validator", "tier")
# Reconnect quickly to a service that was restarted, so its SERVING is seen at once.
_CHECK_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartFailed(Exception):
    """A service could not be started at the suite's first start."""


@dataclass
class Service:
    name: str
    kind: str  # one of STOP_ORDER
    address: str
    argv: list[str]
    grace: float
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    serving_since: float | None = None  # since the last (re)start
    failing_since: float | None = None
    ever_serving: bool = False


def services(cfg: Config, config_path: Path) -> list[Service]:
    """The processes the config describes, in start order (tiers first, the router last)."""
    py = sys.executable
    config = str(config_path)
    tiers = [
        Service(
            f"tier:{t.name}",
            "tier",
            t.address,
            [py, "-m", "tierroute.tier", "--config", config, "--tier", t.name],
            t.shutdown_grace_seconds,
        )
        for t in cfg.tiers
        if t.kind == "tierroute"  # an OpenAI-compatible tier runs elsewhere
    ]
    validator = Service(
        "validator",
        "validator",
        cfg.validator.dial(),
        [py, "-m", "tierroute.validator", "--config", config],
        cfg.validator.shutdown_grace_seconds,
    )
    router = Service(
        "router",
        "router",
        cfg.router.listen,
        [py, "-m", "tierroute.router", "--config", config],
        cfg.router.shutdown_grace_seconds,
    )
    return [*tiers, validator, router]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


class Supervisor:
    def __init__(self, cfg: Config, procs: list[Service]) -> None:
        self.cfg = cfg
        self.suite = cfg.suite
        self.procs = procs
        self.stopping = asyncio.Event()
        self.health = health.aio.HealthServicer()
        self.ready = asyncio.Event()
        # What the health service reports: "" for the suite, and each service by name.
        self.statuses: dict[str, int] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    # --- health of the suite, as the runner reports it ---

    async def _report(self) -> None:
        """Publish each service's state, and the suite's, on the runner's health service."""
        for s in self.procs:
            up = s.serving_since is not None and s.failing_since is None
            self.statuses[s.name] = _SERVING if up else _NOT_SERVING
        everyone = all(self.statuses[s.name] == _SERVING for s in self.procs)
        self.statuses[""] = _SERVING if everyone else _NOT_SERVING
        for name, status in self.statuses.items():
            await self.health.set(name, status)
        if everyone:
            self.ready.set()

    async def _check(self, s: Service) -> str | None:
        """None if the service answers SERVING, else what it answered."""
        channel = self._channels.get(s.name)
        if channel is None:
            channel = aio_channel(s.address, self.cfg.tls, _CHECK_CHANNEL_OPTIONS)
            self._channels[s.name] = channel
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            return f"health check {error.code().name}"
        if response.status != _SERVING:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return None

    # --- one service's life ---

    async def _launch(self, s: Service) -> None:
        # Own sessions: Ctrl-C reaches only this runner, which stops each service in turn (a
        # SIGINT to vLLM's worker processes would kill them under the engine).
        s.process = await asyncio.create_subprocess_exec(
            *s.argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
        )
        s.started_at = time.monotonic()
        s.serving_since = None
        s.failing_since = None

    async def _watch(self, s: Service) -> str | None:
        """Watch a running service until it must be restarted (returns why) or the suite is
        stopping (returns None)."""
        assert s.process is not None
        exited = asyncio.ensure_future(s.process.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                await asyncio.wait(
                    {exited, stopping}, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping.done():
                    return None
                if exited.done():
                    return describe_exit(exited.result())
                problem = await self._check(s)
                now = time.monotonic()
                if problem is None:
                    if s.serving_since is None:
                        s.serving_since = now
                        s.ever_serving = True
                        logger.info("%s SERVING on %s (pid %d)", s.name, s.address, s.process.pid)
                    elif s.failing_since is not None:
                        logger.info("%s is SERVING again", s.name)
                    s.failing_since = None
                elif s.serving_since is None:
                    if now - s.started_at > self.suite.start_timeout_seconds:
                        await self._terminate(s)
                        return (
                            f"did not report SERVING within "
                            f"{self.suite.start_timeout_seconds:g} s ({problem})"
                        )
                else:
                    if s.failing_since is None:
                        s.failing_since = now
                        logger.warning("%s is not SERVING: %s", s.name, problem)
                    limit = self.suite.unhealthy_restart_seconds
                    if limit and now - s.failing_since >= limit:
                        await self._terminate(s)
                        return f"was not SERVING for {limit:g} s ({problem})"
                await self._report()
        finally:
            stopping.cancel()

    async def keep(self, s: Service) -> None:
        """Run `s` until the suite stops, restarting it with backoff whenever it ends."""
        delay = self.suite.restart_backoff_seconds
        while True:
            await self._launch(s)
            why = await self._watch(s)
            if why is None:
                return
            if not s.ever_serving:
                raise StartFailed(f"{s.name} {why} before it was ever SERVING; see its log above")
            assert s.serving_since is not None or s.failing_since is None
            if s.serving_since is not None and time.monotonic() - s.serving_since >= (
                self.suite.stable_seconds
            ):
                delay = self.suite.restart_backoff_seconds
            s.restarts += 1
            s.serving_since = None
            s.failing_since = None
            await self._report()
            logger.error(
                "%s %s: restarting it in %g s (restart %d); the other services keep serving",
                s.name,
                why,
                delay,
                s.restarts,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            delay = min(delay * 2, self.suite.restart_backoff_max_seconds)

    async def _terminate(self, s: Service) -> None:
        """SIGTERM (a stopped process is continued to receive it), `grace` to drain and shut
        the engine down, then SIGKILL to its whole process group."""
        p = s.process
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(p.wait(), s.grace + ENGINE_STOP_SECONDS)
        except TimeoutError:
            logger.error(
                "%s did not stop within %.0f s: killing it", s.name, s.grace + ENGINE_STOP_SECONDS
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            await p.wait()

    async def stop_all(self) -> None:
        """Drain in order: the router, then the validator, then the tiers together."""
        for kind in STOP_ORDER:
            group = [s for s in self.procs if s.kind == kind]
            if any(s.process is not None and s.process.returncode is None for s in group):
                logger.info("stopping %s", ", ".join(s.name for s in group))
            await asyncio.gather(*(self._terminate(s) for s in group))
        for channel in self._channels.values():
            await channel.close()


def usage(cfg: Config) -> str:
    router = cfg.router.listen
    # The grpcurl installed beside this Python (`make setup` puts it in the venv).
    grpcurl = os.path.relpath(Path(sys.executable).parent / "grpcurl")
    lines = [
        "ready. Try:",
        f"  {grpcurl} -plaintext {router} list",
        f'  {grpcurl} -plaintext -d \'{{"prompt": "What is the capital of France?"}}\' '
        f"{router} tierroute.router.v1.RouterService/Score",
        f'  {grpcurl} -plaintext -d \'{{"prompt": "What is the capital of France?"}}\' '
        f"{router} tierroute.router.v1.RouterService/Route",
    ]
    for t in [t for t in cfg.tiers if t.kind == "tierroute"][:1]:
        lines.append(
            f'  {grpcurl} -plaintext -d \'{{"messages": [{{"role": "user", "content": '
            f'"What is the capital of France?"}}]}}\' {t.address} '
            "tierroute.tier.v1.TierService/Generate"
        )
    own = [t for t in cfg.tiers if t.kind == "tierroute"]
    if cfg.suite.health_listen and own:
        lines.append(
            f'  {grpcurl} -plaintext -d \'{{"service": "tier:{own[0].name}"}}\' '
            f"{cfg.suite.health_listen} grpc.health.v1.Health/Check   (the suite's health)"
        )
    lines.append("Ctrl-C stops everything (the router first, the tiers last).")
    return "\n".join(lines)


async def health_server(
    cfg: Config, servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """The runner's own health service on `suite.health_listen`, started, and its port; with
    reflection, so that grpcurl (which asks a server for its schema) works against it."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    creds = server_credentials(cfg.tls, mutual=False)
    listen = cfg.suite.health_listen
    port = (
        server.add_secure_port(listen, creds)
        if creds is not None
        else server.add_insecure_port(listen)
    )
    if port == 0:
        raise OSError(f"cannot listen on suite.health_listen {listen}")
    await server.start()
    return server, port


async def supervise(cfg: Config, config_path: Path) -> int:
    procs = services(cfg, config_path)
    supervisor = Supervisor(cfg, procs)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stopping.set)
    server = None
    if cfg.suite.health_listen:
        try:
            server, _ = await health_server(cfg, supervisor.health)
        except OSError as error:
            print(f"tierroute: {error}", file=sys.stderr)
            return 2
    await supervisor._report()
    logger.info("starting %d service(s) from %s", len(procs), config_path)
    keepers = [asyncio.create_task(supervisor.keep(s), name=s.name) for s in procs]
    ready = asyncio.create_task(supervisor.ready.wait())
    code = 0
    try:
        pending = {*keepers, ready}
        while pending and not supervisor.stopping.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                print("\n" + usage(cfg), flush=True)
            for task in done - {ready}:
                task.result()  # a StartFailed stops the suite
    except StartFailed as exc:
        print(f"tierroute: {exc}", file=sys.stderr)
        code = 1
    supervisor.stopping.set()
    ready.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    await supervisor.stop_all()
    if server is not None:
        await server.stop(None)
    logger.info("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"tierroute: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.monitoring.log_level)
    return asyncio.run(supervise(cfg, args.config))


if __name__ == "__main__":
    sys.exit(main())
