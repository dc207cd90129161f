"""Metric points recorded without the SDK's per-measurement work, when that work cannot change the outcome.

The span hand-over records about one metric point per finished span (`otel_vision._span_metrics`), always with one of
a few attribute dictionaries that it keeps and never changes. For each point the SDK's ``Histogram.record`` (and
``Counter.add``) validates and copies those attributes again (the ``Measurement``), hashes them again into the
aggregation key for every view, and looks up the reader storages and their view matches: about half of the 25 µs a
point costs on a 2-vCPU VM, and the same answer every time for the same dictionary. `LightRecorder` works that out
once per attribute set and then does only what depends on the point: the timestamp, the exemplar filter's decision,
and the aggregation itself, called exactly as the SDK's ``_ViewInstrumentMatch.consume_measurement`` calls it (the
same aggregation objects, the same locks, delta collections included).

It is used only where nothing can tell the difference: an instrument of the SDK's own classes, an SDK whose
recording path was checked to give the same data points and exemplars as ``record`` (`sdk_recording_known`: both
paths into throwaway providers, cumulative and delta, with and without a view that keeps some attribute keys), plain
string attribute values, and a value the SDK would accept without a warning (finite and not negative). Anything else
goes to the instrument's own ``record`` or ``add``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from time import time_ns
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

BOUND_LIMIT: Final = 1024
"""Attribute sets a recorder keeps worked out, at most (the set starts again empty past it)."""


class LightRecorder:
    """Records points into one SDK histogram or counter; ``key`` names the attribute set given with it (the same
    key always comes with an equal dictionary, which the caller never changes afterwards)."""

    __slots__ = ("_bound", "_consumer", "_direct", "_filter", "_measurement", "instrument")

    def __init__(self, instrument: Any, *, checked: bool = False) -> None:
        """``checked``: record directly without asking `sdk_recording_known` (its own probe)."""
        self.instrument = instrument
        self._bound: dict[Hashable, tuple[Any, list[tuple[Any, Any, dict[str, AttributeValue]]]]] = {}
        """Key -> (the reader storages it was worked out for, [(view match, aggregation key, its attributes)])."""
        self._direct = _sdk_instrument(instrument) and (checked or sdk_recording_known())
        consumer: Any = instrument._measurement_consumer if self._direct else None
        self._consumer = consumer
        self._filter: Any = consumer._sdk_config.exemplar_filter if consumer is not None else None
        self._measurement: Any = _measurement_maker() if self._direct else None

    def record(
        self, value: float, key: Hashable | None, attributes: Mapping[str, AttributeValue], context: Context | None
    ) -> None:
        """``instrument.record(value, attributes, context=context)`` (or ``add`` for a counter); ``key`` ``None``:
        these attributes have no name, and go the SDK's way."""
        instrument = self.instrument
        direct = self._direct and key is not None and context is not None and 0 <= value < math.inf
        if not direct or not instrument._is_enabled():
            _sdk_record(instrument, value, attributes, context)
            return
        storages = self._consumer._reader_storages  # replaced, never changed, when a reader comes or goes
        bound = self._bound.get(key)
        if bound is None or bound[0] is not storages:
            if not all(type(v) is str for v in attributes.values()):
                _sdk_record(instrument, value, attributes, context)
                return
            bound = self._bind(key, attributes, storages)
        moment = time_ns()
        measurement = self._measurement(value, moment, instrument, context, None)
        setattr_(measurement, "attributes", attributes)  # already what its cleaning returns: plain strings
        sample = self._filter.should_sample(value, moment, attributes, context)
        for match, aggregation_key, kept in bound[1]:
            if match._reset_on_collect:  # a delta collection swaps the aggregations: look up under its lock
                with match._lock:
                    match._get_or_create_aggregation(aggregation_key, kept).aggregate(measurement, sample)
                continue
            aggregation = match._attributes_aggregation.get(aggregation_key)
            if aggregation is None:
                with match._lock:
                    aggregation = match._get_or_create_aggregation(aggregation_key, kept)
            aggregation.aggregate(measurement, sample)

    def _bind(
        self, key: Hashable, attributes: Mapping[str, AttributeValue], storages: Any
    ) -> tuple[Any, list[tuple[Any, Any, dict[str, AttributeValue]]]]:
        """What the SDK works out for ``attributes`` on every point: each view match of each reader, its attributes
        (a copy, kept by the view's keys) and their aggregation key."""
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes

        targets = []
        for storage in storages.values():
            for match in storage._get_or_init_view_instrument_match(self.instrument):
                keys = match._view._attribute_keys
                kept = {k: v for k, v in attributes.items() if keys is None or k in keys}
                targets.append((match, _hash_attributes(kept), kept))
        if len(self._bound) >= BOUND_LIMIT:
            self._bound.clear()
        bound = self._bound[key] = (storages, targets)
        return bound


