"""The configuration reference (docs/config-reference.md) is generated from the config classes'
field comments: it matches the code, and every key has a description."""

from __future__ import annotations

from pathlib import Path

from tierroute.core.config import Config
from tierroute.tools.config_reference import render

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_the_reference_is_what_the_code_says() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/config-reference.md differs from the comments on the config's fields: "
        "run `make config-reference`"
    )


def test_every_key_is_described_and_listed() -> None:
    text = render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    undescribed = [row for row in rows if row.endswith("|  |")]
    assert undescribed == [], "write a comment above each of these fields"
    for name in [*Config.model_fields["router"].annotation.model_fields, "base_url", "mutual"]:
        assert f"| `{name}` |" in text
