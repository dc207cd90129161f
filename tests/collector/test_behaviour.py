"""What a schema cannot see: settings that validate but stop data arriving, checked on every shipped copy.

Each check is a function returning the problems it finds; each test runs it on the shipped files and on a broken
copy, so that a check which cannot fail is noticed.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collector.support import (
    COLLECTOR,
    DASHBOARDS,
    ROOT,
    RULES,
    SCHEMAS,
    collector_tool,
    load_yaml,
    load_yaml_documents,
    require_tool,
)

checker = collector_tool("check_collector_config")

SIDECAR = COLLECTOR / "sidecar" / "otelcol.yaml"
REMOTE_WRITE = COLLECTOR / "sidecar" / "prometheus-remote-write.yaml"
GATEWAY = COLLECTOR / "gateway" / "otelcol.yaml"
HELM_VALUES = COLLECTOR / "gateway" / "helm-values.yaml"
OPERATOR = COLLECTOR / "k8s" / "operator" / "opentelemetrycollector.yaml"
OPTIONAL_OVERLAYS = {"export-authorization.yaml"}
"""Second configs loaded only where the Secret they read exists (collector/README.md)."""

_ENV = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand(value: Any, environ: Mapping[str, str]) -> str:
    """The collector's expansion of ``${env:NAME}`` / ``${env:NAME:-default}``: an unset variable without a default
    becomes the empty string."""
    return _ENV.sub(lambda m: environ.get(m["name"], m["default"] or ""), str(value))


def shipped_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, configuration) of every collector configuration a user can run: the sources, the copies embedded in
    the Operator resource, the ConfigMaps and the Helm values."""
    for path in (SIDECAR, GATEWAY):
        yield path.relative_to(ROOT).as_posix(), load_yaml(path)
    yield "operator spec.config", load_yaml(OPERATOR)["spec"]["config"]
    for configmap in sorted((COLLECTOR / "k8s").glob("*/configmap.yaml")):
        for document in load_yaml_documents(configmap):
            for key, text in document.get("data", {}).items():
                if key not in OPTIONAL_OVERLAYS and key != "prometheus-remote-write.yaml":
                    yield f"{configmap.relative_to(ROOT).as_posix()}:{key}", yaml.safe_load(text)
    yield "helm alternateConfig", load_yaml(HELM_VALUES)["alternateConfig"]


# --- 1. TLS with the DNS resolver needs a server name -------------------------------------------------------------
def tls_server_name_problems(config: Mapping[str, Any]) -> list[str]:
    """A load_balancing exporter resolving by DNS dials IP addresses: with TLS on (the default), certificate
    verification fails unless ``tls.server_name_override`` names the certificate's host."""
    problems = []
    for name, exporter in (config.get("exporters") or {}).items():
        if checker.component_type(str(name)) != "load_balancing":
            continue
        if "dns" not in (exporter.get("resolver") or {}):
            continue
        tls = ((exporter.get("protocol") or {}).get("otlp") or {}).get("tls") or {}
        if expand(tls.get("insecure", "false"), {}).lower() == "true":
            continue
        if not expand(tls.get("server_name_override", ""), {"OTEL_VISION_TRACES_HOST": "gateway.example"}):
            problems.append(f"{name}: TLS with the DNS resolver and no tls.server_name_override")
    return problems


def test_tls_with_the_dns_resolver_verifies_a_server_name() -> None:
    found = {where: tls_server_name_problems(config) for where, config in shipped_configs()}
    assert found == {where: [] for where in found}
    broken = load_yaml(SIDECAR)
    del broken["exporters"]["load_balancing"]["protocol"]["otlp"]["tls"]["server_name_override"]
    assert tls_server_name_problems(broken) == [
        "load_balancing: TLS with the DNS resolver and no tls.server_name_override"
    ]


