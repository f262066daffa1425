"""One vLLM engine (in-process AsyncLLM) and the translation between it and TierService messages.

vLLM is imported lazily, inside `TierEngine.load`, so that this module (and the request checks in
it) can be imported where vLLM is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.config import TierConfig
from tierroute.core.errors import InvalidArgument, Overloaded, ServiceError, Unavailable
from tierroute.core.prompts import check_prompt
from tierroute.core.sampling import check_logprobs, check_sampling
from tierroute.tier.v1 import tier_service_pb2 as pb

logger = logging.getLogger(__name__)

# How long EngineCore and its workers get to exit on their own at shutdown, in seconds (the
# suite runner waits longer: tools/suite.py ENGINE_STOP_SECONDS).
ENGINE_SHUTDOWN_SECONDS = 25.0
# An engine with work that has produced nothing for this long is taken as hung: its waiting
# requests get no more `waiting` messages, so callers see the silence (flow.py's stall check).
ENGINE_STALL_SECONDS = 60.0
# The id of the request "aborted" to wake an idle EngineCore at shutdown (no such request).
SHUTDOWN_WAKEUP_ID = "tierroute-shutdown-wakeup"
# A token is rarely longer than this many characters: a prompt longer than this many times the
# context is rejected before it is tokenized.
MAX_CHARS_PER_TOKEN = 32

_FINISH = {
    "stop": common_pb.FINISH_REASON_STOP,
    "length": common_pb.FINISH_REASON_LENGTH,
    "abort": common_pb.FINISH_REASON_ABORT,
    "repetition": common_pb.FINISH_REASON_REPETITION,
}


class EngineFailure(ServiceError):
    """The engine failed one request; the server keeps serving other requests."""


@dataclass(frozen=True)
class Prepared:
    """A checked request, ready for the engine."""

    token_ids: list[int]
    sampling: Any  # vllm.SamplingParams


def engine_args_for(tier: TierConfig, overrides: Mapping[str, Any] | None = None) -> Any:
    """AsyncEngineArgs from the tier's model, its `engine_args` and any command-line overrides.

    Every AsyncEngineArgs field may be set; an unknown one is a configuration error that names it.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    merged: dict[str, Any] = {"model": tier.model, **tier.engine_args, **(overrides or {})}
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise ValueError(
            f"tiers[{tier.name}].engine_args: unknown vLLM engine argument(s) "
            f"{', '.join(unknown)} (see vllm.engine.arg_utils.AsyncEngineArgs)"
        )
    return AsyncEngineArgs(**merged)


