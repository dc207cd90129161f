"""Ended spans reach otel_vision's span processors from a background thread, in the order they ended
(`otel_vision._light.SpanProcessors`); processors of the application's own get them on the spot, as the SDK hands them.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import otel_vision
from otel_vision import _config, _light, _runtime, _setup
from otel_vision._finished import IDLE_AFTER_S, IDLE_SLEEP_S, Drainer
from otel_vision._light import ENDS_BACKLOG, ENDS_LIMIT, LightSpan, complete_later
from otel_vision.testing import CapturedTelemetry

WAIT_S = 10.0
"""How long a test waits for the hand-over thread (it runs every 0.1 s)."""


class Recording(SpanExporter):
    """Records each span's name with the thread that exported it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.seen.extend((s.name, threading.current_thread().name) for s in spans)
        return SpanExportResult.SUCCESS

    def names(self) -> list[str]:
        return [name for name, _ in list(self.seen)]


def _wait_for(exporter: Recording, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(exporter.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def pipeline(request: pytest.FixtureRequest) -> Iterator[tuple[_setup.Handle, Recording]]:
    """A pipeline whose only processor is a recording one; deferred (as configure() builds it with no processor of
    the application's) unless the test is parametrized with ``False``."""
    deferred = getattr(request, "param", True)
    exporter = Recording()
    previous = _runtime.current()
    handle = _setup.build(
        _config.resolve(exporter="none", environ={}, gpu=False),
        span_processors=[SimpleSpanProcessor(exporter)],
        standalone=True,
        defer_span_ends=deferred,
    )
    try:
        yield handle, exporter
    finally:
        handle.shutdown()
        _runtime.install(previous)


def test_spans_are_handed_over_off_the_ending_thread_in_the_order_they_ended(
    pipeline: tuple[_setup.Handle, Recording],
) -> None:
    """Without any flush, every span arrives (a burst past the backlog too), in end order, from the hand-over
    thread; the thread that ended them never ran a processor."""
    handle, exporter = pipeline
    with otel_vision.request("predict"):
        with otel_vision.stage("preprocess"):
            pass
        with otel_vision.stage("inference"):
            with otel_vision.stage("layer"):
                pass
    burst = 3 * ENDS_BACKLOG
    for i in range(burst):
        with otel_vision.stage(f"s{i}"):
            pass
    _wait_for(exporter, 4 + burst)
    assert exporter.names() == ["preprocess", "layer", "inference", "predict", *(f"s{i}" for i in range(burst))]
    assert {thread for _, thread in exporter.seen} == {"otel-vision-span-ends"}


@pytest.mark.parametrize("pipeline", [False], indirect=True)
def test_processors_of_the_applications_own_get_spans_on_the_spot(pipeline: tuple[_setup.Handle, Recording]) -> None:
    """``configure(additional_span_processors=...)``: the span is exported by the time ``end()`` returns, on the
    thread that ended it, as with the SDK alone."""
    _, exporter = pipeline
    with otel_vision.stage("inference"):
        pass
    assert exporter.seen == [("inference", threading.current_thread().name)]


def test_a_processor_added_later_gets_spans_on_the_spot_after_the_waiting_ones(
    vision_telemetry: CapturedTelemetry,
) -> None:
    """``tracer_provider.add_span_processor``: spans still waiting are handed over first, then every span goes to
    the processors on the thread that ends it."""
    with otel_vision.stage("before"):
        pass
    added = Recording()
    assert vision_telemetry.handle.tracer_provider is not None
    vision_telemetry.handle.tracer_provider.add_span_processor(SimpleSpanProcessor(added))
    assert [s.name for s in vision_telemetry.span_exporter.get_finished_spans()] == ["before"]
    with otel_vision.stage("after"):
        pass
    assert added.seen == [("after", threading.current_thread().name)]
    assert [s.name for s in vision_telemetry.span_exporter.get_finished_spans()] == ["before", "after"]


def test_flush_and_shutdown_hand_over_what_waits(pipeline: tuple[_setup.Handle, Recording]) -> None:
    handle, exporter = pipeline
    with otel_vision.stage("flushed"):
        pass
    assert handle.force_flush(timeout_millis=5000)
    assert exporter.names() == ["flushed"]
    with otel_vision.stage("at-shutdown"):
        pass
    handle.shutdown()
    assert exporter.names() == ["flushed", "at-shutdown"]


def test_a_processor_added_while_the_hand_over_is_busy_keeps_children_before_their_root(
    vision_telemetry: CapturedTelemetry,
) -> None:
    """The hand-over thread is inside a slow export when a child ends and the application adds a processor; the
    child's root then ends on the spot, but after the child (the order the tail sampler relies on)."""
    exporter = vision_telemetry.span_exporter
    export = exporter.export

    def slow_export(spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if any(s.name == "slow" for s in spans):
            time.sleep(0.5)
        return export(spans)

    exporter.export = slow_export  # type: ignore[method-assign]
    with otel_vision.stage("slow"):
        pass
    deadline = time.monotonic() + WAIT_S  # until the hand-over thread is inside the slow export
    while vision_telemetry.handle._span_ends.ended.items and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    root = otel_vision.stage("root")
    root.__enter__()
    with otel_vision.stage("child"):
        pass
    provider = vision_telemetry.handle.tracer_provider
    assert provider is not None
    adder = threading.Thread(target=provider.add_span_processor, args=(SimpleSpanProcessor(Recording()),))
    adder.start()
    time.sleep(0.05)  # the adder waits for the hand-over thread
    root.__exit__(None, None, None)
    adder.join(WAIT_S)
    assert [s.name for s in vision_telemetry.spans()] == ["slow", "child", "root"]


def test_threads_ending_spans_nonstop_cannot_outrun_the_hand_over_or_stall_shutdown(
    pipeline: tuple[_setup.Handle, Recording],
) -> None:
    """Three threads end spans as fast as they can: the spans waiting stay bounded (the threads hand over
    themselves past `ENDS_LIMIT`), every span ended before the shutdown is exported, and ``shutdown(1.0)`` returns
    within its bound although they go on ending spans."""
    handle, exporter = pipeline
    stop = threading.Event()
    before: list[int] = [0, 0, 0]
    shutting_down = threading.Event()
    peak = 0

    def work(i: int) -> None:
        deadline = time.monotonic() + WAIT_S  # stops by itself
        while not stop.is_set() and time.monotonic() < deadline:
            with otel_vision.stage(f"w{i}"):
                pass
            if not shutting_down.is_set():
                before[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    assert handle._span_ends is not None and handle._span_ends.ended is not None
    ended = handle._span_ends.ended
    watch_until = time.monotonic() + 1.0
    while time.monotonic() < watch_until:
        peak = max(peak, len(ended.items))
        time.sleep(0.001)
    shutting_down.set()
    started = time.monotonic()
    handle.shutdown(1.0)
    took = time.monotonic() - started
    stop.set()
    for worker in workers:
        worker.join(WAIT_S)
    assert peak <= ENDS_LIMIT + 8, peak
    assert took < 1.0 + 1.5, took  # the documented bound is the timeout + 0.5 s; slack for a loaded CI machine
    names = exporter.names()
    for i in range(3):
        assert names.count(f"w{i}") >= before[i] - 1  # a span that was ending as the shutdown began may be late


def _light_stage_span(name: str) -> tuple[otel_vision.stage, LightSpan]:
    """A stage entered under a root, so its span is a light one; the caller exits it."""
    stage = otel_vision.stage(name)
    span = stage.__enter__()
    assert type(span) is LightSpan
    return stage, span


def test_work_left_on_a_span_is_done_on_the_hand_over_thread_before_its_export(
    vision_telemetry: CapturedTelemetry,
) -> None:
    """`complete_later`: the work runs on the hand-over thread after the span ended and before any processor gets
    it; what it adds (events with their timestamps, attributes, after ones the SDK had to clean) is exported, and the
    exported span is as immutable as any other."""
    ran_on: list[str] = []

    def complete(span: LightSpan) -> None:
        ran_on.append(threading.current_thread().name)
        assert span.end_time is not None
        span.amend({"found": 3, "vision.stage": "renamed"}, [("image", {"index": 0}, span.start_time + 1)])

    with otel_vision.request("predict"):
        stage, span = _light_stage_span("batch")
        span.set_attribute("mixed", [1, "a"])  # the SDK cleans this one: BoundedAttributes from here on
        assert complete_later(span, complete)
        stage.__exit__(None, None, None)
    assert not ran_on  # nothing on the ending thread
    vision_telemetry.handle.force_flush()
    (batch,) = vision_telemetry.spans("batch")
    assert ran_on == ["otel-vision-span-ends"]
    assert list(batch.attributes.items())[-2:] == [("found", 3), ("vision.stage", "renamed")]
    assert [(e.name, dict(e.attributes), e.timestamp) for e in batch.events] == [
        ("image", {"index": 0}, batch.start_time + 1)
    ]
    with pytest.raises(TypeError):
        batch.attributes["later"] = 1  # type: ignore[index]


@pytest.mark.parametrize("pipeline", [False], indirect=True)
def test_work_is_left_to_the_caller_when_spans_are_handed_over_on_the_spot(
    pipeline: tuple[_setup.Handle, Recording],
) -> None:
    with otel_vision.request("predict"):
        stage, span = _light_stage_span("batch")
        assert not complete_later(span, lambda s: None)
        stage.__exit__(None, None, None)
    assert complete_later(trace.INVALID_SPAN, lambda s: None) is False


def test_work_left_before_a_processor_came_is_done_by_the_ending_thread(vision_telemetry: CapturedTelemetry) -> None:
    """Left while spans were handed over later; the application then added a processor of its own, so the span
    goes to the processors on the spot as it ends: the work is done there first, on that thread."""
    ran_on: list[str] = []
    added = Recording()

    def complete(span: LightSpan) -> None:
        ran_on.append(threading.current_thread().name)
        span.amend({"found": 1}, ())

    with otel_vision.request("predict"):
        stage, span = _light_stage_span("batch")
        assert complete_later(span, complete)
        provider = vision_telemetry.handle.tracer_provider
        assert provider is not None
        provider.add_span_processor(SimpleSpanProcessor(added))
        stage.__exit__(None, None, None)
        assert ran_on == [threading.current_thread().name]
        assert added.names() == ["batch"]
    assert vision_telemetry.span("batch").attributes["found"] == 1


def test_work_that_fails_loses_nothing_but_itself(
    vision_telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(span: LightSpan) -> None:
        raise RuntimeError("summary failed")

    with otel_vision.request("predict"):
        stage, span = _light_stage_span("batch")
        span.set_attribute("kept", 1)
        assert complete_later(span, broken)
        stage.__exit__(None, None, None)
    with caplog.at_level("WARNING"):
        vision_telemetry.handle.force_flush()
    assert vision_telemetry.span("batch").attributes["kept"] == 1
    assert len(vision_telemetry.spans()) == 2
    assert "completing an ended span" in caplog.text


def test_work_on_an_ended_span_never_shows_it_open(vision_telemetry: CapturedTelemetry) -> None:
    """While the work adds to the ended span, another thread that ends it again or sets an attribute waits for the
    span's lock, then finds it ended: the span is exported once, with the work's additions and nothing else."""
    other: list[threading.Thread] = []
    seen: list[bool] = []

    def complete(span: LightSpan) -> None:
        def meddle() -> None:
            span.set_attribute("late", 1)
            span.end()
            seen.append(span.is_recording())

        def events() -> Iterator[tuple[str, dict[str, int], None]]:
            thread = threading.Thread(target=meddle)
            other.append(thread)
            thread.start()
            thread.join(0.3)  # blocked by the span's lock for as long as the work runs
            yield ("image", {"index": 0}, None)

        span.amend({"found": 1}, events())  # type: ignore[arg-type]  # any iterable does

    with otel_vision.request("predict"):
        stage, span = _light_stage_span("batch")
        assert complete_later(span, complete)
        stage.__exit__(None, None, None)
    vision_telemetry.handle.force_flush()
    other[0].join(WAIT_S)
    vision_telemetry.handle.force_flush()
    (batch,) = vision_telemetry.spans("batch")
    assert seen == [False]
    assert "late" not in batch.attributes and batch.attributes["found"] == 1
    assert [e.name for e in batch.events] == ["image"]


def test_work_waiting_is_bounded(vision_telemetry: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `COMPLETIONS_LIMIT` spans with work waiting, the oldest work is forgotten (its span is exported without
    it); the others are done."""
    monkeypatch.setattr(_light, "COMPLETIONS_LIMIT", 2)
    with otel_vision.request("predict"):
        opened = [_light_stage_span(f"s{i}") for i in range(3)]
        for i, (_, span) in enumerate(opened):
            assert complete_later(span, functools.partial(LightSpan.amend, attributes={"done": i}, events=()))
        for stage, _ in reversed(opened):
            stage.__exit__(None, None, None)
    assert [vision_telemetry.span(f"s{i}").attributes.get("done") for i in range(3)] == [None, 1, 2]


def _wake_ups(thread_name: str) -> int | None:
    """How many times Linux put our threads named ``thread_name`` back to work (voluntary context switches), in all;
    ``None`` where /proc does not say."""
    total = 0
    for thread in threading.enumerate():
        if thread.name != thread_name:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/status") as status:
                total += int(next(line for line in status if line.startswith("voluntary_ctxt_switches")).split()[1])
        except (OSError, StopIteration, ValueError):
            return None
    return total


def test_an_idle_hand_over_sleeps_and_the_next_span_wakes_it(pipeline: tuple[_setup.Handle, Recording]) -> None:
    """With nothing to hand over, the hand-over thread stops polling (it woke 10 times a second; Linux counts); the
    next span that ends wakes it, and is exported without a flush, long before the thread's longest sleep."""
    handle, exporter = pipeline
    with otel_vision.stage("before"):
        pass
    _wait_for(exporter, 1)
    time.sleep(IDLE_AFTER_S + 0.5)
    before = _wake_ups("otel-vision-span-ends")
    time.sleep(2.0)
    after = _wake_ups("otel-vision-span-ends")
    if before is not None and after is not None:
        assert after - before <= 2, f"{after - before} wake-ups in 2 s of idling"
    ended = time.monotonic()
    with otel_vision.stage("after"):
        pass
    _wait_for(exporter, 2)
    assert exporter.names() == ["before", "after"]
    assert time.monotonic() - ended < IDLE_SLEEP_S / 2


def test_a_drain_that_interrupts_one_on_its_own_thread_returns_and_nothing_is_lost() -> None:
    """A drain started on a thread that is handling an item of the same drainer (what a signal handler that flushes
    or shuts down does) returns at once instead of waiting for itself for ever; the interrupted drain then handles
    the rest, in order."""
    handled: list[int] = []
    inner: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            inner.append(drainer.drain())  # as a signal handler interrupting this thread here would
        handled.append(item)

    drainer: Drainer[int] = Drainer(handle, "test items", "otel-vision-test-drainer")
    try:
        drainer.items.extend([0, 1, 2, 3])
        runner = threading.Thread(target=drainer.drain, daemon=True)
        runner.start()
        runner.join(5)
        assert not runner.is_alive(), "the drain waited for itself"
        deadline = time.monotonic() + 5
        while len(handled) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handled == [0, 1, 2, 3] and inner == [0]
    finally:
        drainer.stop()


def test_duration_metrics_come_from_spans_whichever_thread_hands_them_over(
    vision_telemetry: CapturedTelemetry,
) -> None:
    """The hand-over thread records a span's duration metrics as it hands it over; once spans are handed over on the
    application's thread (a processor of its own was added), a background recorder takes them. Either way the point
    is there, with an exemplar naming the span's trace."""

    def stage_point(stage: str) -> tuple[int, set[int]]:
        for point in vision_telemetry.points("vision.stage.duration"):
            if point.attributes.get("vision.stage") == stage:
                return point.count, {exemplar.trace_id for exemplar in point.exemplars}
        return 0, set()

    provider = vision_telemetry.handle.tracer_provider
    assert provider is not None
    with otel_vision.stage("handed-over-by-our-thread") as span:
        pass
    assert provider.force_flush(int(WAIT_S * 1000))  # has the hand-over thread hand it over (collects no metric)
    assert stage_point("handed-over-by-our-thread") == (1, {span.get_span_context().trace_id})

    provider.add_span_processor(SimpleSpanProcessor(Recording()))
    for _ in range(3):
        with otel_vision.stage("handed-over-by-the-application") as span:
            pass
    count, traces = stage_point("handed-over-by-the-application")
    assert count == 3 and span.get_span_context().trace_id in traces
