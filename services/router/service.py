"""The router's gRPC adapter: Score and Route requests in, the route flow's events out as
RouteResponse messages. Errors, spans, admission and deadlines are the interceptor chain's
(tierroute.runtime); routing is the flow's (route/flow.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry import trace

from tierroute.core.config import Config, ConfigError
from tierroute.router import metrics
from tierroute.router.front.server import HttpFront
from tierroute.router.route.budgets import Deadline
from tierroute.router.route.flow import RouteFlow
from tierroute.router.route.judge import Judge
from tierroute.router.route.routing_log import LogError, RoutingLog
from tierroute.router.route.state import (
    Decided,
    Escalated,
    Finished,
    RouteEvent,
    Token,
    read_ahead,
)
from tierroute.router.scoring.decider import Decider
from tierroute.router.tiers import bench
from tierroute.router.tiers.measured import Measurements
from tierroute.router.tiers.pool import TierPool
from tierroute.router.tiers.store import StoreDown, StoreError, open_store
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.runtime.auth import CLIENT, AuthConfigError, caller, load_clients
from tierroute.runtime.host import Host, Serving, Spec, run_service
from tierroute.runtime.tls import server_credentials

logger = logging.getLogger(__name__)

# How long the start-up check of an OpenAI-compatible tier may take.
STARTUP_CHECK_SECONDS = 60.0

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
# The metrics store's health, a detail beside the router's own (grpc.health.v1 service name):
# NOT_SERVING while router.metrics_store fails, when routing goes on with its last figures.
STORE_HEALTH = "tierroute.router.v1.MetricsStore"


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, cfg: Config, decider: Decider, flow: RouteFlow) -> None:
        self.cfg = cfg
        self.decider = decider
        self.flow = flow

    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        text = self.decider.decisions.check_input(request.prompt, request.messages)
        if self.flow.limits.active:
            self.flow.limits.check_rate(_client(context))
        ask = self.decider.decisions.ask(
            request.prompt,
            request.messages,
            request.max_tokens,
            request.slo if request.HasField("slo") else None,
        )
        decision, _ = await self.decider.decide(text, request.bypass_cache, ask)
        return pb.ScoreResponse(decision=decision)

    async def Route(
        self, request: pb.RouteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RouteResponse]:
        deadline = Deadline.after(context.time_remaining())
        _client(context)
        async for event in read_ahead(self.flow.route(request, deadline)):
            if isinstance(event, Finished):
                _annotate(trace.get_current_span(), event.summary)
            yield to_response(event)


def _client(context: grpc.aio.ServicerContext) -> str:
    """Who is calling: the token's client (set by the auth interceptor), or, on a router
    without tokens, the address the call comes from."""
    name = CLIENT.get()
    if not name:
        peer = context.peer() or ""  # "ipv4:127.0.0.1:53510"
        name = caller(None, None, peer.split(":", 1)[-1].rsplit(":", 1)[0], "gRPC") or ""
    return name


def to_response(event: RouteEvent) -> pb.RouteResponse:
    if isinstance(event, Token):
        return pb.RouteResponse(chunk=pb.TokenChunk(text=event.text, tier=event.tier))
    if isinstance(event, Decided):
        return pb.RouteResponse(decision=event.decision)
    if isinstance(event, Escalated):
        return pb.RouteResponse(escalation=event.escalation)
    return pb.RouteResponse(summary=event.summary)


def _annotate(span: trace.Span, summary: pb.RouteSummary) -> None:
    span.set_attributes(
        {
            "tierroute.tier": summary.tier,
            "tierroute.escalated": summary.escalated,
            "tierroute.escalation_reason": pb.EscalationReason.Name(summary.escalation_reason),
            "gen_ai.usage.input_tokens": summary.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": summary.usage.completion_tokens,
            "tierroute.cost_usd": summary.cost_usd,
            "tierroute.validation": pb.ValidationStatus.Name(summary.validation),
        }
    )


class RouterService:
    """The router's parts, as the host serves them."""

    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(self, cfg: Config) -> None:
        if not cfg.tiers:
            raise ConfigError("invalid configuration: tiers: the router needs at least one tier")
        self.cfg = cfg
        r = cfg.router
        try:
            self.clients = load_clients(r.auth_tokens_file, r.auth_tokens_env)
        except AuthConfigError as error:
            raise ConfigError(f"invalid configuration: router auth: {error}") from None
        store = None
        if r.metrics_store is not None:
            try:
                store = open_store(r.metrics_store)
            except StoreError as error:
                raise ConfigError(f"invalid configuration: router.metrics_store: {error}") from None
        self.measurements = Measurements(r.metrics_half_life_seconds, store, r.metrics_sync_seconds)
        if r.bench_interval_seconds > 0:  # refuse a bad sample at start, not at the first run
            try:
                bench.read_sample(r.bench_sample or bench.DEFAULT_SAMPLE)
            except (OSError, ValueError) as error:
                raise ConfigError(f"invalid configuration: router.bench_sample: {error}") from None
        self._bench_task: asyncio.Task[None] | None = None
        self.bench_runs = 0
        self.benched = asyncio.Event()  # set after each scheduled benchmark run
        self.decider = Decider(cfg, self.measurements)
        self.pool = TierPool(cfg)
        self.judge = Judge(cfg)
        self.log: RoutingLog | None = None
        if cfg.router.routing_log is not None:
            try:
                self.log = RoutingLog(cfg.router.routing_log, cfg.router.routing_log_prompts)
            except LogError as error:
                raise ConfigError(f"invalid configuration: router.routing_log: {error}") from None
        self.flow = RouteFlow(cfg, self.decider, self.pool, self.judge, self.log)
        self.http: HttpFront | None = None
        self._state: metrics.State | None = None

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RouterServiceServicer_to_server(
            RouterServicer(self.cfg, self.decider, self.flow), server
        )

    async def load(self, host: Host) -> None:
        pool, policy = self.pool, self.decider.decisions.policy
        self._state = metrics.STATE.state = metrics.State(
            breakers=lambda: {t: b.peek().value for t, b in pool.breakers.items()},
            replicas=lambda: {
                (t, r.address): r.ejected_until > pool.clock()
                for t, replicas in pool.replicas.items()
                for r in replicas
            },
            store_up=lambda: self.measurements.store_up,
            operating=lambda: (policy.applied_last_bound, self.cfg.router.target_large_share),
            drift=self._drift_state,
            slots=lambda: {t: (s.limit(), s.in_flight, s.waiting) for t, s in pool.slots.items()},
            replica_info=lambda: [
                (t.name, t.kind, t.model, r.address)
                for t in self.cfg.tiers
                for r in pool.replicas[t.name]
            ],
        )
        if self.cfg.router.http_listen:  # first: /healthz answers and /readyz says loading
            self.http = await HttpFront.start(self.cfg, self, self.clients, host.admission)
            host.add_front(self.http)  # it stops accepting when the gRPC port does
        if self.measurements.store is not None:
            await host.health.set(STORE_HEALTH, health_pb2.HealthCheckResponse.SERVING)
            self.measurements.on_store_state = self._store_state_reporter(host)
        await asyncio.to_thread(self.measurements.start)
        await self.decider.load()
        await self._check_upstreams()
        if self.cfg.router.bench_interval_seconds > 0:
            self._bench_task = asyncio.create_task(self._bench_every())

    async def _check_upstreams(self) -> None:
        """A tier of kind openai takes its context window from its server where the config
        sets none; one validated by log-probabilities must get them from its server: one
        small request says so, or the router does not start (ConfigError)."""
        from tierroute.router.tiers.openai_client import (
            OpenAiTierClient,
            check_logprobs,
            learn_window,
        )

        for t in self.cfg.tiers:
            if t.kind != "openai":
                continue
            clients = [
                r.client
                for r in self.pool.replicas[t.name]
                if isinstance(r.client, OpenAiTierClient)
            ]
            await learn_window(clients, STARTUP_CHECK_SECONDS)
            if t.validation != "logprob":
                continue
            problem = await check_logprobs(clients[0], STARTUP_CHECK_SECONDS)
            if problem is not None:
                raise ConfigError(f"invalid configuration: {problem}")

    def _drift_state(self) -> tuple[dict[str, float], dict[str, bool]]:
        drift = self.decider.decisions.drift
        return ({}, {}) if drift is None else (dict(drift.values), dict(drift.alerts))

    @staticmethod
    def _store_state_reporter(host: Host) -> Callable[[bool], None]:
        """The metrics store's health detail (health service name STORE_HEALTH): NOT_SERVING
        while the store fails (routing goes on), SERVING when it is back. Called from the
        store's sync thread."""
        loop = asyncio.get_running_loop()

        def report(ok: bool) -> None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(
                    lambda: loop.create_task(host.health.set(STORE_HEALTH, status))
                )

        return report

    async def _bench_every(self) -> None:
        """Benchmark the tiers on a schedule (router.bench_interval_seconds), in the background
        at bounded concurrency; a failed run is logged and the next one comes on time."""
        r = self.cfg.router
        prompts = bench.read_sample(r.bench_sample or bench.DEFAULT_SAMPLE)
        while True:
            await asyncio.sleep(r.bench_interval_seconds)  # a schedule, not a wait for an event
            try:
                rows = await bench.run(
                    self.cfg, prompts, 1, r.bench_concurrency, r.bench_max_tokens, 120.0
                )
            except bench.TierUnreachable as error:
                logger.warning("scheduled tier benchmark skipped: %s", error)
                continue
            self.measurements.absorb(bench.observations(rows))
            store = self.measurements.store
            if store is not None:
                try:
                    await asyncio.to_thread(store.record_benchmark, rows)
                except StoreDown as error:
                    logger.warning("scheduled tier benchmark not kept: the store failed: %s", error)
            self.bench_runs += 1
            self.benched.set()

    # What the HTTP front needs of the router (front/openai_api.Router).
    def route(self, request: pb.RouteRequest, deadline: Deadline) -> AsyncGenerator[RouteEvent]:
        return self.flow.route(request, deadline)

    @property
    def tiers(self) -> list[str]:
        return [t.name for t in self.cfg.tiers]

    @property
    def ready(self) -> bool:
        return self.decider.ready

    async def close(self) -> None:
        if self._state is not None and metrics.STATE.state is self._state:
            metrics.STATE.state = None
        if self.http is not None:  # the host drained it beside the gRPC port; else: now
            await self.http.stop()
        if self._bench_task is not None:
            self._bench_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bench_task
        await self.flow.shadow.close()  # before the channels close; the rows are kept
        await asyncio.gather(self.decider.close(), self.pool.close(), self.judge.close())
        await asyncio.to_thread(self.measurements.close)
        if self.log is not None:
            await asyncio.to_thread(self.log.close)  # after the last request: every row kept


def serving(service: RouterService) -> Serving:
    r = service.cfg.router
    return Serving(
        listen=r.listen,
        shutdown_grace_seconds=r.shutdown_grace_seconds,
        max_concurrent_requests=r.max_concurrent_requests,
        limit_setting="router.max_concurrent_requests",
        telemetry_name="tierroute-router",
        clients=service.clients,
        # Callers of the router's API prove who they are with tokens, not certificates.
        tls=server_credentials(service.cfg.tls, mutual=False),
        metrics_listen=r.metrics_listen,
        metrics_tls=service.cfg.tls,
        metrics_setting="router.metrics_listen",
        max_message_bytes=r.max_message_bytes,
        message_setting="router.max_message_bytes",
    )


def host(cfg: Config) -> Host:
    """A router on its own gRPC server (not started): tests drive start/load/stop."""
    service = RouterService(cfg)
    return Host(service, serving(service))


def build(cfg: Config, args: argparse.Namespace, extra: list[str]) -> tuple[RouterService, Serving]:
    service = RouterService(cfg)
    return service, serving(service)


SPEC = Spec("router", build)


def main(argv: list[str] | None = None) -> int:
    return run_service(SPEC, argv)
