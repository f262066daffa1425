"""The router service: Score (the decision) and Route (the whole request) over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry import trace

from tierroute import tracing
from tierroute.config import Config, ConfigError, load_config
from tierroute.errors import Overloaded, Unavailable, stream_errors, unary_errors
from tierroute.prompts import check_prompt, normalize, routing_text
from tierroute.router.batching import MicroBatcher
from tierroute.router.cache import TTLCache, cache_key
from tierroute.router.decision import TierSelector
from tierroute.router.embedder import Embedder
from tierroute.router.pipeline import Pipeline
from tierroute.router.scoring import Scorer, build_scorer
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc
from tierroute.serving import ServiceHost, serve_until_signal, setup_logging

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RouterService"].full_name


@dataclass(frozen=True)
class CachedDecision:
    score: float
    tier: str
    max_score: float
    confidence: float
    category: str
    reasons: list[pb.ReasonCode] = field(default_factory=list)


class RouterCore:
    """Embedder, scorer, routing cache and tier selection: everything a decision needs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.selector = TierSelector(cfg)
        self.cache: TTLCache[CachedDecision] = TTLCache(
            cfg.router.cache_max_entries, cfg.router.cache_ttl_seconds
        )
        self.embedder: Embedder | None = None
        self.scorer: Scorer | None = None
        self.batcher: MicroBatcher | None = None
        self._routing_version = cfg.routing_version()

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def load(self) -> None:
        """Load the embedder and embed the scorer's reference prompts (off the event loop)."""
        cfg = self.cfg.router

        def _load() -> tuple[Embedder, Scorer]:
            embedder = Embedder(
                cfg.model,
                max_tokens=cfg.embed_max_tokens,
                intra_op_threads=cfg.intra_op_threads,
                spinning=cfg.onnx_spinning,
            )
            first_bound = self.cfg.tier_bounds()[0] if self.cfg.tiers else None
            scorer = build_scorer(cfg, embedder.embed, embedder.version, first_bound)
            embedder.embed(["warm-up run, so the first request does not pay for it"])
            return embedder, scorer

        embedder, scorer = await asyncio.to_thread(_load)
        batcher = MicroBatcher(
            embedder.embed_with_truncation, cfg.batch_max_size, cfg.batch_max_wait_ms
        )
        batcher.start()
        self.embedder, self.scorer, self.batcher = embedder, scorer, batcher
        logger.info("scorer %s ready (embedder %s)", scorer.version, embedder.version)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def decide(self, text: str, bypass_cache: bool = False) -> pb.RoutingDecision:
        """The decision for `text`; the default tier (ROUTER_FALLBACK) if scoring fails or
        runs over `router.score_budget_ms`."""
        if self.batcher is None or self.scorer is None or self.embedder is None:
            raise Unavailable(
                "the router is still loading its embedder; retry when health reports SERVING"
            )
        started = time.perf_counter()
        normalized = normalize(text)
        key = cache_key(
            normalized, self.embedder.version, self.scorer.version, self._routing_version
        )
        cached = None if bypass_cache else self.cache.get(key)
        hit = cached is not None
        if cached is None:
            # Shielded: a decision that arrives after the budget still fills the cache.
            scoring = asyncio.ensure_future(self._score(normalized, key))
            scoring.add_done_callback(_log_late_failure)
            budget = self.cfg.router.score_budget_ms / 1000.0
            try:
                cached = await asyncio.wait_for(asyncio.shield(scoring), budget)
            except TimeoutError:
                return self._fallback(started, f"over its {budget * 1000:g} ms budget")
            except Exception as exc:
                return self._fallback(started, f"failed: {type(exc).__name__}: {exc}")
        return pb.RoutingDecision(
            complexity_score=round(cached.score, 4),
            tier=cached.tier,
            confidence=round(cached.confidence, 4),
            category=cached.category,
            reason_codes=[*cached.reasons, pb.REASON_CODE_CACHE_HIT] if hit else cached.reasons,
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            cache_hit=hit,
            embedder_version=self.embedder.version,
            scorer_version=self.scorer.version,
            tier_max_score=cached.max_score,
        )

    async def _score(self, normalized: str, key: str) -> CachedDecision:
        assert self.batcher is not None and self.scorer is not None
        vector, truncated = await self.batcher.embed(normalized)
        (score,) = self.scorer.score(vector[None, :], [normalized])
        choice = self.selector.choose(score.value)
        reasons = list(choice.reasons)
        if truncated:
            reasons.append(pb.REASON_CODE_PROMPT_TRUNCATED)
        decision = CachedDecision(
            score.value, choice.tier, choice.max_score, choice.confidence, score.category, reasons
        )
        self.cache.put(key, decision)
        return decision

    def _fallback(self, started: float, why: str) -> pb.RoutingDecision:
        tier = self.cfg.fallback_tier()
        logger.warning("scoring %s: routing to the default tier %r", why, tier)
        return pb.RoutingDecision(
            tier=tier,
            reason_codes=[pb.REASON_CODE_ROUTER_FALLBACK],
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            tier_max_score=self.cfg.tier_bounds()[[t.name for t in self.cfg.tiers].index(tier)],
        )


