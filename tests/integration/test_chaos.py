"""The chaos suite's fast part (`benchmarks/chaos.py --fast`): the real suite, supervised as
`make run` runs it, with a tier killed mid-stream and one stalled, the validator killed and
stopped, a burst of 3,000 Scores past admission, and every RPC fuzzed. Whatever the machine's
speed, nothing may hang, end with a status the README does not explain, be orphaned, stay
unhealthy, or leave a traceback in a log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.services import ROOT


def test_the_suite_survives_the_fast_chaos_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "chaos.py"),
            "--fast",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = run.stdout + run.stderr[-3000:]
    assert out.exists(), report
    result = json.loads(out.read_text())
    scenarios = {s["scenario"]: s for s in result["scenarios"]}
    assert len(scenarios) == 7, report
    for name, s in scenarios.items():
        assert s["hung"] == 0, f"{name}: calls hung\n{report}"
        assert s["unexplained"] == [], f"{name}: {s['unexplained'][:5]}\n{report}"
        assert s["orphaned"] == 0, f"{name}: processes orphaned\n{report}"
        assert s["unhealthy_after"] == 0, f"{name}: services not SERVING after\n{report}"
        assert s["tracebacks"] == [], f"{name}: {s['tracebacks'][:2]}\n{report}"
        assert s["sent"] == s["completed"] + sum(s["statuses"].values()), name
    burst = scenarios["burst: 3000 concurrent Scores"]
    assert burst["sent"] == 3000
    assert set(burst["statuses"]) <= {"RESOURCE_EXHAUSTED"}, burst["statuses"]
    overload = scenarios["overload: 64 concurrent Routes"]
    assert overload["sent"] == 64 and overload["hung"] == 0, report
    assert overload["breakers_after"]["small"] == "closed", report
    assert set(overload["statuses"]) <= {"RESOURCE_EXHAUSTED"}, overload["statuses"]
    assert result["suite_exit_code"] == 0, report
    assert result["left_running_after_stop"] == [], report
    assert result["unclean_stop_lines"] == [], report
    assert result["passed"] and run.returncode == 0, report
