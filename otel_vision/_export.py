"""The export path: bounded queues, bounded flush and shutdown, loss accounting and a quiet logging policy.

Modelled on the OpenTelemetry Collector's ``sending_queue`` and ``retry_on_failure``: every signal has one bounded
queue and one export thread; the application's threads only append to the queue (or count a drop when it is full)
and never wait on the network. A failed export is retried by our own policy (short, capped backoff, so a collector
that comes back is used again within about two seconds) until the batch's deadline, then counted as failed.

What is lost is counted, per signal and reason, with the OpenTelemetry SDK self-observability names
(``otel.sdk.processor.span.processed``, ``otel.sdk.exporter.span.exported``, …; ``error.type`` says why), and
summarised in one line at shutdown. The SDK's own per-batch log lines are kept off stderr: the first failure of a
signal and its recovery are each logged once by the ``otel_vision`` logger; the detail stays at DEBUG.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_vision import _threads
from otel_vision import attributes as a
from otel_vision._errors import our_logger
from otel_vision._limits import (  # noqa: F401  # re-exported: the export path's bounds
    DEFAULT_ATTRIBUTE_LENGTH,
    DEFAULT_EXIT_TIMEOUT_S,
    DEFAULT_EXPORT_TIMEOUT_S,
    DEFAULT_MAX_EXPORT_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_SPAN_QUEUE_SIZE,
    DEFAULT_SCHEDULE_DELAY_MS,
    FORK_WAIT_S,
    OTEL_VISION_EXIT_TIMEOUT,
    QueueSettings,
    exit_timeout,
    span_limits,
)

logger = our_logger("otel_vision")
export_log = our_logger("otel_vision.export")
"""The export path's own lines: printed like any ``otel_vision`` warning, never exported as OTLP logs (a failing
logs pipeline would otherwise count its own complaints as lost records)."""
_SDK_RETRY_NOTE = re.compile(r",? ?retrying in [\d.]+s\.?", re.IGNORECASE)

Item = TypeVar("Item")

TRACES: Final = "traces"
METRICS: Final = "metrics"
LOGS: Final = "logs"
ITEM_NAMES: Final = {TRACES: "spans", METRICS: "metric points", LOGS: "log records"}

MAX_BATCH_BYTES: Final = 3 * 1024 * 1024
"""Estimated encoded size at which a batch is cut: collectors reject gRPC messages over 4 MiB by default."""
MAX_LOG_BODY_CHARS: Final = 64 * 1024
"""Longer string log bodies are truncated (a multi-megabyte message would not fit in any export request)."""
IDLE_WAIT_S: Final = 5.0
"""The longest an export thread with an empty queue sleeps between checks (an item, a flush or the shutdown wakes
it at once)."""
RETRY_BACKOFF_S: Final = (0.25, 0.5, 1.0, 2.0)
"""Waits between attempts at one batch; the last repeats until the batch's deadline."""


# --- redaction --------------------------------------------------------------------------------------------------
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_BARE_USERINFO = re.compile(r"(?<![\w/@.:-])[^\s/@:'\"]+:[^\s/@'\"]*@(?=[\w.\[-])")
"""``user:password@host`` without a scheme (gRPC targets in exporter messages)."""


def redact(text: str) -> str:
    """Remove the ``user:password@`` part of every URL and host in ``text``."""
    return _BARE_USERINFO.sub("***@", _USERINFO.sub(r"\g<scheme>***@", text))


# --- the quiet logging policy -----------------------------------------------------------------------------------
_EXPORTER_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._shared_internal",
)
_capture = threading.local()


class _CaptureOnExportThreads(logging.Filter):
    """Swallow the SDK exporters' per-attempt lines on our export threads, keeping the last one as the reason.

    Records from the same loggers on other threads (an exporter the application set up itself) pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_capture, "active", False):
            return True
        try:
            message = redact(record.getMessage())
        except Exception:
            message = str(record.msg)
        # The first warning of an attempt names the cause; what follows ("aborting retry") is our doing.
        if record.levelno >= logging.WARNING and getattr(_capture, "reason", None) is None:
            if not message.startswith(("Shutdown in progress", "Exporter already shutdown")):
                _capture.reason = message
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("otel_vision: exporter said: %s", message)
        return False


_filter = _CaptureOnExportThreads()
_filter_installed = False


def install_quiet_logging() -> None:
    """Attach the capturing filter to the SDK exporters' loggers (once per process)."""
    global _filter_installed
    if _filter_installed:
        return
    _filter_installed = True
    for name in _EXPORTER_LOGGERS:
        logging.getLogger(name).addFilter(_filter)


