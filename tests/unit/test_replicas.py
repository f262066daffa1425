"""A tier's replicas in the pool: fewest in flight first, outlier ejection with a growing
cooling-off period, and a replica's return. (A replica killed under real load is in
tests/integration/router/test_replicas.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers.clock import Clock
from tierroute.core.config import ConfigError, config_from_dict
from tierroute.router.tiers.pool import Replica, TierPool


@pytest_asyncio.fixture
async def pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TierPool, Clock]]:
    # Nothing listens on these addresses: reachability is not what these tests are about.
    monkeypatch.setattr(Replica, "reachable", lambda self: True)
    cfg = config_from_dict(
        {
            "tiers": [
                {"name": "small", "address": "127.0.0.1:1", "model": "m"},
                {
                    "name": "large",
                    "address": "127.0.0.1:2",
                    "replicas": ["127.0.0.1:3", "127.0.0.1:4"],
                    "model": "m",
                },
            ],
            "circuit_breaker": {
                "replica_ejection_failures": 2,
                "replica_ejection_seconds": 10,
                "replica_ejection_max_seconds": 25,
            },
        }
    )
    clock = Clock(100.0)
    p = TierPool(cfg, clock)
    yield p, clock
    await p.close()


async def test_a_call_goes_to_the_replica_with_the_fewest_in_flight(
    pool: tuple[TierPool, Clock],
) -> None:
    p, _ = pool
    a, b, c = p.replicas["large"]
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert p.pick("large") is b
    a.reachable = lambda: True  # type: ignore[method-assign]
    b.reachable = lambda: False  # type: ignore[method-assign]
    assert p.pick("large") is c  # a reachable replica before one that is not
    b.reachable = lambda: True  # type: ignore[method-assign]
    assert p.pick("large", tried=[b]) is c
    assert p.pick("large", tried=[a, b, c]) is None


async def test_a_replica_failing_in_a_row_is_ejected_for_longer_each_time_until_it_succeeds(
    pool: tuple[TierPool, Clock],
) -> None:
    p, clock = pool
    a, b, c = p.replicas["large"]
    p.replica_result("large", a, False)
    assert p.pick("large") is a  # one failure: still in
    p.replica_result("large", a, False)
    assert a.ejected_until == clock.now + 10
    assert p.pick("large") is b and p.pick("large", tried=[b]) is c
    clock.now += 10  # back, on probation: its next failure ejects it again, for longer
    assert p.pick("large") is a
    p.replica_result("large", a, False)
    p.replica_result("large", a, False)
    assert a.ejected_until == clock.now + 20
    clock.now += 20
    p.replica_result("large", a, False)
    p.replica_result("large", a, False)
    assert a.ejected_until == clock.now + 25  # capped
    clock.now += 25
    p.replica_result("large", a, True)  # a success clears its record
    p.replica_result("large", a, False)
    p.replica_result("large", a, False)
    assert a.ejected_until == clock.now + 10


async def test_a_tier_with_one_address_is_never_ejected_its_breaker_decides(
    pool: tuple[TierPool, Clock],
) -> None:
    p, _ = pool
    (only,) = p.replicas["small"]
    for _ in range(5):
        p.replica_result("small", only, False)
    assert p.pick("small") is only


def test_a_replica_listed_twice_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"each replica is dialled once; repeated: 127\.0\.0\.1:2"
    ):
        config_from_dict(
            {
                "tiers": [
                    {
                        "name": "large",
                        "address": "127.0.0.1:2",
                        "replicas": ["127.0.0.1:2"],
                        "model": "m",
                    }
                ]
            }
        )
