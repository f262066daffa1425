"""A real Prometheus server (Debian's, installed by `make test`) for the tests: its own process,
a scrape config for the targets given, its data in a temporary folder, and its HTTP API to ask
what it scraped."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.services import free_port


class PrometheusServer:
    def __init__(self, folder: Path, targets: dict[str, str], scrape_interval: str = "1s") -> None:
        """`targets`: job name -> host:port of a /metrics endpoint."""
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is missing: run `make test` (it installs it)")
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": job, "static_configs": [{"targets": [target]}]}
                        for job, target in targets.items()
                    ],
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        log = (self.folder / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"prometheus exited with {code}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {timeout} s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` (PromQL), through the HTTP query API."""
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    async def targets(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{self.url}/api/v1/targets")
        return list(r.json()["data"]["activeTargets"])

    async def wait_up(self, jobs: list[str], seconds: float = 60) -> None:
        """Until every job's target has been scraped successfully; RuntimeError naming each
        target that is not, with Prometheus's own error for it, after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            targets = await self.targets()
            health = {t["labels"]["job"]: t for t in targets}
            down = [j for j in jobs if health.get(j, {}).get("health") != "up"]
            if not down:
                return
            if time.monotonic() > deadline:
                why = "; ".join(
                    f"{j} ({health.get(j, {}).get('scrapeUrl', '?')}): "
                    f"{health.get(j, {}).get('lastError') or 'not scraped yet'}"
                    for j in down
                )
                raise RuntimeError(f"targets not up after {seconds:g} s: {why}")
            await asyncio.sleep(0.2)  # Prometheus scrapes on its own schedule: poll its API

    async def wait_for(self, expr: str, value: float, seconds: float = 60) -> None:
        """Until the sum of `expr` equals `value` (Prometheus has scraped it)."""
        deadline = time.monotonic() + seconds
        while True:
            got = sum(float(r["value"][1]) for r in await self.query(expr))
            if got == value:
                return
            if time.monotonic() > deadline:
                targets = [(t["labels"]["job"], t["health"], t["lastError"])
                           for t in await self.targets()]  # fmt: skip
                raise RuntimeError(f"{expr} is {got}, not {value}, after {seconds:g} s; "
                                   f"targets: {targets}")  # fmt: skip
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None
