"""The collector configurations: wiring, current component names, security defaults and one source per config."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collector.support import COLLECTOR, collector_tool, load_yaml, load_yaml_documents

SIDECAR = COLLECTOR / "sidecar" / "otelcol.yaml"
REMOTE_WRITE = COLLECTOR / "sidecar" / "prometheus-remote-write.yaml"
GATEWAY = COLLECTOR / "gateway" / "otelcol.yaml"


checker = collector_tool("check_collector_config")


@pytest.mark.parametrize(
    ("files", "loopback"),
    [([SIDECAR], True), ([SIDECAR, REMOTE_WRITE], True), ([GATEWAY], False)],
    ids=["sidecar", "sidecar+remote-write", "gateway"],
)
def test_shipped_configurations_pass_the_wiring_check(files: list[Path], loopback: bool) -> None:
    """Sidecar (alone and with the remote-write fallback) and gateway configs are wired with current names only."""
    report = checker.check(checker.load(files), loopback=loopback)
    assert report.errors == []


def _mutate(config: dict[str, Any], change: str) -> None:
    pipelines = config["service"]["pipelines"]
    if change == "removed logging exporter":
        config["exporters"]["logging"] = {"verbosity": "detailed"}
        pipelines["logs"]["exporters"].append("logging")
    elif change == "removed loki exporter":
        config["exporters"]["loki"] = {"endpoint": "http://loki:3100/loki/api/v1/push"}
        pipelines["logs"]["exporters"] = ["loki"]
    elif change == "deprecated otlp exporter name":
        config["exporters"]["otlp"] = {"endpoint": "tempo:4317"}
        pipelines["traces"]["exporters"].append("otlp")
    elif change == "batch processor":
        config["processors"]["batch"] = {}
        pipelines["metrics"]["processors"].append("batch")
    elif change == "memory_limiter not first":
        pipelines["logs"]["processors"].reverse()
    elif change == "memory_limiter missing":
        pipelines["traces"]["processors"].remove("memory_limiter")
    elif change == "connector never read":
        pipelines["metrics"]["receivers"].remove("span_metrics")
    elif change == "connector fed the wrong signal":
        pipelines["logs"]["exporters"].append("span_metrics")
    elif change == "undefined exporter":
        pipelines["traces"]["exporters"].append("otlp_grpc/tempo")
    elif change == "undefined processor":
        pipelines["metrics"]["processors"].append("filter/drop")
    elif change == "receiver on every interface":
        config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = "0.0.0.0:4317"
    elif change == "receiver on the pod IP":
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = "${env:MY_POD_IP}:4318"
    elif change == "debug endpoint beyond loopback":
        config["extensions"] = {"zpages": {"endpoint": "${env:MY_POD_IP}:55679"}}
        config["service"]["extensions"] = ["zpages"]
    elif change == "malformed environment reference":
        config["exporters"]["otlp_http/loki"]["endpoint"] = "${OTEL_VISION_LOKI_ENDPOINT"
    elif change == "deprecated telemetry address":
        config["service"]["telemetry"]["metrics"]["address"] = "127.0.0.1:8888"
    else:  # pragma: no cover - a typo in the parameter list
        raise AssertionError(change)


BROKEN = {
    "removed logging exporter": "removed in v0.111.0",
    "removed loki exporter": "use otlp_http to Loki",
    "deprecated otlp exporter name": "deprecated name; use otlp_grpc",
    "batch processor": "sending_queue.batch",
    "memory_limiter not first": "memory_limiter must come first",
    "memory_limiter missing": "memory_limiter must come first",
    "connector never read": "must be an exporter in one pipeline and a receiver in another",
    "connector fed the wrong signal": "span_metrics turns ['traces'] into ['metrics']",
    "undefined exporter": "'otlp_grpc/tempo' is not defined",
    "undefined processor": "'filter/drop' is not defined",
    "receiver on every interface": "binds every interface",
    "receiver on the pod IP": "does not bind loopback",
    "debug endpoint beyond loopback": "does not bind loopback",
    "malformed environment reference": "bare '$'",
    "deprecated telemetry address": "deprecated; use readers",
}


@pytest.mark.parametrize("change", sorted(BROKEN))
def test_wiring_check_rejects_a_broken_copy(change: str) -> None:
    """Each broken copy of the sidecar configuration fails the wiring check with the reason named."""
    config = copy.deepcopy(load_yaml(SIDECAR))
    _mutate(config, change)
    errors = checker.check(config, loopback=True).errors
    assert any(BROKEN[change] in error for error in errors), errors


def test_wiring_check_runs_as_a_script(tmp_path: Path) -> None:
    """The check is a command: exit 0 on the shipped sidecar config, 1 with the errors on a broken copy."""
    script = COLLECTOR / "tools" / "check_collector_config.py"
    ok = subprocess.run(
        [sys.executable, str(script), str(SIDECAR), "--loopback"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "required environment: OTEL_VISION_LOKI_ENDPOINT" in ok.stdout
    config = load_yaml(SIDECAR)
    _mutate(config, "memory_limiter not first")
    broken = tmp_path / "otelcol.yaml"
    broken.write_text(yaml.safe_dump(config))
    failed = subprocess.run(
        [sys.executable, str(script), str(broken), "--loopback"], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1
    assert "memory_limiter must come first" in failed.stderr


def test_sidecar_binds_nothing_beyond_loopback_by_default() -> None:
    """With no override the sidecar's receivers listen on 127.0.0.1 and it opens no health, debug or metrics port."""
    config = load_yaml(SIDECAR)
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert checker.expand_defaults(protocol["endpoint"]).startswith("127.0.0.1:")
    assert "extensions" not in config and "extensions" not in config["service"]
    (reader,) = config["service"]["telemetry"]["metrics"]["readers"]
    assert "pull" not in reader
    assert reader["periodic"]["exporter"]["otlp"]["endpoint"] == "http://127.0.0.1:4318/v1/metrics"


