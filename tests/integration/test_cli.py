"""The `tierroute` command line against a real router on loopback."""

from __future__ import annotations

import json

from tests.helpers.services import router_config
from tests.helpers.tools import cli
from tierroute.router.service import host


async def test_score_prints_the_decision_and_json_on_request() -> None:
    cfg = router_config()
    cfg.tiers[1] = cfg.tiers[1].model_copy(update={"price_per_1k_output_usd": 0.01})
    server = host(cfg)
    port = await server.start()
    await server.load()
    try:
        address = f"127.0.0.1:{port}"
        code, out, err = await cli("--address", address, "score", "What is the capital of France?")
        assert code == 0, err
        assert out.startswith("tier small  score ")
        code, out, err = await cli(
            "--address", address, "--json", "score", "Prove Fermat's little theorem."
        )
        assert code == 0, err
        decision = json.loads(out)
        assert decision["tier"] == "large" and decision["category"] == "math"
        code, out, err = await cli("--address", address, "score", "")
        assert code == 1 and "INVALID_ARGUMENT: empty prompt" in err
        # An SLO is passed on, and the reasons behind the decision are printed.
        code, out, err = await cli(
            "--address", address, "score", "Prove Fermat's little theorem.",
            "--max-cost-per-1k", "0.0",
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith("tier small ")
        assert "slo_cost_excluded:large, slo_fallback_highest_quality" in out
        code, out, err = await cli("--address", address, "score", "hi", "--max-ttft-ms", "-1")
        assert code == 1 and "INVALID_ARGUMENT: slo.max_ttft_ms is -1" in err
    finally:
        await server.stop(0)


async def test_a_suite_that_is_not_running_gets_a_clear_message() -> None:
    code, _, err = await cli("--address", "127.0.0.1:9", "score", "hi")
    assert code == 1
    assert "cannot reach the router at 127.0.0.1:9: is the suite running?" in err
