"""A tier served by two replicas (two real vLLM processes of the same model): one is killed
while it has requests in flight, and every accepted request still ends in a complete answer;
the dead replica is ejected and the other serves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, SMOLLM_DIR, ServiceProcess, start_tier
from tests.helpers.services import started as started_host
from tests.integration.router.test_route import route
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.router.service import RouterService, host
from tierroute.router.tiers.pool import Replica

pytestmark = pytest.mark.tier


async def test_a_replica_killed_mid_run_costs_the_requests_on_it_only_a_retry(
    small_tier: ServiceProcess,
    large_tier: ServiceProcess,
    validator_process: ServiceProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doomed = start_tier(tmp_path / "doomed.log")
    cfg = {
        "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR)},
        "tiers": [
            {
                # Validated (answers held back until judged): nothing reaches the client before
                # the answer is whole, so a replica that dies mid-answer costs only a retry.
                "name": "small",
                "address": doomed.address,
                "replicas": [small_tier.address],
                "model": str(SMOLLM_DIR),
                "validation": "logprob",
                "max_tokens": 160,
                "temperature": 0.0,
            },
            {"name": "large", "address": large_tier.address, "model": str(SMOLLM_DIR)},
        ],
        "validator": {"address": validator_process.address},
        "circuit_breaker": {"replica_ejection_failures": 1, "replica_ejection_seconds": 600},
        "escalation": {},
    }
    server, address = await started_host(host(make_config(cfg)))
    try:
        service = server.service
        assert isinstance(service, RouterService)
        dying, survivor = service.pool.replicas["small"]
        assert dying.address == doomed.address
        sent_to_dying = asyncio.Event()
        pick = service.pool.pick

        def pick_and_tell(tier: str, tried: Collection[Replica] = ()) -> Replica | None:
            replica = pick(tier, tried)
            if replica is dying:
                sent_to_dying.set()
            return replica

        service.pool.pick = pick_and_tell  # type: ignore[method-assign]
        prompts = [f"Write a long story about a fox named Fox {i}." for i in range(6)]
        with caplog.at_level(logging.WARNING):
            calls = [
                asyncio.create_task(
                    route(
                        address,
                        prompt=p,
                        force_tier="small",
                        sampling=common_pb.SamplingParams(max_tokens=160),
                    )
                )
                for p in prompts
            ]
            # Fewest in flight first: the burst is spread over both replicas. Once a call has
            # gone to the doomed one, it is killed.
            await asyncio.wait_for(sent_to_dying.wait(), 120)
            assert dying.in_flight > 0
            doomed.process.kill()
            results = await asyncio.gather(*calls)
        for r in results:  # every request ends in a complete answer
            assert r.summary is not None and r.summary.tier in ("small", "large") and r.text
        retried = [m for m in caplog.messages if "retrying on another replica" in m]
        assert retried and all(doomed.address in m for m in retried)
        assert dying.ejected_until > time.monotonic() and dying.in_flight == 0
        assert survivor.ejected_until < time.monotonic() and survivor.in_flight == 0
        assert service.pool.breakers["small"].would_allow()  # the tier never counted as down
        # Afterwards the survivor serves alone: the ejected replica is not even tried.
        with caplog.at_level(logging.WARNING):
            after = await route(address, prompt="Say hello.", force_tier="small")
        assert after.summary is not None and after.text
        assert [m for m in caplog.messages if "retrying on another replica" in m] == retried
    finally:
        await server.stop(0)
        doomed.stop()
