"""Shadow mode's parts that need no engine: how two answers are compared, the score bands, the
labels a shadowed row teaches `calibrate --from-log`, and the agreement `report` prints. The
router running shadow calls against real tiers is tests/integration/router/test_shadow.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.routing_log import DIM, entry, written
from tierroute.router.route.log_reader import read_labels
from tierroute.router.route.shadow import band, compare, fold
from tierroute.tools import cli
from tierroute.tools.report import wilson


def no_embedding(texts: list[str]) -> np.ndarray:
    raise AssertionError(f"short answers are compared exactly, never embedded: {texts}")


def by_table(table: dict[str, list[float]]) -> object:
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([table[t] for t in texts], dtype=np.float32)

    return embed


@pytest.mark.parametrize(
    ("small", "large", "agreed"),
    [
        ("Paris.", "paris", True),
        ("  The answer is 42!", "the answer   is 42", True),
        ("Paris", "Lyon", False),
        ("4", "4.0", False),  # exact means exact, once case, spacing and end marks are folded
    ],
)
def test_short_answers_are_compared_exactly(small: str, large: str, agreed: bool) -> None:
    method, similarity, same = compare(small, large, 32, 0.8, no_embedding)  # type: ignore[arg-type]
    assert (method, same, similarity) == ("exact", agreed, float(agreed))


def test_long_answers_are_compared_by_embedding_similarity_against_the_bar() -> None:
    a, b, c = "a long answer " * 5, "a longer answer " * 5, "something else entirely " * 5
    embed = by_table({a: [1.0, 0.0], b: [0.9, 0.1], c: [0.0, 1.0]})
    method, similarity, agreed = compare(a, b, 32, 0.8, embed)  # type: ignore[arg-type]
    assert method == "embedding" and agreed
    assert similarity == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-6)
    assert compare(a, c, 32, 0.8, embed)[1:] == (pytest.approx(0.0), False)  # type: ignore[arg-type]
    # The same text, folded, needs no model.
    assert compare(a, a.upper(), 32, 0.8, no_embedding) == ("embedding", 1.0, True)  # type: ignore[arg-type]


def test_bands_cover_the_score_range() -> None:
    assert [band(s) for s in (0.0, 1.99, 2.0, 5.5, 9.99, 10.0)] == [
        "0-2", "0-2", "2-4", "4-6", "8-10", "8-10"
    ]  # fmt: skip
    assert band(None) == "unscored"
    assert fold("  Hello,   World!! ") == "hello, world"


def test_a_shadowed_row_teaches_a_label_even_where_the_validator_judged_nothing(
    tmp_path: Path,
) -> None:
    plain = {"verdict": "", "reason": "", "judged_tier": "", "final_tier": "small"}
    log = written(
        tmp_path / "log.sqlite",
        [
            entry("agreed", **plain, shadow_tier="large", shadow_agreed=True),
            entry("differed", **plain, shadow_tier="large", shadow_agreed=False),
            # The validator delivered it confidently, but the large tier answered otherwise:
            # the comparison is the more direct label.
            entry("judged", shadow_tier="large", shadow_agreed=False),
            entry("not shadowed", **plain),  # teaches nothing
        ],
        keep_prompts=True,
    )
    labels = read_labels(log, "small", "emb", DIM)
    assert dict(zip(labels.keys, labels.needed_larger.tolist(), strict=True)) == {
        "agreed": 0.0,
        "differed": 1.0,
        "judged": 1.0,
    }
    assert labels.from_shadow == 3
    assert labels.skipped["not judged on this tier"] == 1


def test_wilson_interval() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook figures
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_the_report_shows_agreement_and_regret_by_score_band(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    rows = [
        entry(f"easy {i}", at=now - 60, score=1.0, shadow_tier="large", shadow_agreed=i < 3)
        for i in range(4)
    ] + [
        entry("hard", at=now - 50, score=4.5, shadow_tier="large", shadow_agreed=False),
        entry("unshadowed", at=now - 40, score=4.5),
    ]
    log = written(tmp_path / "log.sqlite", rows)
    assert cli.main(["--json", "report", "--log", str(log), "--since", "1h"]) == 0
    shadow = json.loads(capsys.readouterr().out)["shadow"]
    assert shadow["compared"] == 5 and shadow["agreement"] == pytest.approx(3 / 5)
    assert shadow["by_band"]["0-2"]["agreement"] == pytest.approx(0.75)
    assert shadow["by_band"]["0-2"]["regret"] == pytest.approx(0.25)
    assert shadow["by_band"]["4-6"] | {"agreement_ci95": None} == {
        "compared": 1, "agreement": 0.0, "regret": 1.0, "agreement_ci95": None
    }  # fmt: skip
    assert shadow["by_tier"]["small"]["compared"] == 5
    assert cli.main(["report", "--log", str(log), "--since", "1h"]) == 0
    text = capsys.readouterr().out
    assert "shadow: 5 answers compared with the large tier: agreement 60.0%" in text
    assert "score 0-2" in text and "regret 25.0%" in text


def test_the_report_says_when_nothing_was_shadowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = written(tmp_path / "log.sqlite", [entry("a", at=time.time() - 10)])
    assert cli.main(["report", "--log", str(log), "--since", "1h"]) == 0
    assert "shadow: no comparisons in the window" in capsys.readouterr().out