def _sdk_record(
    instrument: Any, value: float, attributes: Mapping[str, AttributeValue], context: Context | None
) -> None:
    if hasattr(instrument, "record"):
        instrument.record(value, attributes, context=context)
    else:
        instrument.add(value, attributes, context=context)


def _sdk_instrument(instrument: Any) -> bool:
    """Whether ``instrument`` is exactly what the SDK's meter makes for ``create_histogram`` or ``create_counter``."""
    from opentelemetry.sdk.metrics._internal import instrument as sdk

    return type(instrument) in (getattr(sdk, "_Histogram", None), getattr(sdk, "_Counter", None))


setattr_: Final = object.__setattr__
"""How a frozen dataclass's field is set (the SDK's ``Measurement`` sets its cleaned attributes so)."""


def _measurement_maker() -> Any:
    """The SDK's ``Measurement``: made with no attributes (nothing to clean), then given them (`LightRecorder`)."""
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    return Measurement


@functools.cache
def sdk_recording_known() -> bool:
    """Whether this SDK's recording path is the one `LightRecorder` reproduces: the same points recorded through both
    into throwaway providers (cumulative and delta temporality; the default view, and a view keeping one attribute
    key) collect into the same data points and exemplars. Checked once per process, on the thread that first
    records; any error means no."""
    try:
        return all(_same_points(delta) for delta in (False, True))
    except Exception:
        return False


def _same_points(delta: bool) -> bool:
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    reader = InMemoryMetricReader(preferred_temporality={Histogram: temporality, Counter: temporality})
    provider = MeterProvider(
        [reader],
        resource=Resource.get_empty(),
        shutdown_on_exit=False,
        views=[View(instrument_name="probe.kept.*", attribute_keys={"a"}), View(instrument_name="probe.all.*")],
    )
    meter = provider.get_meter("otel_vision.probe")
    pairs: list[tuple[Any, LightRecorder]] = []  # (the SDK's instrument, a recorder of its twin)
    for group in ("kept", "all"):
        for kind in ("histogram", "counter"):
            made = [
                meter.create_histogram(f"probe.{group}.{kind}.{path}", explicit_bucket_boundaries_advisory=(1.0, 10.0))
                if kind == "histogram"
                else meter.create_counter(f"probe.{group}.{kind}.{path}")
                for path in ("sdk", "light")
            ]
            recorder = LightRecorder(made[1], checked=True)
            if not recorder._direct:
                return False
            pairs.append((made[0], recorder))
    sets = [{"a": "x", "b": "y"}, {"a": "x", "b": "z"}, {"a": "w"}]
    collected = []
    for round_ in range(2):
        for index, value in enumerate((0.5, 3.0, 20.0, 0.0, 7.0)):
            flags = TraceFlags(TraceFlags.SAMPLED if index % 2 == 0 else TraceFlags.DEFAULT)
            span = NonRecordingSpan(SpanContext(0x1234 + index, 0x56 + index, False, flags))
            context = trace.set_span_in_context(span, Context())
            which = (index + round_) % len(sets)
            for instrument, recorder in pairs:
                _sdk_record(instrument, value, sets[which], context)
                recorder.record(value, which, sets[which], context)
        collected.append(reader.get_metrics_data())
    provider.shutdown()
    for data in collected:
        metrics = {
            metric.name: metric
            for resource_metrics in data.resource_metrics  # type: ignore[union-attr]
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }
        for instrument, recorder in pairs:
            sdk, light = metrics.get(instrument.name), metrics.get(recorder.instrument.name)
            if sdk is None or light is None or not _points(sdk) or _points(sdk) != _points(light):
                return False
    return True


def _points(metric: Any) -> list[tuple[Any, ...]]:
    """A metric's data points without their timestamps, in a stable order; a counter's exemplars by number only (its
    reservoir keeps a random one)."""
    points = []
    for point in metric.data.data_points:
        values = tuple(getattr(point, name, None) for name in ("count", "sum", "min", "max", "value"))
        buckets = (tuple(getattr(point, "bucket_counts", ())), tuple(getattr(point, "explicit_bounds", ())))
        exemplars: Any = len(point.exemplars or ())
        if hasattr(point, "bucket_counts"):
            exemplars = sorted(
                (e.value, e.trace_id, e.span_id, sorted((e.filtered_attributes or {}).items()))
                for e in point.exemplars or ()
            )
        points.append((sorted(point.attributes.items()), values, buckets, exemplars))
    return sorted(points, key=repr)
