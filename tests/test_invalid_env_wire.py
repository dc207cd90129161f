"""Invalid OTEL_* variables really fall back to their defaults: the exporters deliver to a real collector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .test_wire import LOOPBACK_ENV, Rotel

pytestmark = pytest.mark.integration

PROGRAM = """
import otel_vision
handle = otel_vision.configure(service_name="fallback-check", gpu=False, logs=False)
with otel_vision.request("predict"):
    with otel_vision.stage("inference"):
        pass
print(handle.force_flush(timeout_millis=10000))
handle.shutdown()
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_bad_timeouts_and_endpoints_fall_back(tmp_path: Path, run_python: Any, protocol: str) -> None:
    """A negative or non-numeric timeout and a per-signal endpoint without a scheme are warned about, and the spans
    still reach the collector through the generic endpoint with the default timeout."""
    rotel = Rotel(tmp_path)
    try:
        port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
        result = run_python(
            PROGRAM,
            {
                **LOOPBACK_ENV,
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:1",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "-5",
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "ten",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_TRACES_SAMPLER": "bogus",
            },
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        for named in (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='127.0.0.1:1' is invalid",
            "OTEL_EXPORTER_OTLP_TIMEOUT='-5' is invalid",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT='ten' is invalid",
            "OTEL_TRACES_SAMPLER='bogus' is invalid",
        ):
            assert named in result.stderr
        rotel.wait_for("Name           : predict", "Name           : inference")
    finally:
        rotel.stop()
