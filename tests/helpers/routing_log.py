"""Routing-log entries for tests: one Entry with sensible fields, and a log written with the
router's own writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tierroute.quality.artifact import prompt_features
from tierroute.router.route.routing_log import Entry, RoutingLog

DIM = 8


def entry(text: str, verdict: str = "DELIVER", reason: str = "CONFIDENT", **fields: Any) -> Entry:
    vector = np.random.default_rng(len(text)).normal(size=DIM).astype(np.float32)
    values: dict[str, Any] = {
        "at": 1.0,
        "request_id": "r",
        "normalized": text,
        "embedding": vector / np.linalg.norm(vector),
        "features": prompt_features([text])[0],
        "embedder_version": "emb",
        "scorer_version": "sc",
        "score": 1.5,
        "category": "general",
        "forced": False,
        "chosen_tier": "small",
        "judged_tier": "small",
        "verdict": verdict,
        "verdict_reason": reason,
        "confidence": 0.9,
        "min_confidence": 0.7,
        "final_tier": "small" if verdict == "DELIVER" else "large",
        "escalated": verdict == "ESCALATE",
        "escalation_reason": "LOW_CONFIDENCE" if verdict == "ESCALATE" else "UNSPECIFIED",
        "status": "OK",
        "latency_ms": 10.0,
        "time_to_first_token_ms": 5.0,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost_usd": 0.001,
        "attempts": [{"tier": "small", "delivered": verdict == "DELIVER"}],
    }
    return Entry(**(values | fields))


def written(path: Path, entries: list[Entry], keep_prompts: bool = False) -> Path:
    log = RoutingLog(path, keep_prompts)
    for e in entries:
        log.record(e)
    log.close()
    return path
