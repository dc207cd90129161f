"""`configure()` and `shutdown()`: the only module that builds OpenTelemetry SDK objects.

One pipeline per process: tracer, meter and logger providers sharing one resource, OTLP exporters (gRPC by default,
``http/protobuf`` selectable), GPU telemetry, and a stdlib logging handler that exports records with the active trace
and span ids. A second `configure()` shuts the previous pipeline down before building the new one, so exporters never
stack.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import platform
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_vision import _config, _early, _errors, _limits, _logging, _runtime, _threads
from otel_vision._early import PendingLoggerProvider, PendingMeter, PendingMeterProvider, SpanGate
from otel_vision._errors import our_logger, report_internal_error
from otel_vision._finished import kept_by_forked_children
from otel_vision._light import LightSpans, SpanProcessors
from otel_vision._metrics import Instruments
from otel_vision._version import __version__

if TYPE_CHECKING:
    # Loaded by the setup thread, not by `configure()` itself (about 0.1-0.2 s of imports): see otel_vision._early.
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from otel_vision import _export
    from otel_vision.gpu import CudaBackend, GpuTelemetry, NvmlBackend

    # What `_build_rest` makes: the processors behind the span gate, the export path, the meter and logger
    # providers, GPU telemetry and the instruments.
    _Built = tuple[list[SpanProcessor], _export.ExportPipeline, MeterProvider, LoggerProvider, GpuTelemetry | None, Any]

logger = our_logger("otel_vision")


@dataclass
class Handle:
    """What `configure()` built: flush it, shut it down, or read its providers.

    ```python
    handle = otel_vision.configure(service_name="yolo-edge")
    ...
    handle.force_flush()
    ```

    `configure()` returns once spans can be recorded; the rest (metrics and logs SDKs, exporters, GPU telemetry) is
    built on a background thread right after. Reading ``meter_provider``, ``logger_provider`` or ``gpu``, flushing
    and shutting down wait for it (bounded): see `otel_vision._early`.
    """

    settings: _config.Settings
    tracer_provider: TracerProvider | None = None
    standalone: bool = False
    _meter_provider: MeterProvider | None = None
    _logger_provider: LoggerProvider | None = None
    _gpu: GpuTelemetry | None = None
    _log_handlers: list[logging.Handler] = field(default_factory=list)
    _servers: list[Any] = field(default_factory=list)
    _closed: bool = False
    _exports: _export.ExportPipeline | None = None
    _rebuild: Any = None
    _ready: threading.Event = field(default_factory=threading.Event)
    """Set once the whole pipeline exists (or its build failed, or it never will)."""
    _state: threading.Lock = field(default_factory=threading.Lock)
    """Orders the setup thread's hand-over against `shutdown()`."""
    _gate: SpanGate | None = None
    _span_ends: SpanProcessors | None = None
    """The tracer provider's processors: `force_flush` and `shutdown` hand them the spans ended so far first."""
    _early_meter: PendingMeter | None = None
    _early_logs: PendingLoggerProvider | None = None
    _setup_thread: threading.Thread | None = None
    _handed_over: bool = False
    """Set (with ``_state`` held) once the setup thread has published the whole pipeline."""
    _shutting_down_on: int | None = None
    """The thread running `shutdown` now."""
    _terminate_after: bool = False
    """A SIGTERM came while `shutdown` ran on the thread it interrupted: the process ends once that is done."""
    _forked_away: bool = False
    """This is the parent's pipeline, in a forked child (`_abandon`): it exports nothing here."""
    _successor: Handle | None = None
    """In a forked child, the pipeline built for it in place of this one (`_after_fork_in_child`): this handle's
    flush, shutdown and delivery figures are that pipeline's, so code that kept the parent's handle still works."""

    @property
    def enabled(self) -> bool:
        """``False`` when ``OTEL_SDK_DISABLED`` turned everything off."""
        return self.tracer_provider is not None

    @property
    def meter_provider(self) -> MeterProvider | None:
        self.wait_ready()
        return self._meter_provider

    @property
    def logger_provider(self) -> LoggerProvider | None:
        self.wait_ready()
        return self._logger_provider

    @property
    def gpu(self) -> GpuTelemetry | None:
        self.wait_ready()
        return self._gpu

    def wait_ready(self, timeout: float = _limits.SETUP_WAIT_S) -> bool:
        """Wait (at most ``timeout`` seconds) until the background part of `configure()` has finished; ``True`` when
        it has. Only needed before reading providers of the pipeline right after `configure()`."""
        if self._forked_away:
            return self._successor.wait_ready(timeout) if self._successor is not None else True
        if not self.enabled:
            return True
        return self._ready.wait(max(0.0, timeout))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything recorded so far, waiting at most ``timeout_millis``.

        Returns ``True`` only when every span, metric point and log record recorded since the last completed flush
        was delivered; ``False`` when the time ran out or anything was dropped or rejected. Never waits longer than
        asked, whatever state the collector is in.
        """
        if self._forked_away:
            return self._successor.force_flush(timeout_millis) if self._successor is not None else False
        deadline = time.monotonic() + max(0, timeout_millis) / 1000.0
        if not self.enabled:
            return True
        if sys.is_finalizing():
            return False  # see `shutdown`
        if not self._ready.wait(max(0.0, deadline - time.monotonic())) or self._exports is None:
            return False
        exports = self._exports
        if self._span_ends is not None:
            # Before the duration metrics are drained: they come from these spans.
            self._span_ends.hand_over(max(0.0, deadline - time.monotonic()))
        if exports.span_metrics is not None:
            # On another thread, like the providers' flushes below (see `shutdown`), and before them: the duration
            # metrics come from the spans handed over just now.
            _run_bounded([(exports.span_metrics.drain, ())], deadline)
        metric_exports = [(e, e.exports_ok, e.exports_failed) for e in exports.metric_exporters]
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        providers = self._providers()
        calls: list[tuple[Any, tuple[Any, ...]]] = [(p.force_flush, (remaining,)) for p in providers]
        # Each provider honours the timeout itself; the grace covers their last hand-off, not the network.
        results = _run_bounded(calls, deadline + _GRACE_S)
        ok = all(r is not False for r in results) and len(results) == len(providers)
        for exporter, ok_before, failed_before in metric_exports:
            if exporter.exports_failed != failed_before or exporter.exports_ok == ok_before:
                ok = False
        return ok

    def shutdown(self, timeout: float = 10.0) -> None:
        """Flush and stop the pipeline; returns within ``timeout`` seconds (plus a few milliseconds) even when the
        collector is down or never answers.

        What has not been delivered by then is dropped, counted, and named in one warning line.
        """
        if self._forked_away:
            if self._successor is not None:
                self._successor.shutdown(timeout)
            return
        if sys.is_finalizing():
            # Interpreter teardown, after the exit flush (a capture_telemetry() block never exited, whose generator
            # is collected now; a __del__): no thread can start or finish any more, and waiting for one would hang
            # the process at exit. What was not delivered stays so.
            self._closed = True
            return
        if self._closed:
            # Already shutting down (a SIGTERM arriving during the exit flush): let that flush finish, bounded.
            if self._exports is not None:
                self._exports.join(time.monotonic() + max(0.0, timeout))
            return
        deadline = time.monotonic() + max(0.0, timeout)
        if self.enabled and not self._ready.wait(max(0.0, timeout)) and self._give_up("shut down first"):
            return
        self._closed = True
        self._shutting_down_on = threading.get_ident()
        try:
            # On a thread of its own, waited for (bounded): a signal handler calling this may have interrupted its
            # thread inside a lock that shutting down takes (a drain, the SDK's metric storage), which that thread
            # cannot release until the handler returns.
            worker = threading.Thread(
                target=self._shut_down_reporting, args=(deadline, timeout), name="otel-vision-shutdown", daemon=True
            )
            _threads.start(worker)
            worker.join(max(0.0, deadline - time.monotonic()) + 2 * _GRACE_S)
        finally:
            self._shutting_down_on = None
            if self._terminate_after:
                _terminate()

    def _shut_down_reporting(self, deadline: float, timeout: float) -> None:
        try:
            self._shut_down(deadline, timeout)
        except Exception:
            report_internal_error("shutdown of the telemetry pipeline")

    def _shut_down(self, deadline: float, timeout: float) -> None:
        if self._span_ends is not None:
            self._span_ends.hand_over(max(0.0, deadline - time.monotonic()))
        if self._exports is not None and self._exports.span_metrics is not None:
            # Every span ended so far becomes a metric point before the meter provider takes its last collection
            # (they shut down in parallel below).
            self._exports.span_metrics.drain()
        root = logging.getLogger()
        for handler in self._log_handlers:
            root.removeHandler(handler)
        if self._gpu is not None:
            self._gpu.stop()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if self._exports is not None:
            self._exports.set_deadline(deadline)
        providers = self._providers()
        calls: list[tuple[Any, tuple[Any, ...]]] = [(p.shutdown, ()) for p in providers]
        if self._meter_provider is not None:
            calls[providers.index(self._meter_provider)] = (
                self._meter_provider.shutdown,
                (max(0.0, timeout) * 1000,),
            )
        _run_bounded(calls, deadline + _GRACE_S)
        if self._exports is not None:
            from otel_vision._export import export_log

            self._exports.stop_now()
            lost = self._exports.accounting.summary()
            if lost:
                export_log.warning("otel_vision: shut down; not delivered: %s", lost)
        self._release_runtime()

    def _give_up(self, why: str) -> bool:
        """The background build will not hand over (`shutdown()` ran out of time waiting, or the build failed): drop
        what was held, counted in one warning line; a build that ends later stops what it made. ``False`` if it
        handed over meanwhile."""
        with self._state:
            if self._handed_over:
                return False
            self._closed = True
        root = logging.getLogger()
        for handler in self._log_handlers:
            root.removeHandler(handler)
        spans = self._span_ends.discard() if self._span_ends is not None else 0
        spans += self._gate.close() if self._gate is not None else 0
        logs = measurements = 0
        if self._early_logs is not None:
            logs = self._early_logs.close()
        if self._early_meter is not None:
            measurements = self._early_meter.close()
        _say_early_losses(spans, logs, measurements, f"were not delivered ({why})")
        self._release_runtime()
        return True

    def _release_runtime(self) -> None:
        global _active
        with _lock, self._state:  # after the setup thread's hand-over, never before it
            if _active is self and not self.standalone:
                _active = None
                _runtime.install(_runtime.disabled())

    def delivery(self) -> dict[str, _export.SignalStats]:
        """What this pipeline delivered and lost so far, per signal (``traces``, ``metrics``, ``logs``)."""
        if self._forked_away:
            return self._successor.delivery() if self._successor is not None else {}
        self.wait_ready()
        return self._exports.accounting.snapshot() if self._exports is not None else {}

    def _abandon(self) -> None:
        """In a forked child: let go of the parent's pipeline without exporting anything of the parent's."""
        self._state = threading.Lock()  # another thread of the parent may have held it at the fork
        with self._state:
            self._closed = True
            self._forked_away = True
        root = logging.getLogger()
        for handler in self._log_handlers:
            root.removeHandler(handler)

    def _providers(self) -> list[Any]:
        return [p for p in (self.tracer_provider, self._meter_provider, self._logger_provider) if p is not None]


def _run_bounded(calls: list[tuple[Any, tuple[Any, ...]]], deadline: float) -> list[Any]:
    """Run ``calls`` in parallel daemon threads; return the results of those that finished by ``deadline``."""
    results: list[Any] = [_UNFINISHED] * len(calls)

    def run(index: int, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            results[index] = fn(*args)
        except Exception:  # flushing and shutting down never raise into the application
            results[index] = False
            logger.debug("otel_vision: provider flush or shutdown failed", exc_info=True)

    threads = [
        threading.Thread(target=run, args=(i, fn, args), name="otel-vision-flush", daemon=True)
        for i, (fn, args) in enumerate(calls)
    ]
    for thread in threads:
        _threads.start(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [r for r in results if r is not _UNFINISHED]


_UNFINISHED: Any = object()
_GRACE_S = 0.2


class _GlobalTracerProvider(trace.TracerProvider):
    """The process-global tracer provider: forwards to the current pipeline, so a re-`configure()` reaches tracers
    that other libraries fetched earlier (OpenTelemetry lets the global be set only once)."""

    def __init__(self, target: TracerProvider) -> None:
        self.target = target

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _GlobalTracer(self, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


class _GlobalTracer(trace.Tracer):
    def __init__(self, owner: _GlobalTracerProvider, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._args = args
        self._kwargs = kwargs
        self._cached: tuple[TracerProvider | None, trace.Tracer | None] = (None, None)

    def _real(self) -> trace.Tracer:
        target = self._owner.target
        provider, tracer = self._cached
        if provider is not target or tracer is None:
            tracer = target.get_tracer(*self._args, **self._kwargs)
            self._cached = (target, tracer)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._real().start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]  # same contract, forwarded
        with self._real().start_as_current_span(*args, **kwargs) as span:
            yield span


_lock = threading.RLock()
_lock_held_for_fork = False
"""`_before_fork` took `_lock`; the parent releases it after the fork (the child makes a new one)."""
_forked_from_main_thread = True
"""Set by `_before_fork`: whether the fork under way comes from the main thread."""
_active: Handle | None = None
_global_tracer_provider: _GlobalTracerProvider | None = None
_globals_set = False
_atexit_registered = False


def _resource(settings: _config.Settings) -> Resource:
    # Our defaults go under everything Resource.create() merges (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME), and
    # the explicit arguments on top: argument > environment > default.
    defaults: dict[str, Any] = {
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": sys.platform,
        "process.pid": os.getpid(),
        "process.executable.name": os.path.basename(sys.executable),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
    }
    explicit: dict[str, Any] = dict(settings.resource_attributes)
    if settings.service_name is not None:
        explicit["service.name"] = settings.service_name
    created = Resource.create(explicit)
    if _INSTANCE_ID not in explicit and _INSTANCE_ID not in OTELResourceDetector().detect().attributes:
        # Unique per process, also in a forked worker (the SDK's own default id is shared with the parent).
        created = created.merge(Resource({_INSTANCE_ID: _instance_id()}))
    return Resource(defaults).merge(created)


_INSTANCE_ID = "service.instance.id"
_instance: tuple[int, str] | None = None


def _instance_id() -> str:
    global _instance
    if _instance is None or _instance[0] != os.getpid():
        _instance = (os.getpid(), str(uuid.uuid4()))
    return _instance[1]


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


def _otlp_kwargs(settings: _config.Settings, signal: _config.Signal) -> dict[str, Any]:
    # Endpoint and timeout are validated by _config (an invalid variable falls back to its default) and passed
    # explicitly, so the exporter never parses the raw variables itself.
    endpoint = settings.endpoint_for(signal)
    if settings.protocol == "grpc":
        # gRPC has no URL user-info: a target "user:secret@host:port" never resolves (and would be printed).
        endpoint = _without_userinfo(endpoint)
    else:
        # requests imports netrc within each request (get_netrc_auth): imported here, on the setup thread, so that
        # our export threads import nothing when they send (see `_before_fork`).
        import netrc  # noqa: F401
    kwargs: dict[str, Any] = {"endpoint": endpoint, "timeout": settings.timeout_for(signal)}
    if settings.headers is not None:
        kwargs["headers"] = dict(settings.headers)
    if settings.protocol == "grpc" and endpoint.startswith("http://"):
        kwargs["insecure"] = True
    return kwargs


def _span_exporter(settings: _config.Settings) -> SpanExporter | None:
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if settings.traces_exporter == "waterfall":
        from otel_vision._console import WaterfallSpanExporter

        return WaterfallSpanExporter()
    if settings.protocol == "grpc":
        from otel_vision._otlp_wire import grpc_span_exporter_class

        return grpc_span_exporter_class()(**_otlp_kwargs(settings, "traces"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    return HttpSpans(**_otlp_kwargs(settings, "traces"))


def _prometheus_endpoint(settings: _config.Settings) -> tuple[MetricReader, Any]:
    """A Prometheus pull endpoint (``/metrics``), bound to loopback unless ``OTEL_EXPORTER_PROMETHEUS_HOST`` says
    otherwise; opt-in only (``OTEL_METRICS_EXPORTER=prometheus``)."""
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        raise ValueError(
            "OTEL_METRICS_EXPORTER=prometheus needs the Prometheus exporter: pip install 'otel-vision[prometheus]'"
        ) from None
    registry = prometheus_client.CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    server, _ = prometheus_client.start_http_server(
        settings.prometheus_port, addr=settings.prometheus_host, registry=registry
    )
    return reader, server


def _metric_exporter(settings: _config.Settings) -> MetricExporter | None:
    if settings.metrics_exporter in ("none", "prometheus"):
        return None
    if settings.metrics_exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics(**_otlp_kwargs(settings, "metrics"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics(**_otlp_kwargs(settings, "metrics"))


def _log_exporter(settings: _config.Settings) -> LogRecordExporter | None:
    if settings.logs_exporter == "none":
        return None
    if settings.logs_exporter == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

        return ConsoleLogRecordExporter()
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs

        return GrpcLogs(**_otlp_kwargs(settings, "logs"))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs

    return HttpLogs(**_otlp_kwargs(settings, "logs"))


def _destination(settings: _config.Settings, signal: _config.Signal) -> str:
    """Where a signal goes, for log lines: the endpoint without credentials, and the protocol."""
    kind = {"traces": settings.traces_exporter, "metrics": settings.metrics_exporter, "logs": settings.logs_exporter}
    if kind[signal] != "otlp":
        return f"the {kind[signal]} exporter"
    return f"{_config.redact_endpoint(settings.endpoint_for(signal))} ({settings.protocol})"


def _export_path(
    settings: _config.Settings, queue_settings: Mapping[str, _limits.QueueSettings]
) -> _export.ExportPipeline:
    from otel_vision import _export

    types: dict[str, str] = {}
    servers: dict[str, tuple[str, int]] = {}
    signal: _config.Signal
    for signal, kind in (
        ("traces", settings.traces_exporter),
        ("metrics", settings.metrics_exporter),
        ("logs", settings.logs_exporter),
    ):
        if kind == "otlp":
            transport = "grpc" if settings.protocol == "grpc" else "http"
            item = {"traces": "span", "metrics": "metric", "logs": "log"}[signal]
            types[signal] = f"otlp_{transport}_{item}_exporter"
            parsed = urlsplit(settings.endpoint_for(signal))
            if parsed.hostname:
                try:
                    port = parsed.port
                except ValueError:
                    port = None
                default_port = 4317 if settings.protocol == "grpc" else 4318
                servers[signal] = (parsed.hostname, port or default_port)
        else:
            types[signal] = f"{kind}_exporter"
    return _export.ExportPipeline(
        _export.Accounting(types, servers),
        export_timeouts={signal: settings.timeout_for(signal) for signal in ("traces", "metrics", "logs")},
        queue_settings=queue_settings,
    )


def build(
    settings: _config.Settings,
    *,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
    log_processors: Sequence[Any] = (),
    cuda: CudaBackend | None = None,
    nvml: NvmlBackend | None = None,
    standalone: bool = False,
    defer_span_ends: bool = False,
) -> Handle:
    """Build a pipeline from `Settings` plus explicit processors and readers, and make it otel_vision's runtime.

    On the caller's thread only the tracer provider is built, so spans can be recorded at once; the rest is built by
    `_complete` on a background thread (see `otel_vision._early` for what is held meanwhile). ``standalone=True``
    (used by `otel_vision.testing`) builds everything before returning and leaves the active pipeline, the
    OpenTelemetry globals and the exit hook alone; the caller restores the previous runtime itself. So does a
    Prometheus pull endpoint: a port already in use must fail ``configure()`` itself.
    """
    global _active, _atexit_registered
    with _lock, kept_by_forked_children() if standalone else nullcontext():
        if _active is not None and not standalone:
            logger.info("otel_vision: configure() called again; shutting the previous pipeline down first")
            _active.shutdown(_limits.exit_timeout())  # bounded like an exit: never the network's pace
        if settings.disabled:
            logger.debug("otel_vision: OTEL_SDK_DISABLED is set; telemetry is off")
            return Handle(settings)

        # Read now, so that a warning about an invalid variable comes before configure() returns (and before our
        # log handler is attached: it is not exported), once.
        queue_settings = {
            "OTEL_BSP": _limits.QueueSettings.from_env("OTEL_BSP", settings.timeout_for("traces")),
            "OTEL_BLRP": _limits.QueueSettings.from_env("OTEL_BLRP", settings.timeout_for("logs")),
        }
        _limits.exit_timeout()
        limits = _limits.span_limits()
        if limits.max_attribute_length is not None:
            _errors.DESCRIPTION_LIMIT = limits.max_attribute_length
        ready = threading.Event()
        gate = SpanGate(ready, _limits.SETUP_WAIT_S, span_processors)
        sampler = _sampler(settings)
        follows_sampled_parent = isinstance(sampler, ParentBased) or sampler is ALWAYS_ON
        processors = SpanProcessors(
            LightSpans.usable(follows_sampled_parent, span_processors),
            # Ended spans reach our processors from a background thread (`SpanProcessors`); the application's own
            # get them on the spot, unless the caller reads them only after a flush (`otel_vision.testing`).
            deferred=defer_span_ends or not span_processors,
        )
        with _hidden_invalid_variables(settings):
            resource = _resource(settings)
            tracer_provider = TracerProvider(
                resource=resource,
                sampler=sampler,
                shutdown_on_exit=False,
                active_span_processor=processors,
                span_limits=limits,
            )
        processors._add_own(gate)  # what tracer_provider.add_span_processor does, for our own processor
        tracer = tracer_provider.get_tracer(_runtime.SCOPE, __version__)
        scope = InstrumentationScope(_runtime.SCOPE, __version__)
        roots_sampled = settings.sample_rate is None and settings.sampler in ("always_on", "parentbased_always_on")
        light = LightSpans(
            processors,
            tracer,  # type: ignore[arg-type]  # an SDK tracer
            scope,
            sampler,
            limits,
            tracer_provider.id_generator,
            roots_sampled=roots_sampled,
        )
        handle = Handle(
            settings, tracer_provider, standalone=standalone, _ready=ready, _gate=gate, _span_ends=processors
        )
        _register_fork_hooks()
        handle._early_meter = PendingMeter(_runtime.SCOPE)
        if settings.logs:
            handle._early_logs = PendingLoggerProvider()
            _attach_logging(handle, handle._early_logs, settings.log_level)
        handle._rebuild = functools.partial(
            build, settings, span_processors=span_processors, log_processors=log_processors, cuda=cuda, nvml=nvml
        )
        nvtx = None
        if settings.nvtx:
            from otel_vision.gpu._nvtx import NvtxRanges

            nvtx = NvtxRanges()
        _runtime.install(
            _runtime.Runtime(
                tracer=tracer,
                instruments=Instruments(handle._early_meter),
                nvtx=nvtx,
                span_metrics=True,
                light=light,
            )
        )
        rest = functools.partial(
            _build_rest,
            handle,
            settings,
            resource,
            queue_settings,
            span_processors,
            metric_readers,
            log_processors,
            cuda,
            nvml,
        )
        complete = functools.partial(_complete, handle, rest)
        if standalone:
            complete(raise_errors=True)
            return handle
        _set_tracer_global(tracer_provider)
        _set_meter_global()
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            # Interpreter shutdown refuses new thread-pool work before atexit handlers run, and the SDK's imports
            # use a pool (resource detection): a setup thread still loading must finish first (bounded).
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_finish_setup_at_exit)
            _atexit_registered = True
        _flush_on_sigterm()
        _active = handle
        if settings.metrics_exporter == "prometheus":
            try:
                with _threads.signals_blocked():  # the threads it starts (the SDK's metric reader) inherit the mask
                    complete(raise_errors=True)
            except BaseException:
                handle._give_up("configure() failed")
                handle._ready.set()
                raise
        if not handle._ready.is_set():
            handle._setup_thread = _threads.start(
                threading.Thread(target=complete, name="otel-vision-setup", daemon=True)
            )
        return handle


_environ_lock = threading.Lock()


@contextmanager
def _hidden_invalid_variables(settings: _config.Settings) -> Iterator[None]:
    """`_config.hidden_invalid_variables`, one thread at a time (the caller's and the setup thread's builds)."""
    with _environ_lock, _config.hidden_invalid_variables(settings):
        yield


def _complete(handle: Handle, build_rest: Callable[[], _Built], *, raise_errors: bool = False) -> None:
    """The rest of the pipeline behind ``handle``'s span gate: exporters, GPU telemetry, the span processors, the
    meter and logger providers; then hand over what was held and make the full runtime active."""
    try:
        built = build_rest()
    except Exception:
        if raise_errors:
            raise
        report_internal_error("background build of the telemetry pipeline")
        handle._give_up("its build failed")
        handle._ready.set()
        return
    targets, exports, meter_provider, logger_provider, gpu, instruments = built
    with handle._state:
        if not handle._closed:
            try:
                _hand_over(handle, targets, exports, meter_provider, logger_provider, gpu, instruments)
            except Exception:  # never leave flush, shutdown and a waiting burst without an answer
                report_internal_error("hand-over of the telemetry pipeline")
                handle._handed_over = True
    if not handle._handed_over:
        # shutdown() gave up waiting for this, or the process forked meanwhile: stop what was built, quietly.
        exports.set_deadline(time.monotonic())
        exports.stop_now()
        calls: list[tuple[Any, tuple[Any, ...]]] = [(meter_provider.shutdown, (0,)), (logger_provider.shutdown, ())]
        calls += [(target.shutdown, ()) for target in targets]
        _run_bounded(calls, time.monotonic() + _GRACE_S)
        if gpu is not None:
            gpu.stop()
    handle._ready.set()


def _hand_over(
    handle: Handle,
    targets: list[SpanProcessor],
    exports: _export.ExportPipeline,
    meter_provider: MeterProvider,
    logger_provider: LoggerProvider,
    gpu: GpuTelemetry | None,
    instruments: Instruments,
) -> None:
    """Called with ``handle._state`` held: publish the pipeline, replay what was held, activate the full runtime."""
    from otel_vision import _export

    handle._exports = exports
    handle._meter_provider = meter_provider
    handle._logger_provider = logger_provider
    handle._gpu = gpu
    assert handle._gate is not None and handle._early_meter is not None
    span_queues = [queue for queue in exports.queues if queue.signal == _export.TRACES]
    handle._gate.open(targets, span_queues[0].hold_extra if span_queues else None)
    handle._early_meter.bind(meter_provider.get_meter(_runtime.SCOPE, __version__))
    if handle._early_logs is not None:
        handle._early_logs.resolve(logger_provider)
        for log_handler in handle._log_handlers:
            if isinstance(log_handler, _logging.ExportingHandler):
                log_handler.use(logger_provider)
    # Only the handle's own lock here: configure() may hold the module lock while it waits for this thread.
    early = _runtime.current()
    if handle.standalone or _active is handle:
        _runtime.install(
            _runtime.Runtime(
                tracer=early.tracer,
                instruments=instruments,
                gpu=gpu.probe if gpu is not None else None,
                nvtx=early.nvtx,
                span_metrics=True,
                light=early.light,
            )
        )
    global_dropped = _set_other_globals(meter_provider, logger_provider) if not handle.standalone else 0
    handle._handed_over = True
    early_logs = handle._early_logs.dropped if handle._early_logs is not None else 0
    _count_early_losses(
        exports, handle._gate.dropped, early_logs, handle._early_meter.dropped + global_dropped, "were dropped"
    )


def _count_early_losses(exports: _export.ExportPipeline, spans: int, logs: int, measurements: int, what: str) -> None:
    """Count what was lost before the pipeline was complete (it shows in `delivery()`, the otel.sdk.* counters and the
    next flush) and say so in one warning line."""
    from otel_vision import _export

    queues = {queue.signal: queue for queue in exports.queues}
    for signal, count in ((_export.TRACES, spans), (_export.LOGS, logs)):
        if count:
            queue = queues.get(signal)
            if queue is not None:
                queue.count_dropped(count, "queue_full")
            else:
                exports.accounting.dropped(signal, count, "queue_full")
    if measurements:
        exports.accounting.dropped(_export.METRICS, measurements, "queue_full")
    _say_early_losses(spans, logs, measurements, what)


def _say_early_losses(spans: int, logs: int, measurements: int, what: str) -> None:
    from otel_vision._export import export_log

    parts = [
        f"{count} {singular if count == 1 else plural}"
        for count, singular, plural in (
            (spans, "span", "spans"),
            (logs, "log record", "log records"),
            (measurements, "measurement", "measurements"),
        )
        if count
    ]
    if parts:
        export_log.warning(
            "otel_vision: %s recorded before the pipeline had finished loading %s (at most %d spans, %d log records "
            "and %d measurements per meter are held)",
            ", ".join(parts), what, _early.EARLY_SPANS, _early.EARLY_RECORDS, _early.EARLY_RECORDS,
        )  # fmt: skip


def _build_rest(
    handle: Handle,
    settings: _config.Settings,
    resource: Resource,
    queue_settings: Mapping[str, _limits.QueueSettings],
    span_processors: Sequence[SpanProcessor],
    metric_readers: Sequence[MetricReader],
    log_processors: Sequence[Any],
    cuda: CudaBackend | None,
    nvml: NvmlBackend | None,
) -> _Built:
    # First, before the heavy imports: until logging.config's functions are wrapped, a dictConfig() would remove
    # our handler (the application imports logging.config itself only after configure() in this case).
    _logging.wrap_config_functions()
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_vision._span_metrics import SpanMetricsProcessor
    from otel_vision._tail import BatchFanOut, TailSampler
    from otel_vision.gpu import GpuTelemetry

    gpu = None
    if settings.gpu:
        gpu = GpuTelemetry(
            interval=settings.gpu_sample_interval,
            history=settings.gpu_history,
            track_peak=settings.gpu_peak_memory,
            cuda=cuda,
            nvml=nvml,
        )
    exports = _export_path(settings, queue_settings)
    with _hidden_invalid_variables(settings):
        span_exporter = _built("traces", _span_exporter, settings)
        metric_exporter = _built("metrics", _metric_exporter, settings)
        log_exporter = _built("logs", _log_exporter, settings)

    processors = list(span_processors)
    if span_exporter is not None:
        processors.append(exports.span_processor(span_exporter, _destination(settings, "traces")))
    # First: metrics are taken from every finished span before anything else (GPU waiting, sampling) happens.
    span_metrics = SpanMetricsProcessor()
    exports.span_metrics = span_metrics
    targets: list[SpanProcessor] = [span_metrics]
    # After GPU enrichment and before anything leaves: batch member spans, then tail sampling (which sees them).
    tail = (
        TailSampler(processors, settings.tail_sampling_ratio, settings.tail_sampling_latency)
        if settings.tail_sampling_ratio is not None
        else None
    )
    processors = [BatchFanOut([tail] if tail is not None else processors)]
    if gpu is not None:
        gpu_processor = gpu.span_processor(processors)
        exports.deadline_aware.append(gpu_processor)
        targets.append(gpu_processor)
    else:
        targets.extend(processors)

    readers = list(metric_readers)
    if metric_exporter is not None:
        readers.append(_periodic_reader()(exports.metric_exporter(metric_exporter, _destination(settings, "metrics"))))
    if settings.metrics_exporter == "prometheus":
        reader, server = _prometheus_endpoint(settings)
        readers.append(reader)
        handle._servers.append(server)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    meter = meter_provider.get_meter(_runtime.SCOPE, __version__)
    exports.accounting.bind(meter)
    instruments = Instruments(meter)
    if tail is not None:
        tail.bind(meter)
    span_metrics.instruments = instruments
    for processor in exports.deadline_aware:
        processor.bind(meter)
    if gpu is not None:
        gpu.start(meter)

    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for log_processor in log_processors:
        logger_provider.add_log_record_processor(log_processor)
    if log_exporter is not None:
        logger_provider.add_log_record_processor(exports.log_processor(log_exporter, _destination(settings, "logs")))
    return targets, exports, meter_provider, logger_provider, gpu, instruments


@functools.cache
def _periodic_reader() -> type[PeriodicExportingMetricReader]:
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    class PeriodicReader(PeriodicExportingMetricReader):
        """The SDK's periodic reader, except that a forked child does not restart its timer thread: all it could
        collect there is the parent's copy, which `BoundedMetricExporter` sends nowhere from another process (the
        child builds a reader of its own), and a thread started by the SDK's after-fork hook would take signals
        meant for the application (`otel_vision._threads`)."""

        def _at_fork_reinit(self) -> None:
            pass

    return PeriodicReader


def _built(signal: str, make: Any, settings: _config.Settings) -> Any:
    """An exporter, or ``None`` with one warning if it cannot be built (that signal is then not exported)."""
    try:
        return make(settings)
    except Exception as exc:
        logger.warning("otel_vision: the %s exporter could not be built (%s: %s); %s are not exported", signal,
                       type(exc).__name__, exc, signal)  # fmt: skip
        return None


def _sampler(settings: _config.Settings) -> Sampler:
    """The sampler `Settings` describe (validated there: an invalid ``OTEL_TRACES_SAMPLER*`` leaves the default)."""
    if settings.sample_rate is not None:
        return ParentBased(TraceIdRatioBased(settings.sample_rate))
    ratio = TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.sampler]


def _attach_logging(handle: Handle, logger_provider: Any, level: int) -> None:
    # otel_vision._logging keeps Python's last-resort printing of warnings and lets a later logging.basicConfig()
    # work as if we were not there.
    handle._log_handlers.extend(_logging.attach(_logging.exporting_handler(logger_provider, level)))


def _set_tracer_global(tracer_provider: TracerProvider) -> None:
    global _global_tracer_provider, _globals_set
    if _global_tracer_provider is not None:
        _global_tracer_provider.target = tracer_provider
        return
    if _globals_set:
        return
    _globals_set = True
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        logger.warning("otel_vision: a global TracerProvider is already set; otel_vision keeps using its own")
    else:
        _global_tracer_provider = _GlobalTracerProvider(tracer_provider)
        trace.set_tracer_provider(_global_tracer_provider)


_other_globals_set = False
_other_globals_lock = threading.Lock()
_global_meter_provider: PendingMeterProvider | None = None
_meter_global_tried = False


def _set_meter_global() -> None:
    """The global meter provider is set once, at the first `configure()`, to one that holds what is recorded until
    the first pipeline is complete (see `PendingMeterProvider`); it then forwards to that pipeline's provider."""
    global _global_meter_provider, _meter_global_tried
    with _other_globals_lock:
        if _meter_global_tried:
            return
        _meter_global_tried = True
        from opentelemetry import metrics

        pending = PendingMeterProvider()
        metrics.set_meter_provider(pending)  # the API keeps one the application set itself, and says so
        _global_meter_provider = pending if metrics.get_meter_provider() is pending else None


