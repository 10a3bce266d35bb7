"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (offline), and
their settings agree with what `tandem cloud` does (drain timing, probes, ports)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.37.0"


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_is_valid(name):
    kubernetes_validate.validate(manifests()[name], K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused():
    """The validation can fail: a probe port of the wrong type, an unknown field."""
    deployment = copy.deepcopy(manifests()["Deployment/tandem-cloud"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["port"] = "grpc"  # grpc probes take a number only
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(manifests()["Deployment/tandem-cloud"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_deployment_matches_the_drain():
    from cloud.config import CloudConfig

    docs = manifests()
    pod = docs["Deployment/tandem-cloud"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    drain_s = float(args[args.index("--drain-timeout") + 1])
    # Killed only after the drain and the grace for calls still open.
    assert pod["terminationGracePeriodSeconds"] > drain_s + CloudConfig().grace_s
    assert container["readinessProbe"]["grpc"]["service"] == "tandem.v1.Tandem"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain_s  # a drain is not a death
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    port = container["ports"][0]["containerPort"]
    assert all(probe["grpc"]["port"] == port for probe in (container["readinessProbe"], liveness))
    headless = docs["Service/tandem-cloud-headless"]["spec"]
    assert headless["clusterIP"] == "None"
    pdb = docs["PodDisruptionBudget/tandem-cloud"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels(docs).items()


def pod_labels(docs) -> dict:
    return docs["Deployment/tandem-cloud"]["spec"]["template"]["metadata"]["labels"]
