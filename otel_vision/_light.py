"""Child spans of a sampled span, made without the SDK tracer's per-span machinery.

A stage inside a traced request (YOLO's preprocess, inference and postprocess, each diffusion step, each instrumented
module call) starts under a parent that is already sampled. For such a span the SDK's ``Tracer.start_span`` and
``Span.end`` do a lot that cannot change the outcome: ask the sampler (which, for the samplers `configure()` builds,
follows a sampled parent), build a `BoundedAttributes` (its own lock, every value cleaned again), an events list, a
links list, a lock, call every processor's ``on_start`` (none of ours does anything there). Right after a model's
compute that code runs cache-cold and costs two to three times what it costs in a loop.

`LightSpans.start` makes the same span for less: the same span context rules (trace id and flags of the parent,
a span id from the provider's id generator, the parent's trace state), attributes cleaned once per stage, and at the
end the same `ReadableSpan` handed to the same processors, in the same order. `LightSpan` is a full recording span:
what user code does to the current span (attributes, events, links, status, exceptions, a new name) behaves as on an
SDK span, with the same limits and the same warnings.

It is used only when that makes no difference anyone can see: our own tracer provider, a sampler that follows a
sampled parent, every span processor one that does nothing at a span's start (ours, and the SDK's simple and batch
processors), no SDK self-metrics. Anything else (a root span, an unsampled or invalid parent, a stage whose
attributes need cleaning, a processor added later that acts at the start) takes the SDK's path.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

logger = logging.getLogger("opentelemetry.sdk.trace")
"""The SDK span's logger: a misuse of a light span warns where the same misuse of an SDK span does."""

_PLAIN: Final = frozenset({str, int, float, bool})
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_INTERNAL_METRICS: Final = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"


def starts_nothing(processor: SpanProcessor) -> bool:
    """Whether ``processor`` does nothing when a span starts (and nothing while it ends), so a span made without
    calling it there is the same to it."""
    if getattr(processor, "starts_nothing", False) is True:  # ours say so (`otel_vision._early.SpanGate`)
        return True
    cls = type(processor)
    no_ops = _no_ops()
    return cls.on_start in no_ops and getattr(cls, "_on_ending", None) in no_ops


def _no_ops() -> set[Any]:
    """``on_start`` and ``_on_ending`` methods known to do nothing: the base class's, and the SDK's simple and batch
    processors' (their module is loaded once anyone has one; we do not load it for this)."""
    base = SpanProcessor
    no_ops: set[Any] = {None, base.on_start, getattr(base, "_on_ending", None)}
    export = sys.modules.get("opentelemetry.sdk.trace.export")
    if export is not None:
        for cls in (export.SimpleSpanProcessor, export.BatchSpanProcessor):
            no_ops.update((cls.on_start, getattr(cls, "_on_ending", None)))
    return no_ops


def _as_kept(
    count_limit: int | None, max_length: int | None, held: int, attributes: Mapping[str, types.AnyValue]
) -> dict[str, types.AnyValue] | None:
    """``attributes`` as the SDK keeps them when it keeps them unchanged and silently (valid keys; plain values, or
    sequences of plain values, which become tuples; nothing longer than ``max_length``; at most ``count_limit`` with
    ``held`` more); ``None`` when the SDK would change or drop something (and warn)."""
    if count_limit is not None and held + len(attributes) > count_limit:
        return None
    kept: dict[str, types.AnyValue] = {}
    for key, value in attributes.items():
        if type(key) is not str or not key:
            return None
        kind = type(value)
        if kind in _PLAIN:
            if max_length is not None and kind is str and len(value) > max_length:  # type: ignore[arg-type]
                return None
        elif kind is tuple or kind is list:
            for item in value:  # type: ignore[union-attr]
                if type(item) not in _PLAIN or (
                    max_length is not None and type(item) is str and len(item) > max_length
                ):
                    return None
            value = tuple(value)  # type: ignore[arg-type]
        else:
            return None
        kept[key] = value
    return kept


