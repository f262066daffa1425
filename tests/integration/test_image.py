"""The image the Kubernetes manifests run (Containerfile, `make image`): built once (buildah
keeps its layers, so a build with nothing changed takes seconds), then run with `buildah run`:
`tierroute --help` as the image's non-root user, and the router on the image's own models
until its gRPC health answers SERVING to the probe the manifests use."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.helpers.services import free_port
from tests.helpers.tools import cli

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/tierroute:0.1.0"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def buildah(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["buildah", *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation and mmdebstrap's root mode need root here")
    done = subprocess.run(
        ["make", "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = buildah("from", "--quiet", image).strip()
    yield name
    buildah("rm", name)


def test_the_image_runs_the_cli_as_its_non_root_user(container: str) -> None:
    assert buildah("run", container, "--", "id", "-u").strip() == "10001"
    usage = buildah("run", container, "--", "tierroute", "--help")
    assert "probe" in usage and "route" in usage
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
    assert config["User"] == "10001:10001"


def router_config(directory: Path) -> int:
    """configs/default.yaml's router, with the image's paths, written into `directory` (which
    the container mounts read-only); its port. Its tiers are not started: the router serves
    Score without them."""
    default = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    port = free_port()
    router = default["router"] | {
        "listen": f"127.0.0.1:{port}",
        "http_listen": "",
        "metrics_listen": "",
        "model": "/opt/tierroute/models/minilm-l6-v2-int8",
        "artifact": "/opt/tierroute/artifacts/router-default",
        "degraded_scorer": "/opt/tierroute/artifacts/degraded-default",
    }
    router = {k: v for k, v in router.items() if k not in ("routing_log", "metrics_store")}
    tiers = [
        {"name": t["name"], "address": f"127.0.0.1:{free_port()}", "model": "unused"}
        for t in default["tiers"]
    ]
    (directory / "config.yaml").write_text(yaml.safe_dump({"router": router, "tiers": tiers}))
    directory.chmod(0o755)  # the image's user reads it
    (directory / "config.yaml").chmod(0o644)
    return port


@pytest_asyncio.fixture
async def router_in_image(
    container: str, tmp_path: Path
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The router of configs/default.yaml, inside the image, on its own models and artifact."""
    config = tmp_path / "config"
    config.mkdir()
    port = router_config(config)
    log = await asyncio.to_thread(open, tmp_path / "router.log", "wb")
    process = await asyncio.create_subprocess_exec(
        "buildah", "run", "--volume", f"{config}:/etc/tierroute/config:ro", container, "--",
        "tierroute-router", "--config", "/etc/tierroute/config/config.yaml",
        env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}", process
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)  # the router drains and stops
        await asyncio.wait_for(process.wait(), 120)
        log.close()
        print((await asyncio.to_thread((tmp_path / "router.log").read_text))[-4000:])


async def test_the_router_in_the_image_becomes_serving_on_its_own_models(
    router_in_image: tuple[str, asyncio.subprocess.Process],
) -> None:
    address, process = router_in_image
    # The probe the manifests run, until the router has loaded its embedder: each attempt
    # waits for the answer (4 s), so this polls on the router's own pace; 10 minutes at most.
    async with asyncio.timeout(600):
        while True:
            assert process.returncode is None, "the router in the image exited"
            code, out, err = await cli("--address", address, "--timeout", "4", "probe")
            if code == 0:
                break
    assert out.strip() == f"{address} (server): SERVING"
    code, out, err = await cli("--address", address, "--json", "score", "What is 2 + 2?")
    assert code == 0, err
    decision = json.loads(out)
    assert decision["tier"] in ("small", "large")
    assert decision["embedder_version"].startswith("minilm-l6-v2-int8")
