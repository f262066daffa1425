"""The suite runner's supervision, on stand-in service processes (tests/helpers/fake_service.py:
real processes with real gRPC health). The real suite under failure is the chaos suite's
(tests/integration/test_chaos.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.helpers.tools import grpcurl, run
from tierroute.core.config import config_from_dict
from tierroute.tools.suite import Service, StartFailed, Supervisor, health_server

FAKE = Path(__file__).resolve().parents[1] / "helpers" / "fake_service.py"
# Generous: these wait for processes to start and stop, never for a time to pass.
WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake(name: str, kind: str, record: Path, *extra: str) -> Service:
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, str(FAKE), "--listen", address, "--name", name, "--record", str(record)]
    return Service(name, kind, address, [*argv, *extra], grace=10.0)


def supervisor(procs: list[Service], **suite: Any) -> Supervisor:
    cfg = config_from_dict(
        {"suite": {"health_listen": "", "restart_backoff_seconds": 0.1, **suite}}
    )
    return Supervisor(cfg, procs)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - the supervisor's state has no event
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Path]]:
    record = tmp_path / "stopped"
    procs = [
        fake("tier:a", "tier", record),
        fake("tier:b", "tier", record),
        fake("validator", "validator", record),
        fake("router", "router", record),
    ]
    sup = supervisor(procs, stable_seconds=600)
    keepers = [asyncio.create_task(sup.keep(s)) for s in procs]
    async with asyncio.timeout(WAIT_S):
        await sup.ready.wait()
    yield sup, record
    sup.stopping.set()
    await asyncio.gather(*keepers)
    await sup.stop_all()


def by_name(sup: Supervisor, name: str) -> Service:
    return next(s for s in sup.procs if s.name == name)


async def test_a_service_that_dies_is_restarted_with_backoff_and_the_others_keep_running(
    running: tuple[Supervisor, Path], caplog: pytest.LogCaptureFixture
) -> None:
    sup, _ = running
    caplog.set_level(logging.INFO, "tierroute.suite")
    validator = by_name(sup, "validator")
    others = {s.name: s.process.pid for s in sup.procs if s is not validator and s.process}
    for restart in (1, 2, 3):
        assert validator.process is not None
        os.kill(validator.process.pid, signal.SIGKILL)
        await until(lambda r=restart: validator.restarts == r and validator.serving_since)  # type: ignore[misc]
    restarts = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    # Never stable in between: the backoff doubles.
    assert [m.split(" in ")[1].split(" s ")[0] for m in restarts] == ["0.1", "0.2", "0.4"]
    assert restarts[0].startswith("validator was killed by SIGKILL: restarting it in 0.1 s")
    assert "the other services keep serving" in restarts[0]
    assert {s.name: s.process.pid for s in sup.procs if s is not validator and s.process} == others
    await until(lambda: sup.statuses["validator"] == sup.statuses[""] == 1)  # SERVING again


async def test_a_service_not_serving_for_too_long_is_restarted(tmp_path: Path) -> None:
    record = tmp_path / "stopped"
    tier = fake("tier:a", "tier", record)
    sup = supervisor([tier], unhealthy_restart_seconds=0.5)
    keeper = asyncio.create_task(sup.keep(tier))
    try:
        await until(lambda: tier.serving_since is not None)
        assert tier.process is not None
        first = tier.process.pid
        os.kill(first, signal.SIGUSR1)  # its engine died: NOT_SERVING from now on
        await until(lambda: tier.restarts == 1 and tier.serving_since is not None)
        assert tier.process.pid != first
        assert record.read_text() == "tier:a\n", "it was stopped with SIGTERM, and drained"
    finally:
        sup.stopping.set()
        await keeper
        await sup.stop_all()


async def test_stopping_drains_the_router_first_and_the_tiers_last(
    running: tuple[Supervisor, Path],
) -> None:
    sup, record = running
    sup.stopping.set()
    await sup.stop_all()
    stopped = record.read_text().split()
    assert stopped[:2] == ["router", "validator"]
    assert sorted(stopped[2:]) == ["tier:a", "tier:b"]
    # Each one drained (it wrote its name on SIGTERM, then exits 0) and has exited. (Not its
    # exit code: on a loaded machine asyncio's thread-per-child watcher has reported a child
    # another waitpid reaped first as 255, "Unknown child process", with no way to know more.)
    assert all(s.process is not None and s.process.returncode is not None for s in sup.procs)


async def test_a_service_that_cannot_start_stops_the_suite_with_its_reason(tmp_path: Path) -> None:
    record = tmp_path / "stopped"
    broken = fake("router", "router", record, "--fail")
    sup = supervisor([broken])
    with pytest.raises(StartFailed, match="router exited with code 3 before it was ever SERVING"):
        async with asyncio.timeout(WAIT_S):
            await sup.keep(broken)
    assert broken.restarts == 0


async def test_the_runner_s_health_port_answers_grpcurl_as_the_banner_shows_it() -> None:
    """The command the start-up banner and the README print works: grpcurl asks the server
    for its schema (reflection), then checks a service's health."""
    sup = supervisor([], health_listen="127.0.0.1:0")
    await sup.health.set("tier:small", 1)  # SERVING
    server, port = await health_server(sup.cfg, sup.health)
    try:
        address = f"127.0.0.1:{port}"
        code, out, err = await run(grpcurl(), "-plaintext", address, "list")
        assert code == 0, err
        assert "grpc.health.v1.Health" in out.split()
        code, out, err = await run(
            grpcurl(), "-plaintext", "-d", '{"service": "tier:small"}', address,
            "grpc.health.v1.Health/Check",
        )  # fmt: skip
        assert code == 0, err
        assert '"status": "SERVING"' in out
    finally:
        await server.stop(None)


def test_the_suite_starts_no_process_for_a_tier_an_openai_server_serves() -> None:
    from tierroute.tools.suite import services

    cfg = config_from_dict(
        {
            "tiers": [
                {"name": "small", "address": "127.0.0.1:50061", "model": "m"},
                {"name": "large", "kind": "openai", "base_url": "http://h:8000/v1", "model": "m"},
            ]
        }
    )
    names = [s.name for s in services(cfg, Path("configs/upstream.yaml"))]
    assert names == ["tier:small", "validator", "router"]
