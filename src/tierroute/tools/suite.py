"""`make run`: start every service of the suite from one config, wait until all are SERVING,
print how to call them, and stop them all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierroute.core.config import Config, ConfigError, load_config


@dataclass
class Service:
    name: str
    address: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None


def services(cfg: Config, config_path: Path) -> list[Service]:
    """The processes the config describes."""
    py = sys.executable
    config = str(config_path)
    tiers = [
        Service(
            f"tier:{t.name}",
            t.address,
            [py, "-m", "tierroute.tier", "--config", config, "--tier", t.name],
        )
        for t in cfg.tiers
    ]
    router = Service(
        "router", cfg.router.listen, [py, "-m", "tierroute.router", "--config", config]
    )
    validator = Service(
        "validator", cfg.validator.listen, [py, "-m", "tierroute.validator", "--config", config]
    )
    return [*tiers, validator, router]


def health_status(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=1)
                .status
            )
        except grpc.RpcError:
            return None


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the services were starting."""


def wait_serving(procs: list[Service], timeout: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    pending = {s.name for s in procs}
    while pending:
        if stopping():
            raise Interrupted()
        for s in procs:
            if s.process is not None and s.process.poll() is not None:
                raise RuntimeError(f"{s.name} exited with code {s.process.returncode}; see its log")
            if s.name in pending and health_status(s.address) == 1:  # SERVING
                print(f"  {s.name:<10} SERVING on {s.address}", flush=True)
                pending.discard(s.name)
        if time.monotonic() > deadline:
            raise RuntimeError(f"not SERVING after {timeout:.0f} s: {', '.join(sorted(pending))}")
        time.sleep(0.25)


def stop_all(procs: list[Service], grace: float) -> None:
    """SIGTERM every service, give each `grace` seconds to drain and shut its engine down."""
    for s in procs:
        if s.process is not None and s.process.poll() is None:
            s.process.send_signal(signal.SIGTERM)
    for s in procs:
        if s.process is not None:
            try:
                s.process.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"{s.name} did not stop within {grace:.0f} s: killing it", file=sys.stderr)
                s.process.kill()
                s.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for SERVING")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"tierroute: {exc}", file=sys.stderr)
        return 2
    procs = services(cfg, args.config)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting {len(procs)} service(s) from {args.config}", flush=True)
    for s in procs:
        # Own sessions: Ctrl-C reaches only this supervisor, which stops each service in turn
        # (a SIGINT to vLLM's worker processes would kill them under the engine).
        s.process = subprocess.Popen(
            s.argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
        )
    # The longest drain any service may take, plus time for an engine to shut down.
    grace = max([cfg.router.shutdown_grace_seconds, *(t.shutdown_grace_seconds for t in cfg.tiers)])
    grace += 30.0
    try:
        wait_serving(procs, args.timeout, lambda: stop)
        router = cfg.router.listen
        # The grpcurl installed beside this Python (`make setup` puts it in the venv).
        grpcurl = os.path.relpath(Path(sys.executable).parent / "grpcurl")
        print(
            "\nready. Try:\n"
            f"  {grpcurl} -plaintext {router} list\n"
            f'  {grpcurl} -plaintext -d \'{{"prompt": "What is the capital of France?"}}\' '
            f"{router} tierroute.router.v1.RouterService/Score\n"
            f'  {grpcurl} -plaintext -d \'{{"prompt": "What is the capital of France?"}}\' '
            f"{router} tierroute.router.v1.RouterService/Route\n"
            + "".join(
                f'  {grpcurl} -plaintext -d \'{{"messages": [{{"role": "user", "content": '
                f'"What is the capital of France?"}}]}}\' {t.address} '
                "tierroute.tier.v1.TierService/Generate\n"
                for t in cfg.tiers[:1]
            )
            + "Ctrl-C stops everything.",
            flush=True,
        )
        while not stop:
            for s in procs:
                if s.process is not None and s.process.poll() is not None:
                    print(f"{s.name} exited with code {s.process.returncode}", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    except Interrupted:
        print("interrupted while starting: stopping", file=sys.stderr)
    except RuntimeError as exc:
        print(f"tierroute: {exc}", file=sys.stderr)
        stop_all(procs, grace)
        return 1
    stop_all(procs, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
