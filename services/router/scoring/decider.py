"""The decision: the prompt scored (embedder, scorer, routing cache, within the score budget),
the tiers ranked for the score (selection/policy.py) and selected for the request
(selection/selector.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from tierroute.core.asked import asked
from tierroute.core.config import Config
from tierroute.core.errors import InvalidArgument, Unavailable
from tierroute.core.prompts import check_prompt, normalize, routing_text
from tierroute.quality.artifact import requests
from tierroute.quality.multi import QualityModel
from tierroute.router import metrics
from tierroute.router.scoring.batching import MicroBatcher
from tierroute.router.scoring.cache import TTLCache, cache_key
from tierroute.router.scoring.degraded import DegradedEmbedder
from tierroute.router.scoring.embedder import Embedder
from tierroute.router.scoring.scored import Ask, Message, Scored
from tierroute.router.scoring.scorers import Score, Scorer, build_scorer
from tierroute.router.selection.drift import DriftWatch, EmbeddingReference
from tierroute.router.selection.filters import Admit, Admitted
from tierroute.router.selection.fit import Fit
from tierroute.router.selection.operating import OperatingPoint
from tierroute.router.selection.policy import Bounds, Policy, Selection
from tierroute.router.selection.selector import Selector
from tierroute.router.tiers.measured import Measurements
from tierroute.router.v1 import router_service_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scoring:
    """What the scorer's worker thread made of one prompt."""

    vector: np.ndarray
    truncated: bool
    score: Score
    quality: dict[str, float] | None


