"""GPU attributes on stage spans: cheap bookkeeping on the inference thread, the rest in the export path.

On the inference thread a stage records a pooled CUDA event at its start and end and reads the allocator counters
(no NVML call, no synchronization). `GpuSpanProcessor` sits in front of the span processors; a span that carries
GPU bookkeeping waits in its queue until its end event has completed (a non-blocking ``query()`` from a background
thread) and the NVML sampler has covered its window, and only then is passed on with ``gpu.time`` and
``gpu.utilization`` added.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Span as ApiSpan
from opentelemetry.util.types import AttributeValue

from otel_vision import _threads
from otel_vision._errors import our_logger, report_internal_error
from otel_vision._finished import amended
from otel_vision._metrics import CardinalityGuard
from otel_vision.attributes import (
    ERROR_TYPE,
    GPU_CLOCK_SM,
    GPU_ENERGY,
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_PEAK,
    GPU_MEMORY_RESERVED,
    GPU_THROTTLE_REASONS,
    GPU_TIME,
    GPU_UTILIZATION,
    HW_ID,
    METRIC_REQUEST_ENERGY,
    VISION_GPU_INCOMPLETE_SPANS,
    VISION_MODEL_NAME,
    VISION_OPERATION,
)
from otel_vision.gpu._backends import CudaBackend
from otel_vision.gpu._sampler import DeviceWindow, NvmlSampler, Window

logger = our_logger("otel_vision.gpu")

_SCAN_PAST_NOT_READY: Final = 64
ENERGY_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
    50000.0, 100000.0,
)  # fmt: skip
"""Joules per request: a few-ms YOLO frame on a 100 W GPU to a two-minute diffusion run at 700 W."""
MAX_PENDING: Final = 4096
"""GPU spans waiting for their events at most; beyond, spans are exported without ``gpu.time`` (and counted)."""


@dataclass(eq=False)
class _Frame:
    """One stage running on one device."""

    device: int
    start_event: object
    carried_peak: int = 0
    """Highest allocator peak seen in this frame before a nested stage reset the counter."""


@dataclass(eq=False)
class _Pending:
    device: int
    start_event: object
    end_event: object
    hw_id: str | None
    span: ReadableSpan | None = None
    deadline: float = 0.0
    deferred: Callable[[], dict[str, AttributeValue]] | None = None


class PeakTracker:
    """Per-span allocator peaks that stay correct when stages nest or run concurrently on one device.

    torch keeps one peak counter per device. At each stage start we fold the counter into every running frame,
    then reset it; at a stage end its peak is the larger of what it carried and the counter. Outer frames thus see
    the inner peaks, and no frame loses a peak to another frame's reset.
    """

    def __init__(self, cuda: CudaBackend) -> None:
        self._cuda = cuda
        self._active: dict[int, set[_Frame]] = {}
        self._lock = threading.Lock()

    def enter(self, frame: _Frame) -> None:
        with self._lock:
            active = self._active.setdefault(frame.device, set())
            if active:
                peak = self._cuda.memory(frame.device).peak
                for other in active:
                    if peak > other.carried_peak:
                        other.carried_peak = peak
            self._cuda.reset_peak(frame.device)
            active.add(frame)

    def exit(self, frame: _Frame, counter_peak: int) -> int:
        with self._lock:
            self._active.get(frame.device, set()).discard(frame)
            return max(frame.carried_peak, counter_peak)


class SpanGpuProbe:
    """The inference-thread half: called by `stage()` (and the instrumentors) at a span's start and end."""

    def __init__(self, cuda: CudaBackend, *, track_peak: bool = True) -> None:
        self._cuda = cuda
        self._peaks = PeakTracker(cuda) if track_peak else None
        self._pending: dict[int, _Pending] = {}
        self._deferred: dict[int, Callable[[], dict[str, AttributeValue]]] = {}
        self._broken = False

    def start(self) -> _Frame | None:
        """Record the start event when CUDA is in use; ``None`` otherwise (then `finish` is not called)."""
        if self._broken:
            return None
        try:
            device = self._cuda.active_device()
            if device is None:
                return None
            frame = _Frame(device, self._cuda.record_event(device))
            if self._peaks is not None:
                self._peaks.enter(frame)
            return frame
        except Exception:
            self._broken = True
            report_internal_error("GPU span bookkeeping (start)")
            return None

    def finish(self, span: ApiSpan, frame: object) -> None:
        """Record the end event, set the allocator attributes, and leave the events for the export path."""
        assert isinstance(frame, _Frame)
        try:
            cuda = self._cuda
            end_event = cuda.record_event(frame.device)
            memory = cuda.memory(frame.device)
            hw_id = cuda.device_uuid(frame.device)
            attributes: dict[str, int | str] = {GPU_MEMORY_ALLOCATED: memory.allocated}
            if self._peaks is not None:
                attributes[GPU_MEMORY_PEAK] = self._peaks.exit(frame, memory.peak)
            if hw_id is not None:
                attributes[HW_ID] = hw_id
            span.set_attributes(attributes)
            pending = self._pending
            pending[span.get_span_context().span_id] = _Pending(frame.device, frame.start_event, end_event, hw_id)
            if len(pending) > MAX_PENDING:
                # A span ended outside our processor never comes back for its events: forget the oldest.
                old = pending.pop(next(iter(pending)))
                cuda.release_event(old.device, old.start_event)
                cuda.release_event(old.device, old.end_event)
        except Exception:
            self._broken = True
            report_internal_error("GPU span bookkeeping (end)")

    def record_allocator_state(self, span: ApiSpan) -> None:
        """Put the allocator's state on a span that failed with CUDA out-of-memory (error path only)."""
        try:
            device = self._cuda.active_device()
            if device is None:
                return
            memory = self._cuda.memory(device)
            span.set_attributes(
                {
                    GPU_MEMORY_ALLOCATED: memory.allocated,
                    GPU_MEMORY_RESERVED: memory.reserved,
                    GPU_MEMORY_PEAK: memory.peak,
                }
            )
        except Exception:
            report_internal_error("allocator state on an out-of-memory span")

    def defer(self, span: ApiSpan, attributes: Callable[[], dict[str, AttributeValue]]) -> None:
        """Compute some of a GPU span's attributes in the export path, once its end event has completed.

        For values that live on the device (a timestep tensor copied asynchronously to pinned memory): reading
        them after the event is free, reading them now would synchronize. Call before the span ends; the entry is
        removed when the span ends, applied or not.
        """
        deferred = self._deferred
        deferred[span.get_span_context().span_id] = attributes
        if len(deferred) > MAX_PENDING:
            # Spans that never ended (or never reached our processor): forget the oldest.
            deferred.pop(next(iter(deferred)), None)

    def take(self, span_id: int) -> _Pending | None:
        """Hand the pending events (and deferred attributes) of a finished span to the export path."""
        deferred = self._deferred.pop(span_id, None)
        pending = self._pending.pop(span_id, None)
        if pending is not None:
            pending.deferred = deferred
        return pending


