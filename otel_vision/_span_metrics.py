"""Duration metrics recorded from finished spans, off the inference thread.

A stage or request span carries everything its metrics need (``vision.stage`` or ``vision.operation``, the model,
``error.type``, its start and end). Recording a histogram point costs more than starting and ending the span
(attribute hashing, aggregation, exemplar sampling), so `stage()` leaves it to this processor, which records
``vision.stage.duration``, ``vision.request.duration``, ``vision.requests`` and ``vision.queue.duration`` with the
span's context, so exemplars still point at the trace (through `otel_vision._light_metrics.LightRecorder`, which
skips what the SDK would work out again for every point of the same attribute set). It records on the spot when a
background thread of ours hands it the span (the span hand-over, as `configure()` sets it up); on any other thread
``on_end`` only appends the span to a deque, and a background thread of its own records.
The image metrics of an instrumented batch (``vision.images``, ``vision.detections`` per image) come the same way:
the instrumentation leaves the counts beside the batch span (`otel_vision._metrics.defer_batch_counts`, keyed by
span id, never on the span), and they are recorded here with the context of the batch's parent span, the call's root
span that was current when they used to be recorded on the inference thread.

Spans that are not recorded (a head sampler said no) never reach a span processor; `stage()` and the
instrumentations record their metrics on the spot, so every request is counted whatever the sampling. This processor
comes first on the provider, before the tail sampler, so a trace the tail sampler drops is counted too.
"""

from __future__ import annotations

from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import NonRecordingSpan
from opentelemetry.util.types import AttributeValue

from otel_vision import _runtime
from otel_vision._errors import report_internal_error
from otel_vision._finished import Drainer, on_a_drainer_thread
from otel_vision._light import _SPAN_KEY
from otel_vision._light_metrics import LightRecorder
from otel_vision._metrics import BatchCounts, Instruments, pending_batch_counts, record_batch_counts
from otel_vision.attributes import (
    ERROR_TYPE,
    VISION_INSTRUCTION_CATEGORY,
    VISION_MODEL_NAME,
    VISION_OPERATION,
    VISION_STAGE,
)

_INTERVAL_S: Final = 0.2
"""How often the recorder drains; a flush (and every metric collection through `Handle.force_flush`) drains first."""
LIMIT: Final = 4096
"""Spans waiting to be recorded beyond which the thread handing them over records them itself."""
ATTRIBUTE_SETS: Final = 1024
"""Metric attribute sets kept for reuse, at most (the cardinality cap allows more; the set starts again empty)."""
QUEUE_STAGE: Final = "queue"
"""The stage name of `queue_wait()` spans, which feed ``vision.queue.duration`` instead of the stage histogram."""


