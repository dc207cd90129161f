"""The otel-vision command: demo and doctor, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import otel_vision
from otel_vision._console import render_summary, render_waterfall
from otel_vision.testing import CapturedTelemetry

from .conftest import ROOT


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "otel_vision.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )


def test_demo_prints_the_waterfall() -> None:
    """`otel-vision demo` runs offline and shows one tree per image with the three stages and a summary."""
    pytest.importorskip("torch")
    result = _cli("demo", "--images", "2", "--size", "96")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("trace ") == 2
    for line in ("classify", "├─ preprocess", "├─ inference", "└─ postprocess"):
        assert line in out
    assert "per-stage summary" in out and "█" in out


def test_demo_rejects_bad_configuration() -> None:
    """A bad variable stops the demo with a one-line message naming it, exit status 2."""
    pytest.importorskip("torch")
    result = _cli("demo", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "smoke-signals"})
    assert result.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in result.stderr and "Traceback" not in result.stderr


class TestDoctor:
    def test_report(self) -> None:
        """doctor reports NVML (or why not), torch, optional libraries and the effective exporter setup."""
        result = _cli(
            "doctor",
            "--json",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret,x-tenant=cv",
                "OTEL_SERVICE_NAME": "edge",
            },
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["gpu"]["nvml"] is True or report["gpu"]["reason"]
        assert "torch" in report["optional"]
        config = report["config"]
        assert config["service_name"] == "edge" and config["protocol"] == "grpc"
        assert config["header_names"] == ["authorization", "x-tenant"]
        assert "s3cret" not in result.stdout
        traces = config["endpoints"]["traces"]
        assert traces["url"] == "http://127.0.0.1:9" and traces["source"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
        assert traces["reachable"].startswith("no")

    def test_http_endpoints_get_signal_paths(self) -> None:
        """With http/protobuf the effective endpoints include the per-signal paths."""
        result = _cli("doctor", "--json", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
        endpoints = json.loads(result.stdout)["config"]["endpoints"]
        assert endpoints["metrics"]["url"] == "http://localhost:4318/v1/metrics"

    def test_invalid_configuration_exits_non_zero(self) -> None:
        """Only an invalid configuration makes doctor fail; the report still prints."""
        result = _cli("doctor", env={"OTEL_VISION_GPU_SAMPLE_INTERVAL": "often"})
        assert result.returncode == 2
        assert "INVALID: OTEL_VISION_GPU_SAMPLE_INTERVAL='often'" in result.stdout
        assert "GPUs (NVML)" in result.stdout


def test_waterfall_and_summary_rendering(vision_telemetry: CapturedTelemetry) -> None:
    """The waterfall draws the span tree in start order with durations; failed spans say ERROR."""
    with otel_vision.request("predict", attributes={"vision.batch.size": 8}):
        with otel_vision.stage("preprocess"):
            pass
        with pytest.raises(RuntimeError), otel_vision.stage("inference"):
            raise RuntimeError("x")
    spans = vision_telemetry.spans()
    lines = render_waterfall(spans).splitlines()
    assert lines[0].startswith("trace ")
    assert lines[1].lstrip().startswith("predict") and "batch=8" in lines[1]
    assert "├─ preprocess" in lines[2] and "└─ inference" in lines[3] and "ERROR RuntimeError" in lines[3]
    summary = render_summary(spans)
    assert summary.splitlines()[0].split()[:2] == ["span", "count"] and "inference" in summary


def test_request_records_request_metrics(vision_telemetry: CapturedTelemetry) -> None:
    """request() records vision.request.duration and vision.requests by operation, model and error.type."""
    for fail in (False, True, False):
        try:
            with otel_vision.request("predict", attributes={"vision.model.name": "m", "request.id": "abc"}):
                if fail:
                    raise TimeoutError
        except TimeoutError:
            pass
    counts = {tuple(sorted(p.attributes.items())): p.value for p in vision_telemetry.points("vision.requests")}
    assert counts == {
        (("vision.model.name", "m"), ("vision.operation", "predict")): 2,
        (("error.type", "TimeoutError"), ("vision.model.name", "m"), ("vision.operation", "predict")): 1,
    }
    assert sum(p.count for p in vision_telemetry.points("vision.request.duration")) == 3
    assert vision_telemetry.points("vision.stage.duration") == []
    assert vision_telemetry.spans("predict")[0].attributes["vision.operation"] == "predict"
