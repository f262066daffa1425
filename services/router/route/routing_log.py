"""The routing log: one SQLite row per Route (router.routing_log), and the labels it teaches.

Each row holds what was decided (score, category, chosen tier), what the validator said of the
first answer it judged (verdict, reason, confidence), what was finally delivered (tier,
escalation, status), latency, tokens and cost. The prompt's text is kept only with
`router.routing_log_prompts`; otherwise its SHA-256, its embedding and the few text features
the learned scorer reads (`prompt_features`), which is all `tierroute calibrate --from-log`
needs to fit on it.

Writes never block a request: rows go through a bounded queue to one writer thread, which
commits them in batches (WAL mode, so a reader can open the log while the router writes). A
full queue drops rows and says so in the log, at most once a minute.

The schema is versioned by SQLite's `user_version`, and the file is marked as a routing log by
`application_id`: a log written by another schema version is refused with what to do, never
half-read or silently rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.core.sqlitefile import FileError, Kind, connect

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
APPLICATION_ID = 0x74726C67  # "trlg": a tierroute routing log
QUEUE_MAX = 10_000
BATCH_MAX = 256
DROP_WARNING_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE routes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,                 -- unix time the request arrived
    request_id TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,      -- of the whitespace-folded text the router scored
    prompt TEXT,                      -- only with router.routing_log_prompts
    embedding BLOB,                   -- float32, unit length; NULL when not scored
    features BLOB,                    -- float32 prompt_features; NULL when not scored
    embedder_version TEXT NOT NULL,
    scorer_version TEXT NOT NULL,
    score REAL,                       -- 0-10; NULL when not scored (forced, fallback)
    category TEXT NOT NULL,
    forced INTEGER NOT NULL,
    chosen_tier TEXT NOT NULL,
    judged_tier TEXT NOT NULL,        -- the first tier whose answer the validator judged
    verdict TEXT NOT NULL,            -- DELIVER, ESCALATE, or '' (not judged)
    verdict_reason TEXT NOT NULL,     -- the validator's reason, or VALIDATOR_UNAVAILABLE
    confidence REAL,
    min_confidence REAL,              -- the threshold the verdict was judged against
    final_tier TEXT NOT NULL,         -- '' when nothing was delivered
    escalated INTEGER NOT NULL,
    escalation_reason TEXT NOT NULL,
    status TEXT NOT NULL,             -- OK, or the gRPC status the request ended with
    latency_ms REAL NOT NULL,
    time_to_first_token_ms REAL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    attempts TEXT NOT NULL,           -- JSON: one object per tier attempt
    client TEXT NOT NULL DEFAULT '',  -- the caller (its token's name, or peer:<address>)
    large_tier_cost_usd REAL,         -- the delivered answer's tokens at the large tier's prices
    shadow_tier TEXT NOT NULL DEFAULT '',    -- shadow mode: the tier asked again ('' not shadowed)
    shadow_method TEXT NOT NULL DEFAULT '',  -- exact or embedding
    shadow_similarity REAL,           -- 1/0 (exact) or the answers' cosine similarity
    shadow_agreed INTEGER,            -- 1 the answers agreed, 0 not, NULL not shadowed
    request_chars INTEGER,            -- what was scored: the request's characters ...
    context_words INTEGER,            -- ... and the words set aside as its context
    context_kind TEXT NOT NULL DEFAULT ''    -- prose, code, table, log; '' none
);
CREATE INDEX routes_at ON routes (at);
"""
# From version 1: the cost ledger's columns (client, large_tier_cost_usd) were added; from
# version 2, shadow mode's; from version 3, what was scored (tierroute.core.asked).
_MIGRATIONS = (
    "ALTER TABLE routes ADD COLUMN client TEXT NOT NULL DEFAULT ''; "
    "ALTER TABLE routes ADD COLUMN large_tier_cost_usd REAL;",
    "ALTER TABLE routes ADD COLUMN shadow_tier TEXT NOT NULL DEFAULT ''; "
    "ALTER TABLE routes ADD COLUMN shadow_method TEXT NOT NULL DEFAULT ''; "
    "ALTER TABLE routes ADD COLUMN shadow_similarity REAL; "
    "ALTER TABLE routes ADD COLUMN shadow_agreed INTEGER;",
    "ALTER TABLE routes ADD COLUMN request_chars INTEGER; "
    "ALTER TABLE routes ADD COLUMN context_words INTEGER; "
    "ALTER TABLE routes ADD COLUMN context_kind TEXT NOT NULL DEFAULT '';",
)
KIND = Kind(
    "routing log", "router.routing_log", APPLICATION_ID, SCHEMA_VERSION, _SCHEMA, "routes",
    _MIGRATIONS,
)  # fmt: skip
COLUMNS = (
    "at", "request_id", "prompt_sha256", "prompt", "embedding", "features",
    "embedder_version", "scorer_version", "score", "category", "forced", "chosen_tier",
    "judged_tier", "verdict", "verdict_reason", "confidence", "min_confidence", "final_tier",
    "escalated", "escalation_reason", "status", "latency_ms", "time_to_first_token_ms",
    "prompt_tokens", "completion_tokens", "cost_usd", "attempts", "client",
    "large_tier_cost_usd", "shadow_tier", "shadow_method", "shadow_similarity", "shadow_agreed",
    "request_chars", "context_words", "context_kind",
)  # fmt: skip


