"""`batch()`: one span per batch linked to every request it served, and a member span in each request's trace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan

import otel_vision
from otel_vision.testing import CapturedTelemetry, FakeGpu, capture_telemetry
from tests.faults.support import endpoint_env, run_program
from tests.test_wire import Rotel


def _requests(n: int) -> tuple[list[context.Context], list[ReadableSpan]]:
    contexts = []
    for i in range(n):
        with otel_vision.request("edit", attributes={"app.request": i}):
            contexts.append(context.get_current())
    return contexts, []


def _by_role(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (batch_span,) = [s for s in spans if s.attributes["vision.batch.role"] == "batch"]
    return batch_span, [s for s in spans if s.attributes["vision.batch.role"] == "member"]


def test_batch_span_links_every_request_and_each_request_gets_a_member(vision_telemetry: CapturedTelemetry) -> None:
    """One batch span (size N, a link per request); in each request's trace a member span, child of the request's
    span, same window, linking back to the batch."""
    contexts, _ = _requests(4)
    with otel_vision.batch("inference", requests=contexts):
        pass
    requests = vision_telemetry.spans("edit")
    batch_span, members = _by_role(vision_telemetry.spans("inference"))
    assert batch_span.attributes["vision.batch.size"] == 4
    assert [link.context.span_id for link in batch_span.links] == [r.context.span_id for r in requests]
    assert len(members) == 4
    for request, member in zip(
        requests,
        sorted(members, key=lambda m: [r.context.span_id for r in requests].index(m.parent.span_id)),
        strict=True,
    ):
        assert member.context.trace_id == request.context.trace_id
        assert member.parent.span_id == request.context.span_id
        assert [link.context.span_id for link in member.links] == [batch_span.context.span_id]
        assert (member.start_time, member.end_time) == (batch_span.start_time, batch_span.end_time)
        assert member.attributes["vision.batch.size"] == 4


def test_gpu_time_share_is_the_batch_gpu_time_split_evenly(
    vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
) -> None:
    contexts, _ = _requests(4)
    with otel_vision.batch("inference", requests=contexts):
        fake_gpu.cuda.run(0.008)
    batch_span, members = _by_role(vision_telemetry.spans("inference"))
    assert batch_span.attributes["gpu.time"] == pytest.approx(0.008)
    assert all(m.attributes["gpu.time.share"] == pytest.approx(0.002) for m in members)
    assert all("gpu.memory.peak" not in m.attributes for m in members)


def test_invalid_entries_are_skipped_and_counted_never_raised(vision_telemetry: CapturedTelemetry) -> None:
    """None, an empty context, an invalid span context, a string: skipped and counted; a requests function that
    raises or a non-iterable gives a batch without links; the work runs either way."""
    contexts, _ = _requests(2)
    ran = []
    with otel_vision.batch(
        "inference", requests=[contexts[0], None, context.Context(), trace.INVALID_SPAN_CONTEXT, "job-7", contexts[1]]
    ):
        ran.append(1)
    with otel_vision.batch("broken", requests=5):  # type: ignore[arg-type]
        ran.append(2)

    @otel_vision.batch("decorated", requests=lambda jobs: 1 / 0)
    def run(jobs: list[Any]) -> int:
        return len(jobs)

    assert run([1, 2]) == 2 and ran == [1, 2]
    batch_span, members = _by_role(vision_telemetry.spans("inference"))
    assert batch_span.attributes["vision.batch.size"] == 2 and batch_span.attributes["vision.batch.skipped"] == 4
    assert len(members) == 2
    assert vision_telemetry.span("broken").attributes["vision.batch.size"] == 0
    assert vision_telemetry.span("decorated").attributes["vision.batch.skipped"] == 1
    (point,) = vision_telemetry.points("vision.batch.skipped_requests")
    assert point.value == 4 + 1 + 1


def test_decorator_with_a_requests_function_sync_and_async(vision_telemetry: CapturedTelemetry) -> None:
    contexts, _ = _requests(3)

    @otel_vision.batch("infer-sync", requests=lambda jobs: [j["ctx"] for j in jobs])
    def infer(jobs: list[dict[str, Any]]) -> int:
        return len(jobs)

    @otel_vision.batch("infer-async", requests=lambda jobs: [j["ctx"] for j in jobs])
    async def ainfer(jobs: list[dict[str, Any]]) -> int:
        await asyncio.sleep(0)
        return len(jobs)

    jobs = [{"ctx": c} for c in contexts]
    assert infer(jobs) == 3 and asyncio.run(ainfer(jobs[:2])) == 2
    assert _by_role(vision_telemetry.spans("infer-sync"))[0].attributes["vision.batch.size"] == 3
    assert len(_by_role(vision_telemetry.spans("infer-async"))[1]) == 2
    with pytest.raises(TypeError, match="not"):
        otel_vision.batch("gen", requests=list)(lambda: (yield))


def test_a_request_not_sampled_gets_no_member() -> None:
    """A request whose trace was not sampled (head sampling) keeps out of the export: its member is not made."""
    with capture_telemetry(sample_rate=1.0) as captured:
        contexts, _ = _requests(1)
        unsampled = trace.set_span_in_context(
            trace.NonRecordingSpan(trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(0)))
        )
        with otel_vision.batch("inference", requests=[contexts[0], unsampled]):
            pass
        batch_span, members = _by_role(captured.spans("inference"))
        assert batch_span.attributes["vision.batch.size"] == 2
        assert [m.parent.span_id for m in members] == [
            contexts[0] and trace.get_current_span(contexts[0]).get_span_context().span_id
        ]


BATCHING_WORKER = """
import otel_vision
from opentelemetry import context
handle = otel_vision.configure(service_name="batching", gpu=False)
jobs = []
for i in range(3):
    with otel_vision.request("edit", attributes={"app.job": i}):
        jobs.append(context.get_current())
with otel_vision.batch("unet", requests=jobs):
    pass
handle.shutdown(timeout=10)
"""


@pytest.mark.integration
def test_batch_and_members_reach_a_real_collector(tmp_path: Path) -> None:
    """rotel receives the batch span with three links and three member spans, each in its request's trace."""
    rotel = Rotel(tmp_path)
    try:
        result = run_program(BATCHING_WORKER, endpoint_env("grpc", rotel.grpc_port))
        assert result.returncode == 0, result.stderr
        text = rotel.wait_for("vision.batch.role: Str(member)")
        assert text.count("Name           : unet") == 4
        assert text.count("vision.batch.role: Str(member)") == 3
        assert text.count("Name           : edit") == 3
    finally:
        rotel.stop()