class _Captured:
    """Context manager: exporter log lines on this thread are captured; ``reason`` is the last warning or error."""

    def __enter__(self) -> _Captured:
        _capture.active = True
        _capture.reason = None
        return self

    def __exit__(self, *exc: object) -> None:
        _capture.active = False

    @property
    def reason(self) -> str | None:
        return getattr(_capture, "reason", None)


_STATUS = re.compile(r"StatusCode\.([A-Z_]+)")
_HTTP_STATUS = re.compile(r"\b(?:status(?: code)?|HTTP)[ :]*([1-5]\d\d)\b", re.IGNORECASE)


def classify(reason: str | None) -> str:
    """A short ``error.type`` for a failed export, from the exporter's own message."""
    if not reason:
        return "export_failed"
    if match := _STATUS.search(reason):
        return match.group(1).lower()
    lowered = reason.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return "timeout"
    if "connection" in lowered or "refused" in lowered:
        return "unavailable"
    if "exceeds max_request_size" in lowered or "too large" in lowered:
        return "payload_too_large"
    if match := _HTTP_STATUS.search(reason):
        return f"http_{match.group(1)}"
    return "export_failed"


def _no_internal_retry(exporter: object) -> None:
    """Make an OTLP exporter give a failed attempt back to us instead of sleeping and retrying inside.

    Both OTLP exporters wait between their own retries on a shutdown event; an event whose ``wait`` returns at once
    ends their loop after one attempt (the gRPC exporter still rebuilds its channel after ``UNAVAILABLE`` first, which
    is what makes reconnection fast). Without those private attributes (another SDK version) the exporter keeps its
    own retries, still bounded by its timeout.
    """
    for owner, name in ((exporter, "_shutdown_in_progress"), (getattr(exporter, "_client", None), "_shutdown_event")):
        current = getattr(owner, name, None) if owner is not None else None
        if isinstance(current, threading.Event):
            replacement = _ReturnAtOnce()
            if current.is_set():
                replacement.set()
            setattr(owner, name, replacement)


class _ReturnAtOnce(threading.Event):
    def wait(self, timeout: float | None = None) -> bool:
        return True


# --- accounting -------------------------------------------------------------------------------------------------
def _reasons(stats: SignalStats) -> str:
    """``"3 unavailable, 1808 shutdown"``: counts per reason, failed and dropped added up."""
    merged = dict(stats.failed)
    for why, count in stats.dropped.items():
        merged[why] = merged.get(why, 0) + count
    return ", ".join(f"{count} {why}" for why, count in sorted(merged.items()))


@dataclass
class SignalStats:
    """What happened to one signal's items in this process (also exported as metrics)."""

    delivered: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Items whose export was attempted and given up, by ``error.type``."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Items never sent (queue full, shut down), by reason."""

    @property
    def lost(self) -> int:
        return sum(self.failed.values()) + sum(self.dropped.values())


_PROCESSOR_METRIC: Final = {TRACES: a.METRIC_SDK_SPANS_PROCESSED, LOGS: a.METRIC_SDK_LOGS_PROCESSED}
_EXPORTER_METRIC: Final = {
    TRACES: a.METRIC_SDK_SPANS_EXPORTED,
    METRICS: a.METRIC_SDK_POINTS_EXPORTED,
    LOGS: a.METRIC_SDK_LOGS_EXPORTED,
}
_UNITS: Final = {TRACES: "{span}", METRICS: "{data_point}", LOGS: "{log_record}"}
_PROCESSOR_TYPE: Final = {TRACES: "batching_span_processor", LOGS: "batching_log_processor"}


