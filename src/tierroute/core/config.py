"""The suite's configuration: one YAML file, typed and validated, with environment overrides.

Environment variables override single keys: `TIERROUTE__ROUTER__CACHE_TTL_SECONDS=60` sets
`router.cache_ttl_seconds`, `TIERROUTE__TIERS__0__ADDRESS=10.0.0.5:50061` sets the first tier's
address. Keys are case-insensitive except below `env` and `engine_args`, whose keys are kept as
written. Values are parsed as YAML scalars (`true`, `4.5`, `null`), or kept as text where that
fails, and always kept as text below `env`. Relative paths in the file are resolved against the
file's folder.

Renamed keys are still read under their old names, with a warning that names the new one.
Which process reads what: the router reads `router`, `tiers` (all of a tier's keys but
`listen`, `engine_args`, `env`), `escalation`, `circuit_breaker` and `validator.address`; a tier
process reads its own entry of `tiers`; the validator reads `validator`; all read `monitoring`.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

logger = logging.getLogger(__name__)

ENV_PREFIX = "TIERROUTE__"
_VERBATIM = {"env", "engine_args"}


# URL schemes of a Redis metrics store (router.metrics_store).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the bad key and what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Old key -> new key: still read, with a warning.
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _rename(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed:
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old} is the old name of {new}: set only {new}")
                logger.warning("config key %s is now called %s: please rename it", old, new)
                data[new] = data.pop(old)
        return data


class ClientLimitsConfig(_Strict):
    """Limits per client (its token's name; without tokens, its address). Unset: no limit."""

    # Requests (Score and Route) per second, as a token bucket of `burst` (default: the rate,
    # rounded up, at least 1).
    requests_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    # Prompt and completion tokens per minute, over every tier a request used, charged when
    # it ends; a client over it waits until its bucket refills.
    tokens_per_minute: int | None = Field(default=None, ge=1)
    # Routes (streams) in progress at once.
    max_in_progress: int | None = Field(default=None, ge=1)


class RouterConfig(_Strict):
    # Where the router listens. Port 0 picks a free port.
    listen: str = "127.0.0.1:50051"
    # Folder with the embedder: model.onnx (int8) and tokenizer.json (from `make models`).
    model: Path = Path("models/minilm-l6-v2-int8")
    # onnxruntime execution device. Only "cpu" is built and tested.
    device: Literal["cpu"] = "cpu"
    # Threads onnxruntime may use for one embedding run. 0: one per core.
    intra_op_threads: int = Field(default=0, ge=0)
    # Let onnxruntime's threads spin-wait after a run for the next one: slightly faster bursts,
    # but they take CPU from anything sharing the machine (an engine on the same box).
    onnx_spinning: bool = False
    # How prompts are scored: "learned" (a calibrated artifact, see `artifact`), "anchors"
    # (nearest hand-written reference prompts) or "centroid".
    scorer: Literal["learned", "anchors", "centroid"] = "anchors"
    # Folder of the calibrated router artifact (`tierroute calibrate`, or `make models`) for
    # scorer "learned". Its threshold lands on `complexity_threshold`.
    artifact: Path | None = None
    # YAML file of reference prompts (simple/complex, with categories). Empty: the shipped set.
    anchors_file: Path | None = None
    # Steepness of the centroid scorer's sigmoid.
    centroid_sharpness: float = Field(default=12.0, gt=0)
    # Score at or below which the smallest tier serves. Tiers may set their own `max_score`.
    complexity_threshold: float = Field(default=4.0, ge=0, le=10)
    # How long a cached routing decision stays valid, in seconds. 0 turns the cache off.
    cache_ttl_seconds: float = Field(default=300.0, ge=0)
    # Most decisions the routing cache holds (least recently used are evicted).
    cache_max_entries: int = Field(default=100_000, ge=1)
    # Most Score/Route requests in progress at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_requests: int = Field(default=512, ge=1)
    # Longest prompt accepted, in characters (all messages together); longer ones get
    # INVALID_ARGUMENT (HTTP 413).
    max_prompt_chars: int = Field(default=32_000, ge=1)
    # Most prompt tokens accepted, counted with the largest tier's tokenizer (one token per
    # three bytes where it has no local tokenizer.json). Unset: the tiers' context windows are
    # the only bound.
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    # Most messages (turns) in one request.
    max_messages: int = Field(default=256, ge=1)
    # Largest gRPC request message accepted, in bytes; a larger Score or Route gets
    # INVALID_ARGUMENT naming this setting (past four times it, grpc itself refuses the
    # message with RESOURCE_EXHAUSTED before reading it whole).
    max_message_bytes: int = Field(default=4 << 20, ge=1024, le=512 << 20)
    # Most tokens a request may ask for (max_tokens). Unset: the largest tier's context window,
    # when every tier's is configured.
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Characters of the earlier user turns scored with a conversation's last turn (newest
    # first, after it): a short follow-up is routed with what it follows. 0: the last turn only.
    routing_context_chars: int = Field(default=256, ge=0)
    # Tokens of the prompt the embedder reads; the rest is ignored for scoring.
    embed_max_tokens: int = Field(default=256, ge=8, le=512)
    # Most prompts embedded in one ONNX run.
    batch_max_size: int = Field(default=32, ge=1)
    # How long the first prompt of a batch may wait for others, in ms. 0: no waiting; prompts
    # that arrive while a batch runs form the next batch.
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    # The tier used when scoring fails or runs over `score_budget_ms` (reason ROUTER_FALLBACK).
    # Empty: the largest (last) tier.
    default_tier: str = ""
    # Budget for one decision (embedding and scoring), in ms. Over it, the degraded scorer
    # decides (reason SCORE_DEGRADED), or without one the request goes to `default_tier`
    # (ROUTER_FALLBACK); the late decision still fills the routing cache.
    score_budget_ms: float = Field(default=50.0, gt=0)
    # Batches the scorer may run at once, each on its own thread (its ONNX run uses
    # `intra_op_threads` more). One suits a small CPU; more suit many cores.
    scorer_threads: int = Field(default=1, ge=1, le=64)
    # Most prompts waiting for the scorer. Beyond it, and whenever the measured time of a
    # batch says a prompt queued now would not be scored within `score_budget_ms`, the
    # prompt goes straight to the degraded scorer (or the default tier) without queueing.
    score_queue_max: int = Field(default=256, ge=1)
    # Folder of the degraded scorer's map (`python -m tierroute.tools.modelbuild --only
    # degraded`; the embedded default ships artifacts/degraded-default): a cheaper embedding
    # (a table lookup per word piece, ~0.1 ms) that the same scorer reads when the real one
    # cannot answer in time. Unset: such prompts go to `default_tier`.
    degraded_scorer: Path | None = None
    # Seconds in-flight requests get to finish on SIGTERM.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # The share of traffic to send to the large (last) tier. Unset: the bounds as configured
    # (the learned scorer's own threshold). Set: the router follows its live scores and moves
    # the large tier's threshold (and the other bounds with it) to send this share there.
    target_large_share: float | None = Field(default=None, gt=0, lt=1)
    # Where the operating point (live score sketch, threshold) is kept across restarts.
    # Unset: not kept; a restart starts again from the scorer's calibration scores.
    operating_point_state: Path | None = None
    # How many requests it takes for a live score's weight in the sketch to halve. The drift
    # signals below share this window.
    operating_point_half_life: float = Field(default=2000.0, ge=10)
    # Drift alerts (selection/operating.py DriftWatch; tierroute_drift_alert, `report`): the
    # live scores' PSI against the calibration scores above this; the large tier's share
    # further than this from its expected share; the escalation rate above this.
    drift_psi_max: float = Field(default=0.25, gt=0)
    drift_share_band: float = Field(default=0.15, gt=0, lt=1)
    drift_escalation_max: float = Field(default=0.3, gt=0, le=1)
    # SQLite file every Route is recorded in (score, tiers, the validator's verdict, latency,
    # tokens), for `tierroute calibrate --from-log`. Unset: nothing is recorded. While set,
    # each routing-cache entry also keeps its prompt's embedding (1.5 KB with MiniLM).
    routing_log: Path | None = None
    # Keep each prompt's text in the routing log. Off: its SHA-256, its embedding and a few
    # numeric features of its text only (enough to calibrate on, not to read the prompt back).
    routing_log_prompts: bool = False
    # Bearer tokens for the router's gRPC API and its HTTP front (tierroute.runtime.auth): a
    # file of client names and token hashes (`tierroute token new NAME --file F`), and/or the
    # environment variable named here (name=token,...). Neither: open to anyone who connects.
    auth_tokens_file: Path | None = None
    auth_tokens_env: str = "TIERROUTE_TOKENS"
    # How long a conversation (RouteRequest.conversation_id) stays held to its tier after
    # its last turn, in seconds. 0: no affinity.
    affinity_ttl_seconds: float = Field(default=1800.0, ge=0)
    # Limits per client, and other limits for named clients (their token's name).
    client_limits: ClientLimitsConfig = ClientLimitsConfig()
    client_limits_overrides: dict[str, ClientLimitsConfig] = Field(default_factory=dict)
    # host:port of the OpenAI-compatible HTTP front (POST /v1/chat/completions, GET /v1/models,
    # /healthz, /readyz), served by the router process beside its gRPC port. Empty: no HTTP.
    http_listen: str = ""
    # Largest HTTP request body accepted, in bytes (413 over it).
    http_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Deepest nesting of arrays and objects an HTTP request body may have (400 over it): a
    # chat request needs about 6; JSON schemas of tools a few more.
    http_max_json_depth: int = Field(default=64, ge=8, le=512)
    # Largest HTTP request head (all header names and values) accepted, in bytes (431 over it).
    http_max_header_bytes: int = Field(default=16 << 10, ge=1024, le=1 << 20)
    # The longest an HTTP request may take, in seconds (504 after it).
    http_timeout_seconds: float = Field(default=300.0, gt=0)
    # host:port of the Prometheus `/metrics` endpoint (plaintext, or HTTPS with `tls`). Empty:
    # none. Port 0: any free port (logged).
    metrics_listen: str = ""
    # Where the tiers' measured figures (time to first token, time per output token, error
    # rate; per tier and per prompt category) are kept, read at start and shared with every
    # router that names the same store: a SQLite file's path (routers on one machine), or a
    # Redis URL, redis://[:password@]host:port/db (routers on several). Unset: measured in
    # memory only, from this router's own traffic. Requests with an SLO are routed on these.
    metrics_store: str | None = None
    # Seconds it takes for an observation's weight in a measured figure to halve: a tier that
    # turns slow or starts failing shows in its figures within about this long.
    metrics_half_life_seconds: float = Field(default=30.0, gt=0)
    # How often this router writes what it observed to the metrics store and reads what other
    # routers wrote, in seconds (off the request path).
    metrics_sync_seconds: float = Field(default=1.0, gt=0)

    # An N-model quality artifact (`tierroute eval-n --artifact-out`): predicted quality per
    # tier for each prompt (each tier's `quality_model` names its model there). Set: a tier meets
    # the quality bar when its predicted quality is within `quality_tolerance` of the best
    # tier's, and the cheapest such tier serves (the score's bands no longer choose). Unset:
    # the complexity score's bands set the bar.
    quality_artifact: Path | None = None
    # How much predicted quality (0-1, the artifact's scale) a tier may give up against the best
    # tier and still meet the bar. 0: only the best (ties included).
    quality_tolerance: float = Field(default=0.0, ge=0, le=1)
    # Among tiers that meet the bar at the same price, which serves first: the highest of
    # quality_weight * predicted quality - latency_weight * measured TTFT (seconds).
    quality_weight: float = Field(default=1.0, ge=0)
    latency_weight: float = Field(default=0.0, ge=0)

    # Benchmark every tier from inside the router this often, in seconds (as `tierroute
    # bench-tiers` does, once through the sample, at most `bench_concurrency` calls in flight so
    # live traffic is not disturbed), into the measured figures and the metrics store. 0: off.
    bench_interval_seconds: float = Field(default=0.0, ge=0)
    bench_concurrency: int = Field(default=1, ge=1)
    bench_max_tokens: int = Field(default=32, ge=1)
    # The prompts (JSONL: prompt and category per line). Unset: the router's own sample.
    bench_sample: Path | None = None

    @field_validator("metrics_store")
    @classmethod
    def _store(cls, store: str | None) -> str | None:
        if store is not None and "://" in store and not store.startswith(REDIS_SCHEMES):
            raise ValueError(
                f"{store!r}: a URL must be redis://, rediss:// or unix:// (Redis); for the "
                "embedded store give a SQLite file's path"
            )
        return store


class TierConfig(_Strict):
    # Unique name, used in decisions and metrics (for example "small").
    name: str = Field(min_length=1)
    # host:port where the router reaches the tier service.
    address: str = Field(min_length=1)
    # More replicas of the same model (host:port each), started elsewhere: the router spreads
    # requests over `address` and these by fewest in flight, ejects one that keeps failing
    # (circuit_breaker.replica_ejection_*), and retries a call that failed before answering
    # anything on another. `make run` starts only `address`.
    replicas: list[str] = Field(default_factory=list)
    # host:port the tier service binds (read by the tier process). Empty: `address`. Differs
    # from `address` behind a proxy or in a container (bind 0.0.0.0:50061, dial tier-small:50061).
    listen: str = ""
    # host:port of the tier process's Prometheus `/metrics` (its own and vLLM's engine
    # metrics; HTTPS with `tls`). Empty: none.
    metrics_listen: str = ""
    # The model the tier serves: a local folder or a model name vLLM can load.
    model: str = Field(min_length=1)
    # Default max_tokens for requests that leave it 0.
    max_tokens: int = Field(default=256, ge=1)
    # Default sampling temperature.
    temperature: float = Field(default=0.7, ge=0, le=2)
    # How this tier's answers are checked before delivery, when a larger tier can take over:
    # "none" (streamed live), "self_reported" (the answer envelope: JSON with the model's own
    # confidence, tierroute.core.envelope), or "logprob" (confidence from token
    # log-probabilities). The old `structured_output: true` means self_reported.
    validation: Literal["none", "self_reported", "logprob"] = "none"
    # For validation "logprob": "mean" (geometric mean token probability) or "min_window"
    # (its lowest value over `logprob_window` consecutive tokens).
    logprob_aggregation: Literal["mean", "min_window"] = "mean"
    logprob_window: int = Field(default=8, ge=1)
    # When a validated answer reaches the client: "full" holds the whole answer until the
    # validator has judged it; "prefix" (validation "logprob" only) judges the first
    # `commit_prefix_tokens` tokens' log-probabilities, streams from then on if they clear the
    # bar, and escalates before anything was sent if not (the rest of the answer is not judged).
    commit: Literal["full", "prefix"] = "full"
    commit_prefix_tokens: int = Field(default=16, ge=1)
    # Prefix commit with the mean aggregation: a prefix whose mean token log-probability lies
    # within this many standard errors of log(escalation.min_confidence) is too close to call;
    # the answer stays held and is judged again every `commit_prefix_tokens` more tokens, and
    # on the whole answer if no prefix decides. 0: the first prefix always decides.
    commit_prefix_margin: float = Field(default=1.28, ge=0, le=10)
    # Hedging: when a request's complexity score lies within this distance of this tier's
    # upper bound, the next larger tier is asked at once, beside this tier's held answer. The
    # commit decision (the prefix's, or the whole answer's) cancels the loser: the larger
    # tier's call when this tier's answer is delivered, else it answers with the head start.
    # Needs validation (an answer held back) and a larger tier. Unset: no hedging.
    hedge_margin: float | None = Field(default=None, ge=0, le=10)
    # Highest complexity score this tier serves. Unset: `router.complexity_threshold` for the
    # first tier, 10 for the last; tiers in between must set it.
    max_score: float | None = Field(default=None, ge=0, le=10)
    # The model this tier serves as the quality artifact (router.quality_artifact) names it.
    # Unset: the tier's name.
    quality_model: str | None = None
    # Prices in USD per 1,000 tokens, for cost reporting and cost-aware routing.
    price_per_1k_input_usd: float = Field(default=0.0, ge=0)
    price_per_1k_output_usd: float = Field(default=0.0, ge=0)
    # For a tier paid by the hour (a reserved GPU): USD per hour. `tierroute bench-tiers` then
    # reports its cost per 1,000 tokens as this over the throughput it measured.
    price_per_hour_usd: float = Field(default=0.0, ge=0)
    # The most tokens (prompt, chat template and answer) one request may take on this tier.
    # Unset: engine_args.max_model_len, if set; else unbounded. A request that does not fit
    # is not sent here (reason context_window_excluded:<tier>).
    context_window: int | None = Field(default=None, ge=1)
    # vLLM engine arguments, passed to AsyncEngineArgs unchanged (the tier service reads them).
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # Environment variables set in the tier process before the engine starts (for example
    # VLLM_CPU_KVCACHE_SPACE, the CPU backend's KV-cache size in GiB).
    env: dict[str, str] = Field(default_factory=dict)
    # Seconds in-flight streams get to finish on SIGTERM before the engine shuts down.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Most Generate/Describe calls in flight at the tier; more get RESOURCE_EXHAUSTED.
    max_concurrent_requests: int = Field(default=1024, ge=1)
    # The most calls the router sends each of this tier's replicas at once; more wait in the
    # router (escalation.queue_wait_ms, then a larger tier or RESOURCE_EXHAUSTED). Unset: the
    # router measures it (tiers/slots.py): raised while first tokens come within
    # escalation.first_token_timeout_floor_ms, lowered when they do not.
    max_in_flight: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_commit(self) -> TierConfig:
        if self.hedge_margin is not None and self.validation == "none":
            raise ValueError(
                f"tier {self.name!r}: hedge_margin races a larger tier against this tier's "
                "held-back answer, so it needs validation (logprob or self_reported); set "
                "validation or remove hedge_margin"
            )
        if self.commit == "prefix" and self.validation != "logprob":
            raise ValueError(
                f"tier {self.name!r}: commit prefix judges token log-probabilities as they "
                f"stream, so it needs validation logprob (this tier has {self.validation!r}); "
                "use commit full"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _structured_output(cls, data: Any) -> Any:
        """`structured_output` was merged into `validation`."""
        if isinstance(data, dict) and "structured_output" in data:
            data = dict(data)
            structured = data.pop("structured_output")
            logger.warning("config key structured_output is replaced by validation: self_reported")
            if structured and data.get("validation", "self_reported") != "self_reported":
                raise ValueError(
                    "structured_output: true contradicts validation "
                    f"{data['validation']!r}; remove structured_output"
                )
            if structured:
                data["validation"] = "self_reported"
        return data

    def bind(self) -> str:
        """Where the tier process binds."""
        return self.listen or self.address

    @model_validator(mode="after")
    def _check_replicas(self) -> TierConfig:
        addresses = self.dial_addresses()
        if any(not a.strip() for a in addresses):
            raise ValueError(f"tier {self.name!r}: replicas: an address is empty")
        repeated = sorted({a for a in addresses if addresses.count(a) > 1})
        if repeated:
            raise ValueError(
                f"tier {self.name!r}: each replica is dialled once; repeated: {', '.join(repeated)}"
            )
        return self

    def dial_addresses(self) -> list[str]:
        """Every replica the router dials: `address`, then `replicas`."""
        return [self.address, *self.replicas]

    def window(self) -> int | None:
        """The tier's context window in tokens (None: unbounded)."""
        if self.context_window is not None:
            return self.context_window
        configured = self.engine_args.get("max_model_len")
        return int(configured) if configured else None

    def cost_per_1k(self, prompt_tokens: int, max_tokens: int) -> float:
        """USD per 1,000 tokens of a request of `prompt_tokens` that may generate
        `max_tokens`: the input and output prices weighted by the two counts."""
        total = prompt_tokens + max_tokens
        if total <= 0:
            return self.price_per_1k_output_usd
        return (
            prompt_tokens * self.price_per_1k_input_usd + max_tokens * self.price_per_1k_output_usd
        ) / total


class EscalationConfig(_Strict):
    """When and how far Route escalates answers."""

    # Escalate answers whose validated confidence is below this.
    min_confidence: float = Field(default=0.70, gt=0, le=1)
    # Escalate when the small tier's JSON answer does not parse.
    fallback_on_parse_error: bool = True
    # Most escalations for one request (0: never escalate, as `disable_escalation` per request).
    max_retries: int = Field(default=1, ge=0)
    renamed: ClassVar[dict[str, str]] = {"timeout_ms": "first_tier_timeout_ms"}

    # Budget for the first tier's answer, in ms; the client's own deadline caps it.
    first_tier_timeout_ms: int = Field(default=30_000, ge=1)
    # Budget for each tier's answer after an escalation or a failover, in ms.
    escalation_timeout_ms: int = Field(default=60_000, ge=1)
    # Budget for one call to the validator, in ms.
    validate_timeout_ms: int = Field(default=5_000, ge=1)
    # How long a request waits in the router for a place at a tier that is at its concurrency
    # limit (tiers[].max_in_flight) before a larger tier takes it (escalation reason
    # TIER_OVERLOADED), in ms. 0: at once. At the last tier, or without escalation, it waits
    # within the tier's budget, then gets RESOURCE_EXHAUSTED with a retry hint.
    queue_wait_ms: int = Field(default=2_000, ge=0)
    # A tier that sends no first token in time is taken as stalled: the call is abandoned and
    # the request fails over (UNAVAILABLE if no other tier can serve). The time allowed is
    # `first_token_timeout_factor` times the tier's recent p95 time to first token as the router
    # measured it (queueing included), kept within the floor and the ceiling; the ceiling
    # until enough answers were measured.
    first_token_timeout_factor: float = Field(default=4.0, gt=0)
    first_token_timeout_floor_ms: int = Field(default=2_000, ge=1)
    first_token_timeout_ceiling_ms: int = Field(default=15_000, ge=1)
    # When the validator cannot be reached: "escalate" to the next tier, or "deliver" the
    # answer unvalidated. Either way the summary records it.
    on_validator_unavailable: Literal["escalate", "deliver"] = "escalate"

    @model_validator(mode="after")
    def _check_first_token(self) -> EscalationConfig:
        if self.first_token_timeout_floor_ms > self.first_token_timeout_ceiling_ms:
            raise ValueError(
                f"escalation.first_token_timeout_floor_ms ({self.first_token_timeout_floor_ms})"
                " must not exceed escalation.first_token_timeout_ceiling_ms "
                f"({self.first_token_timeout_ceiling_ms})"
            )
        return self


class ShadowConfig(_Strict):
    """Shadow mode (route/shadow.py): some answers the small tiers delivered are also asked of
    the large (last) tier in the background and the two compared, to measure from live
    traffic what routing costs in quality. The user's answer is never delayed or changed."""

    # Share of delivered answers from a tier below the large one that are shadowed. 0: off.
    fraction: float = Field(default=0.0, ge=0, le=1)
    # Most shadow calls in flight at once; an answer offered beyond it is not shadowed.
    max_in_flight: int = Field(default=1, ge=1)
    # Live traffic that shadow calls give way to: "large" (live calls on the large tier, where
    # each tier has its own hardware) or "any" (live calls on any tier, where tiers share it,
    # as the embedded default's do). With `busy_in_flight` or more such calls in progress, no
    # shadow call starts, and one that runs is cancelled the moment another starts.
    yield_to: Literal["large", "any"] = "large"
    busy_in_flight: int = Field(default=1, ge=1)
    # Longest a shadow call may take, in seconds.
    timeout_seconds: float = Field(default=120.0, gt=0)
    # How two answers are compared: exactly (case, spacing and end punctuation folded) when
    # both are at most `exact_max_chars` long; otherwise by the cosine similarity of their
    # embeddings (the router's embedder), agreeing at `min_similarity` or above.
    exact_max_chars: int = Field(default=32, ge=0)
    min_similarity: float = Field(default=0.8, ge=0, le=1)


class BreakerConfig(_Strict):
    """Per-tier circuit breakers in the router."""

    # Off: every request is sent to its tier whatever its recent failures.
    enabled: bool = True
    # Consecutive failed calls that open a tier's breaker.
    failure_threshold: int = Field(default=5, ge=1)
    # Share of failed calls within `window_seconds` that opens it...
    error_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    # ...once at least this many calls were made in the window.
    min_requests: int = Field(default=10, ge=1)
    window_seconds: float = Field(default=30.0, gt=0)
    # Seconds an open breaker waits before letting one probe request through (half-open).
    cooldown_seconds: float = Field(default=10.0, ge=0)
    # A tier's replica that fails this many calls in a row is ejected (the others serve) for
    # replica_ejection_seconds, doubled at each ejection that follows a failed probe.
    replica_ejection_failures: int = Field(default=3, ge=1)
    replica_ejection_seconds: float = Field(default=10.0, gt=0)
    replica_ejection_max_seconds: float = Field(default=300.0, gt=0)


class ValidatorConfig(_Strict):
    # Where the validator listens. Port 0 picks a free port.
    listen: str = "127.0.0.1:50071"
    # Where the router reaches the validator. Empty: the `listen` address.
    address: str = ""
    # host:port of the Prometheus `/metrics` endpoint (plaintext, or HTTPS with `tls`). Empty:
    # none. Port 0: any free port (logged).
    metrics_listen: str = ""
    # Seconds in-flight requests get to finish on SIGTERM.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # Most Validate calls in flight at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_requests: int = Field(default=1024, ge=1)

    def dial(self) -> str:
        """Where the router reaches the validator."""
        return self.address or self.listen


class MonitoringConfig(_Strict):
    # Python log level of every service.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # OTLP/gRPC endpoint for traces, for example "127.0.0.1:4317". Empty: tracing off.
    otlp_endpoint: str = ""


class SuiteConfig(_Strict):
    """The suite runner (`make run`): how it supervises the services it starts."""

    # Where the runner serves grpc.health.v1 for the suite: "" is SERVING while every service
    # is, and each service has its own entry ("router", "validator", "tier:<name>"). Empty: off.
    health_listen: str = "127.0.0.1:50050"
    # Seconds before a service that exited is started again; doubled after each restart that
    # did not stay up `stable_seconds`, up to the maximum.
    restart_backoff_seconds: float = Field(default=1.0, gt=0)
    restart_backoff_max_seconds: float = Field(default=60.0, gt=0)
    stable_seconds: float = Field(default=60.0, gt=0)
    # A service that was SERVING and then fails its health check (no answer, or NOT_SERVING,
    # as a tier whose engine died reports) for this long is restarted. 0: never.
    unhealthy_restart_seconds: float = Field(default=30.0, ge=0)
    # Seconds a starting service gets to report SERVING (an engine load) before it is
    # restarted, or, at the suite's first start, before the suite gives up.
    start_timeout_seconds: float = Field(default=300.0, gt=0)


class TlsConfig(_Strict):
    """TLS on every gRPC port and the HTTP front; mutual TLS between the router (and the suite
    runner) and the tiers and validator. `make certs` writes a development CA and certificates.
    Off: plaintext, for the embedded local setup on loopback only."""

    enabled: bool = False
    # The CA that signed the services' certificates: callers verify servers with it; the
    # tiers and the validator verify the router's client certificate with it.
    ca: Path | None = None
    # Every service's certificate and key (PEM); its names must cover the addresses dialled.
    cert: Path | None = None
    key: Path | None = None
    # The router's (and the suite runner's) client certificate toward the tiers and validator.
    client_cert: Path | None = None
    client_key: Path | None = None
    # The tiers and the validator accept only clients with a certificate signed by `ca`.
    mutual: bool = True

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if self.enabled:
            needed = ["ca", "cert", "key"] + (["client_cert", "client_key"] if self.mutual else [])
            missing = [k for k in needed if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"tls.enabled needs {', '.join('tls.' + k for k in missing)} "
                    "(`make certs` writes a development set into certs/)"
                )
        return self


class Config(_Strict):
    router: RouterConfig = RouterConfig()
    tiers: list[TierConfig] = Field(default_factory=list)
    escalation: EscalationConfig = EscalationConfig()
    shadow: ShadowConfig = ShadowConfig()
    circuit_breaker: BreakerConfig = BreakerConfig()
    validator: ValidatorConfig = ValidatorConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    suite: SuiteConfig = SuiteConfig()
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check_tiers(self, info: ValidationInfo) -> Config:
        names = [t.name for t in self.tiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(duplicates)}")
        if info.context and info.context.get("part") in ("tier", "validator"):
            return self  # the rest is the router's business
        if self.router.scorer == "learned" and self.router.artifact is None:
            raise ValueError("router.scorer learned needs router.artifact (a calibrated folder)")
        if self.router.batch_max_wait_ms >= self.router.score_budget_ms:
            raise ValueError(
                f"router.batch_max_wait_ms ({self.router.batch_max_wait_ms:g}) must be below "
                f"router.score_budget_ms ({self.router.score_budget_ms:g}), or every decision "
                "that is not cached would fall back to the default tier"
            )
        if self.router.default_tier and self.router.default_tier not in names:
            raise ValueError(
                f"router.default_tier {self.router.default_tier!r} is not a tier "
                f"(tiers: {', '.join(names) or 'none'})"
            )
        if self.tiers and self.tiers[-1].hedge_margin is not None:
            raise ValueError(
                f"tiers[{len(self.tiers) - 1}] ({self.tiers[-1].name}): hedge_margin asks the "
                "next larger tier in parallel, and the last tier has none; remove it"
            )
        if self.tiers and self.tiers[-1].max_score not in (None, 10.0):
            raise ValueError(
                f"tiers[{len(self.tiers) - 1}] ({self.tiers[-1].name}): the last tier serves "
                "every score up to 10; remove its max_score"
            )
        bounds = self.tier_bounds()
        if any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds)):
            raise ValueError(
                "tiers must be listed smallest first with strictly increasing max_score; got "
                + ", ".join(f"{t.name}<={b:g}" for t, b in zip(self.tiers, bounds, strict=True))
            )
        return self

    def tier_bounds(self) -> list[float]:
        """The highest score each tier serves, in tier order; the last tier always serves 10."""
        bounds: list[float] = []
        for i, tier in enumerate(self.tiers):
            if i == len(self.tiers) - 1:
                bounds.append(10.0)
            elif tier.max_score is not None:
                bounds.append(tier.max_score)
            elif i == 0:
                bounds.append(self.router.complexity_threshold)
            else:
                raise ValueError(f"tiers[{i}] ({tier.name}): a middle tier must set max_score")
        return bounds

    def fallback_tier(self) -> str:
        """The tier a request goes to when scoring fails: `router.default_tier`, or the last."""
        return self.router.default_tier or self.tiers[-1].name

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def output_tokens_limit(self) -> int | None:
        """The most tokens a request may ask for: router.max_output_tokens, and the largest
        tier's context window when every tier's is configured (the smaller of the two)."""
        limits = [self.router.max_output_tokens] if self.router.max_output_tokens else []
        contexts = [int(t.engine_args.get("max_model_len") or 0) for t in self.tiers]
        if contexts and all(contexts):
            limits.append(max(contexts))
        return min(limits) if limits else None

    def routing_version(self) -> str:
        """A hash of every setting that maps a score to a tier (part of the cache key)."""
        doc = {"bounds": self.tier_bounds(), "tiers": [t.name for t in self.tiers]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        raw = key[len(ENV_PREFIX) :].split("__")
        if not all(raw):
            raise ConfigError(f"environment variable {key}: empty key segment")
        # Keys below env/engine_args are the user's own (environment variable names, vLLM
        # argument names): keep them as written.
        path = [
            part if i > 0 and raw[i - 1].lower() in _VERBATIM else part.lower()
            for i, part in enumerate(raw)
        ]
        value: Any = environ[key]
        if len(path) < 2 or path[-2] != "env":
            try:
                value = yaml.safe_load(value) if value else ""
            except yaml.YAMLError:
                pass  # not a YAML scalar (an IPv6 address, say): keep the text
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"environment variable {key}: no list item {where}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"environment variable {key}: {where} is not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"environment variable {key}: no list item {'.'.join(path)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _describe(err: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_keys(e["loc"][:-1])
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            suffix = (
                f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(known)})"
            )
            lines.append(f"{where}: unknown key{suffix}")
        else:
            lines.append(f"{where}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidate = inner[0] if inner else annotation
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            model = candidate
        else:
            return []
    return sorted(model.model_fields)


def _resolve_store(location: str | None, base: Path) -> str | None:
    """A metrics store's path relative to the config file; a URL as it is."""
    if location is None or "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    router = cfg.router.model_copy(
        update={
            "model": resolve(cfg.router.model),
            "anchors_file": resolve(cfg.router.anchors_file),
            "artifact": resolve(cfg.router.artifact),
            "quality_artifact": resolve(cfg.router.quality_artifact),
            "degraded_scorer": resolve(cfg.router.degraded_scorer),
            "auth_tokens_file": resolve(cfg.router.auth_tokens_file),
            "operating_point_state": resolve(cfg.router.operating_point_state),
            "routing_log": resolve(cfg.router.routing_log),
            "bench_sample": resolve(cfg.router.bench_sample),
            "metrics_store": _resolve_store(cfg.router.metrics_store, base),
        }
    )
    tiers = []
    for t in cfg.tiers:
        local = base / t.model
        tiers.append(t.model_copy(update={"model": str(local.resolve())}) if local.exists() else t)
    tls = cfg.tls.model_copy(
        update={
            k: resolve(getattr(cfg.tls, k))
            for k in ("ca", "cert", "key", "client_cert", "client_key")
        }
    )
    return cfg.model_copy(update={"router": router, "tiers": tiers, "tls": tls})


# The sections each process reads; the others are left out before validation, so a mistake in
# the router's section does not stop a tier from starting. The router reads everything.
PARTS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "router": None,
    "tier": ("tiers", "monitoring", "tls"),
    "validator": ("validator", "monitoring", "tls"),
}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    part: str = "all",
) -> Config:
    """Load the YAML file (if any), apply environment overrides and validate `part`: what one
    process reads (PARTS), or everything."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections")
        data = loaded
        base = path.resolve().parent
    data = _env_overrides(data, environ)
    sections = PARTS[part]
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    try:
        cfg = Config.model_validate(data, context={"part": part})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return _resolve_paths(cfg, base)


def config_from_dict(data: dict[str, Any], base: Path | None = None) -> Config:
    """Validate a configuration given as a dict (tests, embedding), paths relative to `base`."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None
    return _resolve_paths(cfg, base or Path.cwd())
