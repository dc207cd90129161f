"""The otel-vision command: demo and doctor, run as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import otel_vision
from otel_vision.testing import CapturedTelemetry

from .conftest import ROOT
from .test_wire import Rotel


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COLUMNS", "PYTHONIOENCODING"))}
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
    """`otel-vision demo` runs offline: the device line, one tree per image with the three stages, a summary."""
    pytest.importorskip("torch")
    result = _cli("demo", "--images", "2", "--size", "96")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].startswith("device: cpu") and "gpu ms stays empty: no CUDA device" in out
    assert out.count("trace ") == 2
    for line in ("classify", "├─ preprocess", "├─ inference", "└─ postprocess"):
        assert line in out
    assert "per-stage summary" in out and "█" in out


@pytest.mark.parametrize("columns", [80, 200])
def test_demo_fits_an_ascii_terminal(columns: int) -> None:
    """With an ASCII-only encoding the demo draws with ASCII and every line fits the terminal's width."""
    pytest.importorskip("torch")
    result = _cli("demo", "--images", "3", "--size", "64", env={"PYTHONIOENCODING": "ascii", "COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert any("|- preprocess" in line for line in lines) and any("`- postprocess" in line for line in lines)


def test_summary_keeps_warm_up_apart(vision_telemetry: CapturedTelemetry) -> None:
    """The summary shows the first call on its own and the steady-state percentiles over the calls after it."""
    import time

    for seconds in (0.05, 0.001, 0.001, 0.001):
        with otel_vision.stage("inference"):
            time.sleep(seconds)
    header, row = otel_vision.render_summary(vision_telemetry.spans()).splitlines()
    assert header.split()[:4] == ["span", "count", "first", "ms"]
    cells = row.split()
    assert cells[0] == "inference" and cells[1] == "4"
    first, p50 = float(cells[2]), float(cells[3])
    assert first >= 50 and p50 < 50


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("demo", "--steps", "3"), {}, "--steps applies to pix2pix only"),
        (("demo", "--weights", "x.pt"), {}, "--weights applies to yolo only"),
        (("demo", "--device", "gpu"), {}, "--device 'gpu' is not a device"),
        (("demo", "--device", "cuda:7"), {}, "--device cuda:7"),
        (("demo", "--images", "0"), {}, "must be at least 1"),
        (("demo", "--images", "many"), {}, "expected a whole number"),
        (("demo", "yolo", "--weights", "missing.pt"), {}, "--weights 'missing.pt' does not exist"),
        (("demo",), {"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED is true"),
        (("demo", "resnet"), {}, "invalid choice: 'resnet'"),
    ],
)
def test_bad_options_get_a_sentence_and_status_2(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    """Every bad option or impossible device is one message on stderr and exit status 2, never a traceback."""
    pytest.importorskip("torch")
    if args[1:2] == ("yolo",):
        pytest.importorskip("ultralytics")
    result = _cli(*args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cuda_without_cuda_is_explained() -> None:
    """`--device cuda` on a machine without CUDA says why, with exit status 2."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _cli("demo", "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--device cuda:" in result.stderr and "use --device cpu" in result.stderr


def test_invalid_variable_warns_and_the_demo_runs() -> None:
    """An invalid OTEL_* variable is named on stderr, and the demo goes on with the default."""
    pytest.importorskip("torch")
    result = _cli("demo", "--images", "1", "--size", "32", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "smoke-signals"})
    assert result.returncode == 0, result.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='smoke-signals' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help() -> None:
    """`--version` names the versions; help texts are plain text with examples, without markup."""
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith(f"otel-vision {otel_vision.__version__} (")
    top = _cli("--help").stdout
    demo = _cli("demo", "--help").stdout
    assert "examples:" in top and "otel-vision doctor" in top
    assert "pix2pix  a tiny InstructPix2Pix pipeline" in demo and "--steps STEPS" in demo
    assert "`" not in top + demo and "[/" not in top + demo


@pytest.fixture
def tcp_only() -> Iterator[int]:
    """A port that accepts TCP connections and closes them: something listens, but not an OTLP receiver."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


class TestDoctor:
    def test_report_hides_secrets(self) -> None:
        """doctor shows header names and the endpoint without header values or user-info."""
        result = _cli(
            "doctor",
            "--json",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://tenant:pa55word@127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret,x-tenant=cv",
                "OTEL_SERVICE_NAME": "edge",
            },
        )
        report = json.loads(result.stdout)
        assert report["gpu"]["nvml"] is True or report["gpu"]["reason"]
        assert "torch" in report["optional"]
        config = report["config"]
        assert config["service_name"] == "edge" and config["protocol"] == "grpc"
        assert config["header_names"] == ["authorization", "x-tenant"]
        assert "s3cret" not in result.stdout and "pa55word" not in result.stdout and "tenant:" not in result.stdout
        traces = config["endpoints"]["traces"]
        assert traces["url"] == "http://***@127.0.0.1:9" and traces["source"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
        assert traces["reachable"].startswith("no")
        assert result.returncode == 1 and any("traces, metrics, logs endpoint" in p for p in report["problems"])

    def test_says_where_export_losses_are_counted(self) -> None:
        """doctor cannot see another process's losses, so it says where they are: the otel.sdk.* metrics."""
        result = _cli("doctor", "--no-network")
        assert "export losses" in result.stdout and "otel.sdk.*" in result.stdout

    def test_http_endpoints_get_signal_paths(self) -> None:
        """With http/protobuf the effective endpoints include the per-signal paths."""
        result = _cli("doctor", "--json", "--no-network", env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
        endpoints = json.loads(result.stdout)["config"]["endpoints"]
        assert endpoints["metrics"]["url"] == "http://localhost:4318/v1/metrics"
        assert result.returncode == 0

    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT='127.0.0.1:4317'"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT='-5'"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "ten"}, "OTEL_EXPORTER_OTLP_TIMEOUT='ten'"),
            ({"OTEL_TRACES_SAMPLER": "bogus"}, "OTEL_TRACES_SAMPLER='bogus'"),
            ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG='2'"),
            ({"OTEL_VISION_GPU_SAMPLE_INTERVAL": "often"}, "OTEL_VISION_GPU_SAMPLE_INTERVAL='often'"),
        ],
    )
    def test_invalid_variables_are_problems(self, env: dict[str, str], named: str) -> None:
        """Each invalid variable is listed under problems with its value, and doctor exits with status 2."""
        result = _cli("doctor", "--no-network", env=env)
        assert result.returncode == 2, result.stdout
        problems = result.stdout.split("\nproblems\n", 1)[1]
        assert f"  - {named} is invalid" in problems
        assert "GPUs (NVML)" in result.stdout

    @pytest.mark.integration
    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    def test_reachable_only_after_an_otlp_exchange(self, tmp_path: Path, tcp_only: int, protocol: str) -> None:
        """A real collector is reachable on both protocols; a port that merely accepts TCP is not."""
        rotel = Rotel(tmp_path)
        try:
            port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
            env = {"OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
            live = _cli("doctor", "--json", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
            dead = _cli("doctor", "--json", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{tcp_only}"})
        finally:
            rotel.stop()
        for signal, entry in json.loads(live.stdout)["config"]["endpoints"].items():
            assert entry["reachable"].startswith("yes"), (signal, entry)
        assert live.returncode == 0, live.stdout
        for entry in json.loads(dead.stdout)["config"]["endpoints"].values():
            assert entry["reachable"].startswith("no"), entry
        assert dead.returncode == 1

    def test_gpu_telemetry_not_on_without_nvml(self) -> None:
        """Where NVML is not usable, the GPU telemetry line does not say plain "on"."""
        result = _cli("doctor", "--no-network")
        gpu_line = next(line for line in result.stdout.splitlines() if line.startswith("  GPU telemetry"))
        if "NVML not usable" in result.stdout:
            assert "on:" not in gpu_line and ("inactive" in gpu_line or "partly" in gpu_line)


def test_waterfall_and_summary_rendering(vision_telemetry: CapturedTelemetry) -> None:
    """The waterfall draws the span tree in start order with durations; failed spans say ERROR."""
    with otel_vision.request("predict", attributes={"vision.batch.size": 8}):
        with otel_vision.stage("preprocess"):
            pass
        with pytest.raises(RuntimeError), otel_vision.stage("inference"):
            raise RuntimeError("x")
    spans = vision_telemetry.spans()
    lines = otel_vision.render_waterfall(spans).splitlines()
    assert lines[0].startswith("trace ")
    assert lines[1].lstrip().startswith("predict") and "batch=8" in lines[1]
    assert "├─ preprocess" in lines[2] and "└─ inference" in lines[3] and "ERROR RuntimeError" in lines[3]
    narrow = otel_vision.render_waterfall(spans, width=60, ascii=True).splitlines()
    assert all(len(line) <= 60 and line.isascii() for line in narrow) and "`- inference" in narrow[3]
    summary = otel_vision.render_summary(spans)
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