class Accounting:
    """Counts per signal, kept as numbers for the shutdown line and the demo, and as OpenTelemetry counters."""

    def __init__(self, exporter_types: Mapping[str, str], servers: Mapping[str, tuple[str, int]] | None = None) -> None:
        self._lock = threading.Lock()
        self.stats: dict[str, SignalStats] = {signal: SignalStats() for signal in exporter_types}
        self._exporter_types = dict(exporter_types)
        self._servers = dict(servers or {})
        self._processed: dict[str, Any] = {}
        self._exported: dict[str, Any] = {}

    def bind(self, meter: Meter) -> None:
        """Create the counters on the pipeline's own meter (they are recorded from export threads only)."""
        for signal in self._exporter_types:
            if signal in _PROCESSOR_METRIC:
                self._processed[signal] = meter.create_counter(
                    _PROCESSOR_METRIC[signal],
                    unit=_UNITS[signal],
                    description=f"{ITEM_NAMES[signal].capitalize()} that left the queue or were dropped from it "
                    "(error.type says why).",
                )
            self._exported[signal] = meter.create_counter(
                _EXPORTER_METRIC[signal],
                unit=_UNITS[signal],
                description=f"{ITEM_NAMES[signal].capitalize()} the exporter delivered, or gave up on (error.type).",
            )

    def _attrs(self, component_type: str, signal: str, error: str | None, server: bool) -> dict[str, str | int]:
        attrs: dict[str, str | int] = {
            "otel.component.type": component_type,
            "otel.component.name": f"otel_vision/{signal}",
        }
        if server and signal in self._servers:
            attrs["server.address"], attrs["server.port"] = self._servers[signal]
        if error is not None:
            attrs["error.type"] = error
        return attrs

    def delivered(self, signal: str, count: int) -> None:
        with self._lock:
            self.stats[signal].delivered += count
        self._add(self._exported, signal, count, self._attrs(self._exporter_types[signal], signal, None, True))
        self._add(self._processed, signal, count, self._attrs(_PROCESSOR_TYPE.get(signal, ""), signal, None, False))

    def failed(self, signal: str, count: int, error: str) -> None:
        with self._lock:
            failed = self.stats[signal].failed
            failed[error] = failed.get(error, 0) + count
        self._add(self._exported, signal, count, self._attrs(self._exporter_types[signal], signal, error, True))
        self._add(self._processed, signal, count, self._attrs(_PROCESSOR_TYPE.get(signal, ""), signal, None, False))

    def dropped(self, signal: str, count: int, reason: str) -> None:
        with self._lock:
            dropped = self.stats[signal].dropped
            dropped[reason] = dropped.get(reason, 0) + count
        self._add(self._processed, signal, count, self._attrs(_PROCESSOR_TYPE.get(signal, ""), signal, reason, False))

    @staticmethod
    def _add(counters: dict[str, Any], signal: str, count: int, attrs: dict[str, str | int]) -> None:
        counter = counters.get(signal)
        if counter is not None:
            try:
                counter.add(count, attrs)
            except Exception:  # accounting must never break export
                logger.debug("otel_vision: could not count %s", signal, exc_info=True)

    def snapshot(self) -> dict[str, SignalStats]:
        with self._lock:
            return {
                signal: SignalStats(s.delivered, dict(s.failed), dict(s.dropped)) for signal, s in self.stats.items()
            }

    def summary(self) -> str | None:
        """One line naming what was lost per signal, or ``None`` when nothing was."""
        parts = []
        for signal, stats in self.snapshot().items():
            if stats.lost:
                reasons = _reasons(stats)
                parts.append(f"{stats.lost} {ITEM_NAMES[signal]} ({reasons}; {stats.delivered} delivered)")
        return "; ".join(parts) if parts else None


# --- sending ----------------------------------------------------------------------------------------------------


