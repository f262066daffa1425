"""Reading the routing log: the labels it teaches (`tierroute calibrate --from-log`), its
summary, and the cost ledger (`tierroute report`). The writer is routing_log.py."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.quality.artifact import FEATURES
from tierroute.router.route.routing_log import SCHEMA_VERSION, LogError, connect_log

# Validator reasons that say the answer was not good enough (an escalation that teaches), and
# the one that says it was.
NEEDED_LARGER = ("LOW_CONFIDENCE", "EMPTY_ANSWER", "PARSE_FAILURE", "SCHEMA_VIOLATION")


GOOD_ENOUGH = ("CONFIDENT",)


# A delivery teaches "the small tier was enough" only when its confidence cleared the
# threshold by this much: one that barely passed is as likely wrong as right.
CONFIDENT_MARGIN = 0.1


@dataclass(frozen=True)
class Labels:
    """Rows of a log that say whether the small tier's answer was good enough: `needed_larger`
    is 1 where the validator escalated it as not good enough or shadow mode found the large
    tier answering otherwise, 0 where the validator delivered it as confident or the large
    tier agreed."""

    ids: np.ndarray  # the log's row ids
    keys: list[str]  # the prompt text when the log kept it, else "sha256:<hex>"
    embeddings: np.ndarray
    features: np.ndarray
    needed_larger: np.ndarray
    categories: list[str]
    # Every scored row of the log (labelled or not): the traffic the threshold is applied to.
    all_embeddings: np.ndarray
    all_features: np.ndarray
    skipped: dict[str, int]
    # How many of the labels came from shadow comparisons (the rest: the validator's verdicts).
    from_shadow: int = 0


def check(path: Path) -> None:
    """Raise LogError unless `path` is a routing log of this schema version."""
    connect_log(path, create=False).close()


def read_labels(path: Path, small: str, embedder_version: str, dimension: int) -> Labels:
    """The labels in `path` for tier `small`: its answers the validator escalated as not good
    enough (needed a larger tier) and those it delivered as confident, by CONFIDENT_MARGIN
    over the threshold (the small tier was enough). Rows scored by another
    embedder, or judged for another reason (validator down, a tier failure), teach nothing and
    are counted in `skipped`."""
    db = connect_log(path, create=False)
    try:
        # The tiers whose answers a row judges: by the validator, or by a shadow comparison.
        tiers = dict(
            db.execute(
                "SELECT CASE WHEN shadow_agreed IS NOT NULL THEN final_tier ELSE judged_tier END "
                "AS tier, COUNT(*) FROM routes "
                "WHERE judged_tier != '' OR shadow_agreed IS NOT NULL GROUP BY tier"
            ).fetchall()
        )
        cursor = db.execute(
            "SELECT id, prompt_sha256, prompt, embedding, features, embedder_version, "
            "judged_tier, verdict, verdict_reason, confidence, min_confidence, category, "
            "final_tier, shadow_agreed "
            "FROM routes "
            "WHERE embedding IS NOT NULL ORDER BY id"
        )
        ids, keys, vectors, feats, needed, categories = [], [], [], [], [], []
        all_vectors, all_feats = [], []
        shadowed = 0
        skipped = {
            "other embedder": 0,
            "not judged on this tier": 0,
            "verdict teaches nothing": 0,
            "delivered without a margin": 0,
            "older features": 0,
        }
        for row in cursor:
            row_id, sha, prompt, emb, feat, version, judged, verdict, reason = row[:9]
            confidence, threshold, category, final, agreed = row[9:]
            if version != embedder_version:
                skipped["other embedder"] += 1
                continue
            vector = np.frombuffer(emb, dtype="<f4")
            features = np.frombuffer(feat, dtype="<f4") if feat is not None else None
            if features is not None and features.shape != (len(FEATURES),):
                skipped["older features"] += 1  # scored before the router read what is asked
                continue
            if vector.shape != (dimension,) or features is None:
                raise LogError(
                    f"{path}: row {row_id}: an embedding of {vector.size} values (the embedder "
                    f"gives {dimension}) or no features: the row is damaged; delete it "
                    f"(DELETE FROM routes WHERE id = {row_id}) and run again"
                )
            all_vectors.append(vector)
            all_feats.append(features)
            if agreed is not None and final == small:
                # Shadow mode asked the large tier too: the most direct label there is.
                label = 1 - int(agreed)
                shadowed += 1
            elif judged != small:
                skipped["not judged on this tier"] += 1
                continue
            elif verdict == "ESCALATE" and reason in NEEDED_LARGER:
                label = 1
            elif verdict == "DELIVER" and reason in GOOD_ENOUGH:
                if confidence < (threshold or 0.0) + CONFIDENT_MARGIN:
                    skipped["delivered without a margin"] += 1
                    continue
                label = 0
            else:
                skipped["verdict teaches nothing"] += 1
                continue
            ids.append(row_id)
            keys.append(prompt if prompt is not None else f"sha256:{sha}")
            vectors.append(vector)
            feats.append(features)
            needed.append(label)
            categories.append(category)
    except sqlite3.DatabaseError as exc:
        raise LogError(f"{path}: cannot read the routing log ({exc})") from exc
    finally:
        db.close()
    if small not in tiers:
        judged_on = ", ".join(f"{t} ({n} rows)" for t, n in sorted(tiers.items())) or "none"
        raise LogError(
            f"{path}: no answer of tier {small!r} was judged by the validator or compared in "
            f"shadow mode; tiers judged in this log: {judged_on}. Pass --small with one of them"
        )
    if not ids:
        raise LogError(
            f"{path}: none of the {tiers[small]} answers of tier {small!r} judged (validator or "
            f"shadow mode) teaches a label (skipped: {skipped}): record more traffic with this "
            f"embedder ({embedder_version}) first"
        )
    # In the order of the prompts, not of the rows: concurrent requests finish (and are
    # logged) in a different order on every run, and the same labels must teach the same
    # artifact (the fits' sums and the k-fold choice of the prior's share see row order).
    order = sorted(range(len(ids)), key=lambda i: (keys[i], needed[i], ids[i]))
    return Labels(
        np.array(ids)[order],
        [keys[i] for i in order],
        np.stack(vectors)[order].astype(np.float32),
        np.stack(feats)[order].astype(np.float32),
        np.array(needed, dtype=np.float64)[order],
        [categories[i] for i in order],
        np.stack(all_vectors).astype(np.float32),
        np.stack(all_feats).astype(np.float32),
        skipped,
        shadowed,
    )


def summarize(path: Path) -> dict[str, Any]:
    """What a log holds: its span, and per chosen tier the requests, escalations, verdicts and
    final statuses (`tierroute log summary`)."""
    db = connect_log(path, create=False)
    try:
        first, last, rows = db.execute("SELECT MIN(at), MAX(at), COUNT(*) FROM routes").fetchone()
        tiers: dict[str, dict[str, Any]] = {}
        query = (
            "SELECT chosen_tier, COUNT(*), SUM(escalated), AVG(latency_ms), SUM(cost_usd), "
            "SUM(verdict = 'DELIVER'), SUM(verdict = 'ESCALATE'), SUM(embedding IS NOT NULL) "
            "FROM routes GROUP BY chosen_tier ORDER BY chosen_tier"
        )
        for tier, n, escalated, latency, cost, delivered, escalate, scored in db.execute(query):
            tiers[tier or "(none)"] = {
                "requests": n,
                "escalated": escalated,
                "verdicts": {"DELIVER": delivered, "ESCALATE": escalate},
                "scored": scored,
                "mean_latency_ms": latency,
                "cost_usd": cost,
            }
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM routes GROUP BY status"))
    except sqlite3.DatabaseError as exc:
        raise LogError(f"{path}: cannot read the routing log ({exc})") from exc
    finally:
        db.close()
    return {
        "path": str(path),
        "schema_version": SCHEMA_VERSION,
        "rows": rows,
        "first_at": first,
        "last_at": last,
        "statuses": statuses,
        "by_chosen_tier": tiers,
    }


_LEDGER = (
    "at", "client", "status", "chosen_tier", "final_tier", "escalated", "score",
    "time_to_first_token_ms", "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd",
    "large_tier_cost_usd", "shadow_agreed", "shadow_similarity",
)  # fmt: skip


def read_ledger(path: Path, since: float) -> tuple[list[dict[str, Any]], int]:
    """The rows recorded at or after `since` (unix time), as dicts of the ledger's columns,
    oldest first, and how many rows the log holds in all (`tierroute report`)."""
    db = connect_log(path, create=False)
    try:
        total = db.execute("SELECT COUNT(*) FROM routes").fetchone()[0]
        cursor = db.execute(
            f"SELECT {', '.join(_LEDGER)} FROM routes WHERE at >= ? ORDER BY at", (since,)
        )
        rows = [dict(zip(_LEDGER, row, strict=True)) for row in cursor]
    except sqlite3.DatabaseError as exc:
        raise LogError(f"{path}: cannot read the routing log ({exc})") from exc
    finally:
        db.close()
    return rows, int(total)
