"""The README's grpcurl commands work as written, from the checkout, against the real suite
(only the addresses change: the test's services listen on free ports)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers.budgets import make_config
from tests.helpers.services import EMBEDDER_DIR, ROOT, ServiceProcess, started
from tests.helpers.tools import run
from tierroute.router.service import host

pytestmark = pytest.mark.tier

DEFAULT_ADDRESSES = {"router": "127.0.0.1:50051", "tier": "127.0.0.1:50061"}


def readme_commands() -> list[str]:
    """Every command in the README's shell blocks that starts with .venv/bin/grpcurl, with its
    continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        joined = re.sub(r"'\{[^']*'", lambda m: m.group(0).replace("\n", " "), joined)
        commands += [
            ln.split("  #")[0] for ln in joined.splitlines() if ln.startswith(".venv/bin/grpcurl")
        ]
    return commands


@pytest_asyncio.fixture(scope="module")
async def addresses(
    small_tier: ServiceProcess, large_tier: ServiceProcess, validator_process: ServiceProcess
) -> AsyncIterator[dict[str, str]]:
    cfg = make_config(
        {
            "router": {"listen": "127.0.0.1:0", "model": str(EMBEDDER_DIR)},
            "tiers": [
                {"name": "small", "address": small_tier.address, "model": "m", "max_tokens": 32},
                {"name": "large", "address": large_tier.address, "model": "m", "max_tokens": 32},
            ],
            "validator": {"address": validator_process.address},
        }
    )
    router, address = await started(host(cfg))
    yield {"router": address, "tier": small_tier.address, "validator": validator_process.address}
    await router.stop(0)


def test_the_readme_shows_grpcurl_calls_for_every_service() -> None:
    commands = readme_commands()
    assert len(commands) >= 5
    for service in ("RouterService/Score", "RouterService/Route", "TierService/Generate",
                    "TierService/Describe", "ValidatorService/Validate"):  # fmt: skip
        assert any(service in c for c in commands), service


async def test_every_readme_grpcurl_command_works_as_written(addresses: dict[str, str]) -> None:
    defaults = {**DEFAULT_ADDRESSES, "validator": "127.0.0.1:50071"}
    for command in readme_commands():
        for name, default in defaults.items():
            command = command.replace(default, addresses[name])
        code, out, err = await run("bash", "-c", f"cd {ROOT} && {command}", timeout=300)
        assert code == 0, f"{command}\n{err}"
        assert out.strip(), command