class _GrpcForkGate:
    """Keeps our gRPC export calls and forks apart.

    gRPC runs its own fork handlers only when no thread is inside a gRPC call; otherwise it logs "Other threads are
    currently calling into gRPC, skipping fork() handlers", and the child's gRPC can fail, or abort the child (a
    `multiprocessing.Pool` whose worker dies mid-task never returns). So a fork waits, at most `FORK_WAIT_S`, for the
    exports in flight, and no export starts while a fork is under way (it waits at most as long)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._calls = 0
        self._forking = False

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._cond:
            if self._forking:
                self._cond.wait_for(lambda: not self._forking, FORK_WAIT_S)
            self._calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._forking = True
            self._cond.wait_for(lambda: self._calls == 0, FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        self._cond = threading.Condition(threading.Lock())  # the parent's export threads are not in the child
        self._calls = 0
        self._forking = False


_grpc_fork_gate = _GrpcForkGate()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_grpc_fork_gate.before_fork,
        after_in_parent=_grpc_fork_gate.after_fork_in_parent,
        after_in_child=_grpc_fork_gate.after_fork_in_child,
    )


class Sender:
    """One signal's exporter behind our retry policy, health reporting and accounting."""

    def __init__(
        self,
        signal: str,
        exporter: Any,
        accounting: Accounting,
        *,
        destination: str,
        count: Callable[[Any], int] = len,
    ) -> None:
        self.signal = signal
        self._exporter: Any = exporter
        self._accounting = accounting
        self._destination = destination
        self._count = count
        self._stop = threading.Event()
        self.written_off = False
        """Set when a shutdown gave up on the batch in flight and counted it already."""
        self._failing_since: float | None = None
        self._pid = os.getpid()
        self._grpc = any(".grpc" in cls.__module__ for cls in type(exporter).__mro__)
        """Its calls go through `_grpc_fork_gate`."""
        _no_internal_retry(exporter)
        install_quiet_logging()

    @property
    def exporter(self) -> Any:
        return self._exporter

    def send(self, batch: Any, deadline: float, **kwargs: Any) -> bool:
        """Export ``batch``, retrying until ``deadline`` (monotonic); count the outcome. Never raises."""
        count = self._count(batch)
        if count == 0:
            return True
        attempt = 0
        reason: str | None = None
        cause: str | None = None
        """The last failure's reason from before a shutdown interrupted the exporter (then its errors are ours)."""
        while True:
            with _Captured() as captured, _grpc_fork_gate.call() if self._grpc else nullcontext():
                try:
                    ok = self.exporter.export(batch, **kwargs) in _SUCCESS
                except Exception as exc:
                    ok = False
                    _capture.reason = redact(f"{type(exc).__name__}: {exc}")
                reason = captured.reason
            if not self._stop.is_set():
                cause = reason
            if self.written_off:
                return ok
            if ok:
                self._accounting.delivered(self.signal, count)
                self._recovered()
                return True
            self._failing(reason)
            wait = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)] * random.uniform(0.8, 1.2)
            attempt += 1
            if self._stop.is_set() or time.monotonic() + wait >= deadline or self._stop.wait(wait):
                if not self.written_off:
                    # Given up at shutdown: the collector's failure if there was one, else the shutdown itself.
                    error = classify(cause) if cause is not None or not self._stop.is_set() else "shutdown"
                    self._accounting.failed(self.signal, count, error)
                return False

    def _failing(self, reason: str | None) -> None:
        # One warning per outage; none for what shutting down itself interrupts (a closed channel is not news).
        if self._failing_since is not None or self._stop.is_set():
            return
        self._failing_since = time.monotonic()
        text = _SDK_RETRY_NOTE.sub("", reason or "the exporter reported a failure").rstrip(". ")
        export_log.warning(
            "otel_vision: cannot export %s to %s: %s. Retrying in the background; what cannot be delivered is "
            "counted (otel.sdk.* metrics) and summed up at shutdown.",
            self.signal,
            self._destination,
            text,
        )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            export_log.warning(
                "otel_vision: exporting %s to %s works again (after %.1f s)",
                self.signal,
                self._destination,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def abort(self) -> None:
        """Stop retrying and interrupt the exporter (closes its connection)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            with _Captured():
                self._exporter.shutdown()
        except Exception:
            logger.debug("otel_vision: exporter shutdown failed", exc_info=True)


_SUCCESS: Final = (SpanExportResult.SUCCESS, LogRecordExportResult.SUCCESS, MetricExportResult.SUCCESS)


# --- the bounded queue ------------------------------------------------------------------------------------------
class BatchQueue(Generic[Item]):
    """A bounded queue drained by one export thread: ``put`` never blocks, flush and shutdown are bounded."""

    def __init__(
        self,
        sender: Sender,
        accounting: Accounting,
        *,
        max_queue_size: int,
        max_batch_size: int,
        schedule_delay: float,
        export_timeout: float,
        size_of: Callable[[Item], int],
    ) -> None:
        self._sender = sender
        self._accounting = accounting
        self._signal = sender.signal
        self._max_queue_size = max_queue_size
        self._max_batch_size = max_batch_size
        self._schedule_delay = schedule_delay
        self._export_timeout = export_timeout
        self._size_of = size_of
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._extra = 0
        """See `hold_extra`."""
        self._extra_until = 0
        self._done = 0
        """Items whose fate is settled (delivered, failed or dropped)."""
        self._lost = 0
        self._window_lost = 0
        """``_lost`` when the last completed flush settled everything it waited for."""
        self._flush_requests = 0
        self._flushes_seen = 0
        self._in_flight = 0
        self._stopping = False
        self._deadline: float | None = None
        self.shutdown_deadline: float | None = None
        """Set by the owning handle before a shutdown: `shutdown()` without a timeout ends by then."""
        self._inherited = False
        self._pid = os.getpid()
        self._thread = self._start_thread()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _call(ref, "_after_fork_in_child"))

    @property
    def signal(self) -> str:
        return self._signal

    def _start_thread(self) -> threading.Thread:
        return _threads.start(
            threading.Thread(target=self._run, name=f"otel-vision-export-{self._signal}", daemon=True)
        )

    def _after_fork_in_child(self) -> None:
        if self._pid == os.getpid():
            return
        # The parent exports what it queued; this copy belongs to the parent's pipeline and stays silent.
        self._inherited = True
        self._cond = threading.Condition(threading.Lock())
        self._queue.clear()

    # --- the application's side -------------------------------------------------------------------------------
    def put(self, item: Item) -> None:
        if self._inherited:
            return
        with self._cond:
            if self._stopping:
                self._settle_dropped(1, "already_shutdown")
                return
            if len(self._queue) >= self._max_queue_size + self._extra:
                self._settle_dropped(1, "queue_full")
                return
            self._queue.append(item)
            waiting = len(self._queue)
            if waiting == 1:
                self._cond.notify_all()  # the export thread sleeps while the queue is empty (`_next_batch`)
            elif waiting == self._max_batch_size:
                self._cond.notify()

    def hold_extra(self, count: int) -> None:
        """Room for ``count`` more items than the queue's size until the next ``count`` (and everything queued
        before them) are settled: the spans held before the pipeline was complete (at most
        `otel_vision._early.EARLY_SPANS`) arrive all at once."""
        with self._cond:
            self._extra = count
            self._extra_until = self._done + self._in_flight + len(self._queue) + count

    def count_dropped(self, count: int, reason: str) -> None:
        """Count ``count`` items of this signal lost before they reached the queue (the next flush says so)."""
        with self._cond:
            self._settle_dropped(count, reason)

    def _settle_dropped(self, count: int, reason: str) -> None:
        # Called with the lock held.
        self._done += count
        self._lost += count
        self._accounting.dropped(self._signal, count, reason)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        """Wait until everything offered so far is settled, at most ``timeout_millis``; ``True`` only when all of it
        since the last settled flush was delivered."""
        if self._inherited:
            return True
        deadline = time.monotonic() + max(0.0, timeout_millis) / 1000.0
        with self._cond:
            # Everything offered so far is settled, in flight or queued.
            target = self._done + self._in_flight + len(self._queue)
            self._flush_requests += 1
            self._cond.notify_all()
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            ok = self._lost == self._window_lost
            self._window_lost = self._lost
            return ok

    def shutdown(self, timeout: float | None = None) -> None:
        """Export what is queued until ``timeout`` seconds have passed (default: until `shutdown_deadline`, else the
        export timeout), then drop (and count) the rest."""
        if self._inherited:
            return
        if timeout is None:
            timeout = (
                self.shutdown_deadline - time.monotonic()
                if self.shutdown_deadline is not None
                else self._export_timeout
            )
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self.abort()
        self.settle(0.05)
        self.write_off_in_flight()

    def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the export thread to finish after `abort`."""
        if not self._inherited:
            self._thread.join(timeout)

    def abort(self) -> None:
        """Interrupt the export in progress and drop (counting them) the items still queued."""
        if self._inherited:
            return
        with self._cond:
            self._stopping = True
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._settle_dropped(left, "shutdown")
            self._cond.notify_all()
        self._sender.abort()

    def write_off_in_flight(self) -> None:
        """After `abort` and a short `settle`: count an export that still has not returned as lost now."""
        if self._inherited:
            return
        with self._cond:
            if self._in_flight and not self._sender.written_off:
                # The export in flight does not answer (a collector that hangs): count it lost now, so the summary
                # is complete; its thread is a daemon and ends with its own timeout.
                self._sender.written_off = True
                self._settle_dropped(self._in_flight, "shutdown")
                self._in_flight = 0

    # --- the export thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            deadline = time.monotonic() + self._export_timeout
            if self._deadline is not None:
                deadline = min(deadline, self._deadline)
            ok = self._sender.send(batch, deadline)
            with self._cond:
                if self._sender.written_off:
                    return
                self._in_flight = 0
                self._done += len(batch)
                if not ok:
                    self._lost += len(batch)
                if self._extra and self._done >= self._extra_until:
                    self._extra = 0
                self._cond.notify_all()

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while True:
                if self._stopping:
                    if not self._queue or (self._deadline is not None and time.monotonic() >= self._deadline):
                        return None
                    break
                if not self._queue:
                    # Nothing to send: sleep until the first item (`put` wakes us), a flush or the shutdown.
                    self._flushes_seen = self._flush_requests
                    self._cond.wait(max(self._schedule_delay, IDLE_WAIT_S))
                    continue
                if len(self._queue) >= self._max_batch_size or self._flush_requests != self._flushes_seen:
                    break
                # A few items and no hurry: send them when the schedule delay has passed (or earlier if woken).
                if not self._cond.wait(self._schedule_delay):
                    break
            batch: list[Item] = []
            size = 0
            while self._queue and len(batch) < self._max_batch_size:
                item_size = self._size_of(self._queue[0])
                if batch and size + item_size > MAX_BATCH_BYTES:
                    break
                batch.append(self._queue.popleft())
                size += item_size
            self._in_flight = len(batch)
            return batch


