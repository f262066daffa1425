"""`tierroute report` over a routing log written by the router's own writer: share by tier,
the cost ledger's savings to the cent, escalations, clients, and the messages for an empty
window, an older log, and a bad window."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.routing_log import entry, written
from tierroute.tools import cli
from tierroute.tools.report import parse_since


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--json", "report", *args] if "--text" not in args else
                    ["report", *[a for a in args if a != "--text"]])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def ledger_log(path: Path) -> Path:
    now = time.time()
    return written(
        path,
        [
            # Two answers of the small tier: each saves (large - cost).
            entry("a", at=now - 60, client="acme", cost_usd=0.001, large_tier_cost_usd=0.012),
            entry("b", at=now - 50, client="acme", cost_usd=0.002, large_tier_cost_usd=0.020),
            # An escalation: paid both tiers, more than the large tier alone.
            entry(
                "c",
                "ESCALATE",
                "LOW_CONFIDENCE",
                at=now - 40,
                client="beta",
                cost_usd=0.015,
                large_tier_cost_usd=0.010,
                time_to_first_token_ms=900.0,
            ),
            # Failed: no answer, no counterfactual.
            entry(
                "d",
                at=now - 30,
                client="beta",
                status="UNAVAILABLE",
                final_tier="",
                cost_usd=0.0,
                large_tier_cost_usd=None,
            ),
            # Outside a 1 h window.
            entry("e", at=now - 7200, client="acme", cost_usd=5.0, large_tier_cost_usd=9.0),
        ],
    )


def test_the_report_shows_share_savings_escalations_and_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = ledger_log(tmp_path / "log.sqlite")
    code, out, err = report(capsys, "--log", str(log), "--since", "1h")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["requests"], doc["answered"]) == (4, 3)
    assert doc["statuses"] == {"OK": 3, "UNAVAILABLE": 1}
    assert {t: v["answers"] for t, v in doc["share_by_tier"].items()} == {"small": 2, "large": 1}
    assert doc["share_by_tier"]["small"]["share"] == pytest.approx(2 / 3)
    assert doc["escalation_rate"] == pytest.approx(1 / 3)
    assert round(doc["cost_usd"], 6) == 0.018
    assert round(doc["large_tier_cost_usd"], 6) == 0.042
    assert round(doc["savings_usd"], 6) == 0.024  # 0.011 + 0.018 - 0.005
    assert doc["by_client"]["acme"]["requests"] == 2
    assert round(doc["by_client"]["acme"]["savings_usd"], 6) == 0.029
    assert round(doc["by_client"]["beta"]["savings_usd"], 6) == -0.005
    assert doc["share_by_tier"]["large"]["ttft_p50_ms"] == 900.0

    code, out, err = report(capsys, "--log", str(log), "--since", "3h", "--text",
                            "--plot", str(tmp_path / "r.png"))  # fmt: skip
    assert code == 0, err
    assert "5 requests, 4 answered" in out and "saved $" in out and "acme" in out
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_an_empty_window_an_older_log_and_a_bad_window_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = written(tmp_path / "log.sqlite", [entry("old", at=time.time() - 86400)])
    code, _, err = report(capsys, "--log", str(log), "--since", "1h")
    assert code == 1 and "no requests in the last 1h (the log holds 1 in all)" in err
    code, _, err = report(capsys, "--log", str(log), "--since", "soon")
    assert code == 2 and "write a duration such as 90s, 30m, 1h or 7d" in err
    with sqlite3.connect(log) as db:
        for column in ("shadow_tier", "shadow_method", "shadow_similarity", "shadow_agreed"):
            db.execute(f"ALTER TABLE routes DROP COLUMN {column}")
        db.execute("ALTER TABLE routes DROP COLUMN client")
        db.execute("ALTER TABLE routes DROP COLUMN large_tier_cost_usd")
        db.execute("PRAGMA user_version=1")
    code, _, err = report(capsys, "--log", str(log), "--since", "7d")
    assert code == 1 and "schema version 1" in err and "upgrades it in place" in err
    code, _, err = report(capsys, "--log", str(tmp_path / "none.sqlite"))
    assert code == 1 and "no such routing log" in err


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600),
                                               ("1.5d", 129600)])  # fmt: skip
def test_windows_parse(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


def test_the_report_judges_drift_against_the_artifact_s_calibration_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "router.yaml"
    artifact = Path(__file__).resolve().parents[2] / "artifacts" / "router-default"
    config.write_text(
        f"router: {{scorer: learned, artifact: '{artifact}', complexity_threshold: 4.0, "
        "target_large_share: 0.5}\n"
        "tiers:\n  - {name: small, address: 'h:1', model: m}\n"
        "  - {name: large, address: 'h:2', model: m}\n"
    )
    now = time.time()
    # Traffic far easier than the calibration prompts (most of which score over 4, MMLU).
    easy = [
        entry(f"q{i}", at=now - 100 + i * 0.1, score=0.5, chosen_tier="small", final_tier="small")
        for i in range(150)
    ]
    log = written(tmp_path / "log.sqlite", easy)
    code, out, err = report(capsys, "--log", str(log), "--config", str(config))
    assert code == 0, err
    drift = json.loads(out)["drift"]
    assert drift["score"]["alert"] and drift["score"]["psi"] > 1.0
    assert drift["large_share"]["alert"] and drift["large_share"]["share"] == 0.0
    assert drift["large_share"]["expected"] == 0.5
    assert not drift["escalation_rate"]["alert"]
    code, out, err = report(capsys, "--log", str(log), "--config", str(config), "--text")
    assert "drift score: ALERT" in out and "drift escalation_rate: ok" in out
