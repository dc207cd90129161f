"""Span processors between the GPU enrichment and the export queue: batch fan-out and in-process tail sampling.

`BatchFanOut`: a `batch()` span carries a link to every request it served. Here, in the export path, each request's
trace gets a span of the same name and time window, child of that request's span, linking back to the batch span,
with the batch size and an estimated share of the batch's device time. The inference thread makes only the one
batch span.

`TailSampler`: all spans of a vision request are born in this process, so the decision can be made here when the
trace's local root ends, before anything is exported: keep every trace with an error (``cuda_oom`` named apart),
every trace slower than its operation's threshold, every trace that ran while the GPU was throttled, and a ratio of
the rest; drop the others whole. Spans of a trace that arrive after its decision follow it (a bounded cache of
decisions). Bounded: at most `MAX_TRACES` traces waiting, `MAX_SPANS` spans per trace, `MAX_AGE_S` seconds per trace;
a trace that hits a bound is decided early on what it has (counted with ``vision.tail_sampling.early``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Link, SpanContext, StatusCode, TraceFlags

from otel_vision._finished import Drainer, amended
from otel_vision._runtime import expected_links as _expected
from otel_vision.attributes import (
    CUDA_OOM,
    ERROR_TYPE,
    GPU_THROTTLE_REASONS,
    GPU_TIME,
    GPU_TIME_SHARE,
    METRIC_TAIL_SAMPLING_TRACES,
    VISION_BATCH_ROLE,
    VISION_BATCH_SIZE,
    VISION_BATCH_SKIPPED,
    VISION_OPERATION,
    VISION_TAIL_SAMPLING_DECISION,
    VISION_TAIL_SAMPLING_EARLY,
    VISION_TAIL_SAMPLING_REASON,
)

BATCH: Final = "batch"
MEMBER: Final = "member"


class _Forwarding(SpanProcessor):
    def __init__(self, downstream: Sequence[SpanProcessor]) -> None:
        self.downstream = tuple(downstream)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.downstream:
            processor.on_start(span, parent_context)

    def _forward(self, span: ReadableSpan) -> None:
        for processor in self.downstream:
            processor.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        ok = True
        for processor in self.downstream:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ok = processor.force_flush(remaining) is not False and ok
        return ok

    def shutdown(self) -> None:
        for processor in self.downstream:
            processor.shutdown()


# --- batches ------------------------------------------------------------------------------------------------------
class BatchFanOut(_Forwarding):
    """Forwards every span at once; the member spans of a batch span (see the module docstring) are made and
    forwarded by a background thread, so the thread that ends the batch pays only for the batch span."""

    def __init__(self, downstream: Sequence[SpanProcessor]) -> None:
        super().__init__(downstream)
        self._batches: Drainer[tuple[ReadableSpan, Sequence[SpanContext]]] = Drainer(
            self._fan_out, "batch member spans", "otel-vision-batch-members"
        )

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        requests = _expected.pop(context.span_id, None) if context is not None and _expected else None
        if requests is not None:
            batches = self._batches
            batches.items.append((span, requests))  # taken at the next 0.2 s tick; a wake-up only when idle
            if batches.idle:
                batches.wake()
            return
        if self._batches.items and context is not None and (span.parent is None or span.parent.is_remote):
            # A request's root ending while a batch that served it waits: its member span goes first, so the
            # request's trace is complete when its root arrives (waterfall exporter, tail sampling).
            trace_id = context.trace_id
            if any(r.trace_id == trace_id for _, pending in list(self._batches.items) for r in pending):
                self._batches.drain()
        self._forward(span)

    def _fan_out(self, item: tuple[ReadableSpan, Sequence[SpanContext]]) -> None:
        span, requests = item
        linked = amended(span, links=[Link(request) for request in requests])
        self._forward(linked)
        for member in members(linked):
            self._forward(member)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._batches.drain()
        return super().force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._batches.stop()
        super().shutdown()


def members(span: ReadableSpan) -> list[ReadableSpan]:
    """The member spans of a finished batch span, one per linked request whose trace is sampled.

    ``gpu.time.share`` is an estimate: the batch's ``gpu.time`` split evenly between its requests (a batch runs its
    requests' work together on the device, so no per-request device time exists to measure).
    """
    attributes = span.attributes or {}
    size = len(span.links)
    # The stage's own attributes and the device; the batch's measurements (gpu.*) stay on the batch span.
    common: dict[str, Any] = {
        key: value
        for key, value in attributes.items()
        if not key.startswith("gpu.") and key not in (VISION_BATCH_ROLE, VISION_BATCH_SKIPPED, ERROR_TYPE)
    }
    common[VISION_BATCH_ROLE] = MEMBER
    common[VISION_BATCH_SIZE] = size
    gpu_time = attributes.get(GPU_TIME)
    if isinstance(gpu_time, int | float):
        common[GPU_TIME_SHARE] = gpu_time / size
    if ERROR_TYPE in attributes:
        common[ERROR_TYPE] = attributes[ERROR_TYPE]
    back = (Link(span.context),)
    out = []
    for link in span.links:
        request = link.context
        if not request.trace_flags.sampled:
            continue
        context = SpanContext(
            request.trace_id, random.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )
        out.append(
            ReadableSpan(
                name=span.name,
                context=context,
                parent=request,
                resource=span.resource,
                attributes=common,
                events=(),
                links=back,
                kind=span.kind,
                status=span.status,
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=span.instrumentation_scope,
            )
        )
    return out


# --- tail sampling ------------------------------------------------------------------------------------------------
def _attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes as a plain dict where the SDK keeps one (several lookups per span: the public read-only
    view costs a lock and a proxy per lookup), else the public view."""
    plain = getattr(getattr(span, "_attributes", None), "_dict", None)
    return plain if isinstance(plain, dict) else (span.attributes or {})


