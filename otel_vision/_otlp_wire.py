"""OTLP trace export requests written straight in protobuf's wire format, for the gRPC span exporter.

The SDK's encoder (``encode_spans``) builds a protobuf object for every span, attribute and value, and groups the
spans by resource through ``Resource.__hash__``, which dumps the resource's attributes to JSON: once per span. For the
short spans of a diffusion step that comes to about 26 µs per span on the export thread, more than the span cost the
thread that ran the model. On a CPU-bound model that uses every core, that thread's CPU is taken from the model.

Here a span becomes bytes directly. The key-value pairs that repeat from span to span (the model's name, the stage)
are encoded once and reused. Spans are grouped by their resource and scope objects, which one provider shares among
all its spans; distinct but equal ones are merged as the SDK merges them. The result is, byte for byte, what
``encode_spans(spans).SerializeToString()`` gives for the same spans (``tests/test_otlp_wire.py`` compares them over
every field and value type), so the collector cannot tell the difference.

It differs only where the SDK's encoder fails:
- A string that is not valid UTF-8 (a lone surrogate from a badly decoded file name) is sent with ``?`` in place of
  what cannot be encoded. The SDK's encoder drops that attribute, or fails the whole batch when it is a span's name.
- An integer outside int64, or a value of a type OTLP has no place for, drops that attribute, as the SDK's encoder
  does, but without logging a stack trace for it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind

from otel_vision._errors import report_internal_error

_KINDS: Final = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
"""Span field 6 (kind) for each kind: OTLP numbers them from 1 (0 is 'unspecified')."""
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_ONE_BYTE: Final = [bytes((n,)) for n in range(128)]
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack

CACHE_LIMIT: Final = 4096
"""Encoded attributes kept for reuse, at most; the cache starts again empty when full."""
CACHED_STRING_CHARS: Final = 256
"""Longer string values are encoded every time (a prompt is seldom repeated, and would make the cache large)."""
_span_attributes: dict[tuple[str, type, object], bytes] = {}
"""Span field 9 (one attribute) by key, type and value: the type keeps ``True``, ``1`` and ``1.0`` apart."""
_CACHED_TYPES: Final = frozenset((str, bool, int, float))


class Unencodable(ValueError):
    """A value OTLP has no place for (an integer outside int64, an object of another type)."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length and the payload."""
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _any_value(value: Any) -> bytes:
    """The body of an ``AnyValue`` message, in the order of the SDK's ``_encode_value`` checks."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", _utf8(value))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise Unencodable(f"{value} is outside int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(item)) for item in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()]))
    raise Unencodable(f"a value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """The body of a ``KeyValue`` message."""
    return _field(b"\x0a", _utf8(key)) + _field(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated field ``tag`` (a ``KeyValue`` each) for ``attributes``, leaving out the ones that cannot be encoded."""
    if not attributes:
        return b""
    fields = []
    for key, value in attributes.items():
        try:
            fields.append(_field(tag, _key_value(key, value)))
        except Unencodable:
            continue
    return b"".join(fields)


def _encoded_span_attribute(key: str, value: Any) -> bytes:
    try:
        return _field(b"\x4a", _key_value(key, value))
    except Unencodable:
        return b""


def _span_attribute(key: str, value: Any) -> bytes:
    """Span field 9 for one attribute (``b""`` when it cannot be encoded), from the cache when it was seen before."""
    kind = type(value)
    if kind not in _CACHED_TYPES or (kind is str and len(value) > CACHED_STRING_CHARS) or (kind is float and not value):
        # (0.0 and -0.0 are equal, and would find each other's bytes)
        return _encoded_span_attribute(key, value)
    cache_key = (key, kind, value)
    encoded = _span_attributes.get(cache_key)
    if encoded is None:
        encoded = _encoded_span_attribute(key, value)
        if len(_span_attributes) >= CACHE_LIMIT:
            _span_attributes.clear()
        _span_attributes[cache_key] = encoded
    return encoded


def _flags(context: Any) -> bytes:
    flags = _HAS_IS_REMOTE | _IS_REMOTE if context is not None and context.is_remote else _HAS_IS_REMOTE
    return _fixed32(flags)


def _trace_state(state: Any) -> str:
    return ",".join([f"{key}={value}" for key, value in state.items()]) if state is not None else ""


_LOCAL_FLAGS: Final = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE)
"""Span field 16 (flags) for a span whose parent is local or absent: the common case."""
_UNSET_STATUS: Final = b"\x7a\x00"
"""Span field 15 for the unset status without a description (an empty ``Status`` message)."""
_names: dict[str, bytes] = {}
"""Span field 5 (name) by name: a process names its spans with a few strings."""


def _name_field(name: str) -> bytes:
    encoded = _names.get(name)
    if encoded is None:
        encoded = _field(b"\x2a", _utf8(name))
        if len(name) <= CACHED_STRING_CHARS:
            if len(_names) >= CACHE_LIMIT:
                _names.clear()
            _names[name] = encoded
    return encoded


