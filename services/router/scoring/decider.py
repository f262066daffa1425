"""The decision: embedder, scorer, routing cache and selection, within the score budget."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from tierroute.core.config import Config
from tierroute.core.errors import Unavailable
from tierroute.core.prompts import normalize
from tierroute.router.scoring.batching import MicroBatcher
from tierroute.router.scoring.cache import TTLCache, cache_key
from tierroute.router.scoring.embedder import Embedder
from tierroute.router.scoring.scorers import Scorer, build_scorer
from tierroute.router.selection.operating import OperatingPoint
from tierroute.router.selection.policy import Policy
from tierroute.router.v1 import router_service_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """What the routing cache keeps: the score, not the tier (the bounds may move)."""

    score: float
    category: str
    truncated: bool
    # The prompt's embedding, kept only for the routing log (router.routing_log).
    vector: np.ndarray | None = None


class Decider:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.policy = Policy(cfg)
        self.cache: TTLCache[Scored] = TTLCache(
            cfg.router.cache_max_entries, cfg.router.cache_ttl_seconds
        )
        self.embedder: Embedder | None = None
        self.scorer: Scorer | None = None
        self.batcher: MicroBatcher | None = None
        self.operating: OperatingPoint | None = None
        self._routing_version = cfg.routing_version()
        self._keep_vectors = cfg.router.routing_log is not None

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
        if cfg.target_large_share is not None:
            prior = getattr(scorer, "prior_scores", lambda: None)()
            self.operating = OperatingPoint(
                cfg.target_large_share,
                self.policy.last_bound,
                cfg.operating_point_half_life,
                cfg.operating_point_state,
                prior,
            )
            self.policy.shift(self.operating.offset)
        batcher = MicroBatcher(
            embedder.embed_with_truncation, cfg.batch_max_size, cfg.batch_max_wait_ms
        )
        batcher.start()
        self.embedder, self.scorer, self.batcher = embedder, scorer, batcher
        logger.info("scorer %s ready (embedder %s)", scorer.version, embedder.version)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def decide(
        self, text: str, bypass_cache: bool = False
    ) -> tuple[pb.RoutingDecision, list[str]]:
        """The decision for `text` and the tiers in the order to try them. When scoring fails
        or runs over `router.score_budget_ms`: the default tier (reason ROUTER_FALLBACK)."""
        decision, ranking, _ = await self.decide_scored(text, bypass_cache)
        return decision, ranking

    async def decide_scored(
        self, text: str, bypass_cache: bool = False
    ) -> tuple[pb.RoutingDecision, list[str], Scored | None]:
        """`decide`, and what the scorer made of the prompt (None: the fallback decided)."""
        if self.batcher is None or self.scorer is None or self.embedder is None:
            raise Unavailable(
                "the router is still loading its embedder; retry when health reports SERVING"
            )
        started = time.perf_counter()
        normalized = normalize(text)
        key = cache_key(
            normalized, self.embedder.version, self.scorer.version, self._routing_version
        )
        scored = None if bypass_cache else self.cache.get(key)
        hit = scored is not None
        if scored is None:
            # Shielded: a decision that arrives after the budget still fills the cache.
            scoring = asyncio.ensure_future(self._score(normalized, key))
            scoring.add_done_callback(_log_late_failure)
            budget = self.cfg.router.score_budget_ms / 1000.0
            try:
                scored = await asyncio.wait_for(asyncio.shield(scoring), budget)
            except TimeoutError:
                return *self._fallback(started, f"over its {budget * 1000:g} ms budget"), None
            except Exception as exc:
                return *self._fallback(started, f"failed: {type(exc).__name__}: {exc}"), None
        ranking = self.policy.rank(scored.score)
        if self.operating is not None:
            self.operating.observe(scored.score)
            self.policy.shift(self.operating.offset)
        chosen = ranking[0]
        reasons = list(chosen.reasons)
        if scored.truncated:
            reasons.append(pb.REASON_CODE_PROMPT_TRUNCATED)
        if hit:
            reasons.append(pb.REASON_CODE_CACHE_HIT)
        decision = pb.RoutingDecision(
            complexity_score=round(scored.score, 4),
            tier=chosen.tier,
            confidence=round(chosen.confidence, 4),
            category=scored.category,
            reason_codes=reasons,
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            cache_hit=hit,
            embedder_version=self.embedder.version,
            scorer_version=self.scorer.version,
            tier_max_score=chosen.max_score,
        )
        return decision, [c.tier for c in ranking], scored

    async def _score(self, normalized: str, key: str) -> Scored:
        assert self.batcher is not None and self.scorer is not None
        vector, truncated = await self.batcher.embed(normalized)
        (score,) = self.scorer.score(vector[None, :], [normalized])
        scored = Scored(
            score.value, score.category, truncated, vector if self._keep_vectors else None
        )
        self.cache.put(key, scored)
        return scored

    def _fallback(self, started: float, why: str) -> tuple[pb.RoutingDecision, list[str]]:
        tier = self.cfg.fallback_tier()
        logger.warning("scoring %s: routing to the default tier %r", why, tier)
        decision = pb.RoutingDecision(
            tier=tier,
            reason_codes=[pb.REASON_CODE_ROUTER_FALLBACK],
            router_latency_ms=(time.perf_counter() - started) * 1000.0,
            tier_max_score=self.policy.bound(tier),
        )
        names = self.policy.tiers
        i = names.index(tier)
        return decision, [*names[i:], *reversed(names[:i])]


def _log_late_failure(task: asyncio.Future[Scored]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("scoring failed: %r", task.exception())
