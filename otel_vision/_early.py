"""What a pipeline accepts in the moment between `configure()` returning and the rest of it being built.

`configure()` builds only the tracer provider on the caller's thread; the metrics and logs SDKs, the exporters (gRPC,
protobuf, requests) and the GPU telemetry load on a background thread, about 0.1-0.2 s of imports that the
application no longer waits for. Until they are ready nothing recorded is lost:

- `SpanGate` is the tracer provider's first span processor. It holds ended spans (at most `EARLY_SPANS`) and hands
  them to the real processors once they exist, then forwards every span straight to them; the application's own
  processors see every span start live. A thread that ends more
  spans than that before the pipeline is complete waits for it, once and bounded: a burst right after
  ``configure()`` then costs what a synchronous ``configure()`` did, and loses nothing.
- `PendingMeter` gives `otel_vision._metrics.Instruments` instruments that remember what is recorded (with the
  caller's context, so exemplars still point at the trace) and replay it into the real ones.
- `PendingLoggerProvider` does the same for the log records of the logging handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_vision._errors import report_internal_error

EARLY_SPANS: Final = 4096
"""Ended spans held before the pipeline is complete; the next one waits for it. They are exported first, with room
of their own beside the span queue (`otel_vision._export.BatchQueue.hold_extra`), so a burst right after
``configure()`` has the same room as one that comes later."""
EARLY_RECORDS: Final = 4096
"""Metric measurements and log records held each before the pipeline is complete; later ones are dropped."""


class SpanGate(SpanProcessor):
    """The tracer provider's first span processor: holds spans until `open`, then forwards to the real processors,
    in order. Processors added to the provider later come after it, as usual."""

    def __init__(self, ready: threading.Event, wait_s: float, starters: Sequence[SpanProcessor] = ()) -> None:
        self._ready = ready
        self._wait_s = wait_s
        self._starters = tuple(starters)
        """The application's own processors (``additional_span_processors``): before `open` they see each span start
        live, on its own thread and with its parent context, as they would without us. Ours do nothing at a start."""
        self._targets: tuple[SpanProcessor, ...] | None = None
        self._early: list[ReadableSpan] = []
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        """Spans that ended while the pipeline never completed (shut down first, or its build failed)."""

    @property
    def starts_nothing(self) -> bool:
        """Whether a span start means nothing to any processor behind the gate (`otel_vision._light`): ours never do
        anything there, and the application's own are the `starters`."""
        from otel_vision._light import starts_nothing

        return all(map(starts_nothing, self._starters))

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._targets if self._targets is not None else self._starters:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        targets = self._targets
        if targets is None:
            targets = self._hold(span)
            if targets is None:
                return
        for processor in targets:
            processor.on_end(span)

    def _hold(self, span: ReadableSpan) -> tuple[SpanProcessor, ...] | None:
        waited = False
        while True:
            with self._lock:
                if self._targets is not None:
                    return self._targets
                if self._closed:
                    self.dropped += 1
                    return None
                if len(self._early) < EARLY_SPANS:
                    self._early.append(span)
                    return None
                if waited:
                    self.dropped += 1
                    return None
            # A burst before the pipeline is complete: wait for it (CPU work on the setup thread, never the network).
            self._ready.wait(self._wait_s)
            waited = True

    def open(self, targets: Sequence[SpanProcessor], make_room: Callable[[int], None] | None = None) -> None:
        """Hand the held spans to ``targets`` (in the order they ended) and forward every later span to them;
        ``make_room`` is told first how many spans are held."""
        with self._lock:
            targets = tuple(targets)
            early, self._early = self._early, []
            if make_room is not None:
                make_room(len(early))
            try:
                for span in early:
                    try:
                        for processor in targets:
                            processor.on_end(span)
                    except Exception:  # as it would have raised into the span's own thread: the next span goes on
                        report_internal_error("hand-over of a span held before the pipeline was complete")
            finally:
                self._targets = targets

    def close(self) -> int:
        """The pipeline will not complete: drop what is held; return how many spans were lost in all."""
        with self._lock:
            self._closed = True
            self.dropped += len(self._early)
            self._early = []
            return self.dropped

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        targets = self._targets
        if targets is None:
            return not self._early
        deadline = time.monotonic() + timeout_millis / 1000
        ok = True
        for processor in targets:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ok = processor.force_flush(remaining) is not False and ok
        return ok

    def shutdown(self) -> None:
        for processor in self._targets or ():
            processor.shutdown()


