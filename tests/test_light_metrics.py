"""Metric points recorded by `otel_vision._light_metrics.LightRecorder` collect exactly as the SDK's own ``record``
and ``add`` would collect them: the same data points, buckets and exemplars, whatever the temporality, views,
readers and exemplar filter; and anything it was not checked for goes the SDK's way."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter, AlwaysOnExemplarFilter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import otel_vision
from otel_vision import _light_metrics
from otel_vision._light_metrics import LightRecorder, sdk_recording_known
from otel_vision.testing import capture_telemetry

SETS = [{"vision.stage": "denoise_step", "vision.model.name": "m"}, {"vision.stage": "vae_decode"}]
VALUES = [0.0004, 0.003, 0.02, 0.0, 0.3, 7.5, 200.0, 0.02]


def _reader(delta: bool) -> InMemoryMetricReader:
    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    return InMemoryMetricReader(preferred_temporality={Histogram: temporality, Counter: temporality})


def _context(index: int) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if index % 3 else TraceFlags.DEFAULT)
    span = NonRecordingSpan(SpanContext(0xABC0 + index, 0xDE0 + index, False, flags))
    return trace.set_span_in_context(span, Context())


def _points(data: Any, name: str) -> list[Any]:
    """One metric's points without timestamps; a counter's exemplars by number (its reservoir keeps a random one)."""
    found = []
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    histogram = hasattr(point, "bucket_counts")
                    exemplars: Any = sorted(
                        (e.value, e.trace_id, e.span_id, sorted((e.filtered_attributes or {}).items()))
                        for e in point.exemplars or ()
                    )
                    found.append(
                        (
                            sorted(point.attributes.items()),
                            [getattr(point, f, None) for f in ("count", "sum", "min", "max", "value")],
                            list(getattr(point, "bucket_counts", ())),
                            exemplars if histogram else len(exemplars),
                        )
                    )
    return sorted(found, key=repr)


class Twins:
    """Each instrument twice on one provider: ``sdk.*`` recorded through the SDK, ``light.*`` through recorders."""

    def __init__(self, provider: MeterProvider, checked: bool = True) -> None:
        """``checked``: the recorders record directly whatever the probe says (the path itself is under test)."""
        meter = provider.get_meter("test")
        self.sdk_histogram = meter.create_histogram("sdk.h", explicit_bucket_boundaries_advisory=(0.001, 0.01, 1.0))
        self.sdk_counter = meter.create_counter("sdk.c")
        self.light_histogram = LightRecorder(
            meter.create_histogram("light.h", explicit_bucket_boundaries_advisory=(0.001, 0.01, 1.0)), checked=checked
        )
        self.light_counter = LightRecorder(meter.create_counter("light.c"), checked=checked)

    def record(self, value: float, index: int, context: Context) -> None:
        attributes = SETS[index % len(SETS)]
        self.sdk_histogram.record(value, attributes, context=context)
        self.sdk_counter.add(value, attributes, context=context)
        self.light_histogram.record(value, index % len(SETS), attributes, context)
        self.light_counter.record(value, index % len(SETS), attributes, context)

    def assert_same(self, data: Any) -> None:
        for kind in ("h", "c"):
            sdk, light = _points(data, f"sdk.{kind}"), _points(data, f"light.{kind}")
            assert sdk, f"nothing collected for sdk.{kind}"
            assert light == sdk


def test_this_sdk_was_checked() -> None:
    """The probe accepts the SDK this project pins, and every recorder of an SDK instrument records directly."""
    assert sdk_recording_known()
    provider = MeterProvider([_reader(False)], resource=Resource.get_empty(), shutdown_on_exit=False)
    assert LightRecorder(provider.get_meter("t").create_histogram("h"))._direct


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
@pytest.mark.parametrize("exemplars", ["trace_based", "always_on", "always_off"])
@pytest.mark.parametrize("view", ["default", "keeps one key"])
def test_same_points_as_the_sdk(delta: bool, exemplars: str, view: str) -> None:
    """Two readers of different temporalities, views that keep some keys, every exemplar filter, collections in
    between (a delta collection starts new aggregations): the recorders' points equal the SDK's."""
    readers = [_reader(delta), _reader(not delta)]
    filters = {"trace_based": None, "always_on": AlwaysOnExemplarFilter(), "always_off": AlwaysOffExemplarFilter()}
    views = [View(instrument_name="*.h", attribute_keys={"vision.stage"})] if view != "default" else []
    provider = MeterProvider(
        readers,
        resource=Resource.get_empty(),
        shutdown_on_exit=False,
        exemplar_filter=filters[exemplars],
        views=views,
    )
    twins = Twins(provider)
    for round_ in range(3):
        for index, value in enumerate(VALUES):
            twins.record(value, index + round_, _context(index))
        for reader in readers:
            twins.assert_same(reader.get_metrics_data())
    provider.shutdown()


def test_a_reader_added_later_gets_the_points() -> None:
    first, later = _reader(False), _reader(True)
    provider = MeterProvider([first], resource=Resource.get_empty(), shutdown_on_exit=False)
    twins = Twins(provider)
    twins.record(0.5, 0, _context(1))
    provider.add_metric_reader(later)
    twins.record(0.7, 0, _context(2))
    twins.assert_same(first.get_metrics_data())
    twins.assert_same(later.get_metrics_data())
    provider.shutdown()


def test_what_the_sdk_would_refuse_or_clean_goes_its_way(caplog: pytest.LogCaptureFixture) -> None:
    """A negative or non-finite value is refused with the SDK's own warning; attributes with values other than
    strings, or without a key naming them, are cleaned by the SDK (a list becomes a tuple)."""
    reader = _reader(False)
    provider = MeterProvider([reader], resource=Resource.get_empty(), shutdown_on_exit=False)
    twins = Twins(provider)
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.metrics"):
        for value in (-1.0, math.nan, math.inf):
            twins.light_histogram.record(value, 0, SETS[0], _context(1))
    refused = [r.getMessage() for r in caplog.records]
    assert len(refused) == 3 and all("Histogram light.h" in message for message in refused)
    odd: dict[str, Any] = {"vision.stage": "x", "count": 3, "tags": ["a", "b"]}
    twins.light_histogram.record(0.1, "odd", odd, _context(1))
    twins.light_histogram.record(0.1, None, {"vision.stage": "y"}, _context(1))
    twins.sdk_histogram.record(0.1, odd, context=_context(1))
    twins.sdk_histogram.record(0.1, {"vision.stage": "y"}, context=_context(1))
    data = reader.get_metrics_data()
    assert _points(data, "light.h") == _points(data, "sdk.h")
    assert ("tags", ("a", "b")) in _points(data, "light.h")[0][0]
    provider.shutdown()


@pytest.fixture
def unchecked_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An SDK whose recording path no longer matches: measurements come out with another value."""
    made = _light_metrics._measurement_maker()
    monkeypatch.setattr(_light_metrics, "_measurement_maker", lambda: lambda value, *rest: made(value * 2, *rest))
    sdk_recording_known.cache_clear()
    yield
    sdk_recording_known.cache_clear()


