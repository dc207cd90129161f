"""YAML lint, the Compose file, Prometheus rules and configs (promtool), dashboards and Grafana provisioning, and
the metric names they use checked against what the SDK emits. Each validator is shown to fail on a broken copy."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collector.support import (
    COLLECTOR,
    ROOT,
    collector_tool,
    dashboard_queries,
    load_yaml,
    metric_names,
    promql,
    require_tool,
    rule_expressions,
    substitute_grafana_variables,
)

RULES = COLLECTOR / "prometheus" / "rules" / "otel-vision.rules.yaml"
RULE_TESTS = COLLECTOR / "prometheus" / "tests" / "otel-vision.rules.test.yaml"
COMPOSE = COLLECTOR / "local" / "compose.yaml"
DASHBOARD = COLLECTOR / "grafana" / "dashboards" / "otel-vision-overview.json"
DATASOURCES = COLLECTOR / "grafana" / "provisioning" / "datasources" / "otel-vision.yaml"
PROVIDER = COLLECTOR / "grafana" / "provisioning" / "dashboards" / "otel-vision.yaml"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


# --- yamllint ---------------------------------------------------------------------------------------------------------
def test_every_yaml_file_passes_yamllint() -> None:
    """yamllint (warnings count as errors) passes on every YAML file under collector/."""
    tool = require_tool("yamllint")
    result = _run(tool, "--strict", "-c", str(COLLECTOR / ".yamllint.yaml"), "-f", "parsable", str(COLLECTOR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(COLLECTOR.rglob("*.yaml"))) >= 20


@pytest.mark.parametrize(
    ("original", "broken", "rule"),
    [
        ("  memory_limiter:\n", "  memory_limiter:\n  memory_limiter:\n", "key-duplicates"),
        ("receivers:\n  otlp:\n", "receivers:\n   otlp:\n", "indentation"),
        ("      level: info\n", "      level: info   \n", "trailing-spaces"),
    ],
    ids=["duplicate key", "bad indentation", "trailing spaces"],
)
def test_yamllint_rejects_a_broken_copy(tmp_path: Path, original: str, broken: str, rule: str) -> None:
    """A duplicated key, a mis-indented block or trailing spaces in the sidecar config fail yamllint."""
    tool = require_tool("yamllint")
    source = (COLLECTOR / "sidecar" / "otelcol.yaml").read_text()
    assert original in source
    copy_path = tmp_path / "otelcol.yaml"
    copy_path.write_text(source.replace(original, broken, 1))
    result = _run(tool, "--strict", "-c", str(COLLECTOR / ".yamllint.yaml"), "-f", "parsable", str(copy_path))
    assert result.returncode != 0
    assert f"({rule})" in result.stdout, result.stdout


# --- Docker Compose ---------------------------------------------------------------------------------------------------
def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("check-jsonschema")
    return _run(tool, "--builtin-schema", "vendor.compose-spec", str(path))


def test_compose_file_matches_the_compose_spec() -> None:
    """The local stack validates against the Compose specification (check-jsonschema's bundled schema)."""
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("    image: prom/prometheus:v3.14.0\n", "    imagee: prom/prometheus:v3.14.0\n"),
        ("    profiles: [jaeger]\n", "    profiles: jaeger-only\n"),
        ("          memory: 512M\n", "          memory: [512M]\n"),
    ],
    ids=["unknown service key", "profiles not a list", "memory not a scalar"],
)
def test_compose_validation_rejects_a_broken_copy(tmp_path: Path, original: str, broken: str) -> None:
    """An unknown key, a malformed profile list or a malformed limit fails the Compose schema."""
    source = COMPOSE.read_text()
    assert original in source
    copy_path = tmp_path / "compose.yaml"
    copy_path.write_text(source.replace(original, broken, 1))
    result = _check_compose(copy_path)
    assert result.returncode != 0, result.stdout


def test_compose_profiles_ports_images_and_mounts() -> None:
    """Three profiles; every port on the host's loopback; pinned images; limits everywhere; mounted files exist."""
    services = load_yaml(COMPOSE)["services"]
    profiles = {name: tuple(service["profiles"]) for name, service in services.items()}
    assert set(profiles.values()) == {("lgtm",), ("full",), ("jaeger",)}
    assert {n for n, p in profiles.items() if p == ("full",)} == {"otelcol", "tempo", "loki", "prometheus", "grafana"}
    for name, service in services.items():
        assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", service["image"]), f"{name}: {service['image']} is not pinned"
        assert {"cpus", "memory"} <= set(service["deploy"]["resources"]["limits"]), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
    assert services["otelcol"]["volumes"] == ["../sidecar/otelcol.yaml:/etc/otelcol/otelcol.yaml:ro"]
    assert services["otelcol"]["image"] == "otel/opentelemetry-collector-contrib:0.159.0"
    assert "--web.enable-otlp-receiver" in services["prometheus"]["command"]