MAX_TRACES: Final = 10_000
MAX_SPANS: Final = 1_000
MAX_AGE_S: Final = 60.0
MAX_DECISIONS: Final = 100_000
KEEP: Final = "keep"
DROP: Final = "drop"


@dataclass
class _Trace:
    born: float
    spans: list[ReadableSpan] = field(default_factory=list)


class TailSampler(_Forwarding):
    """Keeps or drops whole traces when their local root ends (see the module docstring)."""

    def __init__(
        self,
        downstream: Sequence[SpanProcessor],
        ratio: float,
        latency: Mapping[str, float],
        *,
        max_traces: int = MAX_TRACES,
        max_spans: int = MAX_SPANS,
        max_age: float = MAX_AGE_S,
    ) -> None:
        super().__init__(downstream)
        self._bound = int(ratio * (1 << 64))
        self._latency = dict(latency)
        self._default_latency = self._latency.pop("*", None)
        self._thresholds = bool(self._latency) or self._default_latency is not None
        self._max_traces = max_traces
        self._max_spans = max_spans
        self._max_age = max_age
        self._traces: dict[int, _Trace] = {}
        """Insertion-ordered: the oldest trace first."""
        self._decisions: dict[int, bool] = {}
        self._calls = 0
        self._lock = threading.Lock()
        self._counts: dict[tuple[bool, str, bool], int] = {}

    def bind(self, meter: Meter) -> None:
        # Observed at collection from plain counts: no metric call per decided trace.
        meter.create_observable_counter(
            METRIC_TAIL_SAMPLING_TRACES,
            callbacks=[self._observe],
            unit="{trace}",
            description="Traces kept or dropped by the in-process tail sampler, by decision and reason.",
        )

    def _observe(self, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [
            Observation(
                count,
                {
                    VISION_TAIL_SAMPLING_DECISION: KEEP if keep else DROP,
                    VISION_TAIL_SAMPLING_REASON: reason,
                    VISION_TAIL_SAMPLING_EARLY: early,
                },
            )
            for (keep, reason, early), count in counts
        ]

    # --- SpanProcessor --------------------------------------------------------------------------------------------
    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        trace_id = context.trace_id
        decided: list[tuple[_Trace, bool]] = []
        late: bool | None = None
        parent = span.parent
        local_root = parent is None or parent.is_remote
        with self._lock:
            known = self._decisions.get(trace_id)
            if known is not None:
                late = known
            else:
                trace = self._traces.get(trace_id)
                if trace is None:
                    trace = _Trace(0.0, [span])
                    if local_root:  # a trace of one span (or whose other spans all went first): decide at once
                        decided.append(self._decide_locked(trace_id, trace, early=False))
                    else:
                        trace.born = time.monotonic()
                        self._traces[trace_id] = trace
                else:
                    trace.spans.append(span)
                    if local_root or len(trace.spans) >= self._max_spans:
                        del self._traces[trace_id]
                        decided.append(self._decide_locked(trace_id, trace, early=not local_root))
                self._calls += 1
                if len(self._traces) > self._max_traces or not self._calls % 256:
                    self._enforce_bounds_locked(decided)
        if late is not None:
            if late:
                self._forward(span)
            return
        for trace, keep in decided:
            if keep:
                for kept in trace.spans:
                    self._forward(kept)

    def _enforce_bounds_locked(self, decided: list[tuple[_Trace, bool]]) -> None:
        traces = self._traces
        now = time.monotonic()
        while traces:
            oldest_id, oldest = next(iter(traces.items()))
            if len(traces) <= self._max_traces and now - oldest.born <= self._max_age:
                break
            del traces[oldest_id]
            decided.append(self._decide_locked(oldest_id, oldest, early=True))

    def _decide_locked(self, trace_id: int, trace: _Trace, *, early: bool) -> tuple[_Trace, bool]:
        reason = self._reason(trace)
        keep = reason is not None or (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound
        if reason is None:
            reason = "ratio" if keep else "sampled_out"
        decisions = self._decisions
        decisions[trace_id] = keep
        if len(decisions) > MAX_DECISIONS:
            del decisions[next(iter(decisions))]
        key = (keep, reason, early)
        self._counts[key] = self._counts.get(key, 0) + 1  # under the lock, like every caller of this method
        return trace, keep

    def _reason(self, trace: _Trace) -> str | None:
        """Why the trace must be kept whatever the ratio: ``cuda_oom``, ``error``, ``batch``, ``slow``,
        ``throttled``."""
        error = throttled = batch = False
        for span in trace.spans:
            attributes = _attributes(span)
            if span.status.status_code is StatusCode.ERROR:
                if attributes.get(ERROR_TYPE) == CUDA_OOM:
                    return CUDA_OOM
                error = True
            if span.links and attributes.get(VISION_BATCH_ROLE) == BATCH:
                batch = True
            if GPU_THROTTLE_REASONS in attributes and attributes[GPU_THROTTLE_REASONS]:
                throttled = True
        if error:
            return "error"
        if batch:
            # Kept requests link to their batch span (the device's measurements live there): never leave that
            # link dangling. Batches are few next to the requests they serve.
            return BATCH
        root = trace.spans[-1]
        if self._thresholds and root.start_time is not None and root.end_time is not None:
            operation = _attributes(root).get(VISION_OPERATION, root.name)
            threshold = self._latency.get(str(operation), self._default_latency)
            if threshold is not None and (root.end_time - root.start_time) / 1e9 > threshold:
                return "slow"
        return "throttled" if throttled else None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Traces whose root has not ended are not finished yet: they wait (bounded by MAX_AGE_S).
        with self._lock:
            decided: list[tuple[_Trace, bool]] = []
            self._enforce_bounds_locked(decided)
        self._release(decided)
        return super().force_flush(timeout_millis)

    def shutdown(self) -> None:
        with self._lock:
            traces, self._traces = self._traces, {}
            decided = [self._decide_locked(trace_id, trace, early=True) for trace_id, trace in traces.items()]
        self._release(decided)
        super().shutdown()

    def _release(self, decided: list[tuple[_Trace, bool]]) -> None:
        for trace, keep in decided:
            if keep:
                for span in trace.spans:
                    self._forward(span)
