"""The instruments otel_vision records, all created from one Meter, with bucket advice and cardinality caps."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.util.types import AttributeValue

from otel_vision import attributes as a

DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""Seconds: from a 1 ms preprocess step to a two-minute diffusion run."""
DETECTION_BUCKETS: Final = (0, 1, 2, 5, 10, 20, 50, 100, 300, 1000)
MAX_VALUES_PER_KEY: Final = 100
"""Distinct values kept per metric attribute key; later values become ``other`` (the Python SDK has no cap)."""


class CardinalityGuard:
    """Caps the number of distinct values per metric attribute key, replacing the excess with ``other``."""

    def __init__(self, limit: int = MAX_VALUES_PER_KEY) -> None:
        self._limit = limit
        self._seen: dict[str, set[AttributeValue]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, value: AttributeValue) -> AttributeValue:
        seen = self._seen.get(key)
        if seen is not None and value in seen:
            return value
        with self._lock:
            seen = self._seen.setdefault(key, set())
            if value in seen:
                return value
            if len(seen) >= self._limit:
                return a.OTHER
            seen.add(value)
            return value


class Instruments:
    """The synchronous instruments of otel_vision (the GPU observables live in `otel_vision.gpu`)."""

    def __init__(self, meter: Meter) -> None:
        self.guard = CardinalityGuard()
        self.stage_duration = meter.create_histogram(
            a.METRIC_STAGE_DURATION,
            unit="s",
            description="Duration of a pipeline stage (host wall clock).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.request_duration = meter.create_histogram(
            a.METRIC_REQUEST_DURATION,
            unit="s",
            description="Duration of a whole vision request (one predict call, one pipeline call).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.requests = meter.create_counter(
            a.METRIC_REQUESTS, unit="{request}", description="Vision requests, by outcome (error.type when failed)."
        )
        self.queue_duration = meter.create_histogram(
            a.METRIC_QUEUE_DURATION,
            unit="s",
            description="Time a request waited in a queue before a worker took it.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.images = meter.create_counter(a.METRIC_IMAGES, unit="{image}", description="Images processed.")
        self.batch_skipped = meter.create_counter(
            a.METRIC_BATCH_SKIPPED,
            unit="{request}",
            description="Request entries given to batch() without a valid span (skipped, never raised).",
        )
        self.detections = meter.create_histogram(
            a.METRIC_DETECTIONS,
            unit="{detection}",
            description="Detections per image.",
            explicit_bucket_boundaries_advisory=DETECTION_BUCKETS,
        )

    def metric_attributes(self, pairs: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
        """Drop ``None`` values and cap each value's cardinality."""
        return {key: self.guard(key, value) for key, value in pairs.items() if value is not None}


class BatchCounts:
    """What a batch span's image metrics need, kept beside the span (never on it) until the span is drained."""

    __slots__ = ("attributes", "detections", "images")

    def __init__(self, attributes: Mapping[str, AttributeValue], detections: Sequence[int], images: int) -> None:
        self.attributes = attributes
        """The metric attributes (``vision.model.name``, capped), as computed on the inference thread."""
        self.detections = detections
        """Detections of each image that had boxes, in order (one ``vision.detections`` point each)."""
        self.images = images
        """Images in the batch (``vision.images``)."""


_MAX_PENDING: Final = 10_000
pending_batch_counts: dict[int, BatchCounts] = {}
"""Span id -> the image metrics of a batch span still running or not drained yet: registered by the instrumentation
on the inference thread before the span ends, taken by `otel_vision._span_metrics` when it records the finished
span. Nothing of it is exported: the span's attributes and events stay what they were."""


def defer_batch_counts(span_id: int, counts: BatchCounts) -> None:
    """Have the export path record ``counts`` when the span ``span_id`` (recording, of our pipeline) has ended."""
    pending_batch_counts[span_id] = counts
    if len(pending_batch_counts) > _MAX_PENDING:  # spans that never reached our processor (a stopped pipeline)
        try:
            pending_batch_counts.pop(next(iter(pending_batch_counts)), None)
        except (RuntimeError, StopIteration):  # another thread changed it meanwhile: the next call trims
            pass


def record_batch_counts(instruments: Instruments, counts: BatchCounts, context: Context | None = None) -> None:
    """Record one ``vision.detections`` point per counted image and the batch's ``vision.images`` (``context``:
    the exemplars' span; ``None``, the current one)."""
    attributes = counts.attributes
    histogram = instruments.detections
    for count in counts.detections:
        histogram.record(count, attributes, context=context)
    if counts.images:
        instruments.images.add(counts.images, attributes, context=context)