def test_sidecar_derives_span_metrics_and_fans_out_every_signal() -> None:
    """Traces go to the load balancer and span_metrics; metrics to Prometheus' OTLP endpoint; logs to Loki's."""
    config = load_yaml(SIDECAR)
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["load_balancing", "span_metrics"]
    assert "span_metrics" in pipelines["metrics"]["receivers"]
    assert pipelines["logs"]["exporters"] == ["otlp_http/loki"]
    assert pipelines["metrics"]["exporters"] == ["otlp_http/prometheus"]
    assert config["exporters"]["load_balancing"]["routing_key"] == "traceID"
    dimensions = {d["name"] for d in config["connectors"]["span_metrics"]["dimensions"]}
    assert {"vision.stage", "vision.operation", "vision.dtype", "error.type"} <= dimensions
    for name, exporter in config["exporters"].items():
        if name.startswith("otlp_http"):
            assert "batch" in exporter["sending_queue"], name
    balancer = config["exporters"]["load_balancing"]
    # One queue on the balancer (data for a vanished gateway pod is routed again), none per backend.
    assert balancer["sending_queue"]["enabled"] is True and "batch" in balancer["sending_queue"]
    assert balancer["protocol"]["otlp"]["sending_queue"] == {"enabled": False}
    assert balancer["protocol"]["otlp"]["retry_on_failure"] == {"enabled": False}