class SpanProcessors(SynchronousMultiSpanProcessor):
    """The tracer provider's processors, which also tell whether a light span may skip them at its start: every
    processor added, now or later (``tracer_provider.add_span_processor``), is checked as it comes."""

    def __init__(self, light: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
        self.light = light

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        if not starts_nothing(span_processor):
            self.light = False
        super().add_span_processor(span_processor)


class LightSpans:
    """Starts `LightSpan` children for one tracer provider (see the module docstring for when)."""

    __slots__ = ("limits", "new_span_id", "new_trace_id", "processors", "random", "resource", "sampler", "scope")

    def __init__(
        self,
        processors: SpanProcessors,
        resource: Resource,
        sampler: Sampler,
        limits: SpanLimits,
        id_generator: IdGenerator,
        scope: InstrumentationScope,
    ) -> None:
        self.processors = processors
        self.sampler = sampler
        self.new_trace_id = id_generator.generate_trace_id
        self.random = id_generator.is_trace_id_random()
        self.resource = resource
        self.limits = limits
        self.new_span_id = id_generator.generate_span_id
        self.scope = scope

    @classmethod
    def usable(cls, follows_sampled_parent: bool, user_processors: Sequence[SpanProcessor]) -> bool:
        """Whether a provider built with these settings may make light spans at all."""
        internal_metrics = os.environ.get(_INTERNAL_METRICS, "").strip().lower() == "true"
        return follows_sampled_parent and not internal_metrics and all(map(starts_nothing, user_processors))

    def clean(self, attributes: Mapping[str, types.AnyValue]) -> dict[str, types.AnyValue] | None:
        """``attributes`` as a span holds them, when the SDK would keep them unchanged (`_as_kept`); ``None``
        otherwise: then the SDK makes the span, and cleans and warns as it does."""
        limits = self.limits
        return _as_kept(limits.max_span_attributes, limits.max_span_attribute_length, 0, attributes)

    def start(
        self, name: str, parent: otel_context.Context | None, kind: SpanKind, attributes: dict[str, types.AnyValue]
    ) -> trace.Span | None:
        """The span the SDK's tracer would start in ``parent`` (the current context when ``None``), or ``None`` when
        the SDK must make it. ``attributes`` (from `clean`) become the span's own."""
        if not self.processors.light:
            return None
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            if not parent_context.trace_flags.sampled:
                return None  # the SDK's path: what the sampler says of an unsampled parent is its business
            # A sampler that follows a sampled parent (`usable`) samples the child, with the parent's trace state.
            flags = _SAMPLED_RANDOM if parent_context.trace_flags.random_trace_id else _SAMPLED
            span_context = SpanContext(
                parent_context.trace_id, self.new_span_id(), False, flags, parent_context.trace_state
            )
            return LightSpan(self, name, span_context, parent_context, kind, attributes, time_ns())
        # A root: the sampler decides, as in the SDK (same arguments, same flags).
        trace_id = self.new_trace_id()
        result = self.sampler.should_sample(parent, trace_id, name, kind, attributes, None)
        sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]  # unannotated in the SDK
        flags = TraceFlags((TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if self.random else 0))
        span_context = SpanContext(trace_id, self.new_span_id(), False, flags, result.trace_state)
        if not result.decision.is_recording():  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
            return trace.NonRecordingSpan(span_context)
        span = LightSpan(self, name, span_context, None, kind, attributes, time_ns())
        if result.attributes != attributes:  # the sampler's attributes are the span's (ours pass them through)
            span._attributes = self.bounded(result.attributes)
        return span

    def bounded(self, attributes: types.Attributes) -> BoundedAttributes:
        """Span attributes as the SDK holds them once they need its limits."""
        limits = self.limits
        return BoundedAttributes(
            limits.max_span_attributes, attributes, immutable=False, max_value_len=limits.max_span_attribute_length
        )


