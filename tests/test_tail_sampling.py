"""In-process tail sampling: whole traces kept for errors, OOM, slowness and throttling, a ratio of the rest,
metrics counting every request whatever is dropped."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_vision
from otel_vision import _config
from otel_vision._tail import TailSampler
from otel_vision.testing import CapturedTelemetry, capture_telemetry


class CudaOOM(RuntimeError):
    error_type = "cuda_oom"


def _request(kind: str, operation: str = "predict") -> None:
    try:
        with otel_vision.request(operation, attributes={"app.kind": kind}):
            with otel_vision.stage("inference"):
                if kind == "slow":
                    time.sleep(0.08)
                elif kind == "error":
                    raise ValueError("bad frame")
                elif kind == "oom":
                    raise CudaOOM("CUDA out of memory")
                elif kind == "throttled":
                    trace.get_current_span().set_attribute("gpu.throttle.reasons", ["sw_thermal"])
    except (ValueError, CudaOOM):
        pass


def _kept_kinds(captured: CapturedTelemetry) -> Counter[str]:
    return Counter(str(s.attributes["app.kind"]) for s in captured.spans() if "app.kind" in s.attributes)


def _decisions(captured: CapturedTelemetry) -> dict[tuple[str, str], int]:
    return {
        (p.attributes["vision.tail_sampling.decision"], p.attributes["vision.tail_sampling.reason"]): p.value
        for p in captured.points("vision.tail_sampling.traces")
    }


def test_keeps_errors_oom_slow_and_throttled_traces_whole_and_drops_the_rest() -> None:
    """A burst of fast, slow, failing, OOM and throttled requests with ratio 0 and a 50 ms threshold: every
    interesting trace is exported whole (request and stage), no fast one is, and the request metrics count all."""
    kinds = ["fast"] * 40 + ["slow"] * 3 + ["error"] * 4 + ["oom"] * 2 + ["throttled"] * 2
    with capture_telemetry(tail_sampling_ratio=0.0, tail_sampling_latency=0.05) as captured:
        for kind in kinds:
            _request(kind)
        kept = _kept_kinds(captured)
        assert kept == {"slow": 3, "error": 4, "oom": 2, "throttled": 2}
        traces = Counter(s.context.trace_id for s in captured.spans())
        assert set(traces.values()) == {2}  # request and its stage: whole traces
        (requests,) = [p for p in captured.points("vision.requests") if "error.type" not in p.attributes]
        assert requests.value == 40 + 3 + 2
        assert sum(p.value for p in captured.points("vision.requests")) == len(kinds)
        assert _decisions(captured) == {
            ("drop", "sampled_out"): 40,
            ("keep", "slow"): 3,
            ("keep", "error"): 4,
            ("keep", "cuda_oom"): 2,
            ("keep", "throttled"): 2,
        }


def test_a_ratio_of_uneventful_traces_is_kept() -> None:
    with capture_telemetry(tail_sampling_ratio=0.5) as captured:
        for _ in range(200):
            _request("fast")
        kept = _kept_kinds(captured)["fast"]
        assert 60 <= kept <= 140
        decisions = _decisions(captured)
        assert decisions[("keep", "ratio")] == kept and decisions[("drop", "sampled_out")] == 200 - kept


def test_latency_thresholds_per_operation() -> None:
    """``{"predict": 0.05, "*": 10}``: a slow predict is kept, an equally slow edit is not."""
    with capture_telemetry(tail_sampling_ratio=0.0, tail_sampling_latency={"predict": 0.05, "*": 10}) as captured:
        _request("slow", "predict")
        _request("slow", "edit")
        assert {s.name for s in captured.spans() if s.parent is None} == {"predict"}


def test_spans_after_the_decision_follow_it() -> None:
    """A batch served a kept (failing) and a dropped (fast) request after both ended: only the kept request's trace
    gets its member span."""
    with capture_telemetry(tail_sampling_ratio=0.0) as captured:
        contexts: dict[str, Any] = {}
        for kind in ("fast", "error"):
            try:
                with otel_vision.request("edit", attributes={"app.kind": kind}):
                    contexts[kind] = context.get_current()
                    if kind == "error":
                        raise ValueError("bad")
            except ValueError:
                pass
        with otel_vision.batch("unet", requests=list(contexts.values())):
            pass
        members = [s for s in captured.spans("unet") if s.attributes["vision.batch.role"] == "member"]
        (error_request,) = [s for s in captured.spans("edit") if s.attributes["app.kind"] == "error"]
        assert [m.parent.span_id for m in members] == [error_request.context.span_id]


def test_head_sampling_is_respected_and_metrics_still_count() -> None:
    with capture_telemetry(sample_rate=0.0, tail_sampling_ratio=1.0) as captured:
        for kind in ("fast", "error"):
            _request(kind)
        assert captured.spans() == []
        assert sum(p.value for p in captured.points("vision.requests")) == 2


def test_bounds_decide_early_and_count_it() -> None:
    """Traces whose local root never ends: beyond the cap on waiting traces (or spans per trace) they are decided on
    what they have, so memory stays bounded; the decision says it was early."""
    exporter = InMemorySpanExporter()
    sampler = TailSampler([SimpleSpanProcessor(exporter)], ratio=1.0, latency={}, max_traces=5, max_spans=3)
    provider = TracerProvider()
    provider.add_span_processor(sampler)
    tracer = provider.get_tracer("test")
    roots = [tracer.start_span(f"root-{i}") for i in range(20)]
    for root in roots:
        ctx = trace.set_span_in_context(root)
        for _ in range(4):
            tracer.start_span("child", context=ctx).end()
    # 20 open traces, 4 children each: every trace hit the span cap, and the oldest ones the trace cap.
    assert len(exporter.get_finished_spans()) == 20 * 4
    for root in roots:
        root.end()  # late: follows the early decision (kept, ratio 1.0)
    assert len(exporter.get_finished_spans()) == 20 * 5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_VISION_TAIL_SAMPLING_RATIO": "0.25"}, (0.25, {})),
        ({"OTEL_VISION_TAIL_SAMPLING_LATENCY": "0.5"}, (0.0, {"*": 0.5})),
        ({"OTEL_VISION_TAIL_SAMPLING_LATENCY": "predict=0.2,*=1"}, (0.0, {"predict": 0.2, "*": 1.0})),
        ({}, (None, {})),
    ],
)
def test_configuration_from_the_environment(env: dict[str, str], expected: tuple[Any, Any]) -> None:
    settings = _config.resolve(environ=env)
    assert (settings.tail_sampling_ratio, dict(settings.tail_sampling_latency)) == expected


def test_bad_values_are_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_vision"):
        settings = _config.resolve(environ={"OTEL_VISION_TAIL_SAMPLING_RATIO": "half"})
    assert settings.tail_sampling_ratio is None and "OTEL_VISION_TAIL_SAMPLING_RATIO" in caplog.text
    with pytest.raises(ValueError, match="tail_sampling_ratio"):
        _config.resolve(tail_sampling_ratio=2, environ={})
    with pytest.raises(TypeError, match="tail_sampling_latency"):
        _config.resolve(tail_sampling_latency="fast", environ={})  # type: ignore[arg-type]


def test_a_batch_trace_is_kept_so_kept_requests_never_link_to_nothing() -> None:
    """Ratio 0: the failing requests' traces are kept, and so is the batch span their member spans link to."""
    with capture_telemetry(tail_sampling_ratio=0.0) as captured:
        contexts = []
        for _ in range(2):
            try:
                with otel_vision.request("edit"):
                    contexts.append(context.get_current())
                    raise ValueError("bad")
            except ValueError:
                pass
        with otel_vision.batch("unet", requests=contexts):
            pass
        spans = captured.spans("unet")
        batch_ids = {s.context.span_id for s in spans if s.attributes["vision.batch.role"] == "batch"}
        members = [s for s in spans if s.attributes["vision.batch.role"] == "member"]
        assert len(members) == 2 and len(batch_ids) == 1
        assert all(m.links[0].context.span_id in batch_ids for m in members)
        assert _decisions(captured)[("keep", "batch")] == 1
