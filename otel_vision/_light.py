"""Spans made without the SDK tracer's per-span machinery, when nothing can tell the difference.

A stage inside a traced request (YOLO's preprocess, inference and postprocess, each diffusion step, each instrumented
module call) starts under a parent that is already sampled. For such a span the SDK's ``Tracer.start_span`` does a
lot that cannot change the outcome: ask the sampler (which, for the samplers `configure()` builds, follows a sampled
parent), build a `BoundedAttributes` (its own lock, every value cleaned again), an events list and a links list,
call every processor's ``on_start`` (none of ours does anything there). Right after a model's compute that code runs
cache-cold and costs two to three times what it costs in a loop.

`LightSpans.start` makes the same span for less. `LightSpan` *is* an SDK span (a subclass of
``opentelemetry.sdk.trace.Span``, so ``isinstance`` checks, ``resource``, ``events``, ``to_json()`` and every method
behave as on any other): it is set up without the SDK's constructor, keeps plain attributes in a dict until something
needs the SDK's cleaning or limits, and creates its events and links lists on first use. The span context follows the
SDK's rules (the sampler decides a root; a child of a sampled span gets the parent's trace id, flags and trace state
and a span id from the provider's id generator), and at the end the same `ReadableSpan` goes to the same processors.

It is used only when that makes no difference anyone can see: our own tracer provider, a sampler that follows a
sampled parent, span processors that do nothing at a span's start (ours, and the SDK's simple and batch processors;
a processor added later that acts at the start switches it off), no SDK self-metrics, and an SDK whose span has
exactly the fields this module was written against (`sdk_span_fields_known`). Anything else (an unsampled parent,
a stage whose attributes need cleaning) takes the SDK's path.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    Tracer,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util import types

from otel_vision import _context
from otel_vision._errors import report_internal_error
from otel_vision._finished import Drainer

logger = logging.getLogger("opentelemetry.sdk.trace")
"""The SDK span's logger: a misuse of a light span warns where the same misuse of an SDK span does."""

_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_INTERNAL_METRICS: Final = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
_UNSET: Final = Status(StatusCode.UNSET)
_SDK_SPAN_FIELDS: Final = frozenset(
    {
        "_attributes", "_context", "_end_time", "_events", "_instrumentation_info", "_instrumentation_scope", "_kind",
        "_limits", "_links", "_lock", "_name", "_parent", "_record_end_metrics", "_record_exception", "_resource",
        "_sampler", "_set_status_on_exception", "_span_processor", "_start_time", "_status", "_trace_config",
    }
)  # fmt: skip
"""What an SDK span holds (opentelemetry-sdk 1.45): a `LightSpan` sets exactly these, so every inherited method finds
what it reads."""


@functools.cache
def sdk_span_fields_known() -> bool:
    """Whether this SDK's span holds exactly `_SDK_SPAN_FIELDS` (checked once per process, on a throwaway span of a
    throwaway provider): another SDK version gets the SDK's own path until this module is checked against it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    try:
        provider = TracerProvider(resource=Resource.get_empty(), shutdown_on_exit=False)  # no resource detection
        probe = provider.get_tracer("otel_vision.probe").start_span("probe")
        return set(vars(probe)) == _SDK_SPAN_FIELDS
    except Exception:
        return False


_SPAN_KEY: Final = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))
"""The context key of the current span (the API keeps its name private; this is the key it sets)."""


def with_span(span: trace.Span, parent: otel_context.Context | None = None) -> otel_context.Context:
    """``trace.set_span_in_context(span, parent)`` (the same new context) without its two calls."""
    return otel_context.Context({**(parent if parent is not None else _context.get_current()), _SPAN_KEY: span})


_PLAIN: Final = frozenset({str, int, float, bool})


def starts_nothing(processor: object) -> bool:
    """Whether ``processor`` does nothing when a span starts (and nothing while it ends), so a span made without
    calling it there is the same to it. Anything unusual (methods set on the instance, a class that forwards them
    through ``__getattr__``) counts as acting."""
    try:
        if getattr(processor, "starts_nothing", False) is True:  # ours say so (`otel_vision._early.SpanGate`)
            return True
        own = getattr(processor, "__dict__", {})
        if "on_start" in own or "_on_ending" in own:
            return False
        cls = type(processor)
        on_start, on_ending = getattr(cls, "on_start", None), getattr(cls, "_on_ending", None)
        no_ops = _no_ops()
        return on_start is not None and on_start in no_ops and (on_ending is None or on_ending in no_ops)
    except Exception:
        return False


def _no_ops() -> set[Any]:
    """``on_start`` and ``_on_ending`` methods known to do nothing: the base class's, and the SDK's simple and batch
    processors' (their module is loaded once anyone has one; we do not load it for this)."""
    base = SpanProcessor
    no_ops: set[Any] = {base.on_start, getattr(base, "_on_ending", None)}
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


