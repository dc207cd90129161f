"""Kubernetes manifests, the Operator resource and the Helm values, validated with real schemas; each validator is
also shown to reject a broken copy."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collector.support import COLLECTOR, SCHEMAS, collector_tool, load_yaml, load_yaml_documents, require_tool

K8S = COLLECTOR / "k8s"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "opentelemetrycollector.yaml")
OPERATOR_RESOURCE = K8S / "operator" / "opentelemetrycollector.yaml"
HELM_VALUES = COLLECTOR / "gateway" / "helm-values.yaml"
# Native sidecars are on by default from 1.29; 1.37 is the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib:0.159.0"


def _kubernetes_validate(paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("kubernetes-validate")
    return subprocess.run(
        [tool, "--strict", "--kubernetes-version", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_strict_kubernetes_validation(version: str) -> None:
    """Every plain manifest validates strictly (unknown fields rejected) against the Kubernetes API schema."""
    result = _kubernetes_validate(MANIFESTS, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(MANIFESTS), result.stdout


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("\n          restartPolicy: Always", "\n          restartPolcy: Always"),
        ("\n  replicas: 1", "\n  replicas: one"),
        ("\n                  fieldPath: metadata.name", "\n                  fieldPath: 42"),
    ],
    ids=["misspelt field", "string for an integer", "integer for a string"],
)
def test_kubernetes_validation_rejects_a_broken_manifest(tmp_path: Path, mutation: str, message: str) -> None:
    """A misspelt field, a wrong type or a wrong value type in the plain Deployment fails kubernetes-validate."""
    source = (K8S / "plain" / "deployment.yaml").read_text()
    assert mutation in source
    broken = tmp_path / "deployment.yaml"
    broken.write_text(source.replace(mutation, message, 1))
    result = _kubernetes_validate([broken], KUBERNETES_VERSIONS[-1])
    assert result.returncode != 0, result.stdout


# --- the OpenTelemetryCollector resource against the Operator's CRD ----------------------------------------------------
def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as a JSON schema that, like `kubectl apply --validate=strict`, rejects unknown fields."""
    if isinstance(schema, dict):
        strict = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        if schema.get("type") == "object" and "properties" in schema and not preserve:
            strict.setdefault("additionalProperties", False)
        if schema.get("x-kubernetes-int-or-string"):
            strict.pop("type", None)
            strict["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def _crd_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    crd = load_yaml(SCHEMAS / "opentelemetry.io_opentelemetrycollectors.yaml")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _crd_errors(resource: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator().iter_errors(resource)]


def test_operator_resource_matches_the_crd_schema() -> None:
    """The OpenTelemetryCollector validates against the Operator's v1beta1 CRD schema, unknown fields rejected."""
    resource = load_yaml(OPERATOR_RESOURCE)
    assert resource["apiVersion"] == "opentelemetry.io/v1beta1"
    assert resource["spec"]["mode"] == "sidecar"
    assert _crd_errors(resource) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "mode"), "sidecarr", "is not one of"),
        (("spec", "resourcez"), {}, "Additional properties are not allowed"),
        (("spec", "resources", "limits", "memory"), {"Mi": 512}, "is not valid under any of the given schemas"),
        (("spec", "config", "receivers"), None, "None is not of type 'object'"),
    ],
    ids=["unknown mode", "unknown field", "malformed quantity", "null receivers"],
)
def test_crd_validation_rejects_a_broken_resource(path: tuple[str, ...], value: Any, expected: str) -> None:
    """A wrong mode, an unknown field, a malformed quantity or a null section is rejected by the CRD schema."""
    resource = copy.deepcopy(load_yaml(OPERATOR_RESOURCE))
    node = resource
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _crd_errors(resource)
    assert any(expected in e for e in errors), errors


# --- the gateway's Helm values against the chart's values.schema.json -------------------------------------------------
def _helm_errors(values: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "opentelemetry-collector-chart.values.schema.json").read_text())
    defaults = load_yaml(SCHEMAS / "opentelemetry-collector-chart.values.yaml")
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    merged = collector_tool("check_collector_config").merge(defaults, values)  # Helm's deep merge of values
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator_class(schema).iter_errors(merged)]


def test_helm_values_match_the_chart_schema() -> None:
    """The gateway values, merged over the chart's defaults, validate against the chart's values.schema.json."""
    values = load_yaml(HELM_VALUES)
    assert _helm_errors(values) == []
    assert values["mode"] == "deployment" and values["service"]["clusterIP"] == "None"
    assert f"{values['image']['repository']}:{values['image']['tag']}" == COLLECTOR_IMAGE


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mode", "sidecar", "is not one of"),
        ("service", {"clusterIp": "None"}, "Additional properties are not allowed"),
        ("resources", {"limits": {"memory": 2048}}, "is not of type 'string'"),
    ],
    ids=["sidecar mode", "misspelt service field", "numeric memory limit"],
)
def test_helm_schema_rejects_broken_values(key: str, value: Any, expected: str) -> None:
    """The chart has no sidecar mode; a misspelt service field or a numeric memory limit is rejected."""
    values = copy.deepcopy(load_yaml(HELM_VALUES))
    values[key] = value
    errors = _helm_errors(values)
    assert any(expected in e for e in errors), errors