def encode_span(span: ReadableSpan) -> bytes:
    """The body of one ``Span`` message, fields in number order as protobuf serializes them."""
    context = span.context
    parent = span.parent
    parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        parts.append(_field(b"\x1a", _utf8(_trace_state(context.trace_state))))
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    name = span.name
    if name:
        parts.append(_name_field(name))
    parts.append(_KINDS[span.kind])
    if span.start_time:
        parts += (b"\x39", _fixed64(span.start_time))
    if span.end_time:
        parts += (b"\x41", _fixed64(span.end_time))
    attributes = span.attributes
    if attributes:
        parts += [_span_attribute(key, value) for key, value in attributes.items()]
    if span.dropped_attributes:
        parts += (b"\x50", _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _field(b"\x12", _utf8(event.name))
        body += _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    if span.dropped_events:
        parts += (b"\x60", _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big") + b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        body += _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        parts.append(_field(b"\x6a", body + b"\x35" + _flags(linked)))
    if span.dropped_links:
        parts += (b"\x70", _varint(span.dropped_links))
    status = span.status
    if status is not None:
        code = status.status_code.value
        if not code and not status.description:
            parts.append(_UNSET_STATUS)
        else:
            body = _field(b"\x12", _utf8(status.description)) if status.description else b""
            parts.append(_field(b"\x7a", body + b"\x18" + _varint(code) if code else body))
    parts.append(_LOCAL_FLAGS if parent is None or not parent.is_remote else b"\x85\x01" + _flags(parent))
    return b"".join(parts)


def _scope(scope: Any) -> bytes:
    """The body of an ``InstrumentationScope`` message."""
    if scope is None:
        return b""
    body = _field(b"\x0a", _utf8(scope.name)) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", _utf8(scope.version))
    return body + _attributes(b"\x1a", getattr(scope, "attributes", None))


def _schema_url(tag: bytes, url: str | None) -> bytes:
    return _field(tag, _utf8(url)) if url else b""


def _grouped(spans: Sequence[ReadableSpan]) -> list[tuple[Any, list[tuple[Any, list[ReadableSpan]]]]]:
    """The spans by resource, then by scope, each in the order first seen, as the SDK's encoder groups them (by
    equality). The spans are sorted by the identity of their resource and scope objects (alive, so not reused, while
    the batch is); only the distinct objects are compared. (Spans of distinct but equal scopes that alternate in the
    batch come out grouped by object, not in the batch's order: order within a scope means nothing to OTLP.)"""
    by_objects: dict[tuple[int, int], tuple[Any, Any, list[ReadableSpan]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        key = (id(resource), id(scope))
        group = by_objects.get(key)
        if group is None:
            group = by_objects[key] = (resource, scope, [])
        group[2].append(span)
    resources: list[tuple[Any, list[tuple[Any, list[ReadableSpan]]]]] = []
    for resource, scope, members in by_objects.values():
        scopes = next((found for known, found in resources if known == resource), None)
        if scopes is None:
            scopes = []
            resources.append((resource, scopes))
        same_scope = next((found for known, found in scopes if known == scope), None)
        if same_scope is None:
            scopes.append((scope, members))
        else:
            same_scope.extend(members)
    return resources


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` for ``spans``, serialized."""
    request = []
    for resource, scopes in _grouped(spans):
        body = [_field(b"\x0a", _resource_body(resource))]
        for scope, members in scopes:
            scope_spans = _field(b"\x0a", _scope(scope)) + b"".join(
                [_field(b"\x12", encode_span(span)) for span in members]
            )
            scope_spans += _schema_url(b"\x1a", scope.schema_url if scope is not None else None)
            body.append(_field(b"\x12", scope_spans))
        body.append(_schema_url(b"\x1a", resource.schema_url))
        request.append(_field(b"\x0a", b"".join(body)))
    return b"".join(request)


_resources: dict[int, tuple[Any, bytes]] = {}


def _resource_body(resource: Any) -> bytes:
    """The body of a ``Resource`` message, encoded once per resource object (a resource is immutable)."""
    known = _resources.get(id(resource))
    if known is not None and known[0] is resource:
        return known[1]
    body = _attributes(b"\x0a", resource.attributes)
    if len(_resources) >= 64:
        _resources.clear()
    _resources[id(resource)] = (resource, body)
    return body


@cache
def grpc_span_exporter_class() -> type[SpanExporter]:
    """The SDK's OTLP/gRPC span exporter with this encoder. The SDK's encoder takes over for a batch this one fails
    on (a bug of ours, reported once with its traceback), so the batch is still sent as the SDK would send it."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    parse: Callable[[bytes], Any] = ExportTraceServiceRequest.FromString

    class GrpcSpanExporter(OTLPSpanExporter):
        """`OTLPSpanExporter` (gRPC) encoding with `otel_vision._otlp_wire`."""

        def _translate_data(self, data: Sequence[ReadableSpan]) -> Any:
            try:
                return parse(encode_request(data))
            except Exception:
                report_internal_error("encoding spans for OTLP/gRPC (the SDK's encoder is used instead)")
                return super()._translate_data(data)

    return GrpcSpanExporter
