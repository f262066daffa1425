"""The decider scores a prompt: the embedder and scorer on their worker thread (micro-batched),
the routing cache, the score budget and the degraded scorer. What it made of the prompt
(`Scoring`) goes to selection/decision.py, where the decision is built; `decide` is the two
in sequence, as the Score RPC and the Route flow ask for them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from tierroute.core.asked import asked
from tierroute.core.config import Config
from tierroute.core.errors import Unavailable
from tierroute.core.prompts import normalize
from tierroute.quality.artifact import requests
from tierroute.quality.multi import QualityModel
from tierroute.router import metrics
from tierroute.router.scoring.batching import MicroBatcher
from tierroute.router.scoring.cache import TTLCache, cache_key
from tierroute.router.scoring.degraded import DegradedEmbedder
from tierroute.router.scoring.embedder import Embedder
from tierroute.router.scoring.scored import Ask, Scored, Scoring
from tierroute.router.scoring.scorers import Score, Scorer, build_scorer
from tierroute.router.selection.decision import Decisions
from tierroute.router.selection.drift import EmbeddingReference
from tierroute.router.selection.filters import Admit
from tierroute.router.selection.policy import Selection
from tierroute.router.tiers.measured import Measurements
from tierroute.router.v1 import router_service_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Batched:
    """What the scorer's worker thread made of one prompt."""

    vector: np.ndarray
    truncated: bool
    score: Score
    quality: dict[str, float] | None


class Decider:
    def __init__(self, cfg: Config, measurements: Measurements | None = None) -> None:
        self.cfg = cfg
        # Where the decision is built, and selection's state (policy, measurements, drift).
        self.decisions = Decisions(cfg, measurements)
        self.cache: TTLCache[Scored] = TTLCache(
            cfg.router.cache_max_entries, cfg.router.cache_ttl_seconds
        )
        self.embedder: Embedder | None = None
        self.scorer: Scorer | None = None
        self.batcher: MicroBatcher[_Batched] | None = None
        self.degraded: DegradedEmbedder | None = None
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
        self.decisions.start(getattr(scorer, "prior_scores", lambda: None)(), reference)
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
        """`text` scored, then decided (Decisions.decide, with `ask` and a Route's `admit`):
        the decision, the selection it was made from and the score (None: the fallback)."""
        scoring = await self.score(text, bypass_cache)
        decision, selection = self.decisions.decide(scoring, ask, admit, not bypass_cache)
        return decision, selection, scoring.scored

    async def score(self, text: str, bypass_cache: bool = False) -> Scoring:
        """What the routing cache, or else the scorer within its budget (or the degraded
        scorer), made of `text`; Unavailable while the embedder loads."""
        if self.batcher is None or self.scorer is None or self.embedder is None:
            raise Unavailable(
                "the router is still loading its embedder; retry when health reports SERVING"
            )
        started = time.perf_counter()
        normalized = normalize(text)
        scorer_version = self.scorer.version + (f"+{self.quality.version}" if self.quality else "")
        key = cache_key(normalized, self.embedder.version, scorer_version, self._routing_version)
        versions = (self.embedder.version, self.scorer.version)
        scored = None if bypass_cache else self.cache.get(key)
        if scored is not None:
            return Scoring(scored, started, *versions, hit=True)
        scored, degraded, why = await self._score_in_budget(normalized, key)
        return Scoring(scored, started, *versions, degraded=degraded, why=why)

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

    def _score_batch(self, texts: list[str]) -> list[_Batched]:
        """Embed (what each prompt asks) and score a batch, on the scorer's worker thread."""
        assert self.embedder is not None
        vectors, truncated = self.embedder.embed_with_truncation(requests(texts))
        return self._score_batch_of(vectors, truncated, texts)

    def _score_batch_of(
        self, vectors: np.ndarray, truncated: list[bool], texts: list[str]
    ) -> list[_Batched]:
        assert self.scorer is not None
        scores = self.scorer.score(vectors, texts)
        return [
            _Batched(
                vectors[i],
                truncated[i],
                scores[i],
                self.quality.predict(vectors[i]) if self.quality is not None else None,
            )
            for i in range(len(texts))
        ]

    def _scored(self, scoring: _Batched, keep_vector: bool = True) -> Scored:
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
        if self.decisions.drift is not None:
            self.decisions.drift.embedded(scoring.vector)
        scored = self._scored(scoring)
        self.cache.put(key, scored)
        return scored


def _log_late_failure(task: asyncio.Future[Scored]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("scoring failed: %r", task.exception())
