"""Dashboards and alert rules against real data: a real Prometheus scrapes real instrumented workloads.

Two workload processes (``tests/collector/workload.py``) serve the SDK's Prometheus endpoint on loopback: one runs
the demo CNN, YOLO and an InstructPix2Pix pipeline in float32 with two fake GPUs (CI has no GPU: the ``hw.gpu.*``
series come from `otel_vision.testing`'s fake NVML), the other the same pipeline in float16. Prometheus (the Debian
package, 2.42, which has no OTLP receiver) scrapes them every second with the relabelling we ship for the pull route
(collector/prometheus/scrape-sdk-endpoint.yaml) and evaluates the shipped alert rules every second. Then every
dashboard query, every template variable and every alert expression runs through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.collector.support import (
    COLLECTOR,
    LOOPBACK_ENV,
    ROOT,
    Prometheus,
    dashboard_queries,
    dashboard_variables,
    data_operands,
    finite_values,
    free_port,
    http_get,
    load_yaml,
    metric_names,
    promql,
    require_tool,
    rule_expressions,
    rule_files,
    substitute_grafana_variables,
    wait_port,
)

pytestmark = pytest.mark.integration

WORKLOAD_SECONDS = 20
COLLECTOR_ONLY = "otelcol_"
"""Selectors of the collector's own metrics: no collector binary runs in CI, so they have no data here (their alerts
are covered by promtool unit tests)."""
PUSH_ROUTE_ONLY = {"otel_sdk_exporter_metric_data_point_exported_total"}
"""Failed metric exports: the workloads serve their metrics for scraping (no metric exporter that could fail), so
this series has no data here; the drops alert's promtool test covers it."""


class Workload:
    def __init__(self, port: int, service: str, args: list[str], log: Path) -> None:
        self.port = port
        self.service = service
        self._log = log.open("w")
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.collector.workload", "--port", str(port), "--service", service, *args],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | LOOPBACK_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"{service}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of output: the process exited

    def wait(self, key: str, timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout`` seconds) for the JSON line carrying ``key`` on the workload's stdout."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"{self.service} exited: {self.log.read_text()[-3000:]}")
            message = json.loads(line)
            if key in message:
                return message
        raise AssertionError(f"{self.service}: no {key!r} within {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Close stdin (the workload's signal to exit once done); SIGTERM if it is still working; then kill."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        for signal_process in (lambda: None, self.process.terminate, self.process.kill):
            signal_process()
            try:
                self.process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


class Scene:
    """The running Prometheus, the workloads' endpoints and the evaluation time."""

    def __init__(self, prometheus: Prometheus, workloads: list[Workload], at: float) -> None:
        self.prometheus = prometheus
        self.workloads = workloads
        self.at = at


def _fast_rules(workdir: Path) -> list[str]:
    """The shipped rule files with every group evaluated each second (the expressions are unchanged)."""
    paths = []
    for path in rule_files():
        rules = load_yaml(path)
        for group in rules["groups"]:
            group["interval"] = "1s"
        copy = workdir / path.name
        copy.write_text(json.dumps(rules))
        paths.append(str(copy))
    return paths


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    require_tool("prometheus")
    pytest.importorskip("prometheus_client", reason="opentelemetry-exporter-prometheus is not installed")
    pytest.importorskip("ultralytics")
    pytest.importorskip("diffusers")
    workdir = tmp_path_factory.mktemp("real-data")
    relabel = load_yaml(COLLECTOR / "prometheus" / "scrape-sdk-endpoint.yaml")["scrape_configs"][0]
    specs = [
        ("pix2pix-fp32", ["--dtype", "float32", "--fake-gpus", "2"]),
        # float16 convolutions are slow on CPU: fewer edits per round, so its failing edit recurs often enough. Its
        # traces and logs also go over OTLP to a closed port: the SDK's loss counters (otel.sdk.*) get their series.
        (
            "pix2pix-fp16",
            ["--dtype", "float16", "--no-yolo", "--no-classify", "--edits", "2", "--dead-otlp", str(free_port())],
        ),
    ]
    ports = {service: free_port() for service, _ in specs}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": _fast_rules(workdir),
        "scrape_configs": [
            {
                "job_name": service,
                "static_configs": [{"targets": [f"127.0.0.1:{ports[service]}"]}],
                "metric_relabel_configs": relabel["metric_relabel_configs"],
            }
            for service, _ in specs
        ],
    }
    prometheus = Prometheus(workdir, config)
    workloads: list[Workload] = []
    try:
        for service, args in specs:
            workloads.append(
                Workload(
                    ports[service],
                    service,
                    [*args, "--duration", str(WORKLOAD_SECONDS)],
                    workdir / f"{service}.log",
                )
            )
        for workload in workloads:
            workload.wait("ready", timeout=120)
            wait_port(workload.port)
        for workload in workloads:
            workload.wait("done", timeout=WORKLOAD_SECONDS + 120)
        time.sleep(3)  # the final state of every counter is scraped and the rules evaluated on it
        yield Scene(prometheus, workloads, time.time())
    finally:
        for workload in workloads:
            workload.stop()
        prometheus.stop()


