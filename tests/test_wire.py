"""Telemetry on the wire, received by a real, independent OTLP receiver (rotel), and a dead collector."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PROGRAM = """
import logging, otel_vision
logging.basicConfig(level=logging.INFO)
handle = otel_vision.configure(service_name="wire-test", gpu=False)
with otel_vision.stage("request", attributes={"vision.model.name": "tiny-cnn", "vision.batch.size": 2}):
    with otel_vision.stage("inference"):
        logging.getLogger("app").info("inference ran")
    try:
        with otel_vision.stage("postprocess"):
            raise ValueError("no boxes")
    except ValueError:
        pass
handle.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


LOOPBACK_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
"""Added to every child process's environment: loopback traffic never goes through a proxy."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Rotel:
    """A rotel collector on free loopback ports that logs, in detail, every span, metric and log record it receives.

    By default it drops what it receives (``--exporter blackhole``); ``extra`` replaces that, e.g. to forward OTLP.
    """

    def __init__(
        self,
        workdir: Path,
        name: str = "rotel",
        extra: Sequence[str] = ("--exporter", "blackhole"),
        *,
        verbosity: str = "detailed",
        ports: tuple[int, int] | None = None,
    ) -> None:
        rotel = pytest.importorskip("rotel", reason="rotel is not installed (a dev dependency)")
        binary = Path(rotel.__file__).parent / "rotel-agent"
        self.grpc_port, self.http_port = ports if ports is not None else (_free_port(), _free_port())
        self.output = workdir / f"{name}.out"
        self._file = self.output.open("w")
        self.process = subprocess.Popen(
            [
                str(binary), "start",
                "--debug-log", "traces", "--debug-log", "metrics", "--debug-log", "logs",
                "--debug-log-verbosity", verbosity,
                "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
                "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
                "--pid-file", str(workdir / f"{name}.pid"), "--log-file", str(workdir / f"{name}.log"),
                *extra,
            ],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LOOPBACK_ENV},
        )  # fmt: skip
        try:
            _wait_port(self.grpc_port)
            _wait_port(self.http_port)
        except BaseException:
            self.stop()
            raise

    def text(self) -> str:
        return _ANSI.sub("", self.output.read_text(errors="replace"))

    def wait_for(self, *needles: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.2)
        raise AssertionError(f"rotel did not receive {needles}; it logged:\n{self.text()[-3000:]}")

    def received(self, kind: str = "spans") -> int:
        """With ``verbosity="basic"``: how many spans (``spans``, ``logs``, ``metrics``) rotel has received."""
        return sum(int(n) for n in re.findall(rf"\b{kind}=(\d+)", self.text()))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._file.close()


@pytest.fixture
def rotel(tmp_path: Path) -> Iterator[Rotel]:
    collector = Rotel(tmp_path)
    yield collector
    collector.stop()


def _span_blocks(text: str) -> dict[str, str]:
    """Map span name to its debug-log block."""
    blocks = {}
    for block in re.split(r"\nSpan #\d+\n", text)[1:]:
        name = re.search(r"Name\s+: (\S+)", block)
        if name:
            blocks[name.group(1)] = block.split("\nResource")[0]
    return blocks


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_metrics_and_correlated_logs_arrive(rotel: Rotel, run_python: Any, protocol: str) -> None:
    """Over gRPC and HTTP, spans with attributes, the stage histogram and logs carrying the span's ids arrive."""
    port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    result = run_python(PROGRAM, env)
    assert result.returncode == 0, result.stderr
    text = rotel.wait_for("Name           : postprocess", "vision.stage.duration", "Body: Str(inference ran)")

    spans = _span_blocks(text)
    assert {"request", "inference", "postprocess"} <= spans.keys()
    assert "vision.model.name: Str(tiny-cnn)" in spans["request"]
    assert "vision.batch.size: Int(2)" in spans["request"]
    assert "error.type: Str(ValueError)" in spans["postprocess"]
    assert "service.name: Str(wire-test)" in text

    trace_id = re.search(r"Trace ID\s+: (\w+)", spans["inference"]).group(1)
    span_id = re.search(r"\n\s+ID\s+: (\w+)", spans["inference"]).group(1)
    log = text[text.index("Body: Str(inference ran)") :]
    assert re.search(r"Trace ID\s+: (\w+)", log).group(1) == trace_id
    assert re.search(r"Span ID\s+: (\w+)", log).group(1) == span_id

    metrics = text[text.index("Name: vision.stage.duration") :]
    assert "Unit: s" in metrics and "vision.stage: Str(inference)" in metrics


def test_dead_collector_does_not_block_the_program(run_python: Any) -> None:
    """With nothing listening, stages run at full speed and shutdown() returns within its documented bound."""
    port = _free_port()
    result = run_python(
        """
        import json, time, otel_vision
        handle = otel_vision.configure(service_name="dead", gpu=False)
        start = time.monotonic()
        for _ in range(300):
            with otel_vision.stage("inference"):
                pass
        work = time.monotonic() - start
        handle.force_flush(timeout_millis=100)
        start = time.monotonic()
        handle.shutdown(timeout=3)
        print(json.dumps({"work": work, "shutdown": time.monotonic() - start}))
        """,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import json

    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # Generous bounds: 300 stages take ~10 ms; they must not wait on the exporter (1 s timeout, retries).
    assert figures["work"] < 1.0, figures
    assert figures["shutdown"] < 3.5, figures


def test_demo_exports_when_an_endpoint_is_set(rotel: Rotel, tmp_path: Path) -> None:
    """`otel-vision demo` with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans and metrics to the collector."""
    pytest.importorskip("torch")
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{rotel.grpc_port}"
    result = subprocess.run(
        [sys.executable, "-m", "otel_vision.cli", "demo", "--images", "1", "--size", "64"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"traces: [1-9]\d* spans delivered\n", result.stdout), result.stdout
    assert "lost" not in result.stdout
    text = rotel.wait_for("Name           : classify", "Name           : inference", "vision.stage.duration")
    assert "service.name: Str(otel-vision-demo)" in text and "vision.request.duration" in text


def test_flushed_at_exit_without_shutdown(rotel: Rotel, run_python: Any) -> None:
    """A program that never calls shutdown() still delivers its last spans and logs: the pipeline flushes at exit."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rotel.grpc_port}", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    result = run_python(
        """
        import logging, otel_vision
        otel_vision.configure(service_name="exit-test", gpu=False)
        with otel_vision.stage("last-words"):
            logging.getLogger("app").warning("goodbye")
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    rotel.wait_for("Name           : last-words", "Body: Str(goodbye)")
