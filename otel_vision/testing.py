"""Test helpers for otel_vision users and for otel_vision itself: captured telemetry and a fake GPU.

Installed as a pytest plugin, so any test suite gets two fixtures:

```python
def test_preprocess_is_traced(vision_telemetry):
    preprocess(frame)
    (span,) = vision_telemetry.spans("preprocess")
    assert span.attributes["vision.stage"] == "preprocess"

def test_gpu_attributes(vision_telemetry, fake_gpu):
    with otel_vision.stage("inference"):
        fake_gpu.cuda.run(0.004)          # 4 ms of "device work"
    (span,) = vision_telemetry.spans("inference")
    assert span.attributes["gpu.time"] == pytest.approx(0.004)
```

``vision_telemetry`` routes everything otel_vision records (spans, metrics, logs) to in-memory exporters for the
duration of one test, without touching the OpenTelemetry globals. When the test also asks for ``fake_gpu``, GPU
telemetry runs against that fake device instead of NVML and torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vision import _config, _runtime, _setup
from otel_vision.gpu import DeviceInfo, DeviceReading, MemoryStats

__all__ = [
    "CapturedTelemetry",
    "FakeCuda",
    "FakeGpu",
    "FakeNvml",
    "capture_telemetry",
    "tiny_instruct_pix2pix",
    "tiny_text_to_image",
]


def tiny_instruct_pix2pix(device: str = "cpu", dtype: Any = None) -> Any:
    """A diffusers InstructPix2Pix pipeline with tiny random-weight components, built offline in a second: for tests,
    demos and examples that must run without a model download (needs torch, diffusers and transformers)."""
    from otel_vision._tiny_pipelines import tiny_instruct_pix2pix as build

    return build(device=device, dtype=dtype)


def tiny_text_to_image(device: str = "cpu", dtype: Any = None) -> Any:
    """A Stable Diffusion text-to-image pipeline with the same tiny random components."""
    from otel_vision._tiny_pipelines import tiny_text_to_image as build

    return build(device=device, dtype=dtype)


# --- a fake GPU -------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _FakeEvent:
    device: int
    time: float
    done: bool


class FakeCuda:
    """A `CudaBackend` with a virtual device clock: ``run(seconds)`` is device work, events read that clock.

    Events complete at once unless ``hold_events()`` is in effect, which lets a test check that spans wait for
    their events (and that nothing ever blocks on them).
    """

    def __init__(self, uuids: Sequence[str] = ("GPU-00000000-fake-0000-0000-000000000000",)) -> None:
        self.uuids = list(uuids)
        self.initialized = True
        self.device = 0
        self.clock = 0.0
        self._allocated = [0] * len(self.uuids)
        self._peak = [0] * len(self.uuids)
        self._reserved = [0] * len(self.uuids)
        self._hold = False
        self._events: list[_FakeEvent] = []
        self.peak_resets = 0
        self.lock = threading.Lock()

    # --- what a test does -------------------------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        """Advance the device clock by ``seconds`` of work on the current device."""
        self.clock += seconds

    def allocate(self, nbytes: int, device: int | None = None) -> None:
        """Allocate tensor memory on a device (updates current, peak and reserved)."""
        d = self.device if device is None else device
        self._allocated[d] += nbytes
        self._peak[d] = max(self._peak[d], self._allocated[d])
        self._reserved[d] = max(self._reserved[d], self._allocated[d])

    def free(self, nbytes: int, device: int | None = None) -> None:
        """Free tensor memory on a device."""
        d = self.device if device is None else device
        self._allocated[d] -= nbytes

    def hold_events(self) -> None:
        """From now on, recorded events stay incomplete until `complete_events()`."""
        self._hold = True

    def complete_events(self) -> None:
        """Complete every recorded event and stop holding new ones."""
        self._hold = False
        for event in self._events:
            event.done = True

    # --- CudaBackend --------------------------------------------------------------------------------------------
    def active_device(self) -> int | None:
        return self.device if self.initialized else None

    def record_event(self, device: int) -> object:
        event = _FakeEvent(device, self.clock, not self._hold)
        self._events.append(event)
        return event

    def event_done(self, event: object) -> bool:
        assert isinstance(event, _FakeEvent)
        return event.done

    def elapsed_seconds(self, start: object, end: object) -> float:
        assert isinstance(start, _FakeEvent) and isinstance(end, _FakeEvent)
        if not (start.done and end.done):
            raise RuntimeError("elapsed_seconds() on an incomplete event would synchronize")
        return end.time - start.time

    def release_event(self, device: int, event: object) -> None:
        pass

    def memory(self, device: int) -> MemoryStats:
        return MemoryStats(self._allocated[device], self._peak[device], self._reserved[device])

    def reset_peak(self, device: int) -> None:
        self.peak_resets += 1
        self._peak[device] = self._allocated[device]

    def device_uuid(self, device: int) -> str | None:
        return self.uuids[device]

    def initialized_devices(self) -> Sequence[int]:
        return list(range(len(self.uuids))) if self.initialized else []


class FakeNvml:
    """An `NvmlBackend` whose utilization samples and readings a test sets explicitly.

    ``energy_joules`` is the energy counter as read (``None``: a GPU without one, older than Volta); `draw` makes it
    advance with time at a given power, and ``energy_update_period`` makes it advance in steps, like a driver
    counter that updates less often than it is read. ``sm_clock_mhz`` and `throttle` set the clocks.
    """

    def __init__(self, devices: Sequence[DeviceInfo] | None = None) -> None:
        self._devices = (
            list(devices)
            if devices is not None
            else [DeviceInfo(0, "GPU-00000000-fake-0000-0000-000000000000", "Fake H100", "999.99", 80 * 2**30)]
        )
        self._samples: dict[str, list[tuple[int, float]]] = {d.uuid: [] for d in self._devices}
        self.memory_used = 2 * 2**30
        self.power_watts: float | None = 120.0
        self.energy_joules: float | None = 5000.0
        self.energy_update_period: float | None = None
        self._draw: tuple[int, float] | None = None
        self.sm_clock_mhz: float | None = 1980.0
        self.clock_event_reasons: int | None = 0
        """NVML's bitmask (``None``: the driver cannot report reasons); `throttle` sets it by short names."""
        self.temperature = 45.0
        self.unavailable: str | None = None
        self.reports_utilization = True
        """``False`` behaves like a MIG slice or a driver without utilization counters."""
        self.closed = False

    def add_sample(self, value: float, at_ns: int | None = None, uuid: str | None = None) -> None:
        """Add a driver utilization sample (0–1) stamped ``at_ns`` (epoch ns, default now)."""
        key = uuid or self._devices[0].uuid
        ts_us = (time.time_ns() if at_ns is None else at_ns) // 1000
        self._samples[key].append((ts_us, value))

    def throttle(self, *reasons: str) -> None:
        """Set the current clock event reasons by short name (``"sw_thermal"``, …); no name: not throttled."""
        from otel_vision.gpu._backends import CLOCK_EVENT_REASONS

        bits = {name: bit for bit, name in CLOCK_EVENT_REASONS.items()}
        unknown = [r for r in reasons if r not in bits]
        if unknown:
            raise ValueError(f"unknown clock event reasons {unknown}; known: {sorted(bits)}")
        mask = 0
        for reason in reasons:
            mask |= bits[reason]
        self.clock_event_reasons = mask

    def draw(self, watts: float) -> None:
        """From now on the device draws ``watts``: power reads it and the energy counter advances with time."""
        self.energy_joules = self._energy_now()
        self.power_watts = watts
        self._draw = (time.time_ns(), watts)

    def _energy_now(self) -> float | None:
        if self._draw is None or self.energy_joules is None:
            return self.energy_joules
        since, watts = self._draw
        elapsed = time.time_ns() - since
        if self.energy_update_period:
            period = int(self.energy_update_period * 1e9)
            elapsed -= elapsed % period  # the counter's value at its last update
        return self.energy_joules + watts * elapsed / 1e9

    def devices(self) -> Sequence[DeviceInfo]:
        if self.unavailable is not None:
            from otel_vision.gpu import GpuUnavailable

            raise GpuUnavailable(self.unavailable)
        return self._devices

    def read(self, device: DeviceInfo) -> DeviceReading:
        samples = self._samples[device.uuid]
        return DeviceReading(
            timestamp_ns=time.time_ns(),
            memory_used=self.memory_used,
            memory_total=device.memory_total,
            utilization=(samples[-1][1] if samples else 0.0) if self.reports_utilization else None,
            power_watts=self.power_watts,
            energy_joules=self._energy_now(),
            temperature_celsius=self.temperature,
            sm_clock_mhz=self.sm_clock_mhz,
            clock_event_reasons=self.clock_event_reasons,
        )

    def utilization_samples(self, device: DeviceInfo, since_us: int) -> list[tuple[int, float]]:
        if not self.reports_utilization:
            return []
        return [s for s in self._samples[device.uuid] if s[0] > since_us]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeGpu:
    """A fake CUDA device and its NVML view, sharing one UUID."""

    cuda: FakeCuda = field(default_factory=FakeCuda)
    nvml: FakeNvml = field(default_factory=FakeNvml)