def test_prometheus_scrapes_every_workload(scene: Scene) -> None:
    """Both workload endpoints are up and expose otel_vision's metrics to a real Prometheus."""
    up = scene.prometheus.query("up", scene.at)
    assert {s["metric"]["job"]: s["value"][1] for s in up} == {"pix2pix-fp32": "1", "pix2pix-fp16": "1"}
    assert scene.prometheus.query('vision_requests_total{job="pix2pix-fp16"}', scene.at)


def test_every_dashboard_query_returns_data(scene: Scene) -> None:
    """Every panel query of every dashboard parses and returns at least one finite value."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for query in queries:
        result = scene.prometheus.query(substitute_grafana_variables(query.expr), scene.at)
        if not finite_values(result):
            empty.append(f"{query}: {query.expr} -> {result}")
    assert not empty, "\n".join(empty)


def test_every_dashboard_variable_has_values(scene: Scene) -> None:
    """Every label_values() template variable lists the services and models of the workloads."""
    found = {}
    for dashboard, variable, selector, label in dashboard_variables():
        values = scene.prometheus.api(
            f"label/{label}/values",
            **{"match[]": substitute_grafana_variables(selector), "start": scene.at - 300, "end": scene.at},
        )
        assert values, f"{dashboard}: variable {variable} ({label} of {selector}) has no value"
        found[variable] = set(values)
    assert found["job"] == {"pix2pix-fp32", "pix2pix-fp16"}
    assert {"tiny-cnn", "yolov8n", "StableDiffusionInstructPix2PixPipeline"} <= found["model"]


def test_every_alert_expression_has_data_behind_it(scene: Scene) -> None:
    """Each alert expression parses, and each of its operands (the series it compares) returns data."""
    checked = 0
    missing = []
    for rule in rule_expressions():
        scene.prometheus.query(rule.expr, scene.at)  # parses and evaluates (firing or not)
        for operand in data_operands(rule.expr):
            if all(name.startswith(COLLECTOR_ONLY) for name in metric_names(operand)):
                continue
            checked += 1
            if not finite_values(scene.prometheus.query(operand, scene.at)):
                missing.append(f"{rule.name}: {operand}")
    assert not missing, "no data for:\n" + "\n".join(missing)
    assert checked >= 9


def test_rules_load_and_evaluate_without_errors(scene: Scene) -> None:
    """Prometheus loads every shipped rule and evaluates each without error on the workloads' series."""
    groups = scene.prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {rule.name for rule in rule_expressions()}
    broken = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert not broken, broken


def test_alerts_go_pending_on_the_workloads_conditions(scene: Scene) -> None:
    """GPU memory at 97 % and rising, and failing requests, make the matching alerts pending; absence ones stay quiet."""
    alerts = scene.prometheus.api("alerts")["alerts"]
    active = {(a["labels"]["alertname"], a["labels"].get("job")) for a in alerts if a["state"] in ("pending", "firing")}
    names = {name for name, _ in active}
    assert ("OtelVisionGpuMemoryNearLimit", "pix2pix-fp32") in active, alerts
    assert ("OtelVisionGpuMemoryExhaustionPredicted", "pix2pix-fp32") in active, alerts
    assert ("OtelVisionErrorRatioHigh", "pix2pix-fp16") in active, alerts
    assert ("OtelVisionTelemetryDropped", "pix2pix-fp16") in active, alerts
    assert ("OtelVisionTelemetryDropped", "pix2pix-fp32") not in active, alerts
    assert "OtelVisionTelemetryAbsent" not in names
    assert "OtelVisionServiceStoppedReporting" not in names
    gpu = [a for a in alerts if a["labels"]["alertname"] == "OtelVisionGpuMemoryNearLimit"]
    assert {a["labels"]["hw_id"] for a in gpu} == {
        "GPU-00000000-fake-0000-0000-000000000000",
        "GPU-00000000-fake-0000-0000-000000000001",
    }


def test_drops_panel_shows_the_losses_of_the_service_with_a_dead_collector(scene: Scene) -> None:
    """The workload whose traces and logs go to a closed port shows spans dropped from the full queue and exports
    that failed; the healthy one shows nothing."""
    targets = {q.ref_id: q for q in dashboard_queries() if q.panel == "Telemetry dropped or failed to export"}
    found = {}
    for ref_id, query in targets.items():
        result = scene.prometheus.query(substitute_grafana_variables(query.expr), scene.at)
        found[ref_id] = {
            (s["metric"]["job"], s["metric"]["otel_component_name"], s["metric"]["error_type"]) for s in result
        }
    assert ("pix2pix-fp16", "otel_vision/traces", "queue_full") in found["A"], found
    assert {(job, component) for job, component, _ in found["B"]} >= {
        ("pix2pix-fp16", "otel_vision/traces"),
        ("pix2pix-fp16", "otel_vision/logs"),
    }, found
    assert not any(job == "pix2pix-fp32" for series in found.values() for job, _, _ in series), found


