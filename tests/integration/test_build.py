"""The build is reproducible: what `make models` built here is byte for byte what the lock file
names, and the shipped router artifact is the one the lock file and the published quality
figures name, fitted on this very embedder."""

from __future__ import annotations

import json

from tests.helpers.services import MODELS, ROOT
from tierroute.quality.artifact import load_artifact
from tierroute.router.scoring.embedder import Embedder
from tierroute.tools.modelbuild import file_sha256 as sha256

LOCK = json.loads((ROOT / "models.lock.json").read_text())


def test_the_embedder_is_the_locked_one_byte_for_byte() -> None:
    folder = MODELS / LOCK["embedder"]["folder"]
    assert sha256(folder / "model.onnx") == LOCK["embedder"]["model_sha256"], (
        "the int8 embedder differs from models.lock.json: were the versions in "
        "constraints.txt installed (`make deps`)?"
    )
    assert Embedder(folder).version == LOCK["embedder"]["version"]


def test_the_llm_conversion_is_the_locked_one_byte_for_byte() -> None:
    folder = MODELS / LOCK["llm"]["folder"]
    assert sha256(folder / "model.safetensors") == LOCK["llm"]["model_sha256"]


def test_the_shipped_artifact_is_the_locked_one_and_fits_this_embedder() -> None:
    meta, _ = load_artifact(ROOT / LOCK["router_artifact"]["folder"])  # checks its content hash
    assert meta["version"] == LOCK["router_artifact"]["version"]
    assert meta["embedder_version"] == LOCK["embedder"]["version"]


def test_the_published_quality_figures_name_the_shipped_artifact() -> None:
    quality = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())
    assert quality["default_artifact"] == LOCK["router_artifact"]["version"]
    assert quality["embedder_version"] == LOCK["embedder"]["version"]