class Decider:
    def __init__(self, cfg: Config, measurements: Measurements | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy(cfg)
        self.fit = Fit(cfg)
        self.measurements = measurements or Measurements(cfg.router.metrics_half_life_seconds)
        self.selector = Selector(cfg, self.policy, self.measurements)
        self.cache: TTLCache[Scored] = TTLCache(
            cfg.router.cache_max_entries, cfg.router.cache_ttl_seconds
        )
        self.embedder: Embedder | None = None
        self.scorer: Scorer | None = None
        self.batcher: MicroBatcher[_Scoring] | None = None
        self.degraded: DegradedEmbedder | None = None
        self.operating: OperatingPoint | None = None
        self.drift: DriftWatch | None = None
        self._large = cfg.tiers[-1].name if cfg.tiers else ""
        self.quality: QualityModel | None = None
        self._routing_version = cfg.routing_version()
        self._keep_vectors = cfg.router.routing_log is not None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def load(self) -> None:
        """Load the embedder and embed the scorer's reference prompts (off the event loop)."""
        cfg = self.cfg.router

        def _load() -> tuple[Embedder, Scorer, QualityModel | None, EmbeddingReference | None]:
            # numpy's BLAS on one thread: the scorer's matrix-vector products are small, and
            # OpenBLAS's threads, waking for each one while onnxruntime and the event loop
            # hold the cores, made the default artifact's kNN take 8 ms instead of 0.55 ms
            # (README, "Where a Score's time goes").
            threadpool_limits(1, user_api="blas")
            embedder = Embedder(
                cfg.model,
                max_tokens=cfg.embed_max_tokens,
                intra_op_threads=cfg.intra_op_threads,
                spinning=cfg.onnx_spinning,
            )
            first_bound = self.cfg.tier_bounds()[0] if self.cfg.tiers else None
            scorer = build_scorer(cfg, embedder.embed, embedder.version, first_bound)
            quality = None
            if cfg.quality_artifact is not None:
                quality = QualityModel(
                    cfg.quality_artifact,
                    embedder.version,
                    {t.name: t.quality_model or t.name for t in self.cfg.tiers},
                )
            embedder.embed(["warm-up run, so the first request does not pay for it"])
            calibration = getattr(scorer, "reference_embeddings", lambda: None)()
            reference = None if calibration is None else EmbeddingReference.of(calibration)
            if cfg.degraded_scorer is not None:
                self.degraded = DegradedEmbedder(
                    cfg.degraded_scorer, cfg.model, embedder.version, cfg.embed_max_tokens
                )
            return embedder, scorer, quality, reference

        embedder, scorer, self.quality, reference = await asyncio.to_thread(_load)
        prior = getattr(scorer, "prior_scores", lambda: None)()
        self.drift = DriftWatch(
            cfg.operating_point_half_life,
            prior,
            cfg.target_large_share,
            cfg.drift_psi_max,
            cfg.drift_share_band,
            cfg.drift_escalation_max,
            reference,
        )
        if cfg.target_large_share is not None:
            self.operating = OperatingPoint(
                cfg.target_large_share,
                self.policy.last_bound,
                cfg.operating_point_half_life,
                cfg.operating_point_state,
                prior,
            )
            self.policy.shift(self.operating.offset)
        self.embedder, self.scorer = embedder, scorer
        batcher = MicroBatcher(
            self._score_batch,
            cfg.batch_max_size,
            cfg.batch_max_wait_ms,
            cfg.scorer_threads,
            cfg.score_queue_max,
        )
        batcher.start()
        self.batcher = batcher
        logger.info(
            "scorer %s ready (embedder %s%s)",
            scorer.version,
            embedder.version,
            f", {self.quality.version}" if self.quality else "",
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    def check_input(self, prompt: str, messages: Sequence[Message]) -> str:
        """The text to route on, once the prompt or messages are within every input limit of
        router (characters, messages, tokens): InvalidArgument or TooLarge, saying which."""
        r = self.cfg.router
        check_prompt(prompt, messages, r.max_prompt_chars, r.max_messages)
        self.fit.check_tokens(prompt, messages)
        return routing_text(prompt, messages, r.routing_context_chars)

    def ask(
        self,
        prompt: str,
        messages: Sequence[Message],
        max_tokens: int = 0,
        slo: pb.Slo | None = None,
    ) -> Ask:
        """What a request asks of the tiers. InvalidArgument for an SLO bound that is not a
        positive number (a cost bound may be 0), or a request that fits no tier."""
        needs = self.fit.needs(prompt, messages, max_tokens)
        self.fit.check_any(needs)
        ttft = cost = None
        if slo is not None and slo.HasField("max_ttft_ms"):
            ttft = slo.max_ttft_ms
            if not math.isfinite(ttft) or ttft <= 0:
                raise InvalidArgument(
                    f"slo.max_ttft_ms is {ttft}; set it to the most milliseconds the first "
                    "token may take (> 0), or leave it unset"
                )
        if slo is not None and slo.HasField("max_cost_per_1k"):
            cost = slo.max_cost_per_1k
            if not math.isfinite(cost) or cost < 0:
                raise InvalidArgument(
                    f"slo.max_cost_per_1k is {cost}; set it to the most USD per 1,000 tokens "
                    "the request may cost (>= 0), or leave it unset"
                )
        fits = frozenset(name for name, need in needs.items() if need.fits)
        return Ask(needs, Bounds(fits, ttft, cost))

    async def decide(
        self, text: str, bypass_cache: bool = False, ask: Ask | None = None
    ) -> tuple[pb.RoutingDecision, list[str]]:
        """The decision for `text` and the tiers in the order to try them. When scoring fails
        or runs over `router.score_budget_ms`: the default tier (reason ROUTER_FALLBACK)."""
        decision, selection, _ = await self.decide_scored(text, bypass_cache, ask)
        return decision, selection.tiers

    async def decide_scored(
        self,
        text: str,
        bypass_cache: bool = False,
        ask: Ask | None = None,
        admit: Admit | None = None,
    ) -> tuple[pb.RoutingDecision, Selection, Scored | None]:
        """`decide` with the whole selection, and what the scorer made of the prompt (None:
        the fallback decided). Without `ask`: a request that fits every tier, with no SLO.
        With `admit` (a Route's), the tier is the one it admits from the selection, and its
        reasons join the decision's. Counted in the Prometheus metrics (router/metrics.py)."""
        decided = await self._decide_scored(text, bypass_cache, ask, admit)
        decision, selection, scored = decided
        metrics.decided(decision, looked_up=not bypass_cache)
        if self.drift is not None:
            # The score's own choice: a tier passed over at admission is not drift.
            self.drift.observe(
                scored.score if scored is not None else None, selection.tiers[0] == self._large
            )
        return decided

    async def _decide_scored(
        self, text: str, bypass_cache: bool, ask: Ask | None, admit: Admit | None
    ) -> tuple[pb.RoutingDecision, Selection, Scored | None]:
        if self.batcher is None or self.scorer is None or self.embedder is None:
            raise Unavailable(
                "the router is still loading its embedder; retry when health reports SERVING"
            )
        started = time.perf_counter()
        normalized = normalize(text)
        scorer_version = self.scorer.version + (f"+{self.quality.version}" if self.quality else "")
        key = cache_key(normalized, self.embedder.version, scorer_version, self._routing_version)
        scored = None if bypass_cache else self.cache.get(key)
        hit = scored is not None
        degraded = ""
        if scored is None:
            scored, degraded, why = await self._score_in_budget(normalized, key)
            if scored is None:
                return *self._fallback(started, why, ask, admit), None
        ranking = self.policy.rank(scored.score)
        if self.operating is not None:
            self.operating.observe(scored.score)
            self.policy.shift(self.operating.offset)
        selection = self.selector.select(
            [c.tier for c in ranking], ranking[0].tier, ask, scored.category, scored.quality
        )
        admitted = admit(selection.tiers) if admit is not None else None
        chosen = next(c for c in ranking if c.tier == selection.tiers[0])
        reasons = list(ranking[0].reasons)
        if degraded:
            reasons.append(pb.REASON_CODE_SCORE_DEGRADED)
            selection.reasons.insert(0, f"score_degraded:{degraded}")
        if scored.truncated:
            reasons.append(pb.REASON_CODE_PROMPT_TRUNCATED)
        if hit:
            reasons.append(pb.REASON_CODE_CACHE_HIT)
        decision = pb.RoutingDecision(
            complexity_score=round(scored.score, 4),
            tier=admitted.tier if admitted is not None else chosen.tier,
            confidence=round(chosen.confidence, 4),
            category=scored.category,
            reason_codes=with_admission(reasons, admitted),
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            cache_hit=hit,
            embedder_version=self.embedder.version,
            scorer_version=self.scorer.version,
            tier_max_score=chosen.max_score,
            reasons=selection.reasons + (admitted.reasons if admitted is not None else []),
            predicted_quality={t: round(q, 4) for t, q in (scored.quality or {}).items()},
        )
        return decision, selection, scored

    async def _score_in_budget(self, normalized: str, key: str) -> tuple[Scored | None, str, str]:
        """The prompt scored within `score_budget_ms`: by the embedder if its queue and pace
        allow, else by the degraded scorer, with why (queue_full, predicted_late, late,
        failed); None and why when neither could."""
        assert self.batcher is not None
        budget = self.cfg.router.score_budget_ms / 1000.0
        if self.batcher.full:
            degraded, why = "queue_full", f"{self.cfg.router.score_queue_max} prompts queued"
        elif self.degraded is not None and self.batcher.predicted_wait() > budget:
            # Without a degraded scorer the prompt still queues: the fallback is dearer.
            wait = self.batcher.predicted_wait() * 1000
            degraded, why = "predicted_late", f"predicted {wait:.0f} ms, over its budget"
        else:
            # Shielded: a decision that arrives after the budget still fills the cache.
            scoring = asyncio.ensure_future(self._score(normalized, key))
            scoring.add_done_callback(_log_late_failure)
            try:
                return await asyncio.wait_for(asyncio.shield(scoring), budget), "", ""
            except TimeoutError:
                degraded, why = "late", f"over its {budget * 1000:g} ms budget"
            except Exception as exc:
                degraded, why = "failed", f"failed: {type(exc).__name__}: {exc}"
        metrics.DEGRADED.labels(degraded).inc()
        if self.degraded is None:
            return None, degraded, why
        try:
            vector, truncated = self.degraded.embed(asked(normalized).request)
            (approximate,) = self._score_batch_of(vector[None, :], [truncated], [normalized])
            # not cached, and its approximate vector kept out of the routing log
            return self._scored(approximate, keep_vector=False), degraded, why
        except Exception as exc:  # the last resort stays the default tier
            logger.exception("the degraded scorer failed")
            return None, degraded, f"{why}; the degraded scorer failed: {exc}"

    def _score_batch(self, texts: list[str]) -> list[_Scoring]:
        """Embed (what each prompt asks) and score a batch, on the scorer's worker thread."""
        assert self.embedder is not None
        vectors, truncated = self.embedder.embed_with_truncation(requests(texts))
        return self._score_batch_of(vectors, truncated, texts)

    def _score_batch_of(
        self, vectors: np.ndarray, truncated: list[bool], texts: list[str]
    ) -> list[_Scoring]:
        assert self.scorer is not None
        scores = self.scorer.score(vectors, texts)
        return [
            _Scoring(
                vectors[i],
                truncated[i],
                scores[i],
                self.quality.predict(vectors[i]) if self.quality is not None else None,
            )
            for i in range(len(texts))
        ]

    def _scored(self, scoring: _Scoring, keep_vector: bool = True) -> Scored:
        return Scored(
            scoring.score.value,
            scoring.score.category,
            scoring.truncated,
            scoring.vector if self._keep_vectors and keep_vector else None,
            scoring.quality,
        )

    async def _score(self, normalized: str, key: str) -> Scored:
        assert self.batcher is not None
        scoring = await self.batcher.submit(normalized)
        if self.drift is not None:
            self.drift.embedded(scoring.vector)
        scored = self._scored(scoring)
        self.cache.put(key, scored)
        return scored

    def _fallback(
        self, started: float, why: str, ask: Ask | None, admit: Admit | None
    ) -> tuple[pb.RoutingDecision, Selection]:
        """The default tier, as if the score had chosen it."""
        band = self.cfg.fallback_tier()
        names = self.policy.tiers
        i = names.index(band)
        selection = self.selector.select([*names[i:], *reversed(names[:i])], band, ask, "")
        tier = selection.tiers[0]
        logger.warning("scoring %s: routing to the default tier %r (%s serves)", why, band, tier)
        admitted = admit(selection.tiers) if admit is not None else None
        decision = pb.RoutingDecision(
            tier=admitted.tier if admitted is not None else tier,
            reason_codes=with_admission([pb.REASON_CODE_ROUTER_FALLBACK], admitted),
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            tier_max_score=self.policy.bound(tier),
            reasons=selection.reasons + (admitted.reasons if admitted is not None else []),
        )
        return decision, selection


def with_admission(codes: list[pb.ReasonCode], admitted: Admitted | None) -> list[pb.ReasonCode]:
    """The scoring's reason codes, then those of admission not already among them."""
    if admitted is None:
        return codes
    return codes + [c for c in admitted.codes if c not in codes]


def _log_late_failure(task: asyncio.Future[Scored]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("scoring failed: %r", task.exception())