def test_dtype_panel_separates_fp16_and_fp32(scene: Scene) -> None:
    """The latency-by-dtype query yields one P95 series per dtype, from the two processes' vision.dtype."""
    (query,) = [q for q in dashboard_queries() if q.panel.startswith("Latency by dtype") and q.ref_id == "A"]
    result = scene.prometheus.query(substitute_grafana_variables(query.expr), scene.at)
    assert {series["metric"].get("vision_dtype") for series in result} == {"float16", "float32"}


def test_sdk_endpoint_names_and_the_pull_route_relabelling(scene: Scene) -> None:
    """The SDK endpoint omits _ratio for unit "1" gauges; the shipped relabelling gives Prometheus the OTLP names."""
    workload = scene.workloads[0]
    exposition = http_get(f"http://127.0.0.1:{workload.port}/metrics").decode()
    raw = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}
    assert {"hw_gpu_utilization", "hw_gpu_memory_utilization"} <= raw
    assert not {"hw_gpu_utilization_ratio", "hw_gpu_memory_utilization_ratio"} & raw
    stored = set(scene.prometheus.api("label/__name__/values", start=scene.at - 300, end=scene.at))
    assert {"hw_gpu_utilization_ratio", "hw_gpu_memory_utilization_ratio"} <= stored
    assert not {"hw_gpu_utilization", "hw_gpu_memory_utilization"} & stored


def test_every_name_in_dashboards_and_rules_exists(scene: Scene) -> None:
    """Every metric name read by a dashboard or a rule is stored in Prometheus (collector self-metrics excepted)."""
    promql()
    stored = set(scene.prometheus.api("label/__name__/values", start=scene.at - 300, end=scene.at))
    used = set()
    for query in dashboard_queries():
        used |= metric_names(substitute_grafana_variables(query.expr))
    for rule in rule_expressions():
        used |= metric_names(rule.expr)
    missing = sorted(name for name in used - stored - PUSH_ROUTE_ONLY if not name.startswith(COLLECTOR_ONLY))
    assert not missing, f"used but never emitted: {missing}"


def test_trace_to_metrics_links_return_data(scene: Scene) -> None:
    """The Tempo data source's trace -> metrics queries on otel_vision metrics return data for a span's service."""
    sources = load_yaml(COLLECTOR / "grafana" / "provisioning" / "datasources" / "otel-vision.yaml")["datasources"]
    (tempo,) = [s for s in sources if s["type"] == "tempo"]
    checked = 0
    for query in tempo["jsonData"]["tracesToMetrics"]["queries"]:
        expr = query["query"].replace("$$__tags", 'job="pix2pix-fp32"')
        if all(name.startswith("traces_span_metrics_") for name in metric_names(expr)):
            continue  # the collector's span metrics: no collector binary runs in CI
        checked += 1
        assert finite_values(scene.prometheus.query(expr, scene.at)), query["name"]
    assert checked == 2


def test_throttling_panel_shows_each_gpus_reasons_beside_latency(scene: Scene) -> None:
    """The fake GPUs run thermally throttled in the workload's second half: the throttling panel shows the fraction
    of time per GPU and reason (throttling reasons only, never idle) next to the P95 latency of each operation."""
    targets = {q.ref_id: q for q in dashboard_queries() if q.panel == "Slow requests beside GPU throttling"}
    latency = scene.prometheus.query(substitute_grafana_variables(targets["A"].expr), scene.at)
    assert {"classify", "predict", "pipeline"} <= {s["metric"]["vision_operation"] for s in latency}, latency
    throttled = scene.prometheus.query(substitute_grafana_variables(targets["B"].expr), scene.at)
    found = {(s["metric"]["hw_name"], s["metric"]["gpu_throttle_reason"]): float(s["value"][1]) for s in throttled}
    assert set(found) == {(gpu, reason) for gpu in ("gpu0", "gpu1") for reason in ("sw_thermal", "hw_slowdown")}
    assert all(0 < fraction <= 1 for fraction in found.values()), found


def test_energy_panel_gives_joules_per_image_and_per_request(scene: Scene) -> None:
    """The energy panel turns vision.request.energy into joules per image per model and joules per request per
    operation, for the workload on fake GPUs (whose power is 250-450 W)."""
    targets = {q.ref_id: q for q in dashboard_queries() if q.panel == "GPU energy per image and per request"}
    per_image = scene.prometheus.query(substitute_grafana_variables(targets["A"].expr), scene.at)
    per_request = scene.prometheus.query(substitute_grafana_variables(targets["B"].expr), scene.at)
    images = {s["metric"]["vision_model_name"]: float(s["value"][1]) for s in per_image}
    requests = {
        (s["metric"]["vision_operation"], s["metric"]["vision_model_name"]): float(s["value"][1]) for s in per_request
    }
    assert images and requests, (per_image, per_request)
    assert all(0 < joules < 1e5 for joules in [*images.values(), *requests.values()]), (images, requests)
    assert {"yolov8n", "StableDiffusionInstructPix2PixPipeline"} <= {model for _, model in requests}, requests