# --- 2. Loki needs a tenant ---------------------------------------------------------------------------------------
def loki_tenant_problems(config: Mapping[str, Any]) -> list[str]:
    """Loki's Helm charts default to auth_enabled: true, which rejects a push without X-Scope-OrgID."""
    problems = []
    for name, exporter in (config.get("exporters") or {}).items():
        endpoint = str((exporter or {}).get("endpoint", ""))
        if "loki" not in endpoint.lower() and "loki" not in str(name).lower():
            continue
        headers = (exporter or {}).get("headers") or {}
        tenant = next((value for key, value in headers.items() if key.lower() == "x-scope-orgid"), "")
        if not expand(tenant, {}):
            problems.append(f"{name}: no X-Scope-OrgID tenant header")
    return problems


def test_every_loki_exporter_sends_a_tenant() -> None:
    found = {where: loki_tenant_problems(config) for where, config in shipped_configs()}
    assert found == {where: [] for where in found}
    assert any("otlp_http/loki" in (config.get("exporters") or {}) for _, config in shipped_configs())
    broken = load_yaml(SIDECAR)
    broken["exporters"]["otlp_http/loki"]["headers"]["X-Scope-OrgID"] = "${env:OTEL_VISION_LOKI_TENANT:-}"
    assert loki_tenant_problems(broken) == ["otlp_http/loki: no X-Scope-OrgID tenant header"]


# --- 3. no empty header -------------------------------------------------------------------------------------------
def empty_header_problems(config: Mapping[str, Any]) -> list[str]:
    """Every configured header is sent, also with an empty value: none may expand to empty when its variables are
    unset (values that need a Secret belong in an optional overlay)."""
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "headers" and isinstance(value, Mapping):
                    for header, raw in value.items():
                        if not expand(raw, {}).strip():
                            problems.append(f"{path}.headers.{header} can be sent empty: {raw!r}")
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(config, "")
    return problems


def test_no_configuration_can_send_an_empty_header() -> None:
    configs = dict(shipped_configs())
    configs["sidecar+remote-write"] = checker.load([SIDECAR, REMOTE_WRITE])
    found = {where: empty_header_problems(config) for where, config in configs.items()}
    assert found == {where: [] for where in found}
    broken = load_yaml(GATEWAY)
    broken["exporters"]["otlp_grpc/traces"]["headers"] = {"Authorization": "${env:OTEL_VISION_EXPORT_AUTHORIZATION:-}"}
    assert empty_header_problems(broken) == [
        "exporters.otlp_grpc/traces.headers.Authorization can be sent empty: '${env:OTEL_VISION_EXPORT_AUTHORIZATION:-}'"
    ]


