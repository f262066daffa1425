"""Shared fixtures: the real models built by `make models`, configs, and free ports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierroute.config import Config, config_from_dict

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("TIERROUTE_MODELS_DIR", ROOT / "models"))
EMBEDDER_DIR = MODELS / "minilm-l6-v2-int8"
PROMPTS = yaml.safe_load((ROOT / "tests" / "data" / "prompts.yaml").read_text())


def pytest_configure(config: pytest.Config) -> None:
    if not (EMBEDDER_DIR / "model.onnx").is_file():
        raise pytest.UsageError(f"{EMBEDDER_DIR} is missing: run `make models` (or `make test`)")


def router_config(**router: Any) -> Config:
    """A two-tier config on the real embedder, listening on a free loopback port."""
    data: dict[str, Any] = {
        "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR), **router},
        "tiers": [
            {"name": "small", "address": "127.0.0.1:1", "model": "small-model"},
            {"name": "large", "address": "127.0.0.1:2", "model": "large-model"},
        ],
    }
    return config_from_dict(data)


@pytest.fixture(scope="session")
def prompts() -> dict[str, list[str]]:
    return PROMPTS
