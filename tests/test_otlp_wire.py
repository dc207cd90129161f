"""The OTLP/gRPC span exporter's own encoder (`otel_vision._otlp_wire`) against the SDK's, byte for byte.

The SDK's ``encode_spans(...).SerializeToString()`` is the reference: every field of a span, event, link, status,
scope and resource, and every kind of attribute value, must come out as the same bytes. The collector end of the same
path (what rotel receives) is covered by the export tests, which all run through this encoder by default."""

from __future__ import annotations

import math
import random

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from otel_vision import _otlp_wire
from otel_vision._otlp_wire import encode_request

RESOURCE = Resource.create({"service.name": "wire", "host.name": "vm", "process.pid": 4242, "k8s.ok": True})
SCOPE = InstrumentationScope("otel_vision", "1.2.3", "https://opentelemetry.io/schemas/1.30.0")

SCALARS = [
    "", "plain", "ünïcödé ✓", "x" * 300, True, False, 0, 1, -1, 127, 128, 2**63 - 1, -(2**63), 0.0, -0.0, 1.5,
    -2.25e-300, math.inf, -math.inf, 1e308,
]  # fmt: skip


def _context(rng: random.Random, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, remote, TraceFlags(1), state if state else TraceState()
    )


def _span(rng: random.Random, **fields: object) -> ReadableSpan:
    start = rng.randrange(1, 2**62)
    values: dict[str, object] = {
        "name": "step",
        "context": _context(rng),
        "parent": _context(rng),
        "resource": RESOURCE,
        "attributes": {"vision.stage": "denoise", "diffusion.step": 3},
        "kind": SpanKind.INTERNAL,
        "start_time": start,
        "end_time": start + rng.randrange(1, 10**9),
        "instrumentation_scope": SCOPE,
    }
    values.update(fields)
    return ReadableSpan(**values)  # type: ignore[arg-type]


def _same(spans: list[ReadableSpan]) -> None:
    ours = encode_request(spans)
    assert ours == encode_spans(spans).SerializeToString()
    ExportTraceServiceRequest.FromString(ours)


def test_every_span_field_is_encoded_as_the_sdk_encodes_it() -> None:
    rng = random.Random(1)
    bounded = BoundedAttributes(2, {"a": 1, "b": "two", "c": 3.0, "d": False})  # two dropped
    spans = [
        _span(rng),
        _span(rng, parent=None, name=""),
        _span(rng, parent=_context(rng, remote=True)),
        _span(rng, context=_context(rng, state=TraceState([("vendor", "v1"), ("other", "x=y")]))),
        _span(rng, attributes=bounded),
        _span(rng, attributes={}),
        _span(rng, attributes=None),
        *[_span(rng, kind=kind) for kind in SpanKind],
        _span(rng, status=Status(StatusCode.OK)),
        _span(rng, status=Status(StatusCode.ERROR, "ValueError: the image has no pixels")),
        _span(rng, status=Status(StatusCode.ERROR)),
        _span(
            rng,
            events=[
                Event("exception", {"exception.type": "ValueError", "exception.message": "bad"}, timestamp=5),
                Event("empty", None, timestamp=6),
                Event("", BoundedAttributes(1, {"a": 1, "b": 2}), timestamp=7),
            ],
        ),
        _span(
            rng,
            links=[
                Link(_context(rng)),
                Link(_context(rng, remote=True), {"vision.batch.index": 2}),
                Link(_context(rng), BoundedAttributes(1, {"a": "x", "b": "y"})),
            ],
        ),
        _span(rng, instrumentation_scope=None),
        _span(rng, instrumentation_scope=InstrumentationScope("other")),
        _span(rng, instrumentation_scope=InstrumentationScope("scoped", "0.1", None, {"scope.attr": ("a", "b")})),
        _span(rng, resource=Resource.create({"service.name": "second"}, "https://example.com/schema")),
    ]
    for span in spans:
        _same([span])
    _same(spans)


@pytest.mark.parametrize("value", SCALARS + [tuple(SCALARS[:5]), (1, 2, 3), (0.5, math.inf), (True, False), ()])
def test_every_attribute_value_is_encoded_as_the_sdk_encodes_it(value: object) -> None:
    rng = random.Random(2)
    _same([_span(rng, attributes={"key": value, "ključ": value})])


