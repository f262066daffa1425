"""The committed Python stubs are what `make gen` makes from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.services import ROOT


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT / "protos" / "..",
        check=True,
    )
    stale = []
    for generated in tmp_path.rglob("*_pb2*.py*"):
        package = generated.relative_to(tmp_path).parts[1]
        home = ROOT / "src" / "tierroute" if package == "common" else ROOT / "services"
        committed = home / package / "v1" / generated.name
        if not committed.exists() or committed.read_bytes() != generated.read_bytes():
            stale.append(str(committed.relative_to(ROOT)))
    assert not stale, f"run `make gen`: stale generated files {stale}"