class LogError(FileError):
    """A routing log that cannot be used; the message names the file and what to do."""


def prompt_sha256(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One Route, as the flow saw it (the writer turns it into a row)."""

    at: float
    request_id: str
    normalized: str
    embedding: np.ndarray | None
    features: np.ndarray | None
    embedder_version: str
    scorer_version: str
    score: float | None
    category: str
    forced: bool
    chosen_tier: str
    judged_tier: str
    verdict: str
    verdict_reason: str
    confidence: float | None
    min_confidence: float | None
    final_tier: str
    escalated: bool
    escalation_reason: str
    status: str
    latency_ms: float
    time_to_first_token_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    attempts: list[dict[str, Any]]
    client: str = ""
    large_tier_cost_usd: float | None = None
    shadow_tier: str = ""
    shadow_method: str = ""
    shadow_similarity: float | None = None
    shadow_agreed: bool | None = None
    # What was scored (None: not scored): the request's characters, the context's words and kind.
    request_chars: int | None = None
    context_words: int | None = None
    context_kind: str = ""

    def row(self, keep_prompt: bool) -> tuple[Any, ...]:
        def blob(v: np.ndarray | None) -> bytes | None:
            return None if v is None else np.asarray(v, dtype="<f4").tobytes()

        values = {
            **{k: getattr(self, k) for k in COLUMNS if hasattr(self, k)},
            "prompt_sha256": prompt_sha256(self.normalized),
            "prompt": self.normalized if keep_prompt else None,
            "embedding": blob(self.embedding),
            "features": blob(self.features),
            "forced": int(self.forced),
            "escalated": int(self.escalated),
            "shadow_agreed": None if self.shadow_agreed is None else int(self.shadow_agreed),
            "attempts": json.dumps(self.attempts, sort_keys=True),
        }
        return tuple(values[k] for k in COLUMNS)


def connect_log(path: Path, create: bool) -> sqlite3.Connection:
    """An open routing log of this schema version; created (with `create`) when missing."""
    try:
        return connect(path, KIND, create)
    except FileError as error:
        raise LogError(str(error)) from None


class RoutingLog:
    """Appends entries from the event loop without blocking it (a writer thread commits)."""

    def __init__(self, path: Path, keep_prompts: bool) -> None:
        self.path = path
        self.keep_prompts = keep_prompts
        self._db = connect_log(path, create=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._queue: queue.Queue[Entry | None] = queue.Queue(QUEUE_MAX)
        self.written = 0
        self.dropped = 0
        self._warned_at = -DROP_WARNING_SECONDS
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="routing-log", daemon=True)
        self._thread.start()

    def record(self, entry: Entry) -> None:
        if self._closed:
            logger.debug("routing log %s closed: row of %s not kept", self.path, entry.request_id)
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= DROP_WARNING_SECONDS:
                self._warned_at = now
                logger.warning(
                    "routing log %s is %d rows behind: %d rows dropped so far (the disk is too "
                    "slow for this traffic)",
                    self.path,
                    QUEUE_MAX,
                    self.dropped,
                )

    def _write(self) -> None:
        columns, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
        insert = f"INSERT INTO routes ({columns}) VALUES ({marks})"
        done = False
        while not done:
            batch = [self._queue.get()]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            rows = [e.row(self.keep_prompts) for e in batch if e is not None]
            try:
                if rows:
                    with self._db:
                        self._db.execute("BEGIN")
                        self._db.executemany(insert, rows)
                    self.written += len(rows)
            except sqlite3.Error as exc:  # a full disk, a removed file: the router keeps serving
                self.dropped += len(rows)
                logger.error("routing log %s: %d rows not written: %s", self.path, len(rows), exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def flush(self) -> None:
        """Block until every entry recorded so far is committed."""
        self._queue.join()

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._db.close()


# --- reading: the labels a log teaches ---
