"""The GPU export path is bounded: deferred attributes are applied and released, waiting spans are capped.

Runs on the fake CUDA backend (a real device's tests are the `gpu`-marked ones in tests/test_gpu_real.py).
"""

from __future__ import annotations

import gc
import weakref

from opentelemetry import trace

import otel_vision
from otel_vision import _runtime
from otel_vision.gpu._spans import MAX_PENDING
from otel_vision.testing import CapturedTelemetry, FakeGpu


class _Timestep:
    """A deferred attribute source (as diffusers' timestep copy is): it must be released once used."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> dict[str, float]:
        return {"diffusion.step.timestep": self.value}


def _stage_with_deferred(value: float) -> weakref.ref[_Timestep]:
    source = _Timestep(value)
    with otel_vision.stage("denoise_step"):
        probe = _runtime.current().gpu
        assert probe is not None
        probe.defer(trace.get_current_span(), source)
    return weakref.ref(source)


def test_deferred_attributes_are_applied_then_released(vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
    """A value deferred to the export path lands on the span once its events complete, and nothing keeps it."""
    refs = [_stage_with_deferred(float(i)) for i in range(50)]
    vision_telemetry.flush()
    spans = vision_telemetry.spans("denoise_step")
    assert sorted(s.attributes["diffusion.step.timestep"] for s in spans) == [float(i) for i in range(50)]
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_deferred_attributes_are_released_when_events_never_complete(
    vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
) -> None:
    """Events that never complete: the span is exported without the deferred value, and the value is released."""
    fake_gpu.cuda.hold_events()
    ref = _stage_with_deferred(1.0)
    vision_telemetry.handle.force_flush(timeout_millis=100)
    (span,) = vision_telemetry.spans("denoise_step")
    assert "gpu.time" not in span.attributes and "diffusion.step.timestep" not in span.attributes
    gc.collect()
    assert ref() is None
    assert _incomplete(vision_telemetry) == {"timeout": 1}


def _incomplete(captured: CapturedTelemetry) -> dict[str, int]:
    return {p.attributes["error.type"]: p.value for p in captured.points("vision.gpu.incomplete_spans")}


def test_waiting_spans_are_capped(vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
    """With events held, spans beyond the cap are exported at once without gpu.time, and counted; the ones that
    waited are exported when the events complete. Nothing grows without bound."""
    fake_gpu.cuda.hold_events()
    extra = 300
    for _ in range(MAX_PENDING + extra):
        with otel_vision.stage("inference"):
            fake_gpu.cuda.run(0.001)
    # Exported once handed to the processors (not flushed: that would pass the waiting ones on): the overflow,
    # without gpu.time.
    assert vision_telemetry.handle._span_ends is not None
    vision_telemetry.handle._span_ends.drain()
    early = vision_telemetry.span_exporter.get_finished_spans()
    assert len(early) == extra and all("gpu.time" not in s.attributes for s in early)
    fake_gpu.cuda.complete_events()
    vision_telemetry.flush()
    spans = vision_telemetry.spans("inference")
    assert len(spans) == MAX_PENDING + extra
    assert sum("gpu.time" in s.attributes for s in spans) == MAX_PENDING
    assert _incomplete(vision_telemetry) == {"waiting_full": extra}