class _PendingInstrument:
    def __init__(self, meter: PendingMeter, create: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._meter = meter
        self._create = (create, args, kwargs)
        self._real: Any = None

    def _take(self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        real = self._real
        if real is None:
            # (amount, attributes, context), positional or not: the context is taken now, so that a replayed
            # measurement keeps the caller's trace for its exemplar.
            if len(args) >= 3:
                if args[2] is None:
                    args = (*args[:2], otel_context.get_current(), *args[3:])
            elif kwargs.get("context") is None:
                kwargs["context"] = otel_context.get_current()
            real = self._meter._hold(self, operation, args, kwargs)
            if real is None:
                return
        getattr(real, operation)(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._take("add", args, kwargs)

    def record(self, *args: Any, **kwargs: Any) -> None:
        self._take("record", args, kwargs)

    def set(self, *args: Any, **kwargs: Any) -> None:
        self._take("set", args, kwargs)


class PendingMeter(NoOpMeter):
    """A meter whose synchronous instruments remember measurements until `bind` gives them real instruments."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self._instruments: list[_PendingInstrument] = []
        self._held: list[tuple[_PendingInstrument, str, tuple[Any, ...], dict[str, Any]]] = []
        self._bound = False
        self.dropped = 0

    def _pending(self, create: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        instrument = _PendingInstrument(self, create, args, kwargs)
        with self._lock:
            self._instruments.append(instrument)
        return instrument

    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_counter", args, kwargs)

    def create_up_down_counter(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_up_down_counter", args, kwargs)

    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_histogram", args, kwargs)

    def create_gauge(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_gauge", args, kwargs)

    # Observable instruments record nothing themselves: they are created with their callbacks at `bind`.
    def create_observable_counter(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_observable_counter", args, kwargs)

    def create_observable_up_down_counter(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_observable_up_down_counter", args, kwargs)

    def create_observable_gauge(self, *args: Any, **kwargs: Any) -> Any:
        return self._pending("create_observable_gauge", args, kwargs)

    def _hold(
        self, instrument: _PendingInstrument, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        with self._lock:
            if instrument._real is not None:
                return instrument._real
            if self._bound or len(self._held) >= EARLY_RECORDS:
                self.dropped += 1
                return None
            self._held.append((instrument, operation, args, kwargs))
            return None

    def bind(self, meter: Meter) -> None:
        """Create the real instruments from ``meter``, replay what was recorded, forward from now on."""
        with self._lock:
            for instrument in self._instruments:
                create, args, kwargs = instrument._create
                instrument._real = getattr(meter, create)(*args, **kwargs)
            held, self._held = self._held, []
            self._bound = True
            for instrument, operation, args, kwargs in held:
                getattr(instrument._real, operation)(*args, **kwargs)

    def close(self) -> int:
        """The pipeline will not complete: forget what is held; return how many measurements were lost in all."""
        with self._lock:
            self.dropped += len(self._held)
            self._held = []
            self._bound = True
            return self.dropped


class PendingMeterProvider(MeterProvider):
    """The global meter provider from `configure()` on: meters handed out before the pipeline is complete are
    `PendingMeter` objects, bound to the real provider's meters by `resolve`; later ones come from it directly. So an
    application's own counter, created and incremented right after ``configure()``, loses nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meters: list[tuple[PendingMeter, dict[str, Any]]] = []
        self._real: MeterProvider | None = None

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Meter:
        arguments = {"name": name, "version": version, "schema_url": schema_url, "attributes": attributes}
        with self._lock:
            real = self._real
            if real is None:
                meter = PendingMeter(name)
                self._meters.append((meter, arguments))
                return meter
        return real.get_meter(**arguments)

    def resolve(self, provider: MeterProvider) -> int:
        """Bind every meter handed out so far to ``provider``; return how many measurements were dropped before."""
        with self._lock:
            dropped = 0
            for meter, arguments in self._meters:
                meter.bind(provider.get_meter(**arguments))
                dropped += meter.dropped
            self._meters = []
            self._real = provider
            return dropped


class _PendingLogger:
    def __init__(self, provider: PendingLoggerProvider, name: str) -> None:
        self._provider = provider
        self._name = name

    def emit(self, record: Any) -> None:
        self._provider._emit(self._name, record)


class PendingLoggerProvider:
    """Stands in for the logger provider of the logging handler until `resolve` gives it the real one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[str, Any]] = []
        self._real: Any = None
        self._closed = False
        self.dropped = 0

    def get_logger(self, name: str, *args: Any, **kwargs: Any) -> _PendingLogger:
        return _PendingLogger(self, name)

    def _emit(self, name: str, record: Any) -> None:
        with self._lock:
            real = self._real
            if real is None:
                if self._closed or len(self._held) >= EARLY_RECORDS:
                    self.dropped += 1
                else:
                    self._held.append((name, record))
                return
        real.get_logger(name).emit(record)

    def resolve(self, provider: Any) -> None:
        """Emit what was held into ``provider`` (records keep their time and trace context), forward from now on."""
        with self._lock:
            held, self._held = self._held, []
            for name, record in held:
                provider.get_logger(name).emit(record)
            self._real = provider

    def close(self) -> int:
        """The pipeline will not complete: forget what is held; return how many records were lost in all."""
        with self._lock:
            self._closed = True
            self.dropped += len(self._held)
            self._held = []
            return self.dropped