def test_another_sdk_gets_its_own_path(unchecked_sdk: None) -> None:
    """The probe notices the difference, and recorders then call the SDK's ``record``: the points stay right."""
    assert not sdk_recording_known()
    reader = _reader(False)
    provider = MeterProvider([reader], resource=Resource.get_empty(), shutdown_on_exit=False)
    twins = Twins(provider, checked=False)
    assert not twins.light_histogram._direct
    for index, value in enumerate(VALUES):
        twins.record(value, index, _context(index))
    twins.assert_same(reader.get_metrics_data())
    provider.shutdown()


def test_stage_durations_through_a_pipeline() -> None:
    """End to end: each stage span's duration is one point of ``vision.stage.duration``, and the exemplars name
    spans of the trace, as before the recorders."""
    with capture_telemetry() as captured:
        for _ in range(3):
            with otel_vision.stage("preprocess", {"vision.model.name": "m"}):
                pass
        with otel_vision.stage("inference", {"vision.model.name": "m"}):
            pass
        # points first: a collection takes the exemplars, and reading the spans flushes (which collects)
        points = {p.attributes["vision.stage"]: p for p in captured.points("vision.stage.duration")}
        spans = {s.context.span_id: s for s in captured.spans()}
    assert {name: p.count for name, p in points.items()} == {"preprocess": 3, "inference": 1}
    for name, point in points.items():
        assert point.exemplars, name
        for exemplar in point.exemplars:
            span = spans[exemplar.span_id]
            assert span.name == name and exemplar.trace_id == span.context.trace_id
            assert exemplar.value == pytest.approx((span.end_time - span.start_time) / 1e9)
