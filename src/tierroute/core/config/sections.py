"""The configuration of the tiers (`tiers:`), escalation, shadow mode and circuit breakers."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from tierroute.core.config.base import Strict

logger = logging.getLogger("tierroute.core.config")

# Settings of a tier of kind openai only.
UPSTREAM_ONLY = (
    "base_url",
    "api_key_env",
    "api_key_file",
    "headers",
    "connect_timeout_seconds",
    "read_timeout_seconds",
)


class TierConfig(Strict):
    # Unique name, used in decisions and metrics (for example "small").
    name: str = Field(min_length=1)
    # What serves the tier: our tier service ("tierroute", dialled over gRPC at `address`), or
    # any OpenAI-compatible server ("openai": `vllm serve`, a vLLM fleet behind its own router,
    # a hosted API) at `base_url`, its `replicas` more base URLs. `make run` starts only the
    # tiers of kind tierroute.
    kind: Literal["tierroute", "openai"] = "tierroute"
    # host:port where the router reaches the tier service (kind openai: its base_url).
    address: str = Field(min_length=1)
    # kind openai: the server's OpenAI API root, for example http://vllm:8000/v1.
    base_url: str = ""
    # kind openai: where the API key is read, once at start-up: an environment variable's name,
    # or a file (its first line). Never in the config itself, never logged. Neither: no key.
    api_key_env: str = ""
    api_key_file: Path | None = None
    # kind openai: extra HTTP headers on every request (for example an organisation header).
    headers: dict[str, str] = Field(default_factory=dict)
    # kind openai: seconds to connect, and to wait for each read of a streamed answer (the
    # request's own budget still caps the whole call).
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
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
    # Unset: engine_args.max_model_len, if set; kind openai: the `max_model_len` its server
    # reports at the router's start (GET /models; vLLM reports it); else unbounded. A request
    # that does not fit is not sent here (reason context_window_excluded:<tier>).
    context_window: int | None = Field(default=None, ge=1)
    _served_window: int | None = PrivateAttr(default=None)  # learn_served_window
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
    def _upstream_address(cls, data: Any) -> Any:
        """A tier of kind openai is dialled at its base_url."""
        if isinstance(data, dict) and data.get("kind") == "openai" and not data.get("address"):
            data = {**data, "address": data.get("base_url") or ""}
            if not data["address"]:
                raise ValueError(
                    f"tier {data.get('name', '?')!r} of kind openai needs base_url (the server's "
                    "OpenAI API root, for example http://vllm:8000/v1)"
                )
        return data

    @model_validator(mode="after")
    def _check_kind(self) -> TierConfig:
        if self.kind == "tierroute":
            given = [k for k in UPSTREAM_ONLY if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"tier {self.name!r}: {', '.join(given)} apply to tiers of kind openai; "
                    "set kind: openai or remove them"
                )
            return self
        given = [k for k in ("engine_args", "env", "listen") if k in self.model_fields_set]
        if given:
            raise ValueError(
                f"tier {self.name!r} of kind openai runs no engine of ours, so "
                f"{', '.join(given)} cannot apply; remove them (its server has its own settings)"
            )
        for url in self.dial_addresses():
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"tier {self.name!r} of kind openai: {url!r} is not an http(s) URL "
                    "(base_url and replicas are URLs such as http://vllm:8000/v1)"
                )
        if self.api_key_env and self.api_key_file is not None:
            raise ValueError(f"tier {self.name!r}: set api_key_env or api_key_file, not both")
        return self

    def api_key(self) -> tuple[str | None, str]:
        """The API key of a tier of kind openai, and where it was read (for messages: never
        the key). ConfigError-worthy ValueError if the named source is missing or empty."""
        if self.api_key_env:
            where = f"the environment variable {self.api_key_env} (tiers[{self.name}].api_key_env)"
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise ValueError(f"tier {self.name!r}: {where} is not set or empty")
            return key, where
        if self.api_key_file is not None:
            where = f"the file {self.api_key_file} (tiers[{self.name}].api_key_file)"
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as error:
                raise ValueError(
                    f"tier {self.name!r}: cannot read {where}: {error.strerror}"
                ) from None
            key = lines[0].strip() if lines else ""
            if not key:
                raise ValueError(f"tier {self.name!r}: {where} is empty")
            return key, where
        return None, "nowhere (no api_key_env or api_key_file is set)"

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
        return self.configured_window() or self._served_window

    def configured_window(self) -> int | None:
        """The window the configuration sets (context_window, else engine_args.max_model_len)."""
        configured = self.engine_args.get("max_model_len")
        return self.context_window or (int(configured) if configured else None)

    def learn_served_window(self, tokens: int) -> None:
        """The window the tier's server reports (kind openai, at the router's start): the
        tier's window where the configuration sets none."""
        self._served_window = tokens

    def cost_per_1k(self, prompt_tokens: int, max_tokens: int) -> float:
        """USD per 1,000 tokens of a request of `prompt_tokens` that may generate
        `max_tokens`: the input and output prices weighted by the two counts."""
        total = prompt_tokens + max_tokens
        if total <= 0:
            return self.price_per_1k_output_usd
        return (
            prompt_tokens * self.price_per_1k_input_usd + max_tokens * self.price_per_1k_output_usd
        ) / total


class EscalationConfig(Strict):
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


class ShadowConfig(Strict):
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


class BreakerConfig(Strict):
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
