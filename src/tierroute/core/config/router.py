"""The router's section of the configuration (`router:`), and the limits it sets per client."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from tierroute.core.config.base import REDIS_SCHEMES, Strict


class ClientLimitsConfig(Strict):
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


class RouterConfig(Strict):
    # Where the router listens. Port 0 picks a free port.
    listen: str = "127.0.0.1:50051"
    # Folder with the embedder: model.onnx (int8) and tokenizer.json (from `make models`).
    model: Path = Path("models/minilm-l6-v2-int8")
    # onnxruntime execution device. Only "cpu" is built and tested.
    device: Literal["cpu"] = "cpu"
    # Threads the embedder uses: a lone prompt's ONNX run uses all of them, a batch's prompts run
    # side by side, one per thread (each prompt is embedded alone: int8 activations are scaled
    # per run, so prompts run together would nudge each other's embeddings). 0: one per core.
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
    # Most prompts the scorer takes at once (a batch: embedded side by side, scored together).
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
    # Batches the scorer may run at once, each on its own thread (its prompts' ONNX runs use
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
