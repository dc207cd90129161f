"""stdlib logging records exported as OTLP logs, correlated with the active span."""

from __future__ import annotations

import logging
from typing import Any

import otel_vision
from otel_vision.testing import CapturedTelemetry

log = logging.getLogger("app.pipeline")


def test_records_carry_the_active_trace_and_span(vision_telemetry: CapturedTelemetry) -> None:
    """A record logged inside a stage carries that stage's trace and span ids; one outside carries none."""
    log.setLevel(logging.INFO)
    with otel_vision.stage("inference"):
        log.info("ran %d boxes", 3)
    log.warning("outside")
    inside, outside = vision_telemetry.logs()
    span = vision_telemetry.span("inference")
    assert inside.log_record.body == "ran 3 boxes"
    assert inside.log_record.trace_id == span.context.trace_id
    assert inside.log_record.span_id == span.context.span_id
    assert outside.log_record.trace_id in (0, None)


def test_level_threshold_and_sdk_records(vision_telemetry: CapturedTelemetry) -> None:
    """Records below INFO are not exported, nor are the OpenTelemetry SDK's own records."""
    log.setLevel(logging.DEBUG)
    log.debug("too chatty")
    logging.getLogger("opentelemetry.exporter.otlp").error("export failed")
    log.error("kept")
    assert [r.log_record.body for r in vision_telemetry.logs()] == ["kept"]


def test_unconfigured_logging_still_prints_warnings(run_python: Any) -> None:
    """Adding our handler does not silence Python's default printing of warnings to stderr."""
    result = run_python(
        """
        import logging, otel_vision
        handle = otel_vision.configure(exporter="none", gpu=False)
        logging.getLogger("app").warning("disk almost full")
        handle.shutdown()
        logging.getLogger("app").warning("after shutdown")
        """
    )
    assert result.returncode == 0
    assert "disk almost full" in result.stderr and "after shutdown" in result.stderr
