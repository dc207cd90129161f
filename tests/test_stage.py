"""`stage()` in every form, asserted on the exported spans and metrics."""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import otel_vision
from otel_vision._metrics import DURATION_BUCKETS
from otel_vision.testing import CapturedTelemetry


class BoomError(Exception):
    pass


def _current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


class TestContextManager:
    def test_span_name_attributes_and_parent(self, vision_telemetry: CapturedTelemetry) -> None:
        """A `with` stage exports one span named after the stage, nested under the enclosing stage."""
        with otel_vision.stage("request", attributes={"vision.model.name": "cnn"}):
            with otel_vision.stage("preprocess", attributes={"vision.batch.size": 4}) as span:
                assert span.is_recording()
        request, pre = vision_telemetry.span("request"), vision_telemetry.span("preprocess")
        assert pre.attributes == {"vision.stage": "preprocess", "vision.batch.size": 4}
        assert request.attributes["vision.model.name"] == "cnn"
        assert pre.parent is not None and pre.parent.span_id == request.context.span_id
        assert pre.context.trace_id == request.context.trace_id

    def test_exception_recorded_and_reraised_unchanged(self, vision_telemetry: CapturedTelemetry) -> None:
        """An exception inside the block marks the span ERROR with error.type and propagates as the same object."""
        error = BoomError("bad frame")
        with pytest.raises(BoomError) as caught, otel_vision.stage("inference"):
            raise error
        assert caught.value is error
        span = vision_telemetry.span("inference")
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == f"{__name__}.BoomError"
        assert [e.name for e in span.events] == ["exception"]

    def test_builtin_exception_error_type(self, vision_telemetry: CapturedTelemetry) -> None:
        """Builtin exceptions get their bare class name as error.type, on the span and on the metric."""
        with pytest.raises(ValueError), otel_vision.stage("postprocess"):
            raise ValueError("x")
        assert vision_telemetry.span("postprocess").attributes["error.type"] == "ValueError"
        (point,) = vision_telemetry.points("vision.stage.duration")
        assert point.attributes == {"vision.stage": "postprocess", "error.type": "ValueError"}

    def test_keyboard_interrupt_is_not_an_error(self, vision_telemetry: CapturedTelemetry) -> None:
        """BaseExceptions that are control flow end the span without marking it failed."""
        with pytest.raises(KeyboardInterrupt), otel_vision.stage("loop"):
            raise KeyboardInterrupt
        span = vision_telemetry.span("loop")
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in span.attributes

    def test_one_object_reentered_across_threads(self, vision_telemetry: CapturedTelemetry) -> None:
        """A module-level stage object can be entered from many threads at once and nested in itself."""
        shared = otel_vision.stage("shared")
        barrier = threading.Barrier(4)

        def work() -> None:
            with shared:
                barrier.wait()
                with shared:
                    time.sleep(0.001)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spans = vision_telemetry.spans("shared")
        assert len(spans) == 8
        outer_ids = {s.context.span_id for s in spans if s.parent is None}
        inner = [s for s in spans if s.parent is not None]
        assert len(outer_ids) == 4 and {s.parent.span_id for s in inner} == outer_ids

    def test_context_restored_after_block(self, vision_telemetry: CapturedTelemetry) -> None:
        """After the block the caller's current span is what it was before."""
        before = _current_span_id()
        with otel_vision.stage("x"):
            assert _current_span_id() != before
        assert _current_span_id() == before

    def test_bad_name_rejected(self) -> None:
        """An empty stage name is a ValueError naming the problem."""
        with pytest.raises(ValueError, match="stage name"):
            otel_vision.stage("")


