"""The shared data sets beside the checkout (../shared/data: RouteLLM's and RouterDC's labelled
rows). CI always has them; where they are absent, every test that needs them fails with a
message naming what is missing, never a quiet skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.services import ROOT

SHARED = ROOT.parent / "shared" / "data"
ROUTELLM = SHARED / "routellm"
ROUTERDC7 = SHARED / "routerdc7"


def require(path: Path) -> Path:
    """`path`, or the test fails saying that it is missing and where it should be."""
    if not path.exists():
        pytest.fail(
            f"{path} is missing: this test needs the shared data set {path.name!r}, which "
            f"sits beside the checkout in {SHARED} (CI has it; copy it there to run this test)",
            pytrace=False,
        )
    return path
