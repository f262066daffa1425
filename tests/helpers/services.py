"""Starting the real services for tests and benchmarks: the models `make models` built,
configs on free loopback ports, service processes waited on until health says SERVING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.budgets import make_config
from tests.helpers.otlp import OTLPReceiver
from tierroute.core.config import Config
from tierroute.runtime.host import Host

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("TIERROUTE_MODELS_DIR", ROOT / "models"))
EMBEDDER_DIR = MODELS / "minilm-l6-v2-int8"
SMOLLM_DIR = MODELS / "smollm2-135m-instruct"
DEGRADED_DIR = ROOT / "artifacts" / "degraded-default"
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
SERVICES = ("tierroute.router", "tierroute.tier", "tierroute.validator")
PROMPTS = yaml.safe_load((ROOT / "tests" / "data" / "prompts.yaml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_config(**router: Any) -> Config:
    """A two-tier config on the real embedder, listening on a free loopback port, with the
    budgets no loaded machine reaches (tests/helpers/budgets.py)."""
    data: dict[str, Any] = {
        "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR), **router},
        "tiers": [
            {"name": "small", "address": "127.0.0.1:1", "model": "small-model"},
            {"name": "large", "address": "127.0.0.1:2", "model": "large-model"},
        ],
    }
    return make_config(data)


@dataclass
class ServiceProcess:
    """A service started as its own process, with what its health said while it started."""

    process: subprocess.Popen[str]
    address: str
    log: Path
    health_seen: list[int] = field(default_factory=list)
    # host:port of its Prometheus /metrics ("" if not set here)
    metrics_address: str = ""

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    args: list[str],
    log: Path,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    module: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
) -> ServiceProcess:
    """Start `python -m <args> --port-file ...` (or the program `args[0]` with `module`
    False), wait until health reports SERVING (over TLS with `credentials`)."""
    port_file = log.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    metrics = ""
    if module and args[0] in SERVICES and "--metrics-listen" not in args:
        # A free port, not the config's fixed one: tests start several of each service.
        metrics = f"127.0.0.1:{free_port()}"
        args = [*args, "--metrics-listen", metrics]
    command = [sys.executable, "-m", *args] if module else list(args)
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*command, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
        )
    svc = ServiceProcess(proc, "", log, metrics_address=metrics)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        if port_file.exists():
            svc.address = f"127.0.0.1:{port_file.read_text().strip()}"
            with (
                grpc.secure_channel(svc.address, credentials)
                if credentials is not None
                else grpc.insecure_channel(svc.address)
            ) as channel:
                try:
                    status = (
                        health_pb2_grpc.HealthStub(channel)
                        .Check(health_pb2.HealthCheckRequest(), timeout=2)
                        .status
                    )
                except grpc.RpcError:
                    status = None
            if status is not None and (not svc.health_seen or svc.health_seen[-1] != status):
                svc.health_seen.append(int(status))
            if status == health_pb2.HealthCheckResponse.SERVING:
                return svc
        time.sleep(0.2)
    svc.stop()
    raise RuntimeError(f"{args[0]} not SERVING after {timeout} s:\n{log.read_text()[-3000:]}")


def start_tier(
    log: Path, *extra: str, tier: str = "small", env: dict[str, str] | None = None
) -> ServiceProcess:
    """A tier of the embedded default config as its own process, on a free port."""
    args = ["tierroute.tier", "--config", str(DEFAULT_CONFIG), "--tier", tier]
    return start_service([*args, "--listen", "127.0.0.1:0", *extra], log, env=env)


def tracing_env(receiver: OTLPReceiver) -> dict[str, str]:
    # Export quickly: the SDK's default batch delay is 5 s.
    return {
        "TIERROUTE__MONITORING__OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


async def started(host: Host) -> tuple[Host, str]:
    """An in-process service host, started on its free port and loaded."""
    port = await host.start()
    await host.load()
    return host, f"127.0.0.1:{port}"