@dataclass
class _Queue:
    items: deque[_Pending] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)


class GpuSpanProcessor(SpanProcessor):
    """Completes ``gpu.time`` and ``gpu.utilization`` off the inference thread, then forwards to ``processors``.

    Spans without GPU bookkeeping are forwarded at once. A span with bookkeeping is forwarded when its end event
    has completed and the sampler has a sample after its end, or after ``max_delay`` seconds (then without the
    attribute that could not be computed).
    """

    def __init__(
        self,
        probe: SpanGpuProbe,
        cuda: CudaBackend,
        sampler: NvmlSampler | None,
        processors: Sequence[SpanProcessor],
        *,
        max_delay: float = 10.0,
        poll_interval: float = 0.02,
        max_waiting: int = MAX_PENDING,
    ) -> None:
        self._probe = probe
        self._cuda = cuda
        self._sampler = sampler
        self._processors = tuple(processors)
        self._max_delay = max_delay
        self._poll_interval = poll_interval
        self._max_waiting = max_waiting
        self.shutdown_deadline: float | None = None
        """Set by the owning handle before a shutdown: `shutdown()` ends by then."""
        self._incomplete: Any = None
        self._request_energy: Any = None
        self._guard = CardinalityGuard()
        self._warned_full = False
        self._queue = _Queue()
        self._drain_lock = threading.Lock()
        self._stopping = False
        self._thread = _threads.start(threading.Thread(target=self._run, name="otel-vision-gpu-spans", daemon=True))

    # --- SpanProcessor ------------------------------------------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        pending = self._probe.take(context.span_id) if context is not None else None
        if pending is None:
            self._forward(span)
            return
        pending.span = span
        pending.deadline = time.monotonic() + self._max_delay
        with self._queue.cond:
            full = len(self._queue.items) >= self._max_waiting
            if not full:
                self._queue.items.append(pending)
                self._queue.cond.notify()
        if full:
            # Events that do not complete (a hung device, a flood of spans): never grow without bound.
            self._cuda.release_event(pending.device, pending.start_event)
            self._cuda.release_event(pending.device, pending.end_event)
            self._count_incomplete("waiting_full")
            if not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "otel_vision: %d spans are waiting for their GPU events; later spans are exported without "
                    "gpu.time (counted in %s)",
                    self._max_waiting,
                    VISION_GPU_INCOMPLETE_SPANS,
                )
            self._forward(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Pass every waiting span on: wait (bounded) for their events, take the samples there are now."""
        deadline = time.monotonic() + timeout_millis / 1000.0
        if self._sampler is not None and self._sampler.running:
            self._sampler.poll()
        while True:
            self._drain(force=False, flushing=True)
            with self._queue.cond:
                empty = not self._queue.items
            if empty or time.monotonic() >= deadline:
                break
            time.sleep(self._poll_interval)
        self._drain(force=True, flushing=True)
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        return all(p.force_flush(remaining) for p in self._processors)

    def bind(self, meter: Meter) -> None:
        """Count spans forwarded without their GPU attributes on ``meter``."""
        self._incomplete = meter.create_counter(
            VISION_GPU_INCOMPLETE_SPANS,
            unit="{span}",
            description="GPU spans exported without gpu.time: their events did not complete in time, or too many "
            "were waiting (error.type).",
        )
        self._request_energy = meter.create_histogram(
            METRIC_REQUEST_ENERGY,
            unit="J",
            description="GPU energy drawn during a whole vision request (the device's, over the request's window).",
            explicit_bucket_boundaries_advisory=ENERGY_BUCKETS,
        )

    def _count_incomplete(self, reason: str) -> None:
        if self._incomplete is not None:
            self._incomplete.add(1, {ERROR_TYPE: reason})

    def shutdown(self) -> None:
        end = self.shutdown_deadline
        budget = self._max_delay if end is None else max(0.0, end - time.monotonic())
        self.force_flush(timeout_millis=int(budget * 1000))
        self._stopping = True
        with self._queue.cond:
            self._queue.cond.notify()
        self._thread.join(timeout=5)
        for processor in self._processors:
            processor.shutdown()

    # --- export path ----------------------------------------------------------------------------------------
    def _forward(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def _run(self) -> None:
        while not self._stopping:
            with self._queue.cond:
                if not self._queue.items:
                    self._queue.cond.wait(timeout=5.0)  # woken by each span queued and by the shutdown
            self._drain(force=False)
            if self._queue.items:
                time.sleep(self._poll_interval)

    def _drain(self, *, force: bool, flushing: bool = False) -> None:
        # One drain at a time: a flush must not see an empty queue while the resolver holds a batch.
        with self._drain_lock:
            self._drain_locked(force=force, flushing=flushing)

    def _drain_locked(self, *, force: bool, flushing: bool) -> None:
        with self._queue.cond:
            batch = list(self._queue.items)
            self._queue.items.clear()
        waiting = []
        now = time.monotonic()
        not_ready = 0
        for pending in batch:
            if not_ready >= _SCAN_PAST_NOT_READY and not force and now < pending.deadline:
                # Work completes in order on a stream: past this many unfinished spans, newer ones wait for the next
                # pass instead of being queried now (keeps a pass cheap when the device is behind).
                waiting.append(pending)
                continue
            try:
                enriched = self._resolve(pending, force=force or now >= pending.deadline, flushing=flushing)
            except Exception:
                report_internal_error("GPU span enrichment")
                enriched = pending.span
            if enriched is None:
                not_ready += 1
                waiting.append(pending)
            else:
                self._forward(enriched)
        if waiting:
            with self._queue.cond:
                self._queue.items.extendleft(reversed(waiting))

    def _resolve(self, pending: _Pending, *, force: bool, flushing: bool = False) -> ReadableSpan | None:
        span = pending.span
        assert span is not None
        events_done = self._cuda.event_done(pending.end_event)
        utilization: float | str | None = None
        window: DeviceWindow | str | None = None
        if self._sampler is not None and pending.hw_id is not None and span.start_time and span.end_time:
            partial = flushing or force
            utilization = self._sampler.window_mean(pending.hw_id, span.start_time, span.end_time, partial=partial)
            window = self._sampler.window_device(pending.hw_id, span.start_time, span.end_time, partial=partial)
        if not force and (not events_done or utilization == Window.PENDING or window == Window.PENDING):
            return None
        if not events_done:
            self._count_incomplete("timeout")
        extra: dict[str, AttributeValue] = {}
        if events_done:
            extra[GPU_TIME] = self._cuda.elapsed_seconds(pending.start_event, pending.end_event)
            if pending.deferred is not None:
                extra.update(pending.deferred())
            self._cuda.release_event(pending.device, pending.start_event)
            self._cuda.release_event(pending.device, pending.end_event)
        if isinstance(utilization, float):
            extra[GPU_UTILIZATION] = utilization
        if isinstance(window, DeviceWindow):
            if window.throttle_reasons:
                extra[GPU_THROTTLE_REASONS] = window.throttle_reasons
            if window.sm_clock_mhz is not None:
                extra[GPU_CLOCK_SM] = window.sm_clock_mhz
            if window.energy_joules is not None:
                extra[GPU_ENERGY] = window.energy_joules
                self._record_request_energy(span, window.energy_joules)
        return amended(span, attributes=extra) if extra else span

    def _record_request_energy(self, span: ReadableSpan, joules: float) -> None:
        """``vision.request.energy`` for request spans (those carrying ``vision.operation``)."""
        attributes = span.attributes
        if self._request_energy is None or not attributes:
            return
        operation = attributes.get(VISION_OPERATION)
        if operation is None:
            return
        guard = self._guard
        labels: dict[str, AttributeValue] = {VISION_OPERATION: guard(VISION_OPERATION, operation)}
        model = attributes.get(VISION_MODEL_NAME)
        if model is not None:
            labels[VISION_MODEL_NAME] = guard(VISION_MODEL_NAME, model)
        self._request_energy.record(joules, labels)
