"""The tier service: one vLLM engine behind TierService.Generate (server-streaming) and Describe.

    python -m tierroute.tier --config configs/default.yaml --tier small [vLLM engine flags...]

Engine arguments come from the tier's `engine_args` in the config; any vLLM engine flag given
on the command line (`--max-model-len 4096`, `--dtype float16`, ...) overrides them unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from opentelemetry import trace

from tierroute.core.config import Config, ConfigError, TierConfig
from tierroute.runtime import reaper, telemetry
from tierroute.runtime.host import Host, Serving, Spec, run_service
from tierroute.runtime.tls import server_credentials
from tierroute.tier.engine import ENGINE_SHUTDOWN_SECONDS, TierEngine, engine_args_for
from tierroute.tier.v1 import tier_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TierService"].full_name
ENGINE_WATCH_SECONDS = 1.0
# How often a request waiting for its first token is told it is still waiting.
WAITING_SECONDS = 1.0
WORKER_SHUTDOWN_SECONDS = int(ENGINE_SHUTDOWN_SECONDS) - 5


class TierServicer(pb_grpc.TierServiceServicer):
    def __init__(self, engine: TierEngine, service: TierService) -> None:
        self.engine = engine
        self.service = service

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        started = time.perf_counter()
        span = trace.get_current_span()
        span.set_attribute("tierroute.tier", self.engine.tier.name)
        try:
            prepared = await self.engine.prepare(request)
            # The caller's id stays readable in engine logs; the suffix keeps two requests
            # with the same id from colliding inside the engine.
            request_id = f"{request.request_id or 'req'}-{uuid.uuid4().hex[:12]}"
            span.set_attributes(
                {
                    "tierroute.request_id": request_id,
                    "gen_ai.usage.input_tokens": len(prepared.token_ids),
                }
            )
            generation = self.engine.generate(
                prepared, request_id, started, trace_headers=telemetry.current_headers()
            )
            async for response in with_waiting(generation, self.engine, started):
                if response.HasField("complete"):
                    c = response.complete
                    span.set_attributes(
                        {
                            "gen_ai.usage.output_tokens": c.completion_tokens,
                            "tierroute.cost_usd": c.cost_usd,
                            "tierroute.ttft_ms": c.time_to_first_token_ms,
                        }
                    )
                yield response
        finally:
            if self.engine.dead:
                await self.service.engine_died()

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        return self.engine.describe()


async def with_waiting(
    responses: AsyncIterator[pb.GenerateResponse], engine: TierEngine, started: float
) -> AsyncIterator[pb.GenerateResponse]:
    """`responses`, with a `waiting` message every WAITING_SECONDS before the first chunk while
    the engine is making progress (TierEngine.progressing): a caller's stall check then tells a
    busy engine (a queue, a long prefill) from a hung one. Closing this closes `responses`,
    which aborts the request in the engine."""
    reading: asyncio.Future[pb.GenerateResponse] | None = None
    answered = False
    try:
        while True:
            if reading is None:
                reading = asyncio.ensure_future(anext(responses))
            if not answered:
                done, _ = await asyncio.wait({reading}, timeout=WAITING_SECONDS)
                if not done:
                    if engine.progressing():
                        waited_ms = (time.perf_counter() - started) * 1000.0
                        yield pb.GenerateResponse(
                            waiting=pb.GenerateWaiting(
                                engine_requests=engine.active_requests(), waited_ms=waited_ms
                            )
                        )
                    continue
            try:
                response = await reading
            except StopAsyncIteration:
                return
            reading = None
            answered = answered or response.HasField("chunk")
            yield response
    finally:
        if reading is not None and not reading.done():
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
        await responses.aclose()  # type: ignore[attr-defined]


class TierService:
    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(self, tier: TierConfig, engine_args: Any) -> None:
        self.tier = tier
        self.engine = TierEngine(tier, engine_args)
        self._host: Host | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_TierServiceServicer_to_server(TierServicer(self.engine, self), server)

    async def load(self, host: Host) -> None:
        self._host = host
        # Before the engine's processes exist: if this process is killed, they die with it.
        self._reaper = reaper.watch_me()
        await self.engine.load()
        self._watcher = asyncio.create_task(self._watch_engine())

    async def engine_died(self) -> None:
        """Tell health checkers (and so the router) to stop sending work here."""
        logger.error("the engine has died: reporting NOT_SERVING")
        if self._host is not None:
            await self._host.set_serving(False)

    async def _watch_engine(self) -> None:
        """Turn health to NOT_SERVING as soon as the engine dies, even with no request."""
        while not self.engine.dead:  # noqa: ASYNC110 - vLLM signals engine death by no event
            await asyncio.sleep(ENGINE_WATCH_SECONDS)
        await self.engine_died()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.engine.shutdown()


def _engine_flag_overrides(rest: list[str]) -> dict[str, Any]:
    """vLLM engine flags from the command line, exactly as `vllm serve` would parse them."""
    if not rest:
        return {}
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="tierroute-tier (vLLM engine flags)")
    parser = AsyncEngineArgs.add_cli_args(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # keep only the flags actually given
    return vars(parser.parse_args(rest))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tier", required=True, help="which tier of the config to serve")


def build(cfg: Config, args: argparse.Namespace, extra: list[str]) -> tuple[TierService, Serving]:
    try:
        tier = cfg.tier(args.tier)
    except KeyError:
        names = ", ".join(t.name for t in cfg.tiers) or "none"
        raise ConfigError(f"no tier {args.tier!r} in the config (tiers: {names})") from None
    if tier.kind != "tierroute":
        raise ConfigError(
            f"tier {tier.name!r} is of kind {tier.kind}: its own server serves it, not a tier "
            "process (the router reaches it at its base_url)"
        )
    for key, value in tier.env.items():
        os.environ.setdefault(key, value)
    # vLLM gives its workers 5 s to leave on shutdown, then signals them; a CPU worker beside
    # another engine takes longer: let it leave on its own (within the engine's own grace).
    os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", str(WORKER_SHUTDOWN_SECONDS))
    try:
        engine_args = engine_args_for(tier, _engine_flag_overrides(extra))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    serving = Serving(
        listen=tier.bind(),
        shutdown_grace_seconds=tier.shutdown_grace_seconds,
        max_concurrent_requests=tier.max_concurrent_requests,
        limit_setting=f"tiers[{tier.name}].max_concurrent_requests",
        telemetry_name=f"tierroute-tier-{tier.name}",
        tls=server_credentials(cfg.tls, mutual=True),
        metrics_listen=tier.metrics_listen,
        metrics_tls=cfg.tls,
        metrics_setting=f"tiers[{tier.name}].metrics_listen",
    )
    return TierService(tier, engine_args), serving


SPEC = Spec(
    "tier",
    build,
    add_arguments=_add_arguments,
    passes_extra_flags=True,
    epilog="Other flags are passed to vLLM's engine.",
)


def main(argv: list[str] | None = None) -> int:
    return run_service(SPEC, argv)