def _call(ref: weakref.ref[Any], method: str) -> None:
    target = ref()
    if target is not None:
        getattr(target, method)()


# --- size estimates (cheap, on the export thread) ---------------------------------------------------------------
_NUMBERS: Final = frozenset((int, float, bool))


def _value_bytes(value: object) -> int:
    if type(value) in _NUMBERS:  # the common case first: no abstract-class checks
        return 9
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "replace"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, Sequence):
        return sum(_value_bytes(v) + 2 for v in value)
    if isinstance(value, Mapping):
        return sum(len(str(k)) + _value_bytes(v) + 4 for k, v in value.items())
    return 9


def _attributes_bytes(attributes: Mapping[str, object] | None) -> int:
    if not attributes:
        return 0
    size = 8 * len(attributes)
    for key, value in attributes.items():
        size += len(key) + _value_bytes(value)
    return size


def span_bytes(span: ReadableSpan) -> int:
    """An upper-ish estimate of a span's OTLP-encoded size."""
    size = 96 + len(span.name) + _attributes_bytes(span.attributes)
    for event in span.events:
        size += 24 + len(event.name) + _attributes_bytes(event.attributes)
    for link in span.links:
        size += 48 + _attributes_bytes(link.attributes)
    description = span.status.description if span.status is not None else None
    return size + (len(description) if description else 0)