class TierEngine:
    def __init__(self, tier: TierConfig, engine_args: Any) -> None:
        self.tier = tier
        self.engine_args = engine_args
        self.llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once loaded
        self._tokenizer: Any = None
        self.model = tier.model
        self.max_model_len = 0
        self.dtype = ""
        self.quantization = ""
        self.device = ""
        # When the engine last produced output, or last took work while idle (monotonic).
        self.progressed_at = time.monotonic()

    @property
    def ready(self) -> bool:
        return self.llm is not None and not self.dead

    @property
    def dead(self) -> bool:
        """The engine process has failed; only a restart of the tier brings it back."""
        return self.llm is not None and bool(self.llm.errored)

    async def load(self) -> None:
        """Start the engine (about 30 s for SmolLM2 on CPU) without blocking the event loop."""
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, self.engine_args)
        config = llm.model_config
        self._tokenizer = llm.get_tokenizer()
        self.max_model_len = int(config.max_model_len)
        self.dtype = str(config.dtype).removeprefix("torch.")
        self.quantization = str(config.quantization or "")
        self.device = str(current_platform.device_type)
        self.model = str(config.model)  # what was loaded, after command-line overrides
        self.llm = llm
        logger.info(
            "engine for %s ready in %.1f s (max_model_len %d, %s, %s)",
            self.tier.model,
            time.perf_counter() - started,
            self.max_model_len,
            self.dtype,
            self.device,
        )

    async def shutdown(self) -> None:
        """Stop the engine once no request is in flight: its output task first (so that the
        engine's exit is not reported as its death), then EngineCore and its workers, given
        ENGINE_SHUTDOWN_SECONDS to exit on their own (vLLM's default, 5 s, is shorter than
        a CPU worker takes to leave, and the engine was then killed)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        handler = getattr(llm, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        await _stop_engine_processes(llm)
        await asyncio.to_thread(llm.shutdown, ENGINE_SHUTDOWN_SECONDS)

    def progressing(self) -> bool:
        """Whether the engine has produced output within ENGINE_STALL_SECONDS of its last
        output or of taking work while idle: busy, not hung."""
        return time.monotonic() - self.progressed_at < ENGINE_STALL_SECONDS

    def active_requests(self) -> int:
        return int(self.llm.get_num_unfinished_requests()) if self.llm is not None else 0

    def describe(self) -> pb.DescribeResponse:
        return pb.DescribeResponse(
            tier=self.tier.name,
            model=self.model,
            max_context_tokens=self.max_model_len,
            price_per_1k_input_usd=self.tier.price_per_1k_input_usd,
            price_per_1k_output_usd=self.tier.price_per_1k_output_usd,
            dtype=self.dtype,
            quantization=self.quantization,
            ready=self.ready,
            device=self.device,
            default_max_tokens=self.tier.max_tokens,
            active_requests=self.active_requests(),
            default_temperature=self.tier.temperature,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.tier.price_per_1k_input_usd
            + completion_tokens * self.tier.price_per_1k_output_usd
        ) / 1000.0

    async def prepare(self, request: pb.GenerateRequest) -> Prepared:
        """Check the request, render and tokenize the prompt, build the sampling parameters.

        Raises InvalidArgument (with what to fix) before any generation starts.
        """
        if self.llm is None:
            raise Unavailable("the engine is still loading; retry when health reports SERVING")
        if self.dead:
            raise Unavailable("the tier's engine has failed; restart the tier service")
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        check_prompt(request.prompt, request.messages, self.max_model_len * MAX_CHARS_PER_TOKEN)
        s = request.sampling
        temperature, top_p = check_sampling(s, self.tier.temperature)
        check_logprobs(request.logprobs, request.top_logprobs)
        structured = None
        if request.json_schema:
            try:
                schema = json.loads(request.json_schema)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"json_schema is not valid JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise InvalidArgument("json_schema must be a JSON object (a JSON Schema)")
            structured = StructuredOutputsParams(json=schema)

        # Templating and tokenizing a long prompt takes a while: keep the event loop free.
        token_ids = await asyncio.to_thread(self._tokenize, request)
        max_tokens = s.max_tokens or self.tier.max_tokens
        if len(token_ids) + max_tokens > self.max_model_len:
            raise InvalidArgument(
                f"the prompt does not fit: {len(token_ids)} prompt tokens + max_tokens "
                f"{max_tokens} = {len(token_ids) + max_tokens} > the model's context of "
                f"{self.max_model_len} tokens; shorten the prompt or lower max_tokens"
            )
        try:
            sampling = SamplingParams(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=list(s.stop) or None,
                seed=s.seed if s.HasField("seed") else None,
                logprobs=(request.top_logprobs or 0) if request.logprobs else None,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA,
            )
        except (ValueError, VLLMClientError) as exc:
            raise InvalidArgument(f"bad sampling parameters: {exc}") from None
        return Prepared(token_ids, sampling)

    def _tokenize(self, request: pb.GenerateRequest) -> list[int]:
        if request.prompt:
            return list(self._tokenizer.encode(request.prompt))
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text = self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    async def generate(
        self,
        prepared: Prepared,
        request_id: str,
        started: float,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Stream chunks, then one `complete`. Cancelling the iteration aborts the request in
        the engine (vLLM's generate() aborts on CancelledError/GeneratorExit). `started` is
        when the request arrived (time.perf_counter()), for the timings."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.active_requests() == 0:
            self.progressed_at = time.monotonic()  # idle until now: it starts on this one
        first_token_at: float | None = None
        completion_tokens = 0
        finish_reason = common_pb.FINISH_REASON_UNSPECIFIED
        prompt_tokens = len(prepared.token_ids)
        try:
            async for out in self.llm.generate(
                {"prompt_token_ids": prepared.token_ids},
                prepared.sampling,
                request_id,
                trace_headers=trace_headers,
            ):
                self.progressed_at = time.monotonic()
                piece = out.outputs[0]
                new_tokens = len(piece.token_ids)
                if new_tokens:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    completion_tokens += new_tokens
                    chunk = pb.GenerateChunk(text=piece.text, token_count=new_tokens)
                    if piece.logprobs:
                        chunk.logprobs.extend(
                            _logprobs(piece.token_ids, piece.logprobs, prepared.sampling.logprobs)
                        )
                    yield pb.GenerateResponse(chunk=chunk)
                if out.finished:
                    if piece.finish_reason == "error":
                        raise EngineFailure(
                            f"the engine failed this request after {completion_tokens} tokens "
                            "(finish reason 'error'); retry it"
                        )
                    finish_reason = _FINISH.get(
                        piece.finish_reason or "", common_pb.FINISH_REASON_UNSPECIFIED
                    )
        except VLLMClientError as exc:
            raise InvalidArgument(f"the engine rejected the request: {exc}") from exc
        except GracefulHTTPError as exc:  # the engine's queue limits
            raise Overloaded(f"the tier is at capacity: {exc}") from exc
        except EngineDeadError as exc:
            logger.error("engine is dead: %s", exc)
            raise Unavailable(f"the tier's engine has failed: {exc}") from exc
        except Exception as exc:
            if isinstance(exc, ServiceError):
                raise
            logger.exception("request %s failed in the engine", request_id)
            raise EngineFailure(f"generation failed in the engine: {exc}") from exc
        done = time.perf_counter()
        yield pb.GenerateResponse(
            complete=pb.GenerateComplete(
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                time_to_first_token_ms=((first_token_at or done) - started) * 1000.0,
                total_time_ms=(done - started) * 1000.0,
                cost_usd=self.cost(prompt_tokens, completion_tokens),
                model=self.model,
            )
        )


async def _stop_engine_processes(llm: Any) -> None:
    """SIGTERM to each EngineCore process, and inputs until it has left (at most
    ENGINE_SHUTDOWN_SECONDS). EngineCore handles SIGTERM in its main thread, which, idle,
    waits on its input queue; when another of its threads takes the signal, the handler waits
    for the next input, and vLLM then kills the engine after its timeout (seen in CI: no
    "trigger received signal" for 25 s). An abort of no request is such an input, and harmless.
    Done here, in the event loop that owns the engine's sockets, before vLLM's own shutdown
    (which then finds nothing left to stop) closes them from its thread."""
    manager = getattr(getattr(getattr(llm, "engine_core", None), "resources", None),
                      "engine_manager", None)  # fmt: skip
    processes = list(getattr(manager, "processes", None) or [])
    if not processes:
        return
    for process in processes:
        if process.is_alive():
            process.terminate()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ENGINE_SHUTDOWN_SECONDS
    while any(p.is_alive() for p in processes) and loop.time() < deadline:
        with contextlib.suppress(Exception):
            await llm.engine_core.abort_requests_async([SHUTDOWN_WAKEUP_ID])
        await asyncio.sleep(0.2)  # polls the processes: their exit has no event in this loop


def _logprobs(
    token_ids: list[int], logprobs: list[dict[int, Any]], top: int | None
) -> list[common_pb.TokenLogprob]:
    out = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates.get(token_id)
        entry = common_pb.TokenLogprob(
            token=(chosen.decoded_token or "") if chosen else "",
            token_id=token_id,
            logprob=float(chosen.logprob) if chosen else float("-inf"),
        )
        if top:
            ranked = sorted(
                (c for c in candidates.values() if c.rank is not None and c.rank <= top),
                key=lambda c: c.rank,
            )
            entry.top.extend(
                common_pb.TopLogprob(token=c.decoded_token or "", logprob=float(c.logprob))
                for c in ranked
            )
        out.append(entry)
    return out
