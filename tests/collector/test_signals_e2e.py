"""All three signals end to end through a real collector process standing in for the sidecar.

The otel_vision demos (the CNN and the tiny InstructPix2Pix pipeline) export traces, metrics and logs over OTLP/gRPC
to a first rotel collector on loopback (the sidecar's role: receive on 127.0.0.1, add pod identity, forward), which
forwards OTLP to a second rotel (the backend's role). Both log everything they receive, so the test compares what
entered the first hop with what left the second, and checks that logs, spans and metric exemplars share trace ids.
rotel (PyPI) stands in for otelcol-contrib, which no registry that CI reaches ships (docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import test_wire
from tests.collector.support import LOOPBACK_ENV, ROOT

pytestmark = pytest.mark.integration

POD_IDENTITY = {"k8s.pod.name": "pix2pix-7d9c-abcde", "k8s.namespace.name": "vision"}
DEMO = """
import logging
logging.basicConfig(level=logging.INFO)  # an application's own logging setup; the demo logs at INFO
from otel_vision._demo import run, run_pix2pix
run(images=2, size=64)
run_pix2pix(images=1, steps=2, size=32)
"""


RotelProcess = test_wire.Rotel
"""The same loopback rotel launcher as the SDK's wire tests."""


# --- parsing rotel's detailed debug output -------------------------------------------------------------------------
_TYPED = re.compile(r"^\s*-> (?P<key>[^:]+): (?P<type>\w+)\((?P<value>.*)\)$")
_PLAIN = re.compile(r"^\s*-> (?P<key>[^:]+): (?P<value>.*)$")
_FIELD = re.compile(r"^\s*(?P<key>[A-Za-z][A-Za-z ]*?)\s*: (?P<value>.*)$")


@dataclass
class Record:
    kind: str
    resource: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    points: list[dict[str, str]] = field(default_factory=list)
    exemplars: list[dict[str, str]] = field(default_factory=list)


def parse(text: str) -> list[Record]:
    """Spans, log records and metrics, each with its resource attributes."""
    records: list[Record] = []
    resource: dict[str, str] = {}
    current: Record | None = None
    target: dict[str, str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("ResourceSpans #", "ResourceMetrics #", "ResourceLog")):
            resource, current = {}, None
            target = resource
        elif stripped.startswith(("Span #", "LogRecord #", "Metric #")):
            current = Record(stripped.split(" #")[0], resource)
            records.append(current)
            target = current.fields
        elif stripped.startswith("Scope"):
            target = None
        elif current is not None and re.match(r"^\w*DataPoints #\d+$", stripped):
            current.points.append({})
            target = current.points[-1]
        elif current is not None and re.match(r"^Exemplar #\d+$", stripped):
            current.exemplars.append({})
            target = current.exemplars[-1]
        elif stripped == "Attributes:" and current is not None:
            target = current.attributes
        elif target is not None and (match := _TYPED.match(line) or _PLAIN.match(line)):
            target[match["key"].strip()] = match["value"]
        elif current is not None and (match := _FIELD.match(line)):
            current.fields[match["key"].strip()] = match["value"].strip()
    return records


def _spans(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind == "Span"]


def _logs(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind == "LogRecord"]


def _metrics(records: list[Record]) -> dict[str, list[Record]]:
    """Metric records by name (each export of each process is one record)."""
    found: dict[str, list[Record]] = {}
    for record in records:
        if record.kind == "Metric":
            found.setdefault(record.fields["Name"], []).append(record)
    return found


def _span_key(span: Record) -> tuple[Any, ...]:
    return (span.fields["Trace ID"], span.fields["ID"], span.fields["Name"], tuple(sorted(span.attributes.items())))


