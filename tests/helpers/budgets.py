"""Budgets for test configs: every time limit a config can set, at one default that a loaded
machine cannot reach (an hour), so that no test's outcome depends on how busy the machine is.

Only a test whose subject is a budget sets a tight one, and it decides with an injected clock
(tests/helpers/clock.py) or an event, never with elapsed time. Every config a test builds goes
through `generous` (or `make_config` / `write_config`), which fills in the budgets the test
left unset and keeps the ones it set.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tierroute.core.config import Config, config_from_dict

# An hour: no test waits that long for anything, and no machine is that slow.
NEVER_MS = 3_600_000
NEVER_SECONDS = NEVER_MS / 1000
# The deadline of a test's own RPCs (Route, Score, Generate): long, but a hang still ends.
CALL_TIMEOUT_SECONDS = 900

BUDGETS: dict[str, dict[str, float]] = {
    "router": {"score_budget_ms": NEVER_MS, "http_timeout_seconds": NEVER_SECONDS},
    "escalation": {
        "first_tier_timeout_ms": NEVER_MS,
        "escalation_timeout_ms": NEVER_MS,
        "validate_timeout_ms": NEVER_MS,
        "first_token_timeout_floor_ms": NEVER_MS,
        "first_token_timeout_ceiling_ms": NEVER_MS,
        "queue_wait_ms": NEVER_MS,
    },
    "shadow": {"timeout_seconds": NEVER_SECONDS},
}


def generous(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` (a config as a dict) with every budget it leaves unset at the
    unreachable default."""
    out = copy.deepcopy(data)
    for section, budgets in BUDGETS.items():
        given = out.get(section) or {}
        out[section] = {**budgets, **given}
    return out


def make_config(data: dict[str, Any], base: Path | None = None) -> Config:
    """`config_from_dict` with the generous budgets."""
    return config_from_dict(generous(data), base)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write `data`, with the generous budgets, as a YAML config file for a service process."""
    path.write_text(yaml.safe_dump(generous(data)))
    return path