@pytest.mark.parametrize("main", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_authorization_overlay_adds_the_header_and_keeps_the_rest(main: Path) -> None:
    overlay = main.parent / "export-authorization.yaml"
    merged = checker.load([main, overlay])
    added = [
        name
        for name, exporter in merged["exporters"].items()
        if "Authorization" in (exporter or {}).get("headers", {})
        or "Authorization" in (((exporter or {}).get("protocol") or {}).get("otlp") or {}).get("headers", {})
    ]
    assert added and set(load_yaml(overlay)["exporters"]) <= set(load_yaml(main)["exporters"])
    assert checker.check(merged, loopback=main == SIDECAR).errors == []


# --- 4. a merged fallback keeps every defined component valid -----------------------------------------------------
def missing_endpoint_problems(config: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """The collector validates every defined exporter, used or not: each needs an endpoint after expansion."""
    problems = []
    for name, exporter in (config.get("exporters") or {}).items():
        if "endpoint" in (exporter or {}) and not expand(exporter["endpoint"], environ):
            problems.append(f"{name}: empty endpoint")
    return problems


def test_remote_write_fallback_starts_without_the_otlp_endpoint() -> None:
    environ = {
        "OTEL_VISION_TRACES_HOST": "gateway",
        "OTEL_VISION_LOKI_ENDPOINT": "http://loki/otlp",
        "OTEL_VISION_PROMETHEUS_REMOTE_WRITE_ENDPOINT": "http://prometheus:9090/api/v1/write",
    }
    assert missing_endpoint_problems(checker.load([SIDECAR, REMOTE_WRITE]), environ) == []
    overlay = load_yaml(REMOTE_WRITE)
    del overlay["exporters"]["otlp_http/prometheus"]
    broken = checker.merge(load_yaml(SIDECAR), overlay)
    assert missing_endpoint_problems(broken, environ) == ["otlp_http/prometheus: empty endpoint"]


# --- 5. Helm label selectors match the labels the chart puts on the pods -----------------------------------------
_CHART_NAME = "opentelemetry-collector"


def _define(helpers: str, name: str) -> str:
    match = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}(?P<body>.*?)\{\{-? end -?\}\}', helpers, re.S)
    assert match, f"_helpers.tpl has no define {name!r}"
    return match["body"]


def chart_pod_labels(values: Mapping[str, Any], release: str) -> dict[str, str]:
    """The labels the vendored chart (0.170.0) puts on a Deployment's pods, read from its templates.

    deployment.yaml's pod template includes selectorLabels, component and podLabels; _helpers.tpl defines them.
    Only the constructs those defines use are understood: anything else fails, so a chart update gets looked at.
    """
    deployment = (SCHEMAS / "opentelemetry-collector-chart.deployment.yaml").read_text()
    helpers = (SCHEMAS / "opentelemetry-collector-chart._helpers.tpl").read_text()
    pod_template = deployment[deployment.index("  template:") :]
    pod_labels = pod_template[pod_template.index("      labels:") : pod_template.index("    spec:")]
    includes = re.findall(r'include "([^"]+)" \.', pod_labels)
    assert includes == [
        "opentelemetry-collector.selectorLabels",
        "opentelemetry-collector.component",
        "opentelemetry-collector.podLabels",
    ], includes
    name_define = _define(helpers, "opentelemetry-collector.name").strip()
    assert name_define == '{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}', name_define
    chart_name = (values.get("nameOverride") or _CHART_NAME)[:63].rstrip("-")
    labels: dict[str, str] = {}
    for line in _define(helpers, "opentelemetry-collector.selectorLabels").strip().splitlines():
        key, _, expression = line.partition(": ")
        known = {
            '{{ include "opentelemetry-collector.name" . }}': chart_name,
            "{{ .Release.Name }}": release,
        }
        assert expression in known, f"selectorLabels: {line!r} is not understood"
        labels[key] = known[expression]
    component = _define(helpers, "opentelemetry-collector.component")
    mode_label = re.search(
        r'eq \.Values\.mode "' + re.escape(values["mode"]) + r'" -\}\}\s*component: (\S+)', component
    )
    if mode_label:
        labels["component"] = mode_label[1]
    assert "tpl (.Values.podLabels | toYaml)" in _define(helpers, "opentelemetry-collector.podLabels")
    labels.update({str(k): str(v) for k, v in (values.get("podLabels") or {}).items()})
    return labels


def _selectors(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, str]]]:
    """labelSelector.matchLabels under topologySpreadConstraints and affinity: they select the chart's own pods."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "labelSelector" and isinstance(value, Mapping) and "matchLabels" in value:
                yield here, value["matchLabels"]
            elif key in ("topologySpreadConstraints", "affinity") or path:
                yield from _selectors(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _selectors(item, f"{path}[{index}]")


def helm_selector_problems(values: Mapping[str, Any], release: str) -> list[str]:
    labels = chart_pod_labels(values, release)
    problems = []
    for where, match_labels in _selectors(
        {k: values[k] for k in ("topologySpreadConstraints", "affinity") if k in values}
    ):
        for key, value in match_labels.items():
            if labels.get(key) != value:
                problems.append(f"{where}: {key}={value} matches no pod (the chart sets {key}={labels.get(key)})")
    return problems


def _release_name() -> str:
    match = re.search(r"helm upgrade --install (\S+) open-telemetry/opentelemetry-collector", HELM_VALUES.read_text())
    assert match, "helm-values.yaml documents no install command"
    return match[1]


def test_helm_label_selectors_match_the_chart_pod_labels() -> None:
    values = load_yaml(HELM_VALUES)
    assert list(_selectors({"topologySpreadConstraints": values["topologySpreadConstraints"]}))
    assert helm_selector_problems(values, _release_name()) == []
    broken = copy.deepcopy(values)
    del broken["nameOverride"]
    assert helm_selector_problems(broken, _release_name()) == [
        "topologySpreadConstraints[0].labelSelector: app.kubernetes.io/name=otel-vision-gateway matches no pod "
        "(the chart sets app.kubernetes.io/name=opentelemetry-collector)"
    ]


# --- 6. collector self-metric names as Prometheus stores them -----------------------------------------------------
# The collector's own metrics (metadata of core v0.159.0: exporterhelper, receiverhelper, processorhelper,
# service/internal/proctelemetry; contrib loadbalancingexporter), with unit and whether a monotonic sum. Prometheus
# names follow otlptranslator's default: the unit as a suffix (By -> _bytes, s -> _seconds; {annotations} dropped),
# then _total on monotonic sums.
COLLECTOR_METRICS: dict[str, tuple[str, bool]] = {
    **{
        f"otelcol_exporter_{kind}_{signal}": ("{" + signal + "}", True)
        for kind in ("sent", "send_failed", "enqueue_failed")
        for signal in ("spans", "metric_points", "log_records")
    },
    **{
        f"otelcol_receiver_{kind}_{signal}": ("{" + signal + "}", True)
        for kind in ("accepted", "refused", "failed")
        for signal in ("spans", "metric_points", "log_records")
    },
    "otelcol_exporter_queue_size": ("{batches}", False),
    "otelcol_exporter_queue_capacity": ("{batches}", False),
    "otelcol_processor_incoming_items": ("{items}", True),
    "otelcol_processor_outgoing_items": ("{items}", True),
    "otelcol_process_uptime": ("s", True),
    "otelcol_process_cpu_seconds": ("s", True),
    "otelcol_process_memory_rss": ("By", False),
    "otelcol_process_runtime_heap_alloc_bytes": ("By", False),
    "otelcol_process_runtime_total_alloc_bytes": ("By", True),
    "otelcol_process_runtime_total_sys_memory_bytes": ("By", False),
    "otelcol_loadbalancer_num_backends": ("{backends}", False),
    "otelcol_loadbalancer_num_resolutions": ("{resolutions}", True),
    "otelcol_loadbalancer_backend_outcome": ("{decisions}", True),
}
_UNIT_SUFFIX = {"By": "bytes", "s": "seconds"}


def prometheus_name(name: str, unit: str, monotonic: bool) -> str:
    suffix = _UNIT_SUFFIX.get(unit)
    if suffix and not name.endswith(f"_{suffix}"):
        name = f"{name}_{suffix}"
    return f"{name}_total" if monotonic else name


PROMETHEUS_NAMES = frozenset(prometheus_name(name, *spec) for name, spec in COLLECTOR_METRICS.items())
_SELF_METRIC = re.compile(r"\botelcol_[a-z0-9_]*[a-z0-9]\b")


def self_metric_problems(text: str) -> list[str]:
    """``otelcol_*`` names in a text that are not a collector metric's Prometheus name (prefixes such as
    ``otelcol_exporter_send_failed_*`` are fine when some name starts with them)."""
    problems = []
    for match in _SELF_METRIC.finditer(text):
        name = match.group(0)
        follows = text[match.end() : match.end() + 1]
        if name in PROMETHEUS_NAMES or (follows in ("_", "*") and any(n.startswith(name) for n in PROMETHEUS_NAMES)):
            continue
        problems.append(name)
    return sorted(set(problems))


def _texts_naming_self_metrics() -> list[Path]:
    paths = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", COLLECTOR / "README.md"]
    paths += sorted(DASHBOARDS.glob("*.json")) + sorted(RULES.glob("*.yaml"))
    paths += sorted((COLLECTOR / "prometheus" / "tests").glob("*.yaml"))
    return [path for path in paths if path.exists()]


def test_collector_self_metric_names_carry_their_unit_suffixes() -> None:
    found = {
        path.relative_to(ROOT).as_posix(): self_metric_problems(path.read_text())
        for path in _texts_naming_self_metrics()
    }
    assert found == {where: [] for where in found}
    assert sum("otelcol_" in path.read_text() for path in _texts_naming_self_metrics()) >= 3
    assert self_metric_problems("`otelcol_process_memory_rss` and otelcol_exporter_send_failed_spans") == [
        "otelcol_exporter_send_failed_spans",
        "otelcol_process_memory_rss",
    ]
    assert prometheus_name("otelcol_process_memory_rss", "By", False) == "otelcol_process_memory_rss_bytes"


# --- 7. GOMEMLIMIT at 80 % of the memory limit everywhere ---------------------------------------------------------
def test_operator_sidecar_sets_gomemlimit_below_the_limit() -> None:
    """The Operator's default GOMEMLIMIT is 100 % of limits.memory; ours is set explicitly to 80 %."""
    spec = load_yaml(OPERATOR)["spec"]
    limit_mib = int(spec["resources"]["limits"]["memory"].removesuffix("Mi"))
    (value,) = [e["value"] for e in spec["env"] if e["name"] == "GOMEMLIMIT"]
    assert value.endswith("MiB") and abs(int(value.removesuffix("MiB")) - limit_mib * 0.8) <= 1