class TestDecorator:
    def test_sync_function_and_method(self, vision_telemetry: CapturedTelemetry) -> None:
        """Decorated functions and methods return their result and export one span per call."""

        class Model:
            @otel_vision.stage("inference")
            def forward(self, x: int) -> int:
                return x + 1

        @otel_vision.stage("preprocess")
        def prep(x: int) -> int:
            return x * 2

        assert Model().forward(prep(3)) == 7
        assert [s.name for s in vision_telemetry.spans()] == ["preprocess", "inference"]
        assert prep.__name__ == "prep"

    def test_async_function_span_covers_the_await(self, vision_telemetry: CapturedTelemetry) -> None:
        """An async stage's span lasts as long as the coroutine, not just until the first await."""

        @otel_vision.stage("inference")
        async def infer() -> str:
            await asyncio.sleep(0.05)
            return "done"

        assert asyncio.run(infer()) == "done"
        span = vision_telemetry.span("inference")
        assert (span.end_time - span.start_time) / 1e9 >= 0.045

    def test_async_exception(self, vision_telemetry: CapturedTelemetry) -> None:
        """An async stage that raises records the error and re-raises it."""

        @otel_vision.stage("inference")
        async def infer() -> None:
            await asyncio.sleep(0)
            raise BoomError

        with pytest.raises(BoomError):
            asyncio.run(infer())
        assert vision_telemetry.span("inference").status.status_code is StatusCode.ERROR

    def test_concurrent_async_tasks_keep_their_own_parents(self, vision_telemetry: CapturedTelemetry) -> None:
        """Interleaved tasks nest their child stages under their own parent."""

        @otel_vision.stage("child")
        async def child() -> None:
            await asyncio.sleep(0.01)

        async def request(i: int) -> None:
            with otel_vision.stage(f"request-{i}"):
                await child()

        async def main() -> None:
            await asyncio.gather(*(request(i) for i in range(3)))

        asyncio.run(main())
        for i in range(3):
            parent = vision_telemetry.span(f"request-{i}")
            children = [s for s in vision_telemetry.spans("child") if s.parent.span_id == parent.context.span_id]
            assert len(children) == 1


class TestGenerators:
    def test_span_covers_the_whole_iteration(self, vision_telemetry: CapturedTelemetry) -> None:
        """A generator stage lasts from the first next() to exhaustion and counts its items."""

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            for i in range(3):
                time.sleep(0.01)
                yield i

        assert list(frames()) == [0, 1, 2]
        span = vision_telemetry.span("frames")
        assert (span.end_time - span.start_time) / 1e9 >= 0.028
        assert span.attributes["vision.items"] == 3
        assert "vision.abandoned" not in span.attributes

    def test_no_context_leak_to_the_consumer(self, vision_telemetry: CapturedTelemetry) -> None:
        """Between items the consumer's current span is its own, while the generator body sees the stage span."""
        seen_inside = []

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            for i in range(2):
                seen_inside.append(_current_span_id())
                yield i

        with otel_vision.stage("consumer"):
            consumer_id = _current_span_id()
            for _ in frames():
                assert _current_span_id() == consumer_id
        frames_span = vision_telemetry.span("frames")
        assert seen_inside == [frames_span.context.span_id] * 2
        assert frames_span.parent.span_id == vision_telemetry.span("consumer").context.span_id

    def test_closed_early(self, vision_telemetry: CapturedTelemetry) -> None:
        """close() after k items ends the span as abandoned, runs the generator's finally, and is not an error."""
        cleaned = []

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            try:
                yield from range(10)
            finally:
                cleaned.append(_current_span_id())

        gen = frames()
        assert [next(gen), next(gen)] == [0, 1]
        gen.close()
        span = vision_telemetry.span("frames")
        assert span.attributes["vision.items"] == 2 and span.attributes["vision.abandoned"] is True
        assert span.status.status_code is StatusCode.UNSET
        assert cleaned == [span.context.span_id]

    def test_garbage_collected_generator_ends_its_span(self, vision_telemetry: CapturedTelemetry) -> None:
        """A generator dropped without close() still ends its span when collected."""

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            yield from range(10)

        gen = frames()
        next(gen)
        del gen
        gc.collect()
        span = vision_telemetry.span("frames")
        assert span.attributes["vision.abandoned"] is True and span.attributes["vision.items"] == 1

    def test_never_started_generator_exports_nothing(self, vision_telemetry: CapturedTelemetry) -> None:
        """Creating a generator and dropping it unstarted produces no span."""

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            yield 1

        frames()
        gc.collect()
        assert vision_telemetry.spans() == []

    def test_exception_inside_generator(self, vision_telemetry: CapturedTelemetry) -> None:
        """An exception raised by the generator ends the span with ERROR and reaches the consumer unchanged."""

        @otel_vision.stage("frames")
        def frames() -> Iterator[int]:
            yield 1
            raise BoomError("decoder failed")

        with pytest.raises(BoomError, match="decoder failed"):
            list(frames())
        span = vision_telemetry.span("frames")
        assert span.status.status_code is StatusCode.ERROR and span.attributes["vision.items"] == 1

    def test_send_throw_and_return_value(self, vision_telemetry: CapturedTelemetry) -> None:
        """send() values, throw() and the generator's return value pass through the stage."""

        @otel_vision.stage("acc")
        def acc() -> Iterator[int]:
            total = 0
            while True:
                try:
                    value = yield total
                except BoomError:
                    total = -1
                    continue
                if value is None:
                    return
                total += value

        gen = acc()
        assert next(gen) == 0
        assert gen.send(5) == 5
        assert gen.throw(BoomError()) == -1
        with pytest.raises(StopIteration):
            gen.send(None)
        assert vision_telemetry.span("acc").status.status_code is StatusCode.UNSET

    def test_function_returning_a_generator(self, vision_telemetry: CapturedTelemetry) -> None:
        """A plain function that returns a generator (stream=True style) is traced over the iteration."""

        def _inner() -> Iterator[int]:
            for i in range(2):
                time.sleep(0.01)
                yield i

        @otel_vision.stage("predict")
        def predict(stream: bool) -> Iterator[int] | list[int]:
            gen = _inner()
            return gen if stream else list(gen)

        assert list(predict(stream=True)) == [0, 1]
        span = vision_telemetry.span("predict")
        assert span.attributes["vision.items"] == 2
        assert (span.end_time - span.start_time) / 1e9 >= 0.018

    def test_async_generator_and_aclose(self, vision_telemetry: CapturedTelemetry) -> None:
        """Async generators are traced over their iteration; aclose() ends the span as abandoned."""

        @otel_vision.stage("stream")
        async def stream() -> AsyncIterator[int]:
            for i in range(5):
                await asyncio.sleep(0)
                yield i

        async def main() -> list[int]:
            full = [i async for i in stream()]
            agen = stream()
            await agen.__anext__()
            await agen.aclose()
            return full

        assert asyncio.run(main()) == [0, 1, 2, 3, 4]
        complete, closed = vision_telemetry.spans("stream")
        assert complete.attributes["vision.items"] == 5 and "vision.abandoned" not in complete.attributes
        assert closed.attributes["vision.items"] == 1 and closed.attributes["vision.abandoned"] is True