def test_gateway_tail_samples_errors_slow_requests_and_a_baseline() -> None:
    """The gateway keeps error traces, traces over 3 s and 10 % of the rest, after memory_limiter."""
    config = load_yaml(GATEWAY)
    policies = {p["type"]: p for p in config["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert checker.expand_defaults(str(policies["latency"]["latency"]["threshold_ms"])) == "3000"
    assert checker.expand_defaults(str(policies["probabilistic"]["probabilistic"]["sampling_percentage"])) == "10"
    assert config["service"]["pipelines"]["traces"]["processors"] == ["memory_limiter", "tail_sampling"]
    sampling = config["processors"]["tail_sampling"]
    for cache in ("sampled_cache_size", "non_sampled_cache_size"):
        assert sampling["decision_cache"][cache] >= 10 * sampling["num_traces"], cache
    assert checker.expand_defaults(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]) == "<MY_POD_IP>:4317"


# --- one source per configuration ----------------------------------------------------------------------------------
def test_embedded_copies_equal_their_source() -> None:
    """The Operator resource, both ConfigMaps and the Helm values carry exactly the source configurations."""
    sidecar, gateway = load_yaml(SIDECAR), load_yaml(GATEWAY)
    assert load_yaml(COLLECTOR / "k8s" / "operator" / "opentelemetrycollector.yaml")["spec"]["config"] == sidecar
    (plain,) = load_yaml_documents(COLLECTOR / "k8s" / "plain" / "configmap.yaml")
    assert yaml.safe_load(plain["data"]["otelcol.yaml"]) == sidecar
    assert yaml.safe_load(plain["data"]["prometheus-remote-write.yaml"]) == load_yaml(REMOTE_WRITE)
    (gateway_map,) = load_yaml_documents(COLLECTOR / "k8s" / "gateway" / "configmap.yaml")
    assert yaml.safe_load(gateway_map["data"]["otelcol.yaml"]) == gateway
    assert load_yaml(COLLECTOR / "gateway" / "helm-values.yaml")["alternateConfig"] == gateway
    sync = subprocess.run(
        [sys.executable, str(COLLECTOR / "tools" / "sync.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert sync.returncode == 0, sync.stderr


def test_sync_detects_and_repairs_a_stale_copy(tmp_path: Path) -> None:
    """After an edit of the sidecar source, sync --check names every stale copy; sync rewrites them."""
    work = tmp_path / "collector"
    shutil.copytree(COLLECTOR, work)
    source = work / "sidecar" / "otelcol.yaml"
    source.write_text(source.read_text().replace("check_interval: 1s", "check_interval: 2s"))
    tool = str(work / "tools" / "sync.py")
    stale = subprocess.run([sys.executable, tool, "--check"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert {line.split()[1] for line in stale.stderr.splitlines()} == {
        "collector/k8s/operator/opentelemetrycollector.yaml",
        "collector/k8s/plain/configmap.yaml",
        "collector/k8s/plain/deployment.yaml",
    }
    subprocess.run([sys.executable, tool], check=True, capture_output=True, timeout=60)
    assert subprocess.run([sys.executable, tool, "--check"], timeout=60).returncode == 0
    config = load_yaml(work / "k8s" / "operator" / "opentelemetrycollector.yaml")["spec"]["config"]
    assert config["processors"]["memory_limiter"]["check_interval"] == "2s"


# --- every deployment path provides the environment the configuration needs --------------------------------------
def _env_names(entries: list[dict[str, Any]]) -> set[str]:
    return {entry["name"] for entry in entries}


def _deployment_env(path: Path, container: str) -> set[str]:
    (deployment,) = load_yaml_documents(path)
    spec = deployment["spec"]["template"]["spec"]
    (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == container]
    return _env_names(found["env"])


def test_every_deployment_path_sets_the_required_environment() -> None:
    """Each way of running a collector sets every ${env:...} its configuration needs without a default."""
    sidecar = checker.check(checker.load([SIDECAR]), loopback=True).required_env
    gateway = checker.check(checker.load([GATEWAY])).required_env
    assert sidecar == {"OTEL_VISION_TRACES_HOST", "OTEL_VISION_LOKI_ENDPOINT", "OTEL_VISION_PROMETHEUS_ENDPOINT"}
    operator = load_yaml(COLLECTOR / "k8s" / "operator" / "opentelemetrycollector.yaml")["spec"]
    assert sidecar <= _env_names(operator["env"])
    assert sidecar <= _deployment_env(COLLECTOR / "k8s" / "plain" / "deployment.yaml", "otelcol")
    compose = load_yaml(COLLECTOR / "local" / "compose.yaml")["services"]["otelcol"]
    assert sidecar <= set(compose["environment"])
    assert gateway <= _deployment_env(COLLECTOR / "k8s" / "gateway" / "deployment.yaml", "otelcol")
    helm = load_yaml(COLLECTOR / "gateway" / "helm-values.yaml")
    assert gateway - {"MY_POD_IP"} <= _env_names(helm["extraEnvs"])  # the chart itself sets MY_POD_IP
