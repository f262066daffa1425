"""The tier service: one vLLM engine behind TierService.Generate (server-streaming) and Describe.

    python -m tierroute.tier --config configs/default.yaml --tier small [vLLM engine flags...]

Engine arguments come from the tier's `engine_args` in the config; any vLLM engine flag given
on the command line (`--max-model-len 4096`, `--dtype float16`, ...) overrides them unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from tierroute import tracing
from tierroute.config import Config, ConfigError, TierConfig, load_config
from tierroute.errors import stream_errors, unary_errors
from tierroute.serving import ServiceHost, serve_until_signal, setup_logging
from tierroute.tier.engine import TierEngine, engine_args_for
from tierroute.tier.v1 import tier_service_pb2 as pb
from tierroute.tier.v1 import tier_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TierService"].full_name
ENGINE_WATCH_SECONDS = 1.0


class TierServicer(pb_grpc.TierServiceServicer):
    def __init__(self, engine: TierEngine, host: ServiceHost) -> None:
        self.engine = engine
        self.host = host

    @stream_errors
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            async for response in self._generate(request, context):
                yield response
        finally:
            if self.engine.dead:
                # Tell health checkers (and so the router) to stop sending work here.
                logger.error("engine is dead: reporting NOT_SERVING")
                await self.host.set_serving(False)

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        started = time.perf_counter()
        with tracing.server_span(f"{SERVICE_NAME}/Generate", context, __name__) as span:
            span.set_attribute("tierroute.tier", self.engine.tier.name)
            prepared = await self.engine.prepare(request)
            # The caller's id stays readable in engine logs; the suffix keeps two requests
            # with the same id from colliding inside the engine.
            request_id = f"{request.request_id or 'req'}-{uuid.uuid4().hex[:12]}"
            span.set_attribute("tierroute.request_id", request_id)
            span.set_attribute("gen_ai.usage.input_tokens", len(prepared.token_ids))
            async for response in self.engine.generate(
                prepared, request_id, started, trace_headers=tracing.current_headers()
            ):
                if response.HasField("complete"):
                    c = response.complete
                    span.set_attribute("gen_ai.usage.output_tokens", c.completion_tokens)
                    span.set_attribute("tierroute.cost_usd", c.cost_usd)
                    span.set_attribute("tierroute.ttft_ms", c.time_to_first_token_ms)
                yield response

    @unary_errors
    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        return self.engine.describe()


class TierServer:
    def __init__(self, cfg: Config, tier: TierConfig, engine_args: Any, listen: str) -> None:
        self.cfg = cfg
        self.tier = tier
        self.engine = TierEngine(tier, engine_args)
        self._watcher: asyncio.Task[None] | None = None
        self.host = ServiceHost(listen, [SERVICE_NAME])
        pb_grpc.add_TierServiceServicer_to_server(
            TierServicer(self.engine, self.host), self.host.server
        )

    async def load(self) -> None:
        await self.engine.load()
        self._watcher = asyncio.create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        """Turn health to NOT_SERVING as soon as the engine dies, even with no request."""
        while not self.engine.dead:  # noqa: ASYNC110 - vLLM signals engine death by no event
            await asyncio.sleep(ENGINE_WATCH_SECONDS)
        logger.error("the engine has died: reporting NOT_SERVING")
        await self.host.set_serving(False)

    async def release(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await asyncio.to_thread(self.engine.shutdown)
        tracing.shutdown_tracing()

    async def serve(self, port_file: Path | None = None) -> None:
        await serve_until_signal(
            self.host, self.load, self.release, self.tier.shutdown_grace_seconds, port_file
        )


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


async def _serve(
    cfg: Config, tier: TierConfig, engine_args: Any, listen: str, port_file: Path | None
) -> None:
    tracing.setup_tracing(f"tierroute-tier-{tier.name}", cfg.monitoring.otlp_endpoint)
    await TierServer(cfg, tier, engine_args, listen).serve(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="tierroute tier service", epilog="Other flags are passed to vLLM's engine."
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--tier", required=True, help="which tier of the config to serve")
    parser.add_argument("--listen", help="host:port, overrides the tier's address")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config)
        tier = cfg.tier(args.tier)
    except ConfigError as exc:
        print(f"tierroute-tier: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        names = ", ".join(t.name for t in cfg.tiers) or "none"
        print(
            f"tierroute-tier: no tier {args.tier!r} in the config (tiers: {names})", file=sys.stderr
        )
        return 2
    for key, value in tier.env.items():
        os.environ.setdefault(key, value)
    setup_logging(cfg.monitoring.log_level)
    try:
        engine_args = engine_args_for(tier, _engine_flag_overrides(rest))
    except (ValueError, TypeError) as exc:
        print(f"tierroute-tier: {exc}", file=sys.stderr)
        return 2
    listen = args.listen or tier.address
    asyncio.run(_serve(cfg, tier, engine_args, listen, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
