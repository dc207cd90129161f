"""Your own program's waterfall in the terminal: OTEL_TRACES_EXPORTER=waterfall, configure(exporter=...), entry point."""

from __future__ import annotations

from typing import Any

PROGRAM = """
import otel_vision
otel_vision.configure(service_name="mine", gpu=False{extra})
with otel_vision.request("predict"):
    with otel_vision.stage("preprocess"):
        pass
    with otel_vision.stage("inference"):
        pass
print("program output")
"""


def test_variable_selects_the_waterfall(run_python: Any) -> None:
    """OTEL_TRACES_EXPORTER=waterfall prints each trace as a tree on stderr; stdout stays the program's own."""
    result = run_python(
        PROGRAM.format(extra=""),
        {"OTEL_TRACES_EXPORTER": "waterfall", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "program output\n"
    lines = result.stderr.splitlines()
    assert lines[0].startswith("trace ") and lines[1].lstrip().startswith("predict")
    assert "├─ preprocess" in lines[2] and "└─ inference" in lines[3]


def test_argument_selects_the_waterfall_in_ascii(run_python: Any) -> None:
    """configure(exporter="waterfall") does the same, in ASCII where stderr cannot encode box drawing."""
    result = run_python(PROGRAM.format(extra=', exporter="waterfall"'), {"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "|- preprocess" in result.stderr and "`- inference" in result.stderr
    assert "Traceback" not in result.stderr


def test_registered_under_the_standard_entry_point_group() -> None:
    """Any OpenTelemetry distro finds the exporter as `waterfall` in `opentelemetry_traces_exporter`."""
    from importlib.metadata import entry_points

    import otel_vision

    (entry,) = entry_points(group="opentelemetry_traces_exporter", name="waterfall")
    assert entry.load() is otel_vision.WaterfallSpanExporter