# --- captured telemetry -----------------------------------------------------------------------------------------
@dataclass
class CapturedTelemetry:
    """Everything otel_vision exported during a capture.

    Ended spans reach the exporters from a background thread, as with the pipeline `otel_vision.configure()`
    builds: read them through `spans` / `span` (which flush first), or call `flush` before reading
    ``span_exporter`` directly.
    """

    handle: _setup.Handle
    span_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader
    log_exporter: InMemoryLogRecordExporter

    def flush(self) -> None:
        """Complete pending GPU enrichment and export everything recorded so far."""
        self.handle.force_flush()

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans in end order, optionally only those called ``name``."""
        self.flush()
        spans = list(self.span_exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name`` (fails if there are none or several)."""
        found = self.spans(name)
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}: {[s.name for s in self.spans()]}"
        return found[0]

    def points(self, metric: str) -> list[Any]:
        """The data points of one metric (histogram, sum or gauge points), collected now."""
        if self.handle._span_ends is not None:
            self.handle._span_ends.drain()  # ended spans reach the processors from a background thread
        exports = self.handle._exports
        span_metrics = exports.span_metrics if exports is not None else None
        if span_metrics is not None:
            span_metrics.drain()  # duration metrics are recorded from finished spans, off the calling thread
        data = self.metric_reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for m in scope_metrics.metrics:
                    if m.name == metric:
                        points.extend(m.data.data_points)
        return points

    def metric_names(self) -> set[str]:
        """Names of every metric with at least one data point."""
        data = self.metric_reader.get_metrics_data()
        if data is None:
            return set()
        return {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}

    def logs(self) -> list[ReadableLogRecord]:
        """Exported log records."""
        self.flush()
        return list(self.log_exporter.get_finished_logs())

    def clear(self) -> None:
        """Forget the spans and logs captured so far."""
        if self.handle._span_ends is not None:
            self.handle._span_ends.drain()  # spans ended so far, not yet handed to the processors, go too
        self.span_exporter.clear()
        self.log_exporter.clear()


