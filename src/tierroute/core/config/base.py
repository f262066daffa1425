"""What every configuration section shares: strict models (an unknown key is an error that
names it) and the error a bad configuration raises."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    model_validator,
)

# URL schemes of a Redis metrics store (router.metrics_store).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

logger = logging.getLogger("tierroute.core.config")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the bad key and what to fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Old key -> new key: still read, with a warning.
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _rename(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed:
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old} is the old name of {new}: set only {new}")
                logger.warning("config key %s is now called %s: please rename it", old, new)
                data[new] = data.pop(old)
        return data