class TestMetrics:
    def test_stage_duration_histogram(self, vision_telemetry: CapturedTelemetry) -> None:
        """Each stage records vision.stage.duration in seconds with the advised buckets and low-cardinality attributes."""
        for _ in range(3):
            with otel_vision.stage("inference", attributes={"vision.model.name": "yolov8n", "request.id": "r-1"}):
                time.sleep(0.002)
        (point,) = vision_telemetry.points("vision.stage.duration")
        assert point.count == 3
        assert point.attributes == {"vision.stage": "inference", "vision.model.name": "yolov8n"}
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS
        assert 0.006 <= point.sum < 1.0

    def test_stage_names_are_capped_on_metrics(self, vision_telemetry: CapturedTelemetry) -> None:
        """Past 100 distinct stage names, metrics say "other" while spans keep the real name."""
        for i in range(105):
            with otel_vision.stage(f"dyn-{i}"):
                pass
        names = {p.attributes["vision.stage"] for p in vision_telemetry.points("vision.stage.duration")}
        assert len(names) == 101 and "other" in names
        assert len(vision_telemetry.spans()) == 105


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_a_used_stage_copies_and_pickles_and_still_traces(vision_telemetry: CapturedTelemetry, how: str) -> None:
    """Stages kept on a user's object (a model, a handler) survive ``copy.deepcopy``, ``copy.copy`` and pickling
    after they were used in every form, and the copies trace as the originals do."""
    duplicate = {
        "deepcopy": copy.deepcopy,
        "copy": copy.copy,
        "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    }[how]

    def use(
        root: otel_vision.request, as_block: otel_vision.stage, as_call: otel_vision.stage, group: otel_vision.batch
    ) -> None:
        with root:
            with as_block:
                pass
            as_call.call(lambda: None)
            with group:
                pass

    stages = (
        otel_vision.request("handle", attributes={"vision.model.name": "m"}),
        otel_vision.stage("preprocess", attributes={"vision.batch.size": 2}),
        otel_vision.stage("inference"),
        otel_vision.batch("postprocess", requests=[]),
    )
    use(*stages)
    vision_telemetry.clear()
    use(*(duplicate(s) for s in stages))
    spans = {s.name: s for s in vision_telemetry.spans()}
    assert set(spans) == {"handle", "preprocess", "inference", "postprocess"}
    assert dict(spans["preprocess"].attributes or {}) == {"vision.stage": "preprocess", "vision.batch.size": 2}
    assert spans["handle"].attributes["vision.operation"] == "handle"  # type: ignore[index]
    assert all(s.parent.span_id == spans["handle"].context.span_id for n, s in spans.items() if n != "handle")  # type: ignore[union-attr]


def test_works_without_configure() -> None:
    """Before configure(), stages run against the global (no-op) API and never fail."""

    @otel_vision.stage("x")
    def f() -> int:
        return 1

    assert f() == 1