def _set_other_globals(meter_provider: MeterProvider, logger_provider: LoggerProvider) -> int:
    """Set the global logger provider and bind the global meter provider; return the measurements it dropped."""
    # Meter and logger providers can be set once per process; after a re-configure(), instruments that other
    # libraries created from the global meter keep the first pipeline (documented in docs/configuration.md). The API
    # itself warns and keeps the existing one if the application set its own.
    global _other_globals_set
    with _other_globals_lock:
        if _other_globals_set:
            return 0
        _other_globals_set = True
        pending = _global_meter_provider
    from opentelemetry import _logs

    _logs.set_logger_provider(logger_provider)
    return pending.resolve(meter_provider) if pending is not None else 0


_exit_started: float | None = None


def _finish_setup_at_exit() -> None:
    global _exit_started
    _exit_started = time.monotonic()
    handle = _active
    if handle is not None and handle._setup_thread is not None:
        handle._ready.wait(_limits.exit_timeout())


def _shutdown_at_exit() -> None:
    handle = _active
    if handle is not None:
        # One exit timeout in all, counted from when interpreter shutdown began (it may have waited for the setup).
        spent = time.monotonic() - _exit_started if _exit_started is not None else 0.0
        handle.shutdown(max(0.0, _limits.exit_timeout() - spent))


