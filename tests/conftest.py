"""Shared fixtures: the real services, started once per session. Helpers live in tests/helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.helpers.otlp import OTLPReceiver
from tests.helpers.redis import RedisServer
from tests.helpers.services import (
    DEFAULT_CONFIG,
    PROMPTS,
    SMOLLM_DIR,
    ServiceProcess,
    start_service,
    start_tier,
    tracing_env,
)


@pytest.fixture(scope="session")
def prompts() -> dict[str, list[str]]:
    return PROMPTS


@pytest.fixture(scope="session")
def large_tier(
    tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OTLPReceiver
) -> Iterator[ServiceProcess]:
    """The embedded default's large tier (the same small model on CPU), on a free port."""
    svc = start_tier(
        tmp_path_factory.mktemp("tier") / "large.log", tier="large", env=tracing_env(otlp_receiver)
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def validator_process(
    tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OTLPReceiver
) -> Iterator[ServiceProcess]:
    svc = start_service(
        ["tierroute.validator", "--config", str(DEFAULT_CONFIG), "--listen", "127.0.0.1:0"],
        tmp_path_factory.mktemp("validator") / "validator.log",
        env=tracing_env(otlp_receiver),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A real OTLP/gRPC trace receiver that every service started by the tests exports to."""
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def small_tier(
    tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OTLPReceiver
) -> Iterator[ServiceProcess]:
    """The embedded default's small tier on a free port, vLLM's own tracing on too."""
    if not (SMOLLM_DIR / "model.safetensors").is_file():
        raise pytest.UsageError(f"{SMOLLM_DIR} is missing: run `make models`")
    log = tmp_path_factory.mktemp("tier") / "small.log"
    svc = start_tier(
        log, "--otlp-traces-endpoint", otlp_receiver.endpoint, env=tracing_env(otlp_receiver)
    )
    yield svc
    assert svc.stop() == 0, f"tier did not stop cleanly:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session (tests that stop it start their own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, emptied."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server