def _log_late_failure(task: asyncio.Future[CachedDecision]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("scoring failed: %r", task.exception())


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, core: RouterCore, pipeline: Pipeline) -> None:
        self.core = core
        self.pipeline = pipeline
        self._in_flight = 0

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        limit = self.core.cfg.router.max_concurrent_requests
        if self._in_flight >= limit:
            raise Overloaded(
                f"the router is at its limit of {limit} concurrent requests "
                "(router.max_concurrent_requests); retry with backoff"
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    @unary_errors
    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        check_prompt(request.prompt, request.messages, self.core.cfg.router.max_prompt_chars)
        with self._admit():
            decision = await self.core.decide(
                routing_text(request.prompt, request.messages), request.bypass_cache
            )
        return pb.ScoreResponse(decision=decision)

    @stream_errors
    async def Route(
        self, request: pb.RouteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RouteResponse]:
        started = time.perf_counter()
        with tracing.server_span(f"{SERVICE_NAME}/Route", context, __name__) as span:
            check_prompt(request.prompt, request.messages, self.core.cfg.router.max_prompt_chars)
            holder = object()  # this request, for the circuit breakers
            with self._admit():
                if request.force_tier:
                    self.pipeline.tier_index(request.force_tier)  # INVALID_ARGUMENT if unknown
                    decision = pb.RoutingDecision(
                        tier=request.force_tier,
                        confidence=1.0,
                        reason_codes=[pb.REASON_CODE_FORCED_TIER],
                        router_latency_ms=(time.perf_counter() - started) * 1000.0,
                    )
                else:
                    with tracing.tracer(__name__).start_as_current_span("score") as score_span:
                        decision = await self.core.decide(
                            routing_text(request.prompt, request.messages), request.bypass_cache
                        )
                        score_span.set_attribute("tierroute.cache_hit", decision.cache_hit)
                    self.pipeline.admit(decision, holder)
                span.set_attributes(
                    {
                        "tierroute.decision.tier": decision.tier,
                        "tierroute.decision.score": decision.complexity_score,
                        "tierroute.decision.reason_codes": [
                            pb.ReasonCode.Name(r) for r in decision.reason_codes
                        ],
                    }
                )
                events = self.pipeline.run(request, decision, started, context, holder)
                # The tier call starts while the decision is being written, not after it.
                first = asyncio.ensure_future(anext(events))
                try:
                    yield pb.RouteResponse(decision=decision)
                    event = await first
                except BaseException:  # the client left, or the run failed at once
                    first.cancel()
                    # Let the step finish unwinding (it cancels the tier call) before closing
                    # the generator: aclose() on a running generator raises.
                    with contextlib.suppress(BaseException):
                        await first
                    await events.aclose()
                    self.pipeline.breakers[decision.tier].release(holder)  # if never started
                    raise
                while True:
                    if event.HasField("summary"):
                        _annotate(span, event.summary)
                    yield event
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return


def _annotate(span: trace.Span, summary: pb.RouteSummary) -> None:
    span.set_attributes(
        {
            "tierroute.tier": summary.tier,
            "tierroute.escalated": summary.escalated,
            "tierroute.escalation_reason": pb.EscalationReason.Name(summary.escalation_reason),
            "tierroute.prompt_tokens": summary.usage.prompt_tokens,
            "tierroute.completion_tokens": summary.usage.completion_tokens,
            "tierroute.cost_usd": summary.cost_usd,
            "tierroute.validation": pb.ValidationStatus.Name(summary.validation),
        }
    )


class RouterServer:
    """A router on its own gRPC server; tests drive start/load/stop step by step."""

    def __init__(self, cfg: Config) -> None:
        check_router_config(cfg)
        self.cfg = cfg
        self.core = RouterCore(cfg)
        self.pipeline = Pipeline(cfg)
        self.host = ServiceHost(cfg.router.listen, [SERVICE_NAME])
        pb_grpc.add_RouterServiceServicer_to_server(
            RouterServicer(self.core, self.pipeline), self.host.server
        )

    async def start(self) -> int:
        return await self.host.start()

    async def load(self) -> None:
        await self.core.load()
        await self.host.set_serving()

    async def stop(self, grace: float | None = None) -> None:
        await self.host.stop(self.cfg.router.shutdown_grace_seconds if grace is None else grace)
        await self.release()

    async def release(self) -> None:
        await self.core.close()
        await self.pipeline.close()
        tracing.shutdown_tracing()

    async def serve(self, port_file: Path | None = None) -> None:
        await serve_until_signal(
            self.host,
            self.core.load,
            self.release,
            self.cfg.router.shutdown_grace_seconds,
            port_file,
        )


def check_router_config(cfg: Config) -> None:
    if not cfg.tiers:
        raise ConfigError("invalid configuration: tiers: the router needs at least one tier")


async def _serve(cfg: Config, port_file: Path | None) -> None:
    tracing.setup_tracing("tierroute-router", cfg.monitoring.otlp_endpoint)
    # grpc.aio servers belong to the loop they are made in: build it inside asyncio.run.
    await RouterServer(cfg).serve(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tierroute router service")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--listen", help="host:port, overrides router.listen")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.listen:
            cfg = cfg.model_copy(
                update={"router": cfg.router.model_copy(update={"listen": args.listen})}
            )
        check_router_config(cfg)
    except ConfigError as exc:
        print(f"tierroute-router: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.monitoring.log_level)
    asyncio.run(_serve(cfg, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