def _after_fork_in_child() -> None:
    """A forked child gets a pipeline of its own: its own ``process.pid`` and ``service.instance.id``, export threads,
    GPU sampler and span processor. The parent's copy is let go without exporting anything (the parent does)."""
    global _lock, _lock_held_for_fork
    _lock, _lock_held_for_fork = threading.RLock(), False  # held by this thread only (`_before_fork`), or timed out
    try:
        _rebuild_in_child()
    finally:
        _fork_mask.restore()  # after the rebuild: the threads it started keep the mask `_before_fork` set


def _rebuild_in_child() -> None:
    global _active
    handle = _active
    if handle is None or handle.standalone or handle._rebuild is None:
        return
    try:
        with _lock:
            handle._abandon()
            _active = None
            _runtime.install(_runtime.disabled())
            child = handle._rebuild()
            handle._successor = child
    except Exception:
        report_internal_error("telemetry pipeline of a forked child")
        return
    if not _forked_from_main_thread:
        _end_with_the_applications_threads(child)
    if "multiprocessing.util" in sys.modules:
        # A multiprocessing worker leaves with os._exit(), skipping atexit; its finalizers still run. Registered
        # through an after-fork hook because multiprocessing clears the finalizers of a new process first.
        import multiprocessing.util

        multiprocessing.util.register_after_fork(child, _finalize_with_process)