def log_bytes(record: ReadableLogRecord) -> int:
    api = record.log_record
    return 96 + _value_bytes(api.body) + _attributes_bytes(api.attributes)


# --- the SDK-facing processors ----------------------------------------------------------------------------------
class SpanQueueProcessor(SpanProcessor):
    """Sampled, ended spans go to a `BatchQueue`; nothing else happens on the thread that ends them."""

    def __init__(self, queue: BatchQueue[ReadableSpan]) -> None:
        self.queue = queue

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.queue.put(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.queue.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.queue.shutdown()


class LogQueueProcessor(LogRecordProcessor):
    """Log records go to a `BatchQueue`, detached from their context, with oversized string bodies truncated."""

    def __init__(self, queue: BatchQueue[ReadableLogRecord]) -> None:
        self.queue = queue

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        api = copy.copy(log_record.log_record)
        api.context = Context()
        body = api.body
        if isinstance(body, str) and len(body) > MAX_LOG_BODY_CHARS:
            api.body = f"{body[:MAX_LOG_BODY_CHARS]}… [{len(body) - MAX_LOG_BODY_CHARS} more characters dropped]"
        resource = log_record.resource if log_record.resource is not None else Resource.create({})
        self.queue.put(
            ReadableLogRecord(
                log_record=api,
                resource=resource,
                instrumentation_scope=log_record.instrumentation_scope,
                limits=log_record.limits,
            )
        )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.queue.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.queue.shutdown()


def count_data_points(data: MetricsData) -> int:
    return sum(
        len(getattr(metric.data, "data_points", ()))
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    )


class BoundedMetricExporter(MetricExporter):
    """Runs the real metric exporter on its own thread and waits for it at most ``timeout_millis``.

    The metric reader calls ``export`` on its timer thread, or on the application's thread in ``force_flush`` and
    ``shutdown``; either way the caller waits no longer than it asked. An export still running when the next one
    comes is not doubled: the newer one is counted as failed (``exporter_busy``; cumulative metrics lose nothing but
    resolution). In a forked child the inherited reader's exports are skipped: the child has its own pipeline.
    """

    def __init__(self, sender: Sender, export_timeout: float) -> None:
        inner = sender.exporter
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self._sender = sender
        self._export_timeout = export_timeout
        self._busy = threading.Lock()
        self._in_flight: tuple[threading.Thread, int] | None = None
        self._pid = os.getpid()
        self.exports_ok = 0
        self.exports_failed = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._pid != os.getpid():
            return MetricExportResult.SUCCESS
        wait = min(self._export_timeout, max(0.0, timeout_millis / 1000.0))
        outcome: list[bool] = []

        def run() -> None:
            try:
                outcome.append(self._sender.send(metrics_data, time.monotonic() + self._export_timeout))
            finally:
                self._busy.release()

        thread = threading.Thread(target=run, name="otel-vision-export-metrics", daemon=True)
        if not self._busy.acquire(blocking=False):
            self._sender._accounting.failed(METRICS, count_data_points(metrics_data), "exporter_busy")
            self.exports_failed += 1
            return MetricExportResult.FAILURE
        try:
            _threads.start(thread)
        except BaseException:  # a KeyboardInterrupt here, or no thread to be had: the next export must not be "busy"
            self._busy.release()
            raise
        # Only a started thread is in flight (`settle` joins it).
        self._in_flight = (thread, count_data_points(metrics_data))
        thread.join(wait)
        if outcome and outcome[0]:
            self.exports_ok += 1
            return MetricExportResult.SUCCESS
        self.exports_failed += 1
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # The reader's last export has run (bounded) before this; whatever still runs is interrupted.
        self._sender.abort()

    def abort(self) -> None:
        self._sender.abort()

    def settle(self, timeout: float) -> None:
        thread = self._in_flight[0] if self._in_flight is not None else None
        if thread is not None:
            thread.join(timeout)

    def write_off_in_flight(self) -> None:
        """After `abort` and `settle`: an export that still has not returned is counted as lost now."""
        in_flight = self._in_flight
        if in_flight is not None and in_flight[0].is_alive() and not self._sender.written_off:
            self._sender.written_off = True
            self._sender._accounting.failed(METRICS, in_flight[1], "shutdown")


@dataclass
class ExportPipeline:
    """Every export-path object of one pipeline, so a handle can flush, bound and account for them together."""

    accounting: Accounting
    export_timeouts: Mapping[str, float] = field(default_factory=dict)
    """Seconds per signal: one attempt's timeout (the exporter's own) and, unless ``OTEL_BSP_EXPORT_TIMEOUT`` /
    ``OTEL_BLRP_EXPORT_TIMEOUT`` say otherwise, how long one batch is retried."""
    queues: list[BatchQueue[Any]] = field(default_factory=list)
    metric_exporters: list[BoundedMetricExporter] = field(default_factory=list)
    deadline_aware: list[Any] = field(default_factory=list)
    """Other processors with a ``shutdown_deadline`` attribute (the GPU span processor)."""
    span_metrics: Any = None
    """The processor that records duration metrics from finished spans (drained before each flush)."""
    queue_settings: Mapping[str, QueueSettings] = field(default_factory=dict)
    """By prefix (``OTEL_BSP``, ``OTEL_BLRP``): read (and warned about) by `configure()` before it returns."""

    def _timeout(self, signal: str) -> float:
        return self.export_timeouts.get(signal, DEFAULT_EXPORT_TIMEOUT_S)

    def _queue(self, signal: str, exporter: Any, destination: str, prefix: str, size_of: Any) -> BatchQueue[Any]:
        sender = Sender(signal, exporter, self.accounting, destination=destination)
        settings = self.queue_settings.get(prefix) or QueueSettings.from_env(prefix, self._timeout(signal))
        queue: BatchQueue[Any] = BatchQueue(
            sender,
            self.accounting,
            max_queue_size=settings.max_queue_size,
            max_batch_size=settings.max_batch_size,
            schedule_delay=settings.schedule_delay,
            export_timeout=settings.export_timeout,
            size_of=size_of,
        )
        self.queues.append(queue)
        return queue

    def span_processor(self, exporter: Any, destination: str) -> SpanQueueProcessor:
        """The processor that queues finished spans for ``exporter`` (``OTEL_BSP_*`` size it)."""
        return SpanQueueProcessor(self._queue(TRACES, exporter, destination, "OTEL_BSP", span_bytes))

    def log_processor(self, exporter: Any, destination: str) -> LogQueueProcessor:
        """The processor that queues log records for ``exporter`` (``OTEL_BLRP_*`` size it)."""
        return LogQueueProcessor(self._queue(LOGS, exporter, destination, "OTEL_BLRP", log_bytes))

    def metric_exporter(self, exporter: Any, destination: str) -> BoundedMetricExporter:
        """``exporter`` behind the bounded wait and the accounting, for a periodic metric reader."""
        sender = Sender(METRICS, exporter, self.accounting, destination=destination, count=count_data_points)
        bounded = BoundedMetricExporter(sender, self._timeout(METRICS))
        self.metric_exporters.append(bounded)
        return bounded

    def set_deadline(self, deadline: float) -> None:
        """Make every later ``shutdown()`` of these objects finish by ``deadline`` (monotonic)."""
        for queue in self.queues:
            queue.shutdown_deadline = deadline
        for obj in self.deadline_aware:
            obj.shutdown_deadline = deadline

    def join(self, deadline: float) -> None:
        """Wait (until ``deadline``, monotonic) for the export threads to finish what they are sending."""
        for queue in self.queues:
            queue.settle(max(0.0, deadline - time.monotonic()))

    def stop_now(self) -> None:
        """Past the deadline: interrupt every export still running and count what is left as dropped."""
        for queue in self.queues:
            queue.abort()
        for exporter in self.metric_exporters:
            exporter.abort()
        settled = time.monotonic() + 0.1  # an interrupted export counts its batch itself: let it, before the summary
        stragglers: list[BatchQueue[Any] | BoundedMetricExporter] = [*self.queues, *self.metric_exporters]
        for straggler in stragglers:
            straggler.settle(max(0.0, settled - time.monotonic()))
        for straggler in stragglers:
            straggler.write_off_in_flight()


def describe(stats: Mapping[str, SignalStats], signals: Iterable[str]) -> list[str]:
    """One line per signal: what was delivered and what was lost, for people."""
    lines = []
    for signal in signals:
        s = stats.get(signal)
        if s is None:
            continue
        line = f"{signal}: {s.delivered} {ITEM_NAMES[signal]} delivered"
        if s.lost:
            reasons = _reasons(s)
            line += f", {s.lost} lost ({reasons})"
        lines.append(line)
    return lines
