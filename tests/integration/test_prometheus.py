"""Prometheus metrics through a real Prometheus server (Debian's, installed by `make test`): a
router process in front of the real vLLM tiers and the validator, all three scraped; requests
routed; the counters read back through Prometheus's HTTP query API. The shipped alerting rules
pass `promtool check rules`, and every expression of the rules and the Grafana dashboard is
valid PromQL on this Prometheus."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from tests.helpers.budgets import CALL_TIMEOUT_SECONDS, generous
from tests.helpers.prometheus import PrometheusServer
from tests.helpers.services import EMBEDDER_DIR, ROOT, ServiceProcess, start_service
from tests.helpers.tools import cli
from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.router.route.log_reader import read_ledger
from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.router.v1 import router_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.tier

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tierroute.json"
LARGE_PRICES = (0.01, 0.03)  # USD per 1k input, output tokens


@pytest.fixture(scope="module")
def router(
    small_tier: ServiceProcess,
    large_tier: ServiceProcess,
    validator_process: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("metrics-router")
    tier = {"model": "smollm2", "max_tokens": 16, "temperature": 0.0,
            "price_per_1k_input_usd": 0.001, "price_per_1k_output_usd": 0.002}  # fmt: skip
    config = folder / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            generous(
                {
                    "router": {
                        "listen": "127.0.0.1:0",
                        "model": str(EMBEDDER_DIR),
                        "routing_log": str(folder / "routing-log.sqlite"),
                    },
                    "tiers": [
                        {
                            "name": "small",
                            "address": small_tier.address,
                            "validation": "logprob",
                            **tier,
                        },
                        {
                            "name": "large",
                            "address": large_tier.address,
                            **tier,
                            "price_per_1k_input_usd": LARGE_PRICES[0],
                            "price_per_1k_output_usd": LARGE_PRICES[1],
                        },
                    ],
                    "validator": {"address": validator_process.address},
                }
            )
        )
    )
    svc = start_service(["tierroute.router", "--config", str(config)], folder / "router.log")
    yield svc
    svc.stop()


@pytest_asyncio.fixture(scope="module")
async def prometheus(
    router: ServiceProcess,
    small_tier: ServiceProcess,
    validator_process: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[PrometheusServer]:
    targets = {
        "router": router.metrics_address,
        "tier": small_tier.metrics_address,
        "validator": validator_process.metrics_address,
    }
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), targets)
    await asyncio.to_thread(server.start)
    await server.wait_up(list(targets))
    yield server
    server.stop()


async def route(stub: pb_grpc.RouterServiceStub, prompt: str, force: str = "") -> pb.RouteSummary:
    request = pb.RouteRequest(
        prompt=prompt,
        force_tier=force,
        sampling=common_pb.SamplingParams(max_tokens=12),
    )
    summary = None
    async for event in stub.Route(request, timeout=CALL_TIMEOUT_SECONDS):
        if event.HasField("summary"):
            summary = event.summary
    assert summary is not None
    return summary


def total(result: list[dict[str, Any]]) -> float:
    return sum(float(r["value"][1]) for r in result)


async def test_counters_move_as_requests_are_routed_and_prometheus_reads_them(
    router: ServiceProcess, prometheus: PrometheusServer
) -> None:
    prompts = ["What is the capital of France?", "Say hi.", "What is 2 + 2?"]
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        summaries = [await route(stub, p) for p in prompts]
        summaries.append(await route(stub, "Name a colour.", force="large"))
    routed = len(summaries)

    # Prometheus scrapes every second: wait for the scrape that saw all of them.
    await prometheus.wait_for('sum(tierroute_routes_total{job="router"})', routed)

    by_tier = {
        r["metric"]["tier"]: float(r["value"][1])
        for r in await prometheus.query('sum by (tier) (tierroute_routes_total{code="OK"})')
    }
    expected: dict[str, float] = {}
    for s in summaries:
        expected[s.tier] = expected.get(s.tier, 0) + 1
    assert by_tier == expected
    forced = await prometheus.query('sum(tierroute_routing_decisions_total{reason="forced_tier"})')
    assert total(forced) == 1
    handled = await prometheus.query(
        'sum(grpc_server_handled_total{job="router",grpc_method="Route",grpc_code="OK"})'
    )
    assert total(handled) == routed
    # The ledger: the cost counters are the summaries' costs, to a millionth of a cent.
    cost = total(await prometheus.query('sum(tierroute_cost_usd_total{job="router"})'))
    assert cost == pytest.approx(sum(s.cost_usd for s in summaries), abs=1e-8)
    assert cost > 0
    # What the delivered answers would have cost on the large tier, from the configured prices.
    if_large = sum(
        (a.usage.prompt_tokens * LARGE_PRICES[0] + a.usage.completion_tokens * LARGE_PRICES[1])
        / 1000
        for s in summaries
        for a in s.attempts
        if a.delivered
    )
    large_cost = total(await prometheus.query("sum(tierroute_large_tier_cost_usd_total)"))
    assert large_cost == pytest.approx(if_large, abs=1e-8)
    ttft = await prometheus.query('sum(tierroute_time_to_first_token_seconds_count{job="router"})')
    assert total(ttft) >= routed
    scores = await prometheus.query("sum(tierroute_complexity_score_count)")
    assert total(scores) == routed - 1  # the forced one is not scored

    # The tier: its RPCs, and vLLM's own engine metrics in the same registry.
    generated = await prometheus.query(
        'sum(grpc_server_handled_total{job="tier",grpc_method="Generate"})'
    )
    assert total(generated) >= sum(1 for s in summaries if s.tier == "small")
    vllm = await prometheus.query('count({job="tier", __name__=~"vllm[:_].+"})')
    assert total(vllm) > 0, "vLLM's engine metrics are missing from the tier's /metrics"
    # The validator judged every small-tier answer the router asked it about.
    judged = sum(
        1
        for s in summaries
        for a in s.attempts
        if a.tier == "small" and a.validation != pb.VALIDATION_STATUS_UNSPECIFIED
    )
    verdicts = await prometheus.query("sum(tierroute_validator_verdicts_total)")
    assert total(verdicts) >= judged
    # and the router counted the tokens each deciding verdict judged, as in the summaries
    judged_tokens = await prometheus.query('sum(tierroute_judged_tokens_sum{job="router"})')
    assert total(judged_tokens) == sum(a.judged_tokens for s in summaries for a in s.attempts)
    assert (total(judged_tokens) > 0) == (judged > 0)
    breaker = await prometheus.query('tierroute_circuit_breaker_state{job="router",state="closed"}')
    assert {r["metric"]["tier"] for r in breaker} == {"small", "large"}
    assert all(float(r["value"][1]) == 1 for r in breaker)

    # The same ledger in the routing log, as `tierroute report` shows it, to the cent.
    log = router.log.parent / "routing-log.sqlite"
    async with asyncio.timeout(30):
        while len(read_ledger(log, 0)[0]) < routed:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.1)
    code, out, err = await cli("--json", "report", "--log", str(log), "--since", "1h")
    assert code == 0, err
    ledger = json.loads(out)
    assert ledger["requests"] == routed and ledger["answered"] == routed
    assert round(ledger["cost_usd"], 6) == round(sum(s.cost_usd for s in summaries), 6)
    assert round(ledger["large_tier_cost_usd"], 6) == round(if_large, 6)
    assert round(ledger["savings_usd"], 2) == round(if_large - cost, 2)
    assert set(ledger["by_client"]) == {"peer:127.0.0.1"}


async def test_every_rule_and_dashboard_expression_is_valid_promql(
    prometheus: PrometheusServer,
) -> None:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        await prometheus.query(expr)  # raises, with Prometheus's message, when invalid


def test_the_alerting_rules_pass_promtool_and_its_unit_tests() -> None:
    for command in (["check", "rules", RULES.name], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            ["promtool", *command], capture_output=True, text=True, timeout=60, cwd=RULES.parent
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_a_malformed_scrape_config_is_reported_as_such(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, {"router": "127.0.0.1:1"})
    server.config.write_text("scrape_configs:\n  - job_name: x\n    static_configs: {oops\n")
    with pytest.raises(RuntimeError, match="prometheus exited") as caught:
        server.start(timeout=30)
    assert "prometheus.yml" in str(caught.value)


async def test_an_unreachable_target_is_reported_with_its_error(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, {"nothing": "127.0.0.1:1"})
    await asyncio.to_thread(server.start)
    try:
        with pytest.raises(RuntimeError, match=r"nothing.*(refused|connect)"):
            await server.wait_up(["nothing"], seconds=15)
    finally:
        server.stop()