class LightSpan(trace.Span):
    """A recording span that ends as the same `ReadableSpan` an SDK span would (see the module docstring)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_links",
        "_lock",
        "_maker",
        "_name",
        "_parent",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        maker: LightSpans,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, types.AnyValue],
        start_time: int,
    ) -> None:
        self._maker = maker
        self._name = name
        self._context = span_context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, types.AnyValue] | BoundedAttributes = attributes
        self._events: BoundedList[Event] | None = None
        self._links: BoundedList[Link] | None = None
        self._status = Status(StatusCode.UNSET)
        self._start_time = start_time
        self._end_time: int | None = None
        self._lock = threading.Lock()

    # --- what an SDK span shows ------------------------------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    @property
    def name(self) -> str:
        return self._name

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def parent(self) -> SpanContext | None:
        return self._parent

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def attributes(self) -> types.Attributes:
        return MappingProxyType(self._attributes)

    @property
    def start_time(self) -> int:
        return self._start_time

    @property
    def end_time(self) -> int | None:
        return self._end_time

    @property
    def status(self) -> Status:
        return self._status

    # --- what user code may do to it, as on an SDK span -------------------------------------------------------------
    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Setting attribute on ended span.")
                return
            held = self._attributes
            if type(held) is dict:
                limits = self._maker.limits
                kept = _as_kept(limits.max_span_attributes, limits.max_span_attribute_length, len(held), attributes)
                if kept is not None:
                    held.update(kept)
                    return
            bounded = self._bounded()
            set_items = getattr(bounded, "_set_items", None)  # what the SDK span calls (same cleaning, same warnings)
            if set_items is not None:
                set_items(attributes)
                return
            for key, value in attributes.items():
                bounded[key] = value

    def _bounded(self) -> BoundedAttributes:
        held = self._attributes
        if isinstance(held, BoundedAttributes):
            return held
        bounded = self._attributes = self._maker.bounded(held)
        return bounded

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        limits = self._maker.limits
        kept = _as_kept(limits.max_event_attributes, limits.max_attribute_length, 0, attributes or {})
        if kept is not None:  # what the SDK would keep, read-only as there
            event = Event(name=name, attributes=MappingProxyType(kept), timestamp=timestamp)
        else:
            bounded = BoundedAttributes(
                limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length, immutable=True
            )
            event = Event(name=name, attributes=bounded, timestamp=timestamp)
        with self._lock:
            if self._end_time is None:
                if self._events is None:
                    self._events = BoundedList(limits.max_events)
                self._events.append(event)
                return
        logger.warning("Tried calling %s on an ended span.", "_add_event")

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not (context and (context.is_valid or (attributes or context.trace_state))):
            return
        limits = self._maker.limits
        bounded = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length, immutable=True
        )
        with self._lock:
            if self._end_time is None:
                if self._links is None:
                    self._links = BoundedList(limits.max_links)
                self._links.append(Link(context=context, attributes=bounded))
                return
        logger.warning("Tried calling %s on an ended span.", "_add_link")

    def update_name(self, name: str) -> None:
        with self._lock:
            if self._end_time is None:
                self._name = name
                return
        logger.warning("Tried calling %s on an ended span.", "update_name")

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                ended = True
            else:
                ended = False
                self._set_status(status, description)
        if ended:
            logger.warning("Tried calling %s on an ended span.", "set_status")

    def _set_status(self, status: Status | StatusCode, description: str | None) -> None:
        # As the SDK span: an OK status is final, UNSET is ignored, a description goes with a StatusCode only.
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`", description
                )
            self._status = status
        elif isinstance(status, StatusCode) and status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        module, qualname = cls.__module__, cls.__qualname__
        event: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end = end_time if end_time is not None else time_ns()
        maker = self._maker
        try:
            maker.processors.on_end(
                ReadableSpan(
                    name=self._name,
                    context=self._context,
                    parent=self._parent,
                    resource=maker.resource,
                    attributes=self._attributes,
                    events=self._events if self._events is not None else (),
                    links=self._links if self._links is not None else (),
                    kind=self._kind,
                    status=self._status,
                    start_time=self._start_time,
                    end_time=end,
                    instrumentation_scope=maker.scope,
                )
            )
        except BaseException:
            # At the recursion limit the processors can fail on the way: `stage()` ends the span again later, when
            # there is room, so it must still be open then (a processor reached before the failure sees it twice).
            self._end_time = None
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        # As the SDK span used as a context manager: the exception is recorded and sets the status.
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'