# --- what the manifests promise -----------------------------------------------------------------------------------
def _pod_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    for path in MANIFESTS:
        for doc in load_yaml_documents(path):
            if doc["kind"] == "Deployment":
                specs[f"{path.parent.name}/{path.name}"] = doc["spec"]["template"]
    return specs


def _quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?B?", value)
    assert match, value
    return int(match[1]) * units.get(match[2] or "", 1)


def test_every_container_has_limits_a_pinned_image_and_no_privileges() -> None:
    """Every container sets requests and limits, a pinned image, no privilege escalation; collectors are identical."""
    collectors = []
    for name, template in _pod_specs().items():
        spec = template["spec"]
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}: {container['name']}"
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), f"{where}: image {image} is not pinned"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            if "opentelemetry-collector" in image:
                collectors.append(container)
                assert image == COLLECTOR_IMAGE, where
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
                gomemlimit = next(e["value"] for e in container["env"] if e["name"] == "GOMEMLIMIT")
                limit = _quantity(container["resources"]["limits"]["memory"])
                assert 0.7 * limit <= _quantity(gomemlimit) <= 0.85 * limit, where
    assert len(collectors) == 2
    operator = load_yaml(OPERATOR_RESOURCE)["spec"]
    assert operator["image"] == COLLECTOR_IMAGE
    assert {"cpu", "memory"} <= set(operator["resources"]["limits"])


def test_plain_deployment_runs_the_collector_as_a_native_sidecar() -> None:
    """The plain Deployment's collector is an init container with restartPolicy Always mounting the ConfigMap."""
    template = _pod_specs()["plain/deployment.yaml"]
    (collector,) = template["spec"]["initContainers"]
    assert collector["restartPolicy"] == "Always"
    assert collector["args"] == ["--config=/conf/otelcol.yaml"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (mount,) = collector["volumeMounts"]
    assert volumes[mount["name"]]["configMap"]["name"] == "otel-vision-sidecar"
    assert mount["readOnly"] is True and "ports" not in collector and "livenessProbe" not in collector
    env = {e["name"]: e for e in collector["env"]}
    for attribute in ("k8s.pod.name=$(K8S_POD_NAME)", "k8s.pod.uid=$(K8S_POD_UID)", "k8s.node.name=$(K8S_NODE_NAME)"):
        assert attribute in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert env["K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_operator_injection_annotation_is_on_the_pod_template() -> None:
    """The example Deployment asks for the sidecar by name on its pod template (not on the Deployment itself)."""
    (deployment,) = load_yaml_documents(K8S / "operator" / "deployment.yaml")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.opentelemetry.io/inject"] == load_yaml(OPERATOR_RESOURCE)["metadata"]["name"]
    assert "annotations" not in deployment["metadata"]
    assert deployment["metadata"]["namespace"] == load_yaml(OPERATOR_RESOURCE)["metadata"]["namespace"]


def test_applications_export_to_the_sidecar_on_loopback_with_a_gpu() -> None:
    """Both example applications send OTLP to 127.0.0.1:4317, request one GPU and declare their dtype."""
    for name in ("plain/deployment.yaml", "operator/deployment.yaml"):
        (app,) = _pod_specs()[name]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317", name
        assert "vision.dtype=$(MODEL_DTYPE)" in env["OTEL_RESOURCE_ATTRIBUTES"], name
        assert app["resources"]["limits"]["nvidia.com/gpu"] == 1, name


def test_gateway_is_headless_and_reachable_only_by_senders() -> None:
    """The gateway Service is headless on 4317, the sidecars resolve it, and only labelled pods may connect."""
    (service,) = load_yaml_documents(K8S / "gateway" / "service.yaml")
    assert service["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in service["spec"]["ports"]] == [4317]
    fqdn = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    sidecar_env = {e["name"]: e.get("value") for e in load_yaml(OPERATOR_RESOURCE)["spec"]["env"]}
    assert sidecar_env["OTEL_VISION_TRACES_HOST"] == fqdn
    (policy,) = load_yaml_documents(K8S / "gateway" / "networkpolicy.yaml")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 4317, "protocol": "TCP"}]
    selector = rule["from"][0]["podSelector"]["matchLabels"]
    for name in ("plain/deployment.yaml", "operator/deployment.yaml"):
        assert selector.items() <= _pod_specs()[name]["metadata"]["labels"].items()
    helm = load_yaml(HELM_VALUES)
    assert helm["networkPolicy"]["allowIngressFrom"] == rule["from"]
    assert helm["fullnameOverride"] == service["metadata"]["name"]


def test_manifests_parse_as_yaml_documents() -> None:
    """Every manifest is valid YAML with apiVersion, kind and a namespaced name."""
    for path in [*MANIFESTS, OPERATOR_RESOURCE]:
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("namespace"), path
