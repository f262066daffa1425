"""The routing log: rows written off the event loop, the labels a log teaches, and the logs it
refuses (another schema version, not a routing log, a tier it never judged)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.routing_log import DIM, entry, written
from tierroute.quality.artifact import load_artifact, prompt_features, save_artifact
from tierroute.router.route.log_reader import read_labels
from tierroute.router.route.routing_log import SCHEMA_VERSION, LogError, RoutingLog, prompt_sha256


def test_rows_keep_a_hash_and_the_embedding_and_the_text_only_when_asked(tmp_path: Path) -> None:
    e = entry("What is 2 + 2?")
    plain = written(tmp_path / "plain.sqlite", [e])
    kept = written(tmp_path / "kept.sqlite", [e], keep_prompts=True)
    for path, text in ((plain, None), (kept, "What is 2 + 2?")):
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            (row,) = db.execute("SELECT * FROM routes").fetchall()
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert row["prompt"] == text
        assert row["prompt_sha256"] == prompt_sha256("What is 2 + 2?")
        assert np.frombuffer(row["embedding"], dtype="<f4") == pytest.approx(e.embedding)
        assert (row["verdict"], row["verdict_reason"], row["final_tier"]) == (
            "DELIVER",
            "CONFIDENT",
            "small",
        )
        assert row["completion_tokens"] == 4 and row["status"] == "OK"


def test_a_log_is_appended_to_across_restarts(tmp_path: Path) -> None:
    path = written(tmp_path / "log.sqlite", [entry("one")])
    written(path, [entry("two"), entry("three")])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM routes").fetchone()[0] == 3


def test_escalations_teach_needed_larger_and_confident_deliveries_small_enough(
    tmp_path: Path,
) -> None:
    path = written(
        tmp_path / "log.sqlite",
        [
            entry("hard one", "ESCALATE", "LOW_CONFIDENCE"),
            entry("easy one"),
            entry("barely passed", confidence=0.75),
            entry("validator was down", "", "VALIDATOR_UNAVAILABLE"),
            entry("judged elsewhere", judged_tier="medium"),
            entry("another embedder", embedder_version="old"),
            entry("forced, not scored", embedding=None, features=None, score=None),
            # scored before the router read what is asked: nine features of the whole text
            entry("older features", "ESCALATE", "LOW_CONFIDENCE", features=np.zeros(9, "<f4")),
        ],
        keep_prompts=True,
    )
    labels = read_labels(path, "small", "emb", DIM)
    assert labels.keys == ["easy one", "hard one"]  # in the order of the prompts
    assert list(labels.needed_larger) == [0.0, 1.0]
    assert labels.features == pytest.approx(prompt_features(["easy one", "hard one"]))
    assert labels.skipped == {
        "other embedder": 1,
        "not judged on this tier": 1,
        "verdict teaches nothing": 1,
        "delivered without a margin": 1,
        "older features": 1,
    }
    # Every scored row of this embedder is traffic the threshold is applied to.
    assert len(labels.all_embeddings) == 5


def test_the_same_answers_logged_in_another_order_teach_the_same_labels(tmp_path: Path) -> None:
    # Concurrent requests finish, and are logged, in a different order on every run: the
    # labels (and so the artifact calibrate fits on them) must not follow that order.
    entries = [
        entry("spell it backwards", "ESCALATE", "LOW_CONFIDENCE"),
        entry("convert the units"),
        entry("name the capital", "ESCALATE", "LOW_CONFIDENCE"),
        entry("say hello"),
    ]
    one = read_labels(written(tmp_path / "one.sqlite", entries), "small", "emb", DIM)
    other = read_labels(written(tmp_path / "other.sqlite", entries[::-1]), "small", "emb", DIM)
    assert (
        one.keys == other.keys == sorted(f"sha256:{prompt_sha256(e.normalized)}" for e in entries)
    )
    assert list(one.needed_larger) == list(other.needed_larger)
    assert np.array_equal(one.embeddings, other.embeddings)
    assert np.array_equal(one.features, other.features)
    assert list(one.ids) != list(other.ids)  # the rows were written in the other order


def test_without_prompts_the_key_is_the_hash(tmp_path: Path) -> None:
    path = written(tmp_path / "log.sqlite", [entry("secret prompt")])
    assert read_labels(path, "small", "emb", DIM).keys == [
        f"sha256:{prompt_sha256('secret prompt')}"
    ]


def test_a_tier_the_log_never_judged_is_named_with_the_ones_it_did(tmp_path: Path) -> None:
    path = written(tmp_path / "log.sqlite", [entry("x"), entry("y")])
    with pytest.raises(LogError) as caught:
        read_labels(path, "tiny", "emb", DIM)
    assert str(path) in str(caught.value)
    assert "'tiny'" in str(caught.value) and "small (2 rows)" in str(caught.value)


def test_a_log_of_another_embedder_teaches_nothing_and_says_so(tmp_path: Path) -> None:
    path = written(tmp_path / "log.sqlite", [entry("x")])
    with pytest.raises(LogError, match="record more traffic with this embedder"):
        read_labels(path, "small", "new-embedder", DIM)


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_a_log_of_another_schema_version_is_refused_by_reader_and_writer(
    tmp_path: Path, version: int
) -> None:
    path = written(tmp_path / "log.sqlite", [entry("x")])
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={version}")
    before = path.read_bytes()
    for attempt in (
        lambda: read_labels(path, "small", "emb", DIM),
        lambda: RoutingLog(path, False),
    ):
        with pytest.raises(LogError) as caught:
            attempt()
        message = str(caught.value)
        assert str(path) in message and f"schema version {version}" in message
        assert "older" in message if version == 0 else "newer" in message
        assert "new file" in message  # what to do
    assert path.read_bytes() == before  # neither rewrote it


def test_a_log_of_the_previous_schema_is_upgraded_by_the_writer_and_refused_by_a_reader(
    tmp_path: Path,
) -> None:
    path = written(tmp_path / "log.sqlite", [entry("old")])
    with sqlite3.connect(path) as db:  # as version 1 wrote it: no ledger, shadow or scored
        for column in (
            "shadow_tier", "shadow_method", "shadow_similarity", "shadow_agreed",
            "request_chars", "context_words", "context_kind",
        ):  # fmt: skip
            db.execute(f"ALTER TABLE routes DROP COLUMN {column}")
        db.execute("ALTER TABLE routes DROP COLUMN client")
        db.execute("ALTER TABLE routes DROP COLUMN large_tier_cost_usd")
        db.execute("PRAGMA user_version=1")
    with pytest.raises(LogError, match="upgrades it in place when it next opens it"):
        read_labels(path, "small", "emb", DIM)
    written(path, [entry("new", client="acme", large_tier_cost_usd=0.25)])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        rows = db.execute("SELECT client, large_tier_cost_usd FROM routes ORDER BY id").fetchall()
    assert rows == [("", None), ("acme", 0.25)]  # the old row kept, the new one whole


def test_files_that_are_not_routing_logs_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, but long enough to have a header " * 10)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(LogError, match="not a SQLite routing log"):
        read_labels(text, "small", "emb", DIM)
    with pytest.raises(LogError, match="not a tierroute routing log"):
        RoutingLog(other, False)
    with pytest.raises(LogError, match="no such routing log"):
        read_labels(tmp_path / "missing.sqlite", "small", "emb", DIM)


def test_a_row_recorded_after_close_is_not_kept_and_nothing_raises(tmp_path: Path) -> None:
    log = RoutingLog(tmp_path / "log.sqlite", False)
    log.record(entry("before"))
    log.close()
    log.record(entry("after"))
    assert log.written == 1


def test_a_failed_artifact_write_leaves_the_old_artifact_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "artifact"
    old = save_artifact(folder, {"model": "centroid"}, {"a": np.zeros(3), "b": np.ones(3)})
    calls = []

    def failing_save(path: Path, array: np.ndarray, allow_pickle: bool) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        with open(path, "wb") as f:
            np.lib.format.write_array(f, array)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(folder, {"model": "centroid"}, {"a": np.ones(3), "b": np.zeros(3)})
    monkeypatch.undo()
    meta, arrays = load_artifact(folder)
    assert meta["version"] == old and list(arrays["a"]) == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_log_summary_counts_requests_escalations_and_statuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tierroute.tools.cli import main

    path = written(
        tmp_path / "log.sqlite",
        [
            entry("a"),
            entry("b", "ESCALATE", "LOW_CONFIDENCE"),
            entry("c", "", "", chosen_tier="large", judged_tier="", status="CANCELLED"),
        ],
    )
    assert main(["--json", "log", "summary", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3 and summary["statuses"] == {"OK": 2, "CANCELLED": 1}
    small = summary["by_chosen_tier"]["small"]
    assert (small["requests"], small["escalated"], small["verdicts"]) == (
        2,
        1,
        {"DELIVER": 1, "ESCALATE": 1},
    )
    assert main(["log", "summary", str(path)]) == 0
    assert "3 requests" in capsys.readouterr().out
    assert main(["log", "summary", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such routing log" in capsys.readouterr().err