@contextmanager
def capture_telemetry(fake_gpu: FakeGpu | None = None, **settings: Any) -> Iterator[CapturedTelemetry]:
    """Route otel_vision's telemetry to memory while the block runs; the previous runtime comes back after.

    Args:
        fake_gpu: run GPU telemetry against this fake device; ``None`` turns GPU telemetry off.
        **settings: any `otel_vision.configure()` setting (environment variables are ignored here).
    """
    settings.setdefault("gpu", fake_gpu is not None)
    resolved = _config.resolve(exporter="none", environ={}, **settings)
    span_exporter = InMemorySpanExporter()
    metric_reader = InMemoryMetricReader()
    log_exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # SDK __init__ is unannotated
    previous = _runtime.current()
    handle = _setup.build(
        resolved,
        span_processors=[SimpleSpanProcessor(span_exporter)],
        metric_readers=[metric_reader],
        log_processors=[SimpleLogRecordProcessor(log_exporter)],
        cuda=fake_gpu.cuda if fake_gpu is not None else None,
        nvml=fake_gpu.nvml if fake_gpu is not None else None,
        standalone=True,
        defer_span_ends=True,  # as with the exporters configure() builds: `CapturedTelemetry` flushes before reading
    )
    try:
        yield CapturedTelemetry(handle, span_exporter, metric_reader, log_exporter)
    finally:
        handle.shutdown()
        _runtime.install(previous)


try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pass
else:

    @pytest.fixture
    def fake_gpu() -> FakeGpu:
        """A fake CUDA device with NVML; used by ``vision_telemetry`` when a test asks for both."""
        return FakeGpu()

    @pytest.fixture
    def vision_telemetry(request: pytest.FixtureRequest) -> Iterator[CapturedTelemetry]:
        """Capture otel_vision's spans, metrics and logs in memory for one test."""
        gpu = request.getfixturevalue("fake_gpu") if "fake_gpu" in request.fixturenames else None
        with capture_telemetry(fake_gpu=gpu) as captured:
            yield captured