# --- 8. the Docker validation script covers every configuration ---------------------------------------------------
def test_docker_validation_covers_every_configuration_with_the_pinned_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collector/tools/validate_with_docker.py runs `validate` in the pinned image on every config combination."""
    tool = collector_tool("validate_with_docker")
    configs = {
        p.relative_to(COLLECTOR).as_posix() for d in ("sidecar", "gateway") for p in (COLLECTOR / d).glob("*.yaml")
    }
    covered = {f for files in tool.COMBINATIONS.values() for f in files}
    assert covered == configs - {"gateway/helm-values.yaml", "gateway/helm-values-authorization.yaml"}
    assert f"image: {tool.IMAGE}" in OPERATOR.read_text()
    # A stand-in `docker` records each call and fails the gateway, as a real validation error would.
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *gateway/otelcol.yaml*) echo bad >&2; exit 1;; esac\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert tool.main([]) == 1
    calls = log.read_text().splitlines()
    assert len(calls) == len(tool.COMBINATIONS) + 2
    assert all(f" {tool.IMAGE} validate --config=/conf/" in call for call in calls)
    assert any(
        "--config=/conf/sidecar/otelcol.yaml --config=/conf/sidecar/prometheus-remote-write.yaml" in c for c in calls
    )


# --- 9. kube-prometheus-stack's dashboard sidecar finds the generated ConfigMap -----------------------------------
def sidecar_loads(configmap: Mapping[str, Any]) -> bool:
    """kube-prometheus-stack's Grafana sidecar (default label grafana_dashboard, value "1") loads this ConfigMap."""
    return (
        configmap.get("kind") == "ConfigMap" and configmap["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    )


def test_kustomization_ships_the_dashboards_to_the_grafana_sidecar() -> None:
    rendered = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(COLLECTOR / "grafana")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (configmap,) = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert sidecar_loads(configmap)
    assert {name: text for name, text in configmap["data"].items()} == {
        path.name: path.read_text() for path in sorted(DASHBOARDS.glob("*.json"))
    }
    broken = copy.deepcopy(configmap)
    broken["metadata"]["labels"]["grafana_dashboard"] = "true"
    assert not sidecar_loads(broken)
