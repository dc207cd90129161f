"""Stage spans made without the SDK tracer (otel_vision._light) export exactly what SDK-made spans export.

Every scenario runs twice in one pipeline: once as configured (light spans), once after a span processor that acts at
a span's start was added to the tracer provider, which sends every span back through the SDK's tracer. The exported
spans must be the same, field by field, but for ids and times.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, StatusCode, TraceFlags

import otel_vision
from otel_vision._light import _SDK_SPAN_FIELDS, LightSpan
from otel_vision.testing import CapturedTelemetry, capture_telemetry


class StartWatcher(SpanProcessor):
    """Acts at each span's start (so light spans must not be used once it is on the provider)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        self.started.append(span.name)


def _shape(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    """What an exporter sees of each span, with ids replaced by positions in the list (ids and times differ)."""
    ids = {s.context.span_id: i for i, s in enumerate(spans)}
    shaped = []
    for s in spans:
        shaped.append(
            {
                "name": s.name,
                "parent": ids.get(s.parent.span_id, "outside") if s.parent is not None else None,
                "same_trace": s.context.trace_id == spans[-1].context.trace_id,
                "flags": int(s.context.trace_flags),
                "remote": s.context.is_remote,
                "kind": s.kind,
                "attributes": dict(s.attributes or {}),
                "dropped_attributes": s.dropped_attributes,
                "events": [(e.name, dict(e.attributes or {}), e.dropped_attributes) for e in s.events],
                "dropped_events": s.dropped_events,
                "links": [(link.context.span_id, dict(link.attributes or {})) for link in s.links],
                "status": (s.status.status_code, s.status.description),
                "scope": s.instrumentation_scope,
                "resource": s.resource,
                "ordered": s.start_time is not None and s.end_time is not None and s.start_time <= s.end_time,
            }
        )
    return shaped


def _both_ways(telemetry: CapturedTelemetry, scenario: Callable[[], None]) -> tuple[list[Any], list[Any]]:
    """The scenario's spans as configured, then through the SDK's tracer (a start-watching processor added)."""
    scenario()
    light = telemetry.spans()
    telemetry.clear()
    watcher = StartWatcher()
    telemetry.handle.tracer_provider.add_span_processor(watcher)  # type: ignore[union-attr]
    scenario()
    sdk = telemetry.spans()
    members = [s for s in sdk if (s.attributes or {}).get("vision.batch.role") == "member"]  # made in the export path
    assert len(watcher.started) == len(sdk) - len(members), "the SDK path calls on_start for every span"
    return _shape(light), _shape(sdk)


def test_nested_stages_and_a_request(vision_telemetry: CapturedTelemetry) -> None:
    made: list[str] = []

    def scenario() -> None:
        with otel_vision.request("predict", attributes={"vision.model.name": "m"}) as root:
            made.append(type(root).__name__)
            with otel_vision.stage("preprocess", attributes={"vision.batch.size": 4, "shapes": ["f32[1,3]"]}) as span:
                made.append(type(span).__name__)
                made.append(type(trace.get_current_span()).__name__)
            with otel_vision.stage("inference", attributes={"tags": ["a", None]}) as span:  # None inside: the SDK's
                made.append(type(span).__name__)
                with otel_vision.stage("layer"):
                    pass

    light, sdk = _both_ways(vision_telemetry, scenario)
    assert made == ["LightSpan", "LightSpan", "LightSpan", "_Span"] + ["_Span"] * 4
    assert light == sdk
    assert [s["name"] for s in light] == ["preprocess", "layer", "inference", "predict"]
    assert light[0]["attributes"] == {"vision.stage": "preprocess", "vision.batch.size": 4, "shapes": ("f32[1,3]",)}
    assert light[2]["attributes"]["tags"] == ("a", None)
    assert light[0]["flags"] == TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID


def test_what_user_code_does_to_the_current_span(vision_telemetry: CapturedTelemetry) -> None:
    other = SpanContext(0xABC, 0xDEF, is_remote=True)

    def scenario() -> None:
        with otel_vision.request("predict"):
            with otel_vision.stage("inference"):
                span = trace.get_current_span()
                span.set_attribute("ok", 1)
                span.set_attribute("vision.stage", "inference")  # set again: moves to the end, as in the SDK
                span.set_attribute(5, "five")  # type: ignore[arg-type]  # not a str: dropped, with the SDK's warning
                span.set_attributes({6: "six"})  # type: ignore[dict-item]  # here the SDK keeps it as "6"
                span.set_attribute("seq", [1, 2, 3])
                span.set_attribute("bad", object())  # type: ignore[arg-type]  # invalid: replaced, with a warning
                span.set_attributes({"x": 1.5, "": "empty key"})
                span.add_event("checkpoint", {"step": 3, "names": ["a"]})
                span.add_link(other, {"why": "retry"})
                span.add_link(SpanContext(0, 0, is_remote=False))  # invalid: ignored
                span.update_name("inference-renamed")
                span.set_status(StatusCode.OK)
                span.set_status(StatusCode.ERROR, "ignored after OK")
            with otel_vision.stage("postprocess"):
                try:
                    raise ValueError("bad box")
                except ValueError as exc:
                    trace.get_current_span().record_exception(exc, {"extra": True})

    light, sdk = _both_ways(vision_telemetry, scenario)
    for shaped in (light, sdk):  # stack traces differ by line: compare the rest
        for event in shaped[1]["events"]:
            event[1].pop("exception.stacktrace", None)
    assert light == sdk
    inference = light[0]
    assert inference["name"] == "inference-renamed"
    assert inference["attributes"]["seq"] == (1, 2, 3) and inference["attributes"]["bad"] is None
    assert list(inference["attributes"])[:3] == ["ok", "vision.stage", "6"]
    assert inference["status"] == (StatusCode.OK, None)
    assert inference["links"] == [(0xDEF, {"why": "retry"})]
    assert light[1]["events"][0][1]["exception.type"] == "ValueError"


def test_limits_are_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")

    def scenario() -> None:
        with otel_vision.request("predict"):
            with otel_vision.stage("inference", attributes={"a": "short"}):
                span = trace.get_current_span()
                span.set_attributes({"b": "a long value", "c": 1})
                span.set_attribute("a", "again")  # set again: moves to the end, so "b" is the oldest now
                span.set_attribute("d", 2)  # one over the count limit: the oldest goes
                for i in range(4):
                    span.add_event(f"e{i}", {"text": "truncated here"})
            with otel_vision.stage("too-long", attributes={"a": "longer than five"}):
                pass

    with capture_telemetry() as telemetry:
        light, sdk = _both_ways(telemetry, scenario)
    assert light == sdk
    assert light[0]["attributes"] == {"c": 1, "a": "again", "d": 2} and light[0]["dropped_attributes"] == 2
    assert light[0]["dropped_events"] == 2 and [e[0] for e in light[0]["events"]] == ["e2", "e3"]
    assert light[1]["attributes"] == {"vision.stage": "too-l", "a": "longe"}


def test_misuse_warns_as_the_sdk_does(vision_telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture) -> None:
    def scenario() -> list[str]:
        caplog.clear()
        with otel_vision.request("predict"):
            with otel_vision.stage("inference") as span:
                pass
            span.set_attribute("late", 1)
            span.add_event("late")
            span.end()
        return [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"):
        light_messages = scenario()
        watcher = StartWatcher()
        vision_telemetry.handle.tracer_provider.add_span_processor(watcher)  # type: ignore[union-attr]
        sdk_messages = scenario()
    assert light_messages == sdk_messages
    assert light_messages == [
        "Setting attribute on ended span.",
        "Tried calling _add_event on an ended span.",
        "Calling end() on an ended span.",
    ]
    assert "late" not in vision_telemetry.spans("inference")[0].attributes  # type: ignore[operator]


def test_exception_through_a_stage_and_the_span_as_context_manager(vision_telemetry: CapturedTelemetry) -> None:
    def scenario() -> None:
        with otel_vision.request("predict"):
            with pytest.raises(RuntimeError):
                with otel_vision.stage("inference"):
                    raise RuntimeError("out of luck")
            with pytest.raises(KeyError):
                with otel_vision.stage("outer"):
                    with trace.get_current_span():  # an API span used as a context manager ends itself
                        raise KeyError("k")

    light, sdk = _both_ways(vision_telemetry, scenario)
    for shaped in (light, sdk):
        for span in shaped:
            for event in span["events"]:
                event[1].pop("exception.stacktrace", None)
    assert light == sdk
    assert light[0]["status"] == (StatusCode.ERROR, "RuntimeError: out of luck")
    assert light[0]["attributes"]["error.type"] == "RuntimeError"


def test_a_parent_from_the_applications_own_tracer(vision_telemetry: CapturedTelemetry) -> None:
    tracer = vision_telemetry.handle.tracer_provider.get_tracer("app")  # type: ignore[union-attr]

    def scenario() -> None:
        with tracer.start_as_current_span("handler", kind=trace.SpanKind.SERVER):
            with otel_vision.stage("inference"):
                pass

    light, sdk = _both_ways(vision_telemetry, scenario)
    assert light == sdk and light[0]["parent"] == 1


def test_batch_member_spans_and_links(vision_telemetry: CapturedTelemetry) -> None:
    def scenario() -> None:
        requests = []
        for i in range(3):
            with otel_vision.request("edit", attributes={"i": i}):
                requests.append(context.get_current())
        with otel_vision.request("worker"):
            with otel_vision.batch("inference", requests=requests):
                pass

    light, sdk = _both_ways(vision_telemetry, scenario)

    def key(span: dict[str, Any]) -> str:
        return repr(sorted(span["attributes"].items())) + str(span["name"])

    # Member spans are made in the export path: compare them as a set, with parents and links by name.
    assert sorted(map(key, light)) == sorted(map(key, sdk))
    batch = [s for s in light if s["attributes"].get("vision.batch.role") == "batch"]
    assert len(batch) == 1 and len(batch[0]["links"]) == 3


def test_unsampled_requests_make_no_light_spans_and_still_count() -> None:
    with capture_telemetry(sample_rate=0.0) as telemetry:
        kinds = []
        for _ in range(5):
            with otel_vision.request("predict") as root:
                with otel_vision.stage("inference") as span:
                    kinds.append((type(root).__name__, type(span).__name__, span.is_recording()))
        assert telemetry.spans() == []
        assert kinds == [("NonRecordingSpan", "NonRecordingSpan", False)] * 5
        assert sum(p.count for p in telemetry.points("vision.stage.duration")) == 5
        assert sum(p.value for p in telemetry.points("vision.requests")) == 5


def test_ratio_sampling_is_decided_by_the_sampler_on_the_trace_id() -> None:
    with capture_telemetry(sample_rate=0.5) as telemetry:
        for _ in range(200):
            with otel_vision.request("predict"):
                with otel_vision.stage("inference"):
                    pass
        roots = telemetry.spans("predict")
        inner = telemetry.spans("inference")
    bound = round(0.5 * (1 << 64))
    assert 40 < len(roots) < 160, len(roots)  # about half, as the SDK's sampler decides
    assert all(s.context.trace_id & 0xFFFFFFFFFFFFFFFF < bound for s in roots)
    assert {s.context.trace_id for s in inner} == {s.context.trace_id for s in roots}


def test_is_an_sdk_span() -> None:
    """What user code may read from the current span works as on any SDK span."""
    with capture_telemetry() as telemetry:
        with otel_vision.request("predict"):
            with otel_vision.stage("inference") as span:
                assert isinstance(span, LightSpan) and isinstance(span, Span) and isinstance(span, ReadableSpan)
                span.add_event("e", {"k": 1})
                assert span.is_recording() and span.get_span_context().is_valid
                assert span.resource is telemetry.handle.tracer_provider.resource  # type: ignore[union-attr]
                assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "otel_vision"
                assert [e.name for e in span.events] == ["e"] and span.links == () and span.dropped_attributes == 0
                assert '"name": "inference"' in span.to_json()
                assert repr(span).startswith('LightSpan(name="inference"')
                assert set(vars(span)) == _SDK_SPAN_FIELDS  # the fields an SDK span holds, no more, no fewer
            assert not span.is_recording()
        assert len(telemetry.spans()) == 2


def test_ids_and_span_contexts_are_the_sdks(vision_telemetry: CapturedTelemetry) -> None:
    """From the same state of ``random`` a light root and its child get the ids the SDK's tracer gives them, in span
    contexts equal to the SDK's field by field (flags, trace state, validity)."""

    made: list[type] = []

    def scenario() -> None:
        random.seed(1234)
        with otel_vision.request("predict") as root:
            with otel_vision.stage("inference"):
                pass
        made.append(type(root))

    def contexts(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
        return [tuple(s.context) + (s.parent.span_id if s.parent else None,) for s in spans]

    scenario()
    light = vision_telemetry.spans()
    vision_telemetry.clear()
    vision_telemetry.handle.tracer_provider.add_span_processor(StartWatcher())  # type: ignore[union-attr]
    scenario()
    sdk = vision_telemetry.spans()
    assert made[0] is LightSpan and made[1] is not LightSpan and len(light) == len(sdk) == 2
    assert contexts(light) == contexts(sdk)
    assert [type(field) for field in light[1].context] == [type(field) for field in sdk[1].context]


class FailsAtEnd(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        if span.name == "inference":
            raise RuntimeError("a processor's bug")


def test_a_processor_that_raises_at_the_end_sees_the_span_once(vision_telemetry: CapturedTelemetry) -> None:
    vision_telemetry.handle.tracer_provider.add_span_processor(FailsAtEnd())  # type: ignore[union-attr]
    with otel_vision.request("predict"):
        with otel_vision.stage("inference") as span:
            pass
        assert isinstance(span, LightSpan) and not span.is_recording()
        with otel_vision.stage("postprocess"):
            pass
    assert [s.name for s in vision_telemetry.spans()] == ["inference", "postprocess", "predict"]


class Delegating:
    """A processor wrapper that forwards everything through ``__getattr__``."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_unusual_processors_get_every_start(vision_telemetry: CapturedTelemetry) -> None:
    """A processor that forwards through ``__getattr__``, or whose ``on_start`` is set on the instance, is one that
    acts at a span's start: the SDK makes the spans and it sees them all."""
    provider = vision_telemetry.handle.tracer_provider
    assert provider is not None
    seen: list[str] = []
    inner = StartWatcher()
    provider.add_span_processor(Delegating(inner))  # type: ignore[arg-type]
    plain = SpanProcessor()
    plain.on_start = lambda span, parent_context=None: seen.append(span.name)  # type: ignore[method-assign]
    provider.add_span_processor(plain)
    with otel_vision.request("predict"):
        with otel_vision.stage("inference") as span:
            assert not isinstance(span, LightSpan)
    assert inner.started == ["predict", "inference"] and seen == ["predict", "inference"]
