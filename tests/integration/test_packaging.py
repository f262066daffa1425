"""The package stands on its own: installed (not editable) into a fresh virtualenv outside the
checkout, `tierroute --help` works and each service starts from a config file and serves."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.services import EMBEDDER_DIR, ROOT, SMOLLM_DIR, ServiceProcess, start_service


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv with tierroute installed from the checkout (a wheel build, not an
    editable link). Its dependencies come from the test's own environment through a .pth
    entry, so the test does not download vLLM again."""
    where = tmp_path_factory.mktemp("fresh")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
            "--no-deps", str(ROOT),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies (not tierroute: a plain path entry runs no .pth, so the checkout's
    # editable install stays out).
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    yield venv


def run_in(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True
    )


def test_the_installed_package_is_not_the_checkout(fresh: Path, tmp_path: Path) -> None:
    done = run_in(
        fresh, tmp_path, "python", "-c", "import tierroute.router.service as m; print(m.__file__)"
    )
    assert done.returncode == 0, done.stderr
    location = Path(done.stdout.strip())
    assert fresh in location.parents and ROOT not in location.parents
    anchors = run_in(
        fresh,
        tmp_path,
        "python",
        "-c",
        "from tierroute.router.scoring.scorers import ReferenceSet; "
        "print(len(ReferenceSet.load().simple))",
    )
    assert anchors.returncode == 0 and int(anchors.stdout) > 0, "package data ships"


def test_the_command_line_helps(fresh: Path, tmp_path: Path) -> None:
    done = run_in(fresh, tmp_path, "tierroute", "--help")
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout and "calibrate" in done.stdout


def test_each_service_starts_from_a_config_file(fresh: Path, tmp_path: Path) -> None:
    config = tmp_path / "suite.yaml"
    config.write_text(
        json.dumps(
            {
                "router": {"model": str(EMBEDDER_DIR), "scorer": "anchors"},
                "tiers": [
                    {
                        "name": "small",
                        "address": "127.0.0.1:1",
                        "model": str(SMOLLM_DIR),
                        "engine_args": {
                            "max_model_len": 1024,
                            "gpu_memory_utilization": 0.3,
                            "enforce_eager": True,
                        },
                        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    },
                    {"name": "large", "address": "127.0.0.1:2", "model": str(SMOLLM_DIR)},
                ],
            }
        )
    )
    bin_ = fresh / "bin"
    started: list[ServiceProcess] = []
    try:
        for program, extra in (
            ("tierroute-validator", []),
            ("tierroute-router", []),
            ("tierroute-tier", ["--tier", "small"]),
        ):
            svc = start_service(
                [str(bin_ / program), "--config", str(config), "--listen", "127.0.0.1:0", *extra],
                tmp_path / f"{program}.log",
                cwd=tmp_path,
                module=False,
            )
            started.append(svc)
            assert svc.health_seen[-1] == 1, f"{program} is SERVING"
    finally:
        codes = [svc.stop() for svc in started]
    assert codes == [0, 0, 0], [s.log.read_text()[-2000:] for s in started]
