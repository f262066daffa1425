"""Integration tests run the real models: they need `make models` first."""

from __future__ import annotations

import pytest

from tests.helpers.services import EMBEDDER_DIR


def pytest_configure(config: pytest.Config) -> None:
    if not (EMBEDDER_DIR / "model.onnx").is_file():
        raise pytest.UsageError(f"{EMBEDDER_DIR} is missing: run `make models` (or `make test`)")
