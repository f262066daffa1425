"""The metrics store against the real things: SQLite and Debian's redis-server. Both stores
keep the same figures for the same writes; routers sharing a Redis see each other's
measurements; Redis stopped mid-run leaves routing on its figures and loses nothing; a Redis
that cannot be used stops the router at start with what to do."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.redis import RedisServer
from tests.helpers.services import router_config, started
from tierroute.core.config import ConfigError
from tierroute.router.service import SERVICE_NAME, STORE_HEALTH, RouterService, host
from tierroute.router.tiers.measured import ERROR_RATE, TTFT_MS, Measurements
from tierroute.router.tiers.store import (
    REDIS_AFFINITY,
    REDIS_KEY,
    Figure,
    Key,
    RedisStore,
    SqliteStore,
    StoreError,
)

HALF_LIFE = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_sqlite_and_redis_keep_the_same_figures_for_the_same_writes(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    rng = random.Random(13)
    stores = [SqliteStore(tmp_path / "metrics.sqlite"), RedisStore(fresh_redis.url)]
    keys: list[Key] = [
        (tier, category, metric)
        for tier in ("small", "large")
        for category in ("", "math")
        for metric in (TTFT_MS, ERROR_RATE)
    ]
    now = 1_000_000.0
    kept: list[dict[Key, Figure]] = [{}, {}]
    for _ in range(40):
        now += rng.uniform(0, 60)
        batch = {
            key: Figure(rng.uniform(0, 2000), rng.uniform(0.5, 20), now - rng.uniform(0, 5))
            for key in rng.sample(keys, rng.randint(0, len(keys)))
        }
        kept = [store.exchange(batch, HALF_LIFE) for store in stores]
    sqlite_kept, redis_kept = kept
    assert set(sqlite_kept) == set(redis_kept) == set(keys)
    for key in keys:
        a, b = sqlite_kept[key], redis_kept[key]
        assert b.value == pytest.approx(a.value, rel=1e-12)
        assert b.weight == pytest.approx(a.weight, rel=1e-12)
        assert b.at == a.at
    for store in stores:
        store.close()


def test_routers_sharing_a_redis_see_each_others_measurements(fresh_redis: RedisServer) -> None:
    a = Measurements(HALF_LIFE, RedisStore(fresh_redis.url))
    b = Measurements(HALF_LIFE, RedisStore(fresh_redis.url))
    a.start()
    b.start()
    try:
        a.observe("small", "math", TTFT_MS, 120.0)
        b.observe("large", "", TTFT_MS, 480.0)
        a.sync()
        b.sync()
        a.sync()
        assert b.figure("small", TTFT_MS) == pytest.approx(120.0)
        assert a.figure("large", TTFT_MS) == pytest.approx(480.0)
        assert (("small", "math", TTFT_MS)) in b.snapshot()
    finally:
        a.close()
        b.close()


def test_redis_stopped_mid_run_leaves_routing_on_its_figures_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path).start()
    m = Measurements(HALF_LIFE, RedisStore(server.url, timeout=1.0))
    try:
        m.start()
        m.observe("small", "", ERROR_RATE, 0.0)
        m.sync()
        server.stop()
        with caplog.at_level(logging.WARNING):
            m.observe("small", "", ERROR_RATE, 1.0)
            m.sync()
            m.observe("small", "", ERROR_RATE, 1.0)
            m.sync()
        assert m.store_failing
        assert m.figure("small", ERROR_RATE) == pytest.approx(2 / 3, rel=1e-3)
        down = [r.getMessage() for r in caplog.records if "metrics store" in r.getMessage()]
        assert len(down) == 1 and "routing goes on with the figures it last gave" in down[0]

        server.start()  # what it held before is back (append-only file)
        with caplog.at_level(logging.WARNING):
            m.sync()
        assert not m.store_failing
        assert any("is back after" in r.getMessage() for r in caplog.records)
        kept = RedisStore(server.url).exchange({}, HALF_LIFE)[("small", "", ERROR_RATE)]
        assert kept.weight == pytest.approx(3.0, rel=1e-3)
        assert kept.value == pytest.approx(2 / 3, rel=1e-3)
    finally:
        m.close()
        server.stop()


def test_a_redis_that_cannot_be_reached_at_start_stops_the_router_saying_what_to_do(
    tmp_path: Path,
) -> None:
    gone = f"unix://{tmp_path / 'nothing.sock'}"
    with pytest.raises(StoreError, match=r"cannot reach Redis .*start it, or point"):
        RedisStore(gone)
    with pytest.raises(StoreError) as error:
        RedisStore("redis://:s3cret@127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    assert "s3cret" not in str(error.value)
    assert str(error.value).startswith("redis://***@127.0.0.1:1/0: cannot reach Redis")

    cfg = router_config(metrics_store=gone)
    with pytest.raises(ConfigError, match=r"router\.metrics_store: .*cannot reach Redis"):
        RouterService(cfg)


def test_a_redis_key_holding_something_else_is_refused(fresh_redis: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    client.set(REDIS_KEY, "someone else's")
    client.close()
    with pytest.raises(StoreError, match="holds a string, not tierroute's metrics"):
        RedisStore(fresh_redis.url)


async def test_the_router_s_health_tells_when_its_store_fails_and_when_it_is_back(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    # Syncs only when the test asks (an hour between the sync thread's own).
    cfg = router_config(metrics_store=server.url, metrics_sync_seconds=3600)
    router, address = await started(host(cfg))
    measurements = router.service.measurements  # type: ignore[attr-defined]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=STORE_HEALTH))
            statuses = aiter(watch)

            async def next_status() -> int:
                return (await asyncio.wait_for(anext(statuses), 30)).status

            assert await next_status() == SERVING
            server.stop()
            await asyncio.to_thread(measurements.sync)
            assert await next_status() == NOT_SERVING
            # The router itself still serves: it routes on the figures it has.
            check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert check.status == SERVING
            server.start()
            await asyncio.to_thread(measurements.sync)
            assert await next_status() == SERVING
            watch.cancel()
    finally:
        await router.stop(0)
        server.stop()


def test_redis_holds_a_conversation_for_its_ttl(fresh_redis: RedisServer) -> None:
    store = RedisStore(fresh_redis.url)
    assert store.affinity("ab" * 32) is None
    store.hold("ab" * 32, "large", 60.0)
    assert store.affinity("ab" * 32) == "large"
    ttl_ms = redis.Redis.from_url(fresh_redis.url).pttl(REDIS_AFFINITY + "ab" * 32)
    assert 0 < ttl_ms <= 60_000