def _end_with_the_applications_threads(handle: Handle) -> None:
    """A child forked from a thread other than the main one has no main thread: it ends when its last thread does
    (status 0, no exit hooks run), and our threads (the export threads, gRPC's) would keep it alive for ever once the
    application's are done. A watcher waits for the application's threads (the forking one, then any it started),
    flushes as an exit would, and ends the process as the end of its last thread would have."""
    forking = threading.current_thread()
    dummy = getattr(threading, "_DummyThread", ())

    def applications() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t is not watcher and not isinstance(t, dummy) and not _ours(t)]

    def watch() -> None:
        forking.join()
        while waiting := applications():
            waiting[0].join()
        handle.shutdown(_limits.exit_timeout())
        os._exit(0)

    watcher = threading.Thread(target=watch, name="otel-vision-last-thread", daemon=True)
    _threads.start(watcher)


def _finalize_with_process(handle: Handle) -> None:
    """In a new multiprocessing process: flush when it ends, also when its pool terminates it with SIGTERM."""
    import multiprocessing.util

    multiprocessing.util.Finalize(handle, handle.shutdown, args=(_limits.exit_timeout(),), exitpriority=100)
    _flush_on_sigterm()


def _flush_on_sigterm() -> None:
    """Where SIGTERM still has its default action (the process just dies, skipping atexit), flush first, at most
    the exit timeout, then let the default action happen: a pod stopped by Kubernetes, a pool terminating its
    workers, uvicorn re-raising the signal after its graceful shutdown. A handler set by the application wins."""
    import signal

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_then_terminate)


