"""The tracer, instruments and GPU probe that `stage()` and the instrumentors use right now.

Before `configure()` they come from the global OpenTelemetry API (so otel_vision works inside an application that set
up OpenTelemetry itself); `configure()` and `otel_vision.testing` install their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanContext

from otel_vision._metrics import Instruments
from otel_vision._version import __version__

if TYPE_CHECKING:
    from otel_vision._light import LightSpans
    from otel_vision.gpu._nvtx import NvtxRanges
    from otel_vision.gpu._spans import SpanGpuProbe

SCOPE: Final = "otel_vision"


@dataclass(frozen=True)
class Runtime:
    """What the hot path needs, swapped as one object so a reader never sees half of a new configuration."""

    tracer: trace.Tracer
    instruments: Instruments
    gpu: SpanGpuProbe | None = None
    nvtx: NvtxRanges | None = None
    span_metrics: bool = False
    """``True`` when the pipeline records duration metrics from finished spans (off the inference thread)."""
    light: LightSpans | None = None
    """Sets up the spans of stages without the SDK tracer's per-span work, when nothing can tell the difference."""


def _from_globals() -> Runtime:
    return Runtime(
        tracer=trace.get_tracer(SCOPE, __version__),
        instruments=Instruments(metrics.get_meter(SCOPE, __version__)),
    )


_current: Runtime = _from_globals()


def current() -> Runtime:
    """Return the active runtime."""
    return _current


def disabled() -> Runtime:
    """A runtime that records nothing (after `shutdown()`: spans go nowhere rather than to a stopped pipeline)."""
    return Runtime(tracer=trace.NoOpTracer(), instruments=Instruments(metrics.NoOpMeter(SCOPE)))


def install(runtime: Runtime | None) -> Runtime:
    """Make ``runtime`` active (``None``: back to the global API providers) and return the previous one."""
    global _current
    previous = _current
    _current = runtime if runtime is not None else _from_globals()
    return previous


_MAX_EXPECTED: Final = 10_000
expected_links: dict[int, Sequence[SpanContext]] = {}
"""Batch span id -> the span contexts of its requests, registered by `batch()` and taken by the export path
(`otel_vision._tail.BatchFanOut`), which turns them into links and member spans."""


def expect_links(span_id: int, requests: Sequence[SpanContext]) -> None:
    """Register the requests of a starting batch span (kept here, where `batch()` reaches them without the SDK)."""
    expected_links[span_id] = requests
    if len(expected_links) > _MAX_EXPECTED:  # batch spans that never reached our processor (another provider)
        expected_links.pop(next(iter(expected_links)), None)
