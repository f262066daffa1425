"""The suite's configuration: one YAML file, typed and validated, with environment overrides.

Environment variables override single keys: `TIERROUTE__ROUTER__CACHE_TTL_SECONDS=60` sets
`router.cache_ttl_seconds`, `TIERROUTE__TIERS__0__ADDRESS=10.0.0.5:50061` sets the first tier's
address. Keys are case-insensitive except below `env` and `engine_args`, whose keys are kept as
written. Values are parsed as YAML scalars (`true`, `4.5`, `null`), or kept as text where that
fails, and always kept as text below `env`. Relative paths in the file are resolved against the
file's folder.

Renamed keys are still read under their old names, with a warning that names the new one.
Which process reads what: the router reads `router`, `tiers` (all of a tier's keys but
`listen`, `engine_args`, `env`), `escalation`, `circuit_breaker` and `validator.address`; a tier
process reads its own entry of `tiers`; the validator reads `validator`; all read `monitoring`.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, model_validator

from tierroute.core.config.base import REDIS_SCHEMES, ConfigError, Strict
from tierroute.core.config.processes import (
    MonitoringConfig,
    SuiteConfig,
    TlsConfig,
    ValidatorConfig,
)
from tierroute.core.config.router import ClientLimitsConfig, RouterConfig
from tierroute.core.config.sections import BreakerConfig, EscalationConfig, ShadowConfig, TierConfig

__all__ = [
    "ENV_PREFIX",
    "REDIS_SCHEMES",
    "BreakerConfig",
    "ClientLimitsConfig",
    "Config",
    "ConfigError",
    "EscalationConfig",
    "MonitoringConfig",
    "RouterConfig",
    "ShadowConfig",
    "SuiteConfig",
    "TierConfig",
    "TlsConfig",
    "ValidatorConfig",
    "config_from_dict",
    "load_config",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "TIERROUTE__"
_VERBATIM = {"env", "engine_args"}


class Config(Strict):
    router: RouterConfig = RouterConfig()
    tiers: list[TierConfig] = Field(default_factory=list)
    escalation: EscalationConfig = EscalationConfig()
    shadow: ShadowConfig = ShadowConfig()
    circuit_breaker: BreakerConfig = BreakerConfig()
    validator: ValidatorConfig = ValidatorConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    suite: SuiteConfig = SuiteConfig()
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check_tiers(self, info: ValidationInfo) -> Config:
        names = [t.name for t in self.tiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(duplicates)}")
        if info.context and info.context.get("part") in ("tier", "validator"):
            return self  # the rest is the router's business
        if self.router.scorer == "learned" and self.router.artifact is None:
            raise ValueError("router.scorer learned needs router.artifact (a calibrated folder)")
        if self.router.batch_max_wait_ms >= self.router.score_budget_ms:
            raise ValueError(
                f"router.batch_max_wait_ms ({self.router.batch_max_wait_ms:g}) must be below "
                f"router.score_budget_ms ({self.router.score_budget_ms:g}), or every decision "
                "that is not cached would fall back to the default tier"
            )
        if self.router.default_tier and self.router.default_tier not in names:
            raise ValueError(
                f"router.default_tier {self.router.default_tier!r} is not a tier "
                f"(tiers: {', '.join(names) or 'none'})"
            )
        if self.tiers and self.tiers[-1].hedge_margin is not None:
            raise ValueError(
                f"tiers[{len(self.tiers) - 1}] ({self.tiers[-1].name}): hedge_margin asks the "
                "next larger tier in parallel, and the last tier has none; remove it"
            )
        if self.tiers and self.tiers[-1].max_score not in (None, 10.0):
            raise ValueError(
                f"tiers[{len(self.tiers) - 1}] ({self.tiers[-1].name}): the last tier serves "
                "every score up to 10; remove its max_score"
            )
        bounds = self.tier_bounds()
        if any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds)):
            raise ValueError(
                "tiers must be listed smallest first with strictly increasing max_score; got "
                + ", ".join(f"{t.name}<={b:g}" for t, b in zip(self.tiers, bounds, strict=True))
            )
        return self

    def tier_bounds(self) -> list[float]:
        """The highest score each tier serves, in tier order; the last tier always serves 10."""
        bounds: list[float] = []
        for i, tier in enumerate(self.tiers):
            if i == len(self.tiers) - 1:
                bounds.append(10.0)
            elif tier.max_score is not None:
                bounds.append(tier.max_score)
            elif i == 0:
                bounds.append(self.router.complexity_threshold)
            else:
                raise ValueError(f"tiers[{i}] ({tier.name}): a middle tier must set max_score")
        return bounds

    def fallback_tier(self) -> str:
        """The tier a request goes to when scoring fails: `router.default_tier`, or the last."""
        return self.router.default_tier or self.tiers[-1].name

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def output_tokens_limit(self) -> int | None:
        """The most tokens a request may ask for: router.max_output_tokens, and the largest
        tier's context window when every tier's is configured (the smaller of the two)."""
        limits = [self.router.max_output_tokens] if self.router.max_output_tokens else []
        contexts = [int(t.engine_args.get("max_model_len") or 0) for t in self.tiers]
        if contexts and all(contexts):
            limits.append(max(contexts))
        return min(limits) if limits else None

    def routing_version(self) -> str:
        """A hash of every setting that maps a score to a tier (part of the cache key)."""
        doc = {"bounds": self.tier_bounds(), "tiers": [t.name for t in self.tiers]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        raw = key[len(ENV_PREFIX) :].split("__")
        if not all(raw):
            raise ConfigError(f"environment variable {key}: empty key segment")
        # Keys below env/engine_args are the user's own (environment variable names, vLLM
        # argument names): keep them as written.
        path = [
            part if i > 0 and raw[i - 1].lower() in _VERBATIM else part.lower()
            for i, part in enumerate(raw)
        ]
        value: Any = environ[key]
        if len(path) < 2 or path[-2] != "env":
            try:
                value = yaml.safe_load(value) if value else ""
            except yaml.YAMLError:
                pass  # not a YAML scalar (an IPv6 address, say): keep the text
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"environment variable {key}: no list item {where}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"environment variable {key}: {where} is not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"environment variable {key}: no list item {'.'.join(path)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _describe(err: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_keys(e["loc"][:-1])
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            suffix = (
                f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(known)})"
            )
            lines.append(f"{where}: unknown key{suffix}")
        else:
            lines.append(f"{where}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidate = inner[0] if inner else annotation
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            model = candidate
        else:
            return []
    return sorted(model.model_fields)


def _resolve_store(location: str | None, base: Path) -> str | None:
    """A metrics store's path relative to the config file; a URL as it is."""
    if location is None or "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    router = cfg.router.model_copy(
        update={
            "model": resolve(cfg.router.model),
            "anchors_file": resolve(cfg.router.anchors_file),
            "artifact": resolve(cfg.router.artifact),
            "quality_artifact": resolve(cfg.router.quality_artifact),
            "degraded_scorer": resolve(cfg.router.degraded_scorer),
            "auth_tokens_file": resolve(cfg.router.auth_tokens_file),
            "operating_point_state": resolve(cfg.router.operating_point_state),
            "routing_log": resolve(cfg.router.routing_log),
            "bench_sample": resolve(cfg.router.bench_sample),
            "metrics_store": _resolve_store(cfg.router.metrics_store, base),
        }
    )
    tiers = []
    for t in cfg.tiers:
        local = base / t.model
        tiers.append(t.model_copy(update={"model": str(local.resolve())}) if local.exists() else t)
    tls = cfg.tls.model_copy(
        update={
            k: resolve(getattr(cfg.tls, k))
            for k in ("ca", "cert", "key", "client_cert", "client_key")
        }
    )
    return cfg.model_copy(update={"router": router, "tiers": tiers, "tls": tls})


# The sections each process reads; the others are left out before validation, so a mistake in
# the router's section does not stop a tier from starting. The router reads everything.
PARTS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "router": None,
    "tier": ("tiers", "monitoring", "tls"),
    "validator": ("validator", "monitoring", "tls"),
}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    part: str = "all",
) -> Config:
    """Load the YAML file (if any), apply environment overrides and validate `part`: what one
    process reads (PARTS), or everything."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections")
        data = loaded
        base = path.resolve().parent
    data = _env_overrides(data, environ)
    sections = PARTS[part]
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    try:
        cfg = Config.model_validate(data, context={"part": part})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return _resolve_paths(cfg, base)


def config_from_dict(data: dict[str, Any], base: Path | None = None) -> Config:
    """Validate a configuration given as a dict (tests, embedding), paths relative to `base`."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None
    return _resolve_paths(cfg, base or Path.cwd())
