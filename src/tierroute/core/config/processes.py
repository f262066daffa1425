"""The configuration of the processes around the tiers: the validator (`validator:`), logging and
tracing (`monitoring:`), the suite runner (`suite:`) and TLS on every hop (`tls:`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from tierroute.core.config.base import Strict


class ValidatorConfig(Strict):
    # Where the validator listens. Port 0 picks a free port.
    listen: str = "127.0.0.1:50071"
    # Where the router reaches the validator. Empty: the `listen` address.
    address: str = ""
    # host:port of the Prometheus `/metrics` endpoint (plaintext, or HTTPS with `tls`). Empty:
    # none. Port 0: any free port (logged).
    metrics_listen: str = ""
    # Seconds in-flight requests get to finish on SIGTERM.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # Most Validate calls in flight at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_requests: int = Field(default=1024, ge=1)

    def dial(self) -> str:
        """Where the router reaches the validator."""
        return self.address or self.listen


class MonitoringConfig(Strict):
    # Python log level of every service.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # OTLP/gRPC endpoint for traces, for example "127.0.0.1:4317". Empty: tracing off.
    otlp_endpoint: str = ""


class SuiteConfig(Strict):
    """The suite runner (`make run`): how it supervises the services it starts."""

    # Where the runner serves grpc.health.v1 for the suite: "" is SERVING while every service
    # is, and each service has its own entry ("router", "validator", "tier:<name>"). Empty: off.
    health_listen: str = "127.0.0.1:50050"
    # Seconds before a service that exited is started again; doubled after each restart that
    # did not stay up `stable_seconds`, up to the maximum.
    restart_backoff_seconds: float = Field(default=1.0, gt=0)
    restart_backoff_max_seconds: float = Field(default=60.0, gt=0)
    stable_seconds: float = Field(default=60.0, gt=0)
    # A service that was SERVING and then fails its health check (no answer, or NOT_SERVING,
    # as a tier whose engine died reports) for this long is restarted. 0: never.
    unhealthy_restart_seconds: float = Field(default=30.0, ge=0)
    # Seconds a starting service gets to report SERVING (an engine load) before it is
    # restarted, or, at the suite's first start, before the suite gives up.
    start_timeout_seconds: float = Field(default=300.0, gt=0)


class TlsConfig(Strict):
    """TLS on every gRPC port and the HTTP front; mutual TLS between the router (and the suite
    runner) and the tiers and validator. `make certs` writes a development CA and certificates.
    Off: plaintext, for the embedded local setup on loopback only."""

    # TLS on every port (the files below), or plaintext.
    enabled: bool = False
    # The CA that signed the services' certificates: callers verify servers with it; the
    # tiers and the validator verify the router's client certificate with it.
    ca: Path | None = None
    # Every service's certificate and key (PEM); its names must cover the addresses dialled.
    cert: Path | None = None
    key: Path | None = None
    # The router's (and the suite runner's) client certificate toward the tiers and validator.
    client_cert: Path | None = None
    client_key: Path | None = None
    # The tiers and the validator accept only clients with a certificate signed by `ca`.
    mutual: bool = True

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if self.enabled:
            needed = ["ca", "cert", "key"] + (["client_cert", "client_key"] if self.mutual else [])
            missing = [k for k in needed if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"tls.enabled needs {', '.join('tls.' + k for k in missing)} "
                    "(`make certs` writes a development set into certs/)"
                )
        return self