def _flush_then_terminate(signum: int, frame: object) -> None:
    handle = _active
    if handle is not None and handle._shutting_down_on == threading.get_ident():
        # It interrupted our own shutdown (a pool worker's exit flush, terminated meanwhile): let that finish,
        # bounded as it is, and end the process then.
        handle._terminate_after = True
        return
    if handle is not None:
        # On another thread: the signal may have interrupted this thread inside one of our locks.
        timeout = _limits.exit_timeout()
        flusher = threading.Thread(target=handle.shutdown, args=(timeout,), daemon=True)
        _threads.start(flusher)
        flusher.join(timeout + 0.5)
    _terminate()


def _terminate() -> None:
    """What SIGTERM does by default: end the process, by that signal."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _before_fork() -> None:
    """A fork while one of our threads imports a module leaves that module's import lock held, in the child, by a
    thread the child does not have: any import of that module there (ours or the application's) waits forever. So a
    fork lets the setup finish first (it imports the exporters), then waits for any other import of ours under way
    (bounded both)."""
    global _forked_from_main_thread
    _forked_from_main_thread = threading.current_thread() is threading.main_thread()
    handle = _active
    thread = handle._setup_thread if handle is not None else None
    if thread is not None and thread is not threading.current_thread():
        handle._ready.wait(_limits.SETUP_WAIT_S)  # type: ignore[union-attr]
    deadline = time.monotonic() + _limits.FORK_WAIT_S
    while _importing_on_our_threads() and time.monotonic() < deadline:
        time.sleep(0.001)
    # A configure() or shutdown() under way on another thread holds `_lock`: the child would inherit it held (and a
    # pipeline half made or half stopped) and wait for it forever when it builds its own. Let it finish (bounded).
    global _lock_held_for_fork
    _lock_held_for_fork = _lock.acquire(timeout=_limits.SETUP_WAIT_S)
    _fork_mask.block()


def _after_fork_in_parent() -> None:
    global _lock_held_for_fork
    _fork_mask.restore()
    if _lock_held_for_fork:
        _lock_held_for_fork = False
        _lock.release()


def _ours(thread: threading.Thread) -> bool:
    """A thread of our pipeline: ours, or one the OpenTelemetry SDK started for it (the periodic metric reader's)."""
    return thread.name.startswith(("otel-vision", "Otel"))


def _importing_on_our_threads() -> bool:
    """Whether one of our threads, other than this one, is inside an import (``importlib._bootstrap`` is on its
    stack: it holds a module's import lock, or waits for one)."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if not _ours(thread) or thread is threading.current_thread():
            continue
        frame = frames.get(thread.ident) if thread.ident is not None else None
        while frame is not None:
            if frame.f_code.co_filename == "<frozen importlib._bootstrap>":
                return True
            frame = frame.f_back
    return False


_fork_hooks_registered = False
_fork_mask = _threads.ForkMask()


def _register_fork_hooks() -> None:
    """Registered by the first `configure()`, after the resource is created: resource detection imports
    ``concurrent.futures.thread``, whose own after-fork hook must run before ours (it releases a lock that our
    rebuild in the child needs; after-fork hooks run in registration order)."""
    global _fork_hooks_registered
    if not _fork_hooks_registered and hasattr(os, "register_at_fork"):
        _fork_hooks_registered = True
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
        )


def configure(
    service_name: str | None = None,
    *,
    resource_attributes: Mapping[str, str | int | float | bool] | None = None,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    exporter: str | None = None,
    sample_rate: float | None = None,
    gpu: bool | None = None,
    gpu_sample_interval: float | None = None,
    gpu_history: float | None = None,
    gpu_peak_memory: bool | None = None,
    logs: bool | None = None,
    log_level: int | str | None = None,
    nvtx: bool | None = None,
    tail_sampling_ratio: float | None = None,
    tail_sampling_latency: float | Mapping[str, float] | None = None,
    additional_span_processors: Sequence[SpanProcessor] = (),
    additional_metric_readers: Sequence[MetricReader] = (),
) -> Handle:
    """Set up traces, metrics and logs for this process, once; standard ``OTEL_*`` variables are honoured.

    ```python
    import otel_vision

    otel_vision.configure(service_name="yolo-edge")
    ```

    Every argument left ``None`` falls back to its environment variable, then to its default (see
    ``docs/configuration.md``). An argument of the wrong type raises ``TypeError``, one with a wrong value
    ``ValueError``, both naming the argument; an invalid variable is logged as one warning naming it and its default
    is used (as the OpenTelemetry specification asks). Exporting is
    OTLP over gRPC unless ``protocol="http/protobuf"`` or ``OTEL_EXPORTER_OTLP_PROTOCOL`` says otherwise; the
    endpoint, headers and timeout come from the standard variables unless given here. With ``OTEL_SDK_DISABLED=true``
    nothing is built and the returned handle does nothing. The pipeline is flushed and stopped at interpreter exit.

    Args:
        service_name: ``service.name`` (else ``OTEL_SERVICE_NAME``, else the SDK default).
        resource_attributes: more resource attributes; they win over ``OTEL_RESOURCE_ATTRIBUTES``.
        protocol: ``grpc`` or ``http/protobuf``.
        endpoint: collector base URL, e.g. ``http://127.0.0.1:4317``; the per-signal path is added for HTTP.
        headers: exporter headers, e.g. an auth token.
        exporter: ``otlp``, ``console`` or ``none`` for all signals (else ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER``);
            ``waterfall`` prints each finished trace as a tree on stderr and exports no metrics or logs.
        sample_rate: head-sampling ratio honouring the parent's decision (else ``OTEL_TRACES_SAMPLER``).
        gpu: GPU telemetry on or off (``OTEL_VISION_GPU``).
        gpu_sample_interval: seconds between NVML polls (``OTEL_VISION_GPU_SAMPLE_INTERVAL``, default 1).
        gpu_history: seconds of NVML history kept (``OTEL_VISION_GPU_HISTORY``, default 300).
        gpu_peak_memory: per-span ``gpu.memory.peak`` (``OTEL_VISION_GPU_PEAK_MEMORY``, default on).
        logs: export stdlib ``logging`` records (``OTEL_VISION_LOGS``, default on).
        log_level: lowest level exported (``OTEL_VISION_LOG_LEVEL``, default ``INFO``).
        nvtx: mirror every span as an NVTX range for Nsight Systems (``OTEL_VISION_NVTX``, default off).
        tail_sampling_ratio: in-process tail sampling: keep every trace with an error, every slow and every
            throttled one, and this share of the others (``OTEL_VISION_TAIL_SAMPLING_RATIO``; default off). See
            ``docs/sampling.md``.
        tail_sampling_latency: seconds above which a trace is slow, for all operations or per ``vision.operation``
            (``{"predict": 0.2, "*": 1.0}``; ``OTEL_VISION_TAIL_SAMPLING_LATENCY``). Alone, it turns tail sampling
            on with a ratio of 0.
        additional_span_processors: more span processors (they also receive the GPU-completed spans).
        additional_metric_readers: more metric readers, e.g. a Prometheus reader.

    Returns:
        The `Handle` of the new pipeline.
    """
    settings = _config.resolve(
        service_name=service_name,
        resource_attributes=resource_attributes,
        protocol=protocol,
        endpoint=endpoint,
        headers=headers,
        exporter=exporter,
        sample_rate=sample_rate,
        gpu=gpu,
        gpu_sample_interval=gpu_sample_interval,
        gpu_history=gpu_history,
        gpu_peak_memory=gpu_peak_memory,
        logs=logs,
        log_level=log_level,
        nvtx=nvtx,
        tail_sampling_ratio=tail_sampling_ratio,
        tail_sampling_latency=tail_sampling_latency,
    )
    _config.check_extensions(additional_span_processors, additional_metric_readers)
    return build(settings, span_processors=additional_span_processors, metric_readers=additional_metric_readers)


def shutdown(timeout: float = 10.0) -> None:
    """Flush and stop the pipeline `configure()` built (also done automatically at exit)."""
    handle = _active
    if handle is not None:
        handle.shutdown(timeout)


def active_handle() -> Handle | None:
    """The pipeline currently in use, if any."""
    return _active