def _span_attributes(limits: SpanLimits, attributes: types.Attributes) -> BoundedAttributes:
    """Span attributes as the SDK holds them once they need its limits."""
    return BoundedAttributes(
        limits.max_span_attributes, attributes, immutable=False, max_value_len=limits.max_span_attribute_length
    )


class SpanProcessors(SynchronousMultiSpanProcessor):
    """The tracer provider's processors, which also tell whether a light span may skip them at its start: every
    processor added, now or later (``tracer_provider.add_span_processor``), is checked as it comes.

    With ``deferred``, the spans that end are handed to the processors on a background thread (every
    `ENDS_INTERVAL_S`, sooner once `ENDS_BACKLOG` are waiting, and before any flush or shutdown), in the order they
    ended: the thread that ends a span pays for a deque append, not for the snapshot of the span and the processors'
    ``on_end``. Only otel_vision's own processors may wait like that (they export in batches anyway); the first
    processor added through the public ``add_span_processor`` gets every later span on the spot, as the SDK would
    hand it, after the ones already waiting (`_add_own` is for ours).
    """

    def __init__(self, light: bool, deferred: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
        self.light = light
        self.ended: Drainer[ReadableSpan] | None = None
        """Spans waiting for the processors' ``on_end`` (``None``: they are handed over on the spot)."""
        self._retired: Drainer[ReadableSpan] | None = None
        """The hand-over once deferring stopped: a span appended to it as it stopped goes before any later one."""
        self.completions: dict[int, tuple[LightSpan, Callable[[LightSpan], None]]] = {}
        """Work left on spans that have not reached the processors yet, by span id (`complete_later`)."""
        if deferred:
            self.ended = Drainer(self._hand_over, "ended spans", "otel-vision-span-ends", ENDS_INTERVAL_S)
            if hasattr(os, "register_at_fork"):
                ref = weakref.ref(self)
                os.register_at_fork(after_in_child=lambda: _in_child(ref))

    def add_span_processor(self, span_processor: SpanProcessor) -> None:  # also what TracerProvider's calls
        self._stop_deferring()
        self._add_own(span_processor)

    def _add_own(self, span_processor: SpanProcessor) -> None:
        """Add one of otel_vision's processors (the span gate), which may receive ended spans late."""
        if not starts_nothing(span_processor):
            self.light = False
        super().add_span_processor(span_processor)

    def on_end(self, span: ReadableSpan) -> None:
        ended = self.ended
        if ended is not None:
            _defer(ended, span)
            return
        retired = self._retired
        if retired is not None and retired.items:
            retired.drain()  # spans that ended before this one, appended while deferring stopped
        super().on_end(span)

    def drain(self) -> None:
        """Hand every span ended so far to the processors, on the calling thread (tests)."""
        ended = self.ended
        if ended is not None:
            ended.drain()

    def hand_over(self, timeout: float) -> bool:
        """Have every span ended so far handed to the processors (by the hand-over thread), waiting at most
        ``timeout`` seconds; ``True`` once they have been."""
        ended = self.ended
        return ended.drain_wait(timeout) if ended is not None else True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + max(0, timeout_millis) / 1000
        handed = self.hand_over(timeout_millis / 1000)
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        return super().force_flush(remaining) and handed

    def shutdown(self) -> None:
        self._stop_deferring()
        super().shutdown()

    def discard(self) -> int:
        """The pipeline will not complete: forget the spans waiting (later ones go to the processors, which count
        them as lost); return how many there were."""
        ended = self.ended
        if ended is None:
            return 0
        count = len(ended.items)
        ended.items.clear()
        self.completions.clear()
        self._stop_deferring()
        return count

    def _stop_deferring(self) -> None:
        ended = self.ended
        if ended is not None:
            # Stopped while still in place: a span that ends meanwhile is appended after the waiting ones and handed
            # over by its own thread; after that, `on_end` hands over any such span before its own.
            ended.stop()
            self._retired = ended
            self.ended = None

    def _hand_over(self, span: ReadableSpan) -> None:
        if type(span) is LightSpan:
            if self.completions:
                self.complete(span)
            span = span._readable_span()
        super().on_end(span)

    def complete(self, span: LightSpan) -> None:
        """Do the work `complete_later` left on ``span``, if any (before its snapshot is taken)."""
        entry = self.completions.pop(id(span), None)  # the entry holds the span: its id is not reused meanwhile
        if entry is None:
            return
        try:
            entry[1](span)
        except Exception:
            report_internal_error("completing an ended span")


def complete_later(span: trace.Span, complete: Callable[[LightSpan], None]) -> bool:
    """Have ``complete(span)`` run once ``span`` has ended, before its processors get it: on the hand-over thread
    (or on the ending thread, when deferring stopped meanwhile); it adds what it finds with `LightSpan.amend`.

    ``False``, and nothing done, when ``span`` is not a `LightSpan`, has ended already, or is handed over on the spot:
    then the caller does the work itself, before ending it. A second call for the same span replaces the first. At
    most `COMPLETIONS_LIMIT` wait; past that the oldest is forgotten (a span that has not ended after thousands of
    later ones is exported without that work).

    For work that reads objects the caller holds but needs nothing of the calling thread (a batch's detections, read
    from result tensors on the host): the thread that runs the model pays for a dictionary store instead.
    """
    if type(span) is not LightSpan:
        return False
    processors: SpanProcessors = span._span_processor  # type: ignore[assignment]  # `LightSpans.processors`
    if processors.ended is None or span._end_time is not None:
        return False
    completions = processors.completions
    if len(completions) >= COMPLETIONS_LIMIT:
        completions.pop(next(iter(completions)), None)
    completions[id(span)] = (span, complete)
    return True


COMPLETIONS_LIMIT: Final = 4096
"""Spans with work left by `complete_later` and not handed over yet, at most (each is handed over within
`ENDS_INTERVAL_S` of its end: only spans that stay open for long accumulate)."""


ENDS_INTERVAL_S: Final = 0.1
ENDS_BACKLOG: Final = 512
"""Ended spans that wake the hand-over thread before its interval."""
ENDS_LIMIT: Final = 4096
"""Ended spans waiting beyond which the threads that end spans hand them over themselves: the list never grows
faster than the processors take it (a thread ending spans nonstop pays for them, as it would without the hand-over
thread)."""


def _defer(ended: Drainer[ReadableSpan], span: ReadableSpan) -> None:
    items = ended.items
    items.append(span)
    waiting = len(items)
    if waiting == ENDS_BACKLOG or waiting >= ENDS_LIMIT or ended.stopped or ended.idle:
        _follow_up(ended)


def _follow_up(ended: Drainer[ReadableSpan]) -> None:
    """After a span was appended to ``ended``: wake its thread when a backlog builds up or it is idle; hand spans over
    here when too many wait, or when the thread stopped meanwhile (nobody else will)."""
    if ended.stopped or len(ended.items) >= ENDS_LIMIT:
        ended.drain()
    else:
        ended.wake()


def _in_child(ref: weakref.ref[SpanProcessors]) -> None:
    """In a forked child: spans the parent ended are the parent's to export; this pipeline is the parent's too (the
    child builds its own), and its thread did not come along, so spans ending here go through on the spot."""
    processors = ref()
    if processors is not None and processors.ended is not None:
        processors.ended.items.clear()
        completions = processors.completions  # keep the work on spans still open: they may end in the child
        for key, (span, _) in list(completions.items()):
            if span._end_time is not None:
                del completions[key]
        processors.ended = None


class LightSpans:
    """Starts `LightSpan` objects for one tracer (see the module docstring for when)."""

    __slots__ = (
        "getrandbits",
        "limits",
        "new_span_id",
        "new_trace_id",
        "processors",
        "random",
        "roots_sampled",
        "sampler",
        "scope",
        "tracer",
    )

    def __init__(
        self,
        processors: SpanProcessors,
        tracer: Tracer,
        scope: InstrumentationScope,
        sampler: Sampler,
        limits: SpanLimits,
        id_generator: IdGenerator,
        roots_sampled: bool = False,
    ) -> None:
        self.processors = processors
        self.tracer = tracer
        self.scope = scope
        """The tracer's instrumentation scope (equal to the one the SDK gives its spans)."""
        self.sampler = sampler
        self.limits = limits
        self.new_trace_id = id_generator.generate_trace_id
        self.new_span_id = id_generator.generate_span_id
        self.random = id_generator.is_trace_id_random()
        self.getrandbits = random.getrandbits if type(id_generator) is RandomIdGenerator else None
        """What the SDK's `RandomIdGenerator` draws trace and span ids with (zero, invalid, means: draw again)."""
        self.roots_sampled = roots_sampled
        """The sampler is ``always_on`` or ``parentbased_always_on`` as `configure()` builds it: a root is sampled,
        with the span's own attributes and no trace state, which is what asking it would return."""

    @classmethod
    def usable(cls, follows_sampled_parent: bool, user_processors: Sequence[SpanProcessor]) -> bool:
        """Whether a provider built with these settings may make light spans at all."""
        internal_metrics = os.environ.get(_INTERNAL_METRICS, "").strip().lower() == "true"
        return (
            follows_sampled_parent
            and not internal_metrics
            and all(map(starts_nothing, user_processors))
            and sdk_span_fields_known()
        )

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
        held: Any = (parent if parent is not None else _context.get_current()).get(_SPAN_KEY)
        if type(held) in _OWN_SPANS:
            parent_context: SpanContext = held._context  # what their get_span_context() returns
        elif held is None:
            parent_context = trace.INVALID_SPAN_CONTEXT  # what get_current_span() gives for no span
        else:
            parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            parent_flags = parent_context.trace_flags
            if not parent_flags & TraceFlags.SAMPLED:
                return None  # the SDK's path: what the sampler says of an unsampled parent is its business
            # A sampler that follows a sampled parent (`usable`) samples the child, with the parent's trace state.
            # The SpanContext is built as its constructor builds it, valid: the parent's trace id is, and so is a
            # span id from the generator.
            getrandbits = self.getrandbits
            span_id = (getrandbits(64) if getrandbits is not None else 0) or self.new_span_id()
            flags = _SAMPLED_RANDOM if parent_flags & TraceFlags.RANDOM_TRACE_ID else _SAMPLED
            span_context = tuple.__new__(
                SpanContext, (parent_context.trace_id, span_id, False, flags, parent_context.trace_state, True)
            )
            return self._span(name, span_context, parent_context, kind, attributes)
        # A root: the sampler decides, as in the SDK (same arguments, same flags).
        getrandbits = self.getrandbits
        trace_id = (getrandbits(128) if getrandbits is not None else 0) or self.new_trace_id()
        if self.roots_sampled:
            # Built as above: a valid trace id and span id, the SDK's flags, no trace state (the default one).
            span_id = (getrandbits(64) if getrandbits is not None else 0) or self.new_span_id()
            flags = _SAMPLED_RANDOM if self.random else _SAMPLED
            span_context = tuple.__new__(SpanContext, (trace_id, span_id, False, flags, DEFAULT_TRACE_STATE, True))
            return self._span(name, span_context, None, kind, attributes)
        result = self.sampler.should_sample(parent, trace_id, name, kind, attributes, ())
        sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]  # unannotated in the SDK
        flags = TraceFlags((TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if self.random else 0))
        span_context = SpanContext(trace_id, self.new_span_id(), False, flags, result.trace_state)
        if not result.decision.is_recording():  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
            return trace.NonRecordingSpan(span_context)
        span = self._span(name, span_context, None, kind, attributes)
        if result.attributes != attributes:  # the sampler's attributes are the span's (ours pass them through)
            span._attributes = _span_attributes(self.limits, result.attributes)
        return span

    def _span(
        self,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, types.AnyValue],
    ) -> LightSpan:
        """A `LightSpan` holding exactly the fields the SDK's constructor sets (`_SDK_SPAN_FIELDS`), made without
        calling either constructor (the SDK span's ``__new__`` refuses nothing of a subclass): one dict built at
        once, not twenty attribute stores."""
        span: LightSpan = _new_object(LightSpan)
        tracer = self.tracer
        span.__dict__ = {
            "_name": name,
            "_context": span_context,
            "_kind": kind,
            "_instrumentation_info": tracer.instrumentation_info,
            "_instrumentation_scope": self.scope,
            "_parent": parent,
            "_start_time": time_ns(),
            "_end_time": None,
            "_attributes": attributes,  # a dict until something needs the SDK's BoundedAttributes (`_bounded`)
            "_events": (),  # a BoundedList from the first event on
            "_links": (),
            "_resource": tracer.resource,
            "_status": _UNSET,
            "_sampler": self.sampler,
            "_trace_config": None,
            "_record_exception": True,
            "_set_status_on_exception": True,
            "_span_processor": self.processors,
            "_limits": self.limits,
            "_lock": threading.Lock(),
            "_record_end_metrics": None,
        }
        return span