def _wait_for(collector: RotelProcess, check: Any, timeout: float = 30.0) -> list[Record]:
    deadline = time.monotonic() + timeout
    while True:
        records = parse(collector.text())
        if check(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


@dataclass
class Hops:
    sent: list[Record]
    received: list[Record]


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hops]:
    pytest.importorskip("diffusers")
    workdir = tmp_path_factory.mktemp("e2e")
    backend = RotelProcess(workdir, "backend", ["--exporter", "blackhole"])
    identity = ",".join(f"{k}={v}" for k, v in POD_IDENTITY.items())
    sidecar = None
    try:
        sidecar = RotelProcess(
            workdir,
            "sidecar",
            [
                "--exporter", "otlp",
                "--otlp-exporter-endpoint", f"http://127.0.0.1:{backend.grpc_port}",
                "--otel-resource-attributes", identity,
            ],
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROTEL_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sidecar.grpc_port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            HF_HUB_OFFLINE="1",
            **LOOPBACK_ENV,
        )
        result = subprocess.run(
            [sys.executable, "-c", DEMO], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        assert result.returncode == 0, result.stderr[-3000:]

        def complete(records: list[Record]) -> bool:
            names = {s.fields.get("Name") for s in _spans(records)}
            return {"classify", "pipeline", "denoise_step"} <= names and len(_logs(records)) >= 3

        sent = _wait_for(sidecar, complete)
        received = _wait_for(backend, lambda records: len(records) >= len(sent) and complete(records))
        yield Hops(sent, received)
    finally:
        if sidecar is not None:
            sidecar.stop()
        backend.stop()


def test_traces_arrive_intact_through_the_collector(hops: Hops) -> None:
    """Every span the sidecar received reaches the backend with the same ids, name and attributes."""
    sent = {_span_key(s) for s in _spans(hops.sent)}
    received = {_span_key(s) for s in _spans(hops.received)}
    assert sent and sent == received
    names = {s.fields["Name"] for s in _spans(hops.received)}
    assert {"classify", "preprocess", "inference", "postprocess", "pipeline", "denoise", "denoise_step"} <= names
    pipeline = next(s for s in _spans(hops.received) if s.fields["Name"] == "pipeline")
    assert pipeline.attributes["vision.operation"] == "pipeline"
    assert pipeline.attributes["vision.instruction.category"] == "make"
    assert pipeline.attributes["vision.dtype"] == "float32"


def test_resource_keeps_the_service_and_gains_pod_identity(hops: Hops) -> None:
    """The collector adds the pod's identity to every resource and keeps the application's service.name."""
    for record in hops.received:
        assert record.resource["service.name"] in ("otel-vision-demo", "otel-vision-demo-pix2pix"), record.resource
        for key, value in POD_IDENTITY.items():
            assert record.resource[key] == value
    assert {r.kind for r in hops.received} == {"Span", "LogRecord", "Metric"}


def test_metrics_arrive_with_units_and_attributes(hops: Hops) -> None:
    """The request and stage histograms and the request counter arrive with their units, types and attributes."""
    metrics = _metrics(hops.received)
    expected = {
        "vision.request.duration": ("s", "Histogram"),
        "vision.stage.duration": ("s", "Histogram"),
        "vision.requests": ("{request}", "Sum"),
    }
    for name, (unit, data_type) in expected.items():
        assert name in metrics, sorted(metrics)
        assert {(m.fields["Unit"], m.fields["DataType"]) for m in metrics[name]} == {(unit, data_type)}
    stages = {p.get("vision.stage") for m in metrics["vision.stage.duration"] for p in m.points}
    assert {"preprocess", "inference", "postprocess", "denoise_step", "vae_decode"} <= stages
    operations = {
        (p.get("vision.operation"), p.get("vision.instruction.category"))
        for m in metrics["vision.requests"]
        for p in m.points
    }
    assert {("classify", None), ("pipeline", "make")} <= operations


def test_logs_share_trace_ids_with_spans(hops: Hops) -> None:
    """Log records written inside a request carry that request span's trace and span ids, and every log arrives."""
    spans = {s.fields["ID"]: s for s in _spans(hops.received)}
    logs = _logs(hops.received)
    bodies = {log.fields["Body"] for log in logs}
    assert bodies == {log.fields["Body"] for log in _logs(hops.sent)}
    # The CNN demo logs inside each classify request; the pix2pix demo logs after the pipeline call returned.
    correlated = [log for log in logs if log.fields["Body"].startswith("Str(image ")]
    assert len(correlated) == 2, bodies
    for log in correlated:
        span = spans[log.fields["Span ID"]]
        assert span.fields["Name"] == "classify"
        assert span.fields["Trace ID"] == log.fields["Trace ID"]
    assert any(body.startswith("Str(edited image 0") for body in bodies), bodies


def test_metric_exemplars_point_at_received_traces(hops: Hops) -> None:
    """Histogram exemplars (what Grafana links to a trace) name traces and spans that arrived."""
    span_ids = {(s.fields["Trace ID"], s.fields["ID"]) for s in _spans(hops.received)}
    exemplars = [
        (e["Trace ID"], e["Span ID"])
        for name in ("vision.request.duration", "vision.stage.duration")
        for m in _metrics(hops.received)[name]
        for e in m.exemplars
    ]
    assert exemplars
    assert set(exemplars) <= span_ids