class SpanMetricsProcessor(SpanProcessor):
    """Records otel_vision's duration metrics from finished spans of otel_vision's own scope."""

    def __init__(self, instruments: Instruments | None = None) -> None:
        self.instruments = instruments
        """Set once the pipeline's meter exists (before any span of ours can end)."""
        self._attribute_sets: dict[tuple[object, ...], dict[str, AttributeValue]] = {}
        self._recorders: _Recorders | None = None
        self._spans: Drainer[ReadableSpan] = Drainer(
            self._record, "duration metrics from spans", "otel-vision-span-metrics", _INTERVAL_S
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        if scope is not None and scope.name == _runtime.SCOPE:
            if on_a_drainer_thread():
                # Handed over by a background thread already (the span hand-over): recording here
                # spares the recorder's thread a wake-up, which on a machine whose cores all run the model takes
                # a core from it.
                try:
                    self._record(span)
                except Exception:
                    report_internal_error("duration metrics from spans")
                return
            spans = self._spans
            items = spans.items
            items.append(span)
            if len(items) >= LIMIT:
                # Spans end faster than the recorder records them: whoever hands them over records (the list
                # stays bounded, and so does the last drain at a shutdown).
                spans.drain()
            elif spans.idle:
                spans.wake()

    def drain(self) -> None:
        """Record every span received so far (the recorder thread does this every 0.2 s while spans come)."""
        self._spans.drain()

    def _record(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        if span.start_time is None or span.end_time is None:
            return
        seconds = (span.end_time - span.start_time) / 1e9
        instruments = self.instruments
        if instruments is None:
            return
        recorders = self._recorders
        if recorders is None or recorders.instruments is not instruments:
            recorders = self._recorders = _Recorders(instruments)
        span_context = span.context
        context = Context({_SPAN_KEY: NonRecordingSpan(span_context)}) if span_context is not None else None
        failure = attributes.get(ERROR_TYPE)
        operation = attributes.get(VISION_OPERATION)
        model = attributes.get(VISION_MODEL_NAME)
        if operation is not None:
            category = attributes.get(VISION_INSTRUCTION_CATEGORY)
            key: tuple[object, ...] = (VISION_OPERATION, operation, model, category, failure)
            attrs, cached = self._attributes(
                instruments,
                key,
                {
                    VISION_OPERATION: operation,
                    VISION_MODEL_NAME: model,
                    VISION_INSTRUCTION_CATEGORY: category,
                    ERROR_TYPE: failure,
                },
            )
            recorders.request_duration.record(seconds, key if cached else None, attrs, context)
            recorders.requests.record(1, key if cached else None, attrs, context)
            return
        stage = attributes.get(VISION_STAGE)
        if stage is None:
            return
        if pending_batch_counts and span_context is not None:
            counts = pending_batch_counts.pop(span_context.span_id, None)
            if counts is not None:
                self._record_batch_counts(instruments, span, counts)
        if stage == QUEUE_STAGE:
            key = (QUEUE_STAGE, model)
            attrs, cached = self._attributes(instruments, key, {VISION_MODEL_NAME: model})
            recorders.queue_duration.record(seconds, key if cached else None, attrs, context)
            return
        key = (VISION_STAGE, stage, model, failure)
        attrs, cached = self._attributes(
            instruments, key, {VISION_STAGE: stage, VISION_MODEL_NAME: model, ERROR_TYPE: failure}
        )
        recorders.stage_duration.record(seconds, key if cached else None, attrs, context)

    def _attributes(
        self, instruments: Instruments, key: tuple[object, ...], pairs: dict[str, AttributeValue | None]
    ) -> tuple[dict[str, AttributeValue], bool]:
        """The metric attributes for ``pairs`` (`Instruments.metric_attributes`), the same dictionary every time the
        same strings come: the cardinality cap gives a value the same answer once it has seen it, and the SDK copies
        what it is given. Values of other types (equal across types: ``True`` and ``1``) are not kept; the second
        item says whether these were (then ``key`` names them for the recorders)."""
        try:
            attrs = self._attribute_sets.get(key)
        except TypeError:  # an unhashable value (a list in a span processor's hand-made span)
            return instruments.metric_attributes(pairs), False
        if attrs is not None:
            return attrs, True
        attrs = instruments.metric_attributes(pairs)
        if not all(type(value) is str or value is None for value in key):
            return attrs, False
        if len(self._attribute_sets) >= ATTRIBUTE_SETS:
            self._attribute_sets.clear()
        self._attribute_sets[key] = attrs
        return attrs, True

    @staticmethod
    def _record_batch_counts(instruments: Instruments, span: ReadableSpan, counts: BatchCounts) -> None:
        # The exemplars name the span that was current when these were recorded on the inference thread: the
        # call's root span, the batch span's parent.
        parent = span.parent if span.parent is not None else span.context
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        record_batch_counts(instruments, counts, context)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.drain()
        return True

    def shutdown(self) -> None:
        self._spans.stop()


class _Recorders:
    """A `LightRecorder` for each instrument the processor records into, for one `Instruments`."""

    __slots__ = ("instruments", "queue_duration", "request_duration", "requests", "stage_duration")

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments
        self.stage_duration = LightRecorder(instruments.stage_duration)
        self.request_duration = LightRecorder(instruments.request_duration)
        self.requests = LightRecorder(instruments.requests)
        self.queue_duration = LightRecorder(instruments.queue_duration)