_new_object: Final = object.__new__


class LightSpan(Span):
    """An SDK span set up without the SDK's constructor (by `LightSpans._span`; see the module docstring); every
    method not defined here is the SDK's own."""

    def _bounded(self) -> BoundedAttributes:
        held = self._attributes
        if isinstance(held, BoundedAttributes):
            return held
        bounded = self._attributes = _span_attributes(self._limits, held)
        return bounded

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Setting attribute on ended span.")
                return
            held = self._attributes
            if type(held) is dict and type(key) is str and key:
                limits = self._limits
                kept = _as_kept(limits.max_span_attributes, limits.max_span_attribute_length, len(held), {key: value})
                if kept is not None:
                    held.pop(key, None)  # a key set again moves to the end, as in BoundedAttributes
                    held[key] = kept[key]
                    return
            self._bounded()[key] = value  # the SDK's way: cleaned, limited, warned

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Setting attribute on ended span.")
                return
            self._set_held(attributes)

    def _set_held(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """`set_attributes` once the lock is held."""
        held = self._attributes
        if type(held) is dict:
            limits = self._limits
            kept = _as_kept(limits.max_span_attributes, limits.max_span_attribute_length, len(held), attributes)
            if kept is not None:
                for key, value in kept.items():
                    held.pop(key, None)
                    held[key] = value
                return
        self._bounded()._set_items(attributes)  # the SDK span's call: same cleaning, same warnings

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        self._add_event(self._event(name, attributes, timestamp))

    def _event(self, name: str, attributes: types.Attributes, timestamp: int | None) -> Event:
        """The event the SDK's ``add_event`` makes: when it would keep the attributes unchanged, the same values
        held read-only without a `BoundedAttributes`; otherwise its own cleaning, limits and warnings."""
        limits = self._limits
        if attributes is None:
            kept: dict[str, types.AnyValue] | None = {}
        elif type(attributes) is dict:
            kept = _as_kept(limits.max_event_attributes, limits.max_attribute_length, 0, attributes)
        else:
            kept = None
        if kept is not None:
            return Event(name, MappingProxyType(kept), timestamp)
        cleaned = BoundedAttributes(
            limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length, immutable=True
        )
        return Event(name, cleaned, timestamp)

    def _add_event(self, event: Any) -> None:
        self._append("_events", self._limits.max_events, event, "_add_event")

    def _add_link(self, link: Link) -> None:
        self._append("_links", self._limits.max_links, link, "_add_link")

    def _append(self, field: str, limit: int | None, item: Any, method: str) -> None:
        """What the SDK span's ``_add_event``/``_add_link`` do, with the list made on the first item."""
        with self._lock:
            if self._end_time is None:
                items = getattr(self, field)
                if type(items) is tuple:
                    items = BoundedList(limit)
                    setattr(self, field, items)
                items.append(item)
                return
        logger.warning("Tried calling %s on an ended span.", method)

    def amend(
        self, attributes: Mapping[str, types.AnyValue], events: Sequence[tuple[str, types.Attributes, int | None]]
    ) -> None:
        """Add ``events`` (name, attributes, timestamp) and ``attributes`` to this span, ended or not, as `add_event`
        and `set_attributes` would before its end (the same cleaning and limits), all under the span's lock: for
        `complete_later`'s work, which runs once the span has ended. Nobody sees the span open meanwhile."""
        with self._lock:
            for name, event_attributes, timestamp in events:
                held_events: Any = self._events
                if type(held_events) is tuple:
                    held_events = self._events = BoundedList(self._limits.max_events)
                held_events.append(self._event(name, event_attributes, timestamp))
            if not attributes:
                return
            held: Any = self._attributes
            if type(held) is not dict:
                held._immutable = False  # frozen at the end
            try:
                self._set_held(attributes)
            finally:
                held = self._attributes
                if type(held) is not dict:
                    held._immutable = self._end_time is not None

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            held: Any = self._attributes
            if type(held) is not dict:  # not isinstance: an ABC's check is a Python call, which can fail here
                held._immutable = True  # the SDK's BoundedAttributes: as the SDK span does at its end
        processors: SpanProcessors = self._span_processor  # type: ignore[assignment]  # `LightSpans.processors`
        ended = processors.ended
        if ended is not None:
            # Appended here, not through `_defer`: a C call cannot fail at the recursion limit, so the span is
            # handed over exactly once (the snapshot is taken there, in `SpanProcessors._hand_over`).
            items = ended.items
            items.append(self)
            waiting = len(items)
            if waiting == ENDS_BACKLOG or waiting >= ENDS_LIMIT or ended.stopped or ended.idle:
                try:
                    _follow_up(ended)
                except RecursionError:
                    pass  # a wake-up missed; the thread's next round hands it over
            return
        if processors.completions:
            processors.complete(self)  # registered while the hand-over ran, which stopped before this end
        try:
            processors.on_end(self._readable_span())
        except RecursionError:
            # At the recursion limit the processors can fail on the way: `stage()` ends the span again later, when
            # there is room, so it must still be open then (a processor reached before the failure sees it twice).
            self._end_time = None
            raise


_OWN_SPANS: Final = (Span, LightSpan)
"""Spans whose span context is their ``_context`` (``get_span_context()`` without the call)."""