def test_values_that_only_the_sdks_types_forbid_are_encoded_too() -> None:
    # Logs and hand-made spans can carry bytes, None, mappings and None inside sequences.
    rng = random.Random(3)
    attributes = {"bytes": b"\x00\xff", "none": None, "map": {"a": 1, "b": ("x", None)}, "list": [1, None, "z"]}
    _same([_span(rng, attributes=attributes)])


def test_values_that_compare_equal_across_types_are_not_confused_by_the_cache() -> None:
    rng = random.Random(4)
    for value in (True, 1, 1.0, False, 0, 0.0, -0.0, "1"):
        _same([_span(rng, attributes={"same.key": value})])
    nan = float("nan")
    _same([_span(rng, attributes={"nan": nan}), _span(rng, attributes={"nan": nan})])


def test_random_batches_match_the_sdk_encoder() -> None:
    rng = random.Random(5)
    resources = [RESOURCE, Resource.create({"service.name": "wire", "host.name": "vm", "process.pid": 4242,
                                            "k8s.ok": True}), Resource.create({"service.name": "b"})]  # fmt: skip
    scopes = [SCOPE, InstrumentationScope("otel_vision", "1.2.3", "https://opentelemetry.io/schemas/1.30.0"), None]
    keys = ["vision.stage", "vision.model.name", "diffusion.step", "x", "y.z"]
    pool = [*SCALARS, ("a", "b"), (1, 2), (1.0,), (True,)]
    for _ in range(40):
        spans = []
        for _ in range(rng.randrange(1, 30)):
            attributes = {rng.choice(keys): rng.choice(pool) for _ in range(rng.randrange(0, 6))}
            spans.append(_span(rng, attributes=attributes, resource=rng.choice(resources[::2]),
                               instrumentation_scope=rng.choice(scopes[::2])))  # fmt: skip
        _same(spans)
    # Distinct but equal resources and scopes are merged as the SDK merges them (one after the other here, so the
    # order of spans within a scope is the batch's).
    first = _span(rng, resource=resources[0], instrumentation_scope=scopes[0])
    second = _span(rng, resource=resources[1], instrumentation_scope=scopes[1])
    _same([first, second])
    assert len(ExportTraceServiceRequest.FromString(encode_request([first, second])).resource_spans) == 1


def test_the_cache_stays_bounded() -> None:
    rng = random.Random(6)
    for index in range(_otlp_wire.CACHE_LIMIT + 10):
        encode_request([_span(rng, attributes={"request.id": index}, name=f"span {index}")])
    assert len(_otlp_wire._span_attributes) <= _otlp_wire.CACHE_LIMIT
    assert len(_otlp_wire._names) <= _otlp_wire.CACHE_LIMIT
    _same([_span(rng, attributes={"request.id": 7}, name="span 7")])
    _same([_span(rng, name="long " * 100), _span(rng, name="long " * 100)])


def test_what_the_sdk_encoder_cannot_encode_is_dropped_or_replaced_not_the_batch() -> None:
    rng = random.Random(7)
    span = _span(rng, name="bad \udc80 name", attributes={"huge": 2**64, "object": object(), "kept": "yes",
                                                          "surrogate": "a\udcffb"})  # fmt: skip
    with pytest.raises(ValueError):
        encode_spans([span]).SerializeToString()  # the SDK's encoder fails the whole batch on the name
    request = ExportTraceServiceRequest.FromString(encode_request([span]))
    decoded = request.resource_spans[0].scope_spans[0].spans[0]
    assert decoded.name == "bad ? name"
    assert {kv.key: kv.value.string_value for kv in decoded.attributes} == {"kept": "yes", "surrogate": "a?b"}


def test_a_batch_the_encoder_fails_on_is_sent_as_the_sdk_encodes_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(spans: object) -> bytes:
        raise RuntimeError("a bug in the encoder")

    exporter = _otlp_wire.grpc_span_exporter_class()(endpoint="http://127.0.0.1:9", insecure=True, timeout=1)
    try:
        spans = [_span(random.Random(8))]
        assert exporter._translate_data(spans) == encode_spans(spans)  # ours, while it works
        monkeypatch.setattr(_otlp_wire, "encode_request", broken)
        with caplog.at_level("DEBUG", logger="otel_vision"):
            assert exporter._translate_data(spans) == encode_spans(spans)
        assert "encoding spans for OTLP/gRPC" in caplog.text and "a bug in the encoder" in caplog.text
    finally:
        exporter.shutdown()