# --- Prometheus: rules, rule unit tests, configurations ---------------------------------------------------------------
def test_promtool_accepts_the_rules() -> None:
    """promtool check rules, with every lint as a fatal error, accepts the rule file."""
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """A rule whose PromQL does not parse fails promtool check rules."""
    promtool = require_tool("promtool")
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(RULES.read_text().replace("> 0.95", "> > 0.95", 1))
    result = _run(promtool, "check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_every_alert_passes_its_unit_test() -> None:
    """promtool test rules passes the unit tests, which cover every alert with a firing case."""
    promtool = require_tool("promtool")
    result = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = load_yaml(RULE_TESTS)["tests"]
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert firing == {rule.name for rule in rule_expressions()}


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        (") > 3\n", ") > 30\n"),
        ("> 0.05\n", "> 0.5\n"),
        ("1x20'\n", "1x5'\n"),
        (
            'rate(otel_sdk_exporter_span_exported_total{error_type!=""}[5m])',
            "rate(otel_sdk_exporter_span_exported_total[5m])",
        ),
        ('rate(otel_sdk_processor_span_processed_total{error_type!=""}[5m])', "vector(0)"),
    ],
    ids=[
        "latency threshold",
        "error-ratio threshold",
        "shorter input series",
        "drops: delivered counted",
        "drops: queue",
    ],
)
def test_rule_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, broken: str) -> None:
    """Changing an alert threshold (or the data behind a test) makes promtool test rules fail."""
    promtool = require_tool("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    rules, tests = RULES.read_text(), RULE_TESTS.read_text()
    assert original in rules + tests
    (tmp_path / "rules" / RULES.name).write_text(rules.replace(original, broken, 1))
    (tmp_path / "tests" / RULE_TESTS.name).write_text(tests.replace(original, broken, 1))
    result = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


PROMETHEUS_3_OTLP_KEYS = {
    "promote_resource_attributes",
    "promote_all_resource_attributes",
    "ignore_resource_attributes",
    "translation_strategy",
    "keep_identifying_resource_attributes",
    "convert_histograms_to_nhcb",
    "promote_scope_metadata",
}


def test_prometheus_configurations_pass_promtool(tmp_path: Path) -> None:
    """The pull-route scrape job and the local stack's Prometheus config pass promtool check config."""
    # promtool here is Debian's 2.42, which predates the `otlp:` block (2.55+): that block is checked against the keys
    # Prometheus 3 documents, the rest of the file with promtool; a broken copy must fail.
    promtool = require_tool("promtool")
    scrape = _run(promtool, "check", "config", str(COLLECTOR / "prometheus" / "scrape-sdk-endpoint.yaml"))
    assert scrape.returncode == 0, scrape.stdout + scrape.stderr
    local = load_yaml(COLLECTOR / "local" / "prometheus.yaml")
    otlp = local.pop("otlp")
    assert set(otlp) <= PROMETHEUS_3_OTLP_KEYS
    assert otlp["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    local["rule_files"] = [str(RULES)]
    copy_path = tmp_path / "prometheus.yaml"
    copy_path.write_text(yaml.safe_dump(local))
    result = _run(promtool, "check", "config", str(copy_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    local["scrape_configs"][0]["scrape_interval"] = "fast"
    copy_path.write_text(yaml.safe_dump(local))
    assert _run(promtool, "check", "config", str(copy_path)).returncode != 0


# --- dashboards -------------------------------------------------------------------------------------------------------
lint_dashboards = collector_tool("lint_dashboards")


def test_dashboards_pass_the_lint() -> None:
    """The dashboards pass our dashboard-linter subset, run as a command."""
    promql()
    dashboards = sorted((COLLECTOR / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    result = _run(sys.executable, str(COLLECTOR / "tools" / "lint_dashboards.py"), *map(str, dashboards))
    assert result.returncode == 0, result.stdout + result.stderr


def _first_target(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    panel = next(p for p in lint_dashboards.panels(dashboard["panels"]) if p["title"] == title)
    return panel["targets"][0]


BROKEN_DASHBOARDS = {
    "hard-coded data source": "datasource must be",
    "rate over a fixed window": "use $__rate_interval",
    "no job filter": 'does not filter on job=~"$job"',
    "undefined variable": "undefined variable $cluster",
    "unparsable query": "does not parse",
    "latency without exemplars": "latency quantile without exemplars",
    "no unit": "no unit",
    "overlapping panels": "overlaps",
    "duplicate panel id": "duplicate panel id",
}


@pytest.mark.parametrize("change", sorted(BROKEN_DASHBOARDS))
def test_dashboard_lint_rejects_a_broken_copy(change: str) -> None:
    """Each broken copy of the overview dashboard is reported by the lint, naming the problem."""
    promql()
    dashboard = copy.deepcopy(json.loads(DASHBOARD.read_text()))
    rps = _first_target(dashboard, "Requests per second")
    latency = _first_target(dashboard, "Request latency P50 / P95 / P99 by operation")
    panels = [p for p in lint_dashboards.panels(dashboard["panels"]) if p["type"] != "row"]
    if change == "hard-coded data source":
        panels[0]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    elif change == "rate over a fixed window":
        rps["expr"] = rps["expr"].replace("$__rate_interval", "5m")
    elif change == "no job filter":
        rps["expr"] = rps["expr"].replace('job=~"$job", ', "")
    elif change == "undefined variable":
        rps["expr"] = rps["expr"].replace('job=~"$job"', 'job=~"$job", cluster="$cluster"')
    elif change == "unparsable query":
        rps["expr"] = rps["expr"].replace("sum by", "sum bye")
    elif change == "latency without exemplars":
        latency["exemplar"] = False
    elif change == "no unit":
        panels[0]["fieldConfig"]["defaults"].pop("unit")
    elif change == "overlapping panels":
        panels[1]["gridPos"] = dict(panels[0]["gridPos"])
    elif change == "duplicate panel id":
        panels[1]["id"] = panels[0]["id"]
    problems = lint_dashboards.lint(dashboard)
    assert any(BROKEN_DASHBOARDS[change] in p for p in problems), problems


def test_overview_has_the_panels_operators_asked_for() -> None:
    """The overview answers the YOLO and InstructPix2Pix operators' questions, one panel each."""
    titles = {q.panel for q in dashboard_queries()}
    for wanted in (
        "Requests per second",
        "Request latency P50 / P95 / P99 by operation",
        "Stage latency P50 / P95 / P99",
        "Success rate per instruction category",
        "Instruction categories ranked by success rate",
        "Per-step latency distribution (denoise_step)",
        "Latency by dtype (fp16 vs fp32), P95",
        "Queue time vs inference time (P95)",
        "GPU memory and linear prediction (1 h ahead)",
        "GPU utilization",
        "GPU temperature",
        "GPU power",
        "Detections per image",
        "Telemetry dropped or failed to export",
    ):
        assert wanted in titles
    dashboard = json.loads(DASHBOARD.read_text())
    types = {p["title"]: p["type"] for p in lint_dashboards.panels(dashboard["panels"])}
    assert types["Success rate per instruction category"] == "heatmap"
    assert types["Per-step latency distribution (denoise_step)"] == "heatmap"
    assert types["Instruction categories ranked by success rate"] == "bargauge"
    prediction = _first_target(dashboard, "GPU memory and linear prediction (1 h ahead)")
    assert "hw_gpu_memory_usage_bytes" in prediction["expr"]
    assert any("predict_linear" in q.expr for q in dashboard_queries())


# --- Grafana provisioning -------------------------------------------------------------------------------------------
def test_grafana_data_sources_link_traces_logs_metrics_and_exemplars() -> None:
    """Provisioned data sources link trace -> logs, trace -> metrics, exemplar -> trace and log -> trace."""
    sources = {s["uid"]: s for s in load_yaml(DATASOURCES)["datasources"]}
    assert {s["type"] for s in sources.values()} == {"prometheus", "tempo", "loki"}
    prometheus, tempo, loki = sources["prometheus"], sources["tempo"], sources["loki"]
    destinations = {d["name"]: d["datasourceUid"] for d in prometheus["jsonData"]["exemplarTraceIdDestinations"]}
    assert destinations == {"trace_id": "tempo", "traceID": "tempo"}
    to_logs = tempo["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki" and to_logs["filterByTraceID"] is True
    to_metrics = tempo["jsonData"]["tracesToMetrics"]
    assert to_metrics["datasourceUid"] == "prometheus"
    for query in to_metrics["queries"]:
        assert "$$__tags" in query["query"]
        promql().parse(query["query"].replace("$$__tags", 'job="x"'))
    (field,) = loki["jsonData"]["derivedFields"]
    assert (field["matcherType"], field["matcherRegex"], field["datasourceUid"]) == ("label", "trace_id", "tempo")
    for source in sources.values():
        for key, value in json.loads(json.dumps(source["jsonData"])).items():
            if isinstance(value, dict) and "datasourceUid" in value:
                assert value["datasourceUid"] in sources, key


def test_dashboard_provider_matches_the_compose_mounts() -> None:
    """The dashboard provider's path is where both Grafana profiles mount collector/grafana/dashboards."""
    (provider,) = load_yaml(PROVIDER)["providers"]
    path = provider["options"]["path"]
    services = load_yaml(COMPOSE)["services"]
    for name in ("grafana", "lgtm"):
        assert f"../grafana/dashboards:{path}:ro" in services[name]["volumes"], name


# --- names: dashboards and rules against what the SDK emits ---------------------------------------------------------
_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "W": "watts", "J": "joules", "Cel": "celsius"}


def _prometheus_names(name: str, unit: str, kind: str) -> set[str]:
    """OTLP -> Prometheus names (Prometheus 3 UnderscoreEscapingWithSuffixes, collector translator alike)."""
    base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    unit = re.sub(r"\{[^}]*\}", "", unit)
    suffix = _UNITS.get(unit, "")
    if unit == "1" and kind == "gauge":
        suffix = "ratio"
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if kind == "counter":
        return {f"{base}_total"}
    if kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


def _sdk_metrics() -> set[tuple[str, str, str]]:
    """(name, unit, kind) of every metric the SDK records, read from a real pipeline with a fake GPU."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    import otel_vision
    from otel_vision import _runtime
    from otel_vision.testing import FakeGpu, capture_telemetry

    fake = FakeGpu()
    fake.nvml.add_sample(0.5)
    with capture_telemetry(fake_gpu=fake, gpu_sample_interval=0.05) as captured:
        with otel_vision.request("predict", attributes={"vision.model.name": "m"}):
            with otel_vision.stage("inference", attributes={"vision.model.name": "m"}):
                fake.cuda.allocate(1024)
        otel_vision.queue_wait(time.time_ns() - 1_000_000, attributes={"vision.model.name": "m"})
        instruments = _runtime.current().instruments
        instruments.images.add(1, {"vision.model.name": "m"})
        instruments.detections.record(3, {"vision.model.name": "m"})
        deadline = time.monotonic() + 10
        while "hw.gpu.utilization" not in captured.metric_names() and time.monotonic() < deadline:
            time.sleep(0.05)
        captured.flush()  # metrics recorded in the export path (durations, request energy) are in
        data = captured.metric_reader.get_metrics_data()
    found = set()
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if isinstance(metric.data, Histogram):
                    kind = "histogram"
                elif isinstance(metric.data, Sum) and metric.data.is_monotonic:
                    kind = "counter"
                else:
                    assert isinstance(metric.data, (Sum, Gauge))
                    kind = "gauge"
                found.add((metric.name, metric.unit or "", kind))
    return found


def _sdk_loss_counters() -> set[str]:
    from otel_vision import attributes

    return {value for key, value in vars(attributes).items() if key.startswith("METRIC_SDK_")}


def test_dashboards_and_rules_use_the_names_the_sdk_emits() -> None:
    """Every otel_vision metric name in a dashboard or a rule is the OTLP->Prometheus name of an SDK metric."""
    promql()
    sdk = _sdk_metrics()
    assert {name for name, _, _ in sdk} >= {"vision.request.duration", "hw.gpu.utilization", "gpu.memory.allocated"}
    emitted = set().union(*(_prometheus_names(*metric) for metric in sdk))
    used = set()
    for query in dashboard_queries():
        used |= metric_names(substitute_grafana_variables(query.expr))
    for rule in rule_expressions():
        used |= metric_names(rule.expr)
    # The SDK's loss counters (otel.sdk.*) only exist once something was exported or lost: their names come from
    # otel_vision.attributes, translated like the others (counters in {item} units).
    emitted |= {f"{name.replace('.', '_')}_total" for name in _sdk_loss_counters()}
    ours = {n for n in used if not n.startswith(("otelcol_", "traces_span_metrics_")) and n != "target_info"}
    assert ours <= emitted, sorted(ours - emitted)
    assert "otel_sdk_exporter_span_exported_total" in ours
    assert {"hw_gpu_utilization_ratio", "vision_requests_total", "hw_energy_joules_total"} <= emitted


def test_names_page_lists_every_prometheus_name_the_sdk_produces() -> None:
    """docs/names.md's Prometheus column names every metric the SDK emits, as Prometheus stores it from OTLP."""
    names_page = (ROOT / "docs" / "names.md").read_text()
    missing = []
    for name, unit, kind in _sdk_metrics():
        prometheus = _prometheus_names(name, unit, kind)
        stem = min(prometheus, key=len).removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        if not any(n in names_page for n in prometheus) and f"`{stem}_*`" not in names_page:
            missing.append(f"{name} ({unit}, {kind}) -> {sorted(prometheus)}")
    assert not missing, missing
