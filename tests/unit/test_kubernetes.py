"""The Kubernetes manifests (deploy/kubernetes) against the Kubernetes schemas, with the
`kubernetes-validate` package, strictly; and the suite config they carry is one tierroute
loads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tierroute.core.config import config_from_dict

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
VERSION = "1.34"


def documents() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = next(d for d in documents() if d["kind"] == "Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_pieces_of_the_scale_out_picture_are_there() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    for name in ("router", "tier-small", "tier-large", "validator", "redis"):
        assert ("Deployment", f"tierroute-{name}") in kinds
        assert ("Service", f"tierroute-{name}") in kinds
    assert ("HorizontalPodAutoscaler", "tierroute-router") in kinds
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for d in documents():
        if d["kind"] != "Deployment" or d["metadata"]["name"] == "tierroute-redis":
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][0] in scripts
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            # The image's own probe (tierroute probe), over the same mutual TLS as the router
            command = container[probe]["exec"]["command"]
            assert command[0] == "tierroute" and "probe" in command
            assert "--tls-cert=/etc/tierroute/tls/client.pem" in command
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Containerfile's user
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        if d["metadata"]["name"].startswith("tierroute-tier-"):
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_only_the_router_reaches_the_tiers_the_validator_and_redis() -> None:
    policies = [d for d in documents() if d["kind"] == "NetworkPolicy"]
    backends = next(p for p in policies if p["metadata"]["name"].endswith("router-only"))
    chosen = backends["spec"]["podSelector"]["matchExpressions"][0]["values"]
    components = {
        d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        for d in documents()
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "tierroute-router"
    }
    assert components == set(chosen)  # every backend Deployment is behind the policy
    grpc_rule, metrics_rule = backends["spec"]["ingress"]
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tierroute-router"}}}
    ]
    assert {p["port"] for p in metrics_rule["ports"]} == {"metrics"}


def test_the_config_map_holds_a_config_tierroute_loads() -> None:
    cm = next(d for d in documents() if d["kind"] == "ConfigMap")
    cfg = config_from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.router.metrics_store == "redis://tierroute-redis:6379/0"
    assert cfg.tls.enabled and cfg.tls.mutual
    assert [t.address for t in cfg.tiers] == [
        "tierroute-tier-small:50061",
        "tierroute-tier-large:50062",
    ]


def test_the_upstream_overlay_makes_the_large_tier_an_in_cluster_vllm_service() -> None:
    docs = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/upstream/config.yaml").read_text())
        if d
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == "tierroute-config"  # it replaces the base's
    cfg = config_from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    large = cfg.tiers[-1]
    assert large.kind == "openai" and large.base_url.endswith(".svc.cluster.local:8000/v1")
    assert large.api_key_file is not None and "api-key" in str(large.api_key_file)
    assert any(d["kind"] == "Secret" for d in docs)
