"""GPU telemetry end to end on a fake device: span attributes, the window join, nested peaks, metrics, failures."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import otel_vision
from otel_vision.gpu import DeviceInfo, GpuTelemetry, GpuUnavailable
from otel_vision.testing import CapturedTelemetry, FakeGpu, FakeNvml, capture_telemetry

UUID = "GPU-00000000-fake-0000-0000-000000000000"


class TestSpanAttributes:
    def test_gpu_time_memory_and_identity(self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
        """A stage on CUDA gets gpu.time from its events, allocator bytes and the GPU's UUID as hw.id."""
        fake_gpu.cuda.allocate(1000)
        with otel_vision.stage("inference"):
            fake_gpu.cuda.allocate(4096)
            fake_gpu.cuda.run(0.0125)
            fake_gpu.cuda.free(4096)
        span = vision_telemetry.span("inference")
        assert span.attributes["gpu.time"] == pytest.approx(0.0125)
        assert span.attributes["gpu.memory.allocated"] == 1000
        assert span.attributes["gpu.memory.peak"] == 5096
        assert span.attributes["hw.id"] == UUID

    def test_no_cuda_in_use_means_no_gpu_attributes(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """A stage that runs while CUDA is not initialized carries no GPU attribute."""
        fake_gpu.cuda.initialized = False
        with otel_vision.stage("preprocess"):
            pass
        assert not any(k.startswith(("gpu.", "hw.")) for k in vision_telemetry.span("preprocess").attributes)

    def test_stage_never_waits_for_the_device(self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
        """While the device has not finished, the stage still returns at once; the span waits in the export path."""
        fake_gpu.cuda.hold_events()
        with otel_vision.stage("inference"):
            fake_gpu.cuda.run(0.5)
        # The span has ended on the inference thread but is not exported before its end event completes (handed to
        # the processors, which a flush would also do, but not flushed: that would pass it on without gpu.time).
        assert vision_telemetry.handle._span_ends is not None
        vision_telemetry.handle._span_ends.drain()
        assert vision_telemetry.span_exporter.get_finished_spans() == ()
        fake_gpu.cuda.complete_events()
        assert vision_telemetry.span("inference").attributes["gpu.time"] == pytest.approx(0.5)

    def test_incomplete_events_exported_without_gpu_time_after_deadline(self, fake_gpu: FakeGpu) -> None:
        """If the device never finishes, a flush exports the span without gpu.time instead of blocking forever."""
        with capture_telemetry(fake_gpu=fake_gpu) as captured:
            fake_gpu.cuda.hold_events()
            with otel_vision.stage("inference"):
                fake_gpu.cuda.run(1.0)
            assert captured.handle.force_flush(timeout_millis=200)
            (span,) = captured.span_exporter.get_finished_spans()
            assert "gpu.time" not in span.attributes and span.attributes["hw.id"] == UUID

    def test_nested_peaks(self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
        """Each stage's gpu.memory.peak is its own: inner peaks are seen by outer stages, later ones are not."""
        cuda = fake_gpu.cuda
        with otel_vision.stage("outer"):
            cuda.allocate(100)
            with otel_vision.stage("first"):
                cuda.allocate(900)  # 1000 live
                cuda.free(900)
            with otel_vision.stage("second"):
                cuda.allocate(400)  # 500 live
                cuda.free(400)
            cuda.allocate(50)  # 150 live
        assert vision_telemetry.span("first").attributes["gpu.memory.peak"] == 1000
        assert vision_telemetry.span("second").attributes["gpu.memory.peak"] == 500
        assert vision_telemetry.span("outer").attributes["gpu.memory.peak"] == 1000
        assert vision_telemetry.span("outer").attributes["gpu.memory.allocated"] == 150

    def test_concurrent_peaks_do_not_steal_each_other(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """A stage starting in another thread (which resets the device counter) does not erase a running stage's peak."""
        cuda = fake_gpu.cuda
        started, go_on = threading.Event(), threading.Event()

        def other() -> None:
            started.wait()
            with otel_vision.stage("other"):
                pass
            go_on.set()

        thread = threading.Thread(target=other)
        thread.start()
        with otel_vision.stage("big"):
            cuda.allocate(8000)
            cuda.free(8000)
            started.set()
            go_on.wait()
        thread.join()
        assert vision_telemetry.span("big").attributes["gpu.memory.peak"] == 8000

    def test_utilization_is_the_mean_over_the_span_window(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """gpu.utilization averages the samples inside the span plus the first one after its end, nothing before."""
        nvml = fake_gpu.nvml
        nvml.add_sample(0.05, at_ns=time.time_ns() - 10_000_000)  # before the span: ignored
        with otel_vision.stage("inference") as span:
            start = span.start_time  # type: ignore[attr-defined]  # an SDK span
            time.sleep(0.02)
            nvml.add_sample(0.6, at_ns=start + 5_000_000)
            nvml.add_sample(0.8, at_ns=start + 10_000_000)
        nvml.add_sample(1.0, at_ns=time.time_ns() + 1_000_000)  # covers the span's tail
        nvml.add_sample(0.0, at_ns=time.time_ns() + 500_000_000)  # later still: ignored
        assert vision_telemetry.span("inference").attributes["gpu.utilization"] == pytest.approx(0.8)

    def test_short_span_takes_the_sample_covering_it(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """A span shorter than the sample period gets the value of the sample whose period contains it."""
        with otel_vision.stage("inference"):
            pass
        fake_gpu.nvml.add_sample(0.42, at_ns=time.time_ns() + 1_000_000)
        assert vision_telemetry.span("inference").attributes["gpu.utilization"] == pytest.approx(0.42)

    def test_mig_has_no_utilization(self, fake_gpu: FakeGpu) -> None:
        """On a MIG slice (no utilization counters) spans keep the other GPU attributes, without waiting."""
        fake_gpu.nvml.reports_utilization = False
        with capture_telemetry(fake_gpu=fake_gpu) as captured:
            with otel_vision.stage("inference"):
                fake_gpu.cuda.run(0.001)
            span = captured.span("inference")
            assert "gpu.utilization" not in span.attributes and span.attributes["gpu.time"] == pytest.approx(0.001)
            assert "hw.gpu.utilization" not in captured.metric_names()

    def test_peak_tracking_can_be_switched_off(self, fake_gpu: FakeGpu) -> None:
        """gpu_peak_memory=False leaves torch's peak counter alone and drops the attribute."""
        with capture_telemetry(fake_gpu=fake_gpu, gpu_peak_memory=False) as captured:
            with otel_vision.stage("inference"):
                pass
            assert "gpu.memory.peak" not in captured.span("inference").attributes
        assert fake_gpu.cuda.peak_resets == 0


# Requirements of the hardware semantic conventions (open-telemetry/semantic-conventions v1.44.0, model/hardware:
# gpu-metrics.yaml, common-metrics.yaml, temperature-metrics.yaml, common.yaml) for the metrics we export. "required"
# maps an attribute to its value (None: any non-empty value); "allowed" lists every attribute the metric may carry.
_COMMON = {"hw.id", "hw.name", "hw.parent"}
_GPU = _COMMON | {"hw.driver_version", "hw.firmware_version", "hw.model", "hw.serial_number", "hw.vendor"}
CONVENTION: dict[str, dict[str, object]] = {
    "hw.gpu.utilization": {
        "kind": "gauge",
        "unit": "1",
        "required": {"hw.id": None},
        "allowed": _GPU | {"hw.gpu.task"},
    },
    "hw.gpu.memory.usage": {"kind": "updowncounter", "unit": "By", "required": {"hw.id": None}, "allowed": _GPU},
    "hw.gpu.memory.limit": {"kind": "updowncounter", "unit": "By", "required": {"hw.id": None}, "allowed": _GPU},
    "hw.gpu.memory.utilization": {"kind": "gauge", "unit": "1", "required": {"hw.id": None}, "allowed": _GPU},
    "hw.power": {
        "kind": "gauge",
        "unit": "W",
        "required": {"hw.id": None, "hw.type": "gpu"},
        "allowed": _COMMON | {"hw.type"},
    },
    "hw.energy": {
        "kind": "counter",
        "unit": "J",
        "required": {"hw.id": None, "hw.type": "gpu"},
        "allowed": _COMMON | {"hw.type"},
    },
    # A GPU's sensor is its own component: hw.type=temperature (the registry's type, required by the temperature
    # hw.status refinement), its own hw.id, and the GPU as hw.parent.
    "hw.temperature": {
        "kind": "gauge",
        "unit": "Cel",
        "required": {"hw.id": None, "hw.type": "temperature", "hw.parent": UUID},
        "allowed": _COMMON | {"hw.sensor_location", "hw.type"},
    },
}
# Recommended attributes whose values we know, so we must send them.
KNOWN_RECOMMENDED = {
    "hw.gpu.utilization": {"hw.name", "hw.model", "hw.vendor", "hw.driver_version", "hw.gpu.task"},
    "hw.gpu.memory.usage": {"hw.name", "hw.model", "hw.vendor", "hw.driver_version"},
    "hw.gpu.memory.limit": {"hw.name", "hw.model", "hw.vendor", "hw.driver_version"},
    "hw.gpu.memory.utilization": {"hw.name", "hw.model", "hw.vendor", "hw.driver_version"},
    "hw.power": {"hw.name"},
    "hw.energy": {"hw.name"},
    "hw.temperature": {"hw.name", "hw.sensor_location"},
}


def _kind(data: object) -> str:
    name = type(data).__name__
    if name == "Gauge":
        return "gauge"
    assert name == "Sum", name
    return "counter" if data.is_monotonic else "updowncounter"  # type: ignore[attr-defined]


def convention_violations(metrics: dict[str, tuple[str, str, list[dict[str, object]]]]) -> list[str]:
    """Every way the exported ``hw.*`` metrics (name -> kind, unit, attribute sets) break the table above."""
    problems = []
    for name, spec in CONVENTION.items():
        if name not in metrics:
            problems.append(f"{name}: not exported")
            continue
        kind, unit, attribute_sets = metrics[name]
        if (kind, unit) != (spec["kind"], spec["unit"]):
            problems.append(f"{name}: {kind} in {unit!r}, the convention says {spec['kind']} in {spec['unit']!r}")
        for attributes in attribute_sets:
            for key, value in spec["required"].items():  # type: ignore[attr-defined]
                if not attributes.get(key) or (value is not None and attributes[key] != value):
                    problems.append(f"{name}: {key}={attributes.get(key)!r}, required {value or 'a value'}")
            extra = set(attributes) - spec["allowed"]  # type: ignore[operator]
            if extra:
                problems.append(f"{name}: attributes the convention does not define: {sorted(extra)}")
            missing = KNOWN_RECOMMENDED[name] - set(attributes)
            if missing:
                problems.append(f"{name}: recommended attributes we know but do not send: {sorted(missing)}")
    return problems


def exported_hw_metrics(captured: CapturedTelemetry) -> dict[str, tuple[str, str, list[dict[str, object]]]]:
    data = captured.metric_reader.get_metrics_data()
    assert data is not None
    found: dict[str, tuple[str, str, list[dict[str, object]]]] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name.startswith("hw."):
                    points = [dict(point.attributes or {}) for point in metric.data.data_points]
                    found[metric.name] = (_kind(metric.data), metric.unit or "", points)
    return found


class TestMetrics:
    def test_hw_metrics_follow_the_hardware_conventions(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """Every hw.* metric has the convention's instrument, unit and attributes, and nothing it does not define."""
        fake_gpu.nvml.add_sample(0.75)
        vision_telemetry.handle.gpu.sampler.poll()  # type: ignore[union-attr]  # GPU telemetry is on here
        assert convention_violations(exported_hw_metrics(vision_telemetry)) == []

    def test_convention_check_catches_the_old_names(self) -> None:
        """The table rejects what we exported before: hw.type on hw.gpu.*, the model in hw.name, one temperature id."""
        old = {"hw.id": UUID, "hw.name": "Fake H100", "hw.vendor": "nvidia", "hw.type": "gpu"}
        metrics = {name: (str(spec["kind"]), str(spec["unit"]), [dict(old)]) for name, spec in CONVENTION.items()}
        metrics["hw.temperature"][2][0]["hw.sensor_location"] = "gpu"
        problems = convention_violations(metrics)
        assert any("hw.gpu.utilization: attributes the convention does not define: ['hw.type']" in p for p in problems)
        assert any("hw.gpu.memory.usage: recommended attributes we know but do not send" in p for p in problems)
        assert any(p.startswith("hw.temperature: hw.type='gpu'") for p in problems)
        assert any(p.startswith("hw.temperature: hw.parent=None") for p in problems)
        assert any(p.startswith("hw.power: attributes the convention does not define: ['hw.vendor']") for p in problems)

    def test_hw_gpu_metrics_per_device(self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
        """The hw.* instruments report the sampler's latest reading; model and driver go to hw.model/driver."""
        fake_gpu.nvml.add_sample(0.75)
        vision_telemetry.handle.gpu.sampler.poll()  # type: ignore[union-attr]  # GPU telemetry is on here
        (util,) = vision_telemetry.points("hw.gpu.utilization")
        assert util.value == 0.75
        assert util.attributes == {
            "hw.id": UUID,
            "hw.name": "gpu0",
            "hw.model": "Fake H100",
            "hw.vendor": "NVIDIA",
            "hw.driver_version": "999.99",
            "hw.gpu.task": "general",
        }
        assert vision_telemetry.points("hw.gpu.memory.usage")[0].value == 2 * 2**30
        assert vision_telemetry.points("hw.gpu.memory.limit")[0].value == 80 * 2**30
        assert vision_telemetry.points("hw.gpu.memory.utilization")[0].value == pytest.approx(2 / 80)
        assert vision_telemetry.points("hw.power")[0].value == 120.0
        assert vision_telemetry.points("hw.energy")[0].value == 5000.0
        (temperature,) = vision_telemetry.points("hw.temperature")
        assert temperature.value == 45.0
        assert temperature.attributes["hw.id"] == f"{UUID}/temperature"

    def test_allocator_metrics(self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu) -> None:
        """gpu.memory.allocated and gpu.memory.reserved come from the allocator, per device."""
        fake_gpu.cuda.allocate(3000)
        fake_gpu.cuda.free(1000)
        (allocated,) = vision_telemetry.points("gpu.memory.allocated")
        (reserved,) = vision_telemetry.points("gpu.memory.reserved")
        assert (allocated.value, reserved.value) == (2000, 3000)
        assert allocated.attributes == {"gpu.device": 0, "hw.id": UUID}


class TestDegradation:
    def test_no_nvml(self, caplog: pytest.LogCaptureFixture) -> None:
        """Without NVML: no exception, no hw.* metric, one debug line saying why; CUDA attributes still work."""
        gpu = FakeGpu()
        gpu.nvml.unavailable = "NVML Shared Library Not Found"
        with caplog.at_level(logging.DEBUG, logger="otel_vision.gpu"), capture_telemetry(fake_gpu=gpu) as captured:
            with otel_vision.stage("inference"):
                gpu.cuda.run(0.002)
            span = captured.span("inference")
            assert span.attributes["gpu.time"] == pytest.approx(0.002) and "gpu.utilization" not in span.attributes
            assert not any(name.startswith("hw.") for name in captured.metric_names())
        lines = [r for r in caplog.records if "NVML Shared Library Not Found" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.DEBUG

    def test_real_backends_without_gpu_or_torch(self) -> None:
        """On this machine's real backends (no GPU driver, maybe no torch) GPU telemetry starts and does nothing."""
        telemetry = GpuTelemetry(interval=0.1)
        assert telemetry.sampler is None and telemetry.nvml_error
        assert telemetry.probe.start() is None
        assert telemetry.resource_attributes() == {}

    def test_nvml_error_while_polling(self, fake_gpu: FakeGpu) -> None:
        """An NVML error during a poll is logged once and polling goes on; stages are unaffected."""

        class Flaky(FakeNvml):
            calls = 0

            def read(self, device: DeviceInfo) -> otel_vision.gpu.DeviceReading:
                self.calls += 1
                if self.calls == 2:
                    raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
                return super().read(device)

        flaky = FakeGpu(nvml=Flaky())
        with capture_telemetry(fake_gpu=flaky) as captured:
            sampler = captured.handle.gpu.sampler  # type: ignore[union-attr]  # GPU telemetry is on here
            sampler.poll()
            sampler.poll()
            with otel_vision.stage("inference"):
                pass
            assert captured.span("inference").attributes["hw.id"] == UUID

    def test_broken_cuda_backend_never_breaks_a_stage(
        self, vision_telemetry: CapturedTelemetry, fake_gpu: FakeGpu
    ) -> None:
        """If the CUDA backend raises, the stage returns normally and only the GPU attributes are missing."""

        def broken(device: int) -> object:
            raise RuntimeError("CUDA driver gone")

        fake_gpu.cuda.record_event = broken  # type: ignore[method-assign]
        with otel_vision.stage("inference"):
            result = 41 + 1
        assert result == 42
        assert "gpu.time" not in vision_telemetry.span("inference").attributes

    def test_gpu_unavailable_message(self) -> None:
        """GpuUnavailable carries the reason shown by `otel-vision doctor`."""
        assert str(GpuUnavailable("NVML sees no GPU")) == "NVML sees no GPU"


def _poll(captured: CapturedTelemetry) -> None:
    """Step the sampler once (the tests below run it with a one-hour interval, so only they and flushes poll)."""
    captured.handle.gpu.sampler.poll()  # type: ignore[union-attr]  # GPU telemetry is on here


def _seconds(span: object) -> float:
    return (span.end_time - span.start_time) / 1e9  # type: ignore[attr-defined]  # a finished SDK span


class TestThrottling:
    def test_throttled_span_gets_reasons_and_mean_clock(self, fake_gpu: FakeGpu) -> None:
        """A stage run while the GPU is thermally throttled carries the reasons' short names and its SM clock."""
        fake_gpu.nvml.throttle("sw_thermal", "hw_slowdown", "gpu_idle")
        fake_gpu.nvml.sm_clock_mhz = 1200.0
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                fake_gpu.cuda.run(0.01)
            span = captured.span("inference")
            assert list(span.attributes["gpu.throttle.reasons"]) == ["hw_slowdown", "sw_thermal"]
            assert span.attributes["gpu.clock.sm"] == pytest.approx(1200.0)

    def test_unthrottled_span_has_clock_but_no_reasons(self, fake_gpu: FakeGpu) -> None:
        """Idle or application clocks are not throttling: the span gets gpu.clock.sm and no gpu.throttle.reasons."""
        fake_gpu.nvml.throttle("gpu_idle", "applications_clocks")
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                pass
            span = captured.span("inference")
            assert "gpu.throttle.reasons" not in span.attributes
            assert span.attributes["gpu.clock.sm"] == pytest.approx(1980.0)

    def test_throttling_after_the_window_is_not_joined(self, fake_gpu: FakeGpu) -> None:
        """Only polls around the span's own window count: throttling that starts after the poll following the span
        (and the lower clock that comes with it) is not put on the span."""
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                time.sleep(0.01)
            _poll(captured)
            fake_gpu.nvml.throttle("hw_power_brake")
            fake_gpu.nvml.sm_clock_mhz = 800.0
            _poll(captured)
            span = captured.span("inference")
            assert "gpu.throttle.reasons" not in span.attributes
            assert span.attributes["gpu.clock.sm"] == pytest.approx(1980.0)

    def test_clock_is_the_time_weighted_mean_between_polls(self, fake_gpu: FakeGpu) -> None:
        """The SM clock is interpolated between the polls around the window: it lies between their two values."""
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                time.sleep(0.01)
            fake_gpu.nvml.throttle("sw_power_cap")
            fake_gpu.nvml.sm_clock_mhz = 1000.0
            span = captured.span("inference")  # the flush polls: the throttled reading follows the window
            assert list(span.attributes["gpu.throttle.reasons"]) == ["sw_power_cap"]
            assert 1000.0 < span.attributes["gpu.clock.sm"] < 1980.0

    def test_throttling_during_a_long_span_is_joined(self, fake_gpu: FakeGpu) -> None:
        """Throttling seen by a poll inside a long span marks it even when it is over before the span ends; the
        clock is the time-weighted mean across all the polls, and the energy the counter's gain over the span."""
        fake_gpu.nvml.draw(400.0)
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("diffusion"):
                time.sleep(0.01)
                fake_gpu.nvml.throttle("hw_thermal", "hw_slowdown")
                fake_gpu.nvml.sm_clock_mhz = 990.0
                _poll(captured)
                time.sleep(0.01)
                fake_gpu.nvml.throttle()
                fake_gpu.nvml.sm_clock_mhz = 1980.0
                _poll(captured)
                time.sleep(0.01)
            span = captured.span("diffusion")
            assert list(span.attributes["gpu.throttle.reasons"]) == ["hw_slowdown", "hw_thermal"]
            assert 990.0 < span.attributes["gpu.clock.sm"] < 1980.0
            assert span.attributes["gpu.energy"] == pytest.approx(400.0 * _seconds(span), rel=1e-3)

    def test_throttle_time_metric_per_reason(self, fake_gpu: FakeGpu) -> None:
        """vision.gpu.throttle.time counts seconds per throttle reason and GPU; idle never counts as throttling."""
        fake_gpu.nvml.throttle("sw_thermal", "gpu_idle")
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            started = time.monotonic()
            time.sleep(0.05)
            _poll(captured)
            elapsed = time.monotonic() - started
            points = {p.attributes["gpu.throttle.reason"]: p for p in captured.points("vision.gpu.throttle.time")}
        assert 0 < points["sw_thermal"].value <= elapsed + 1.0
        assert points["sw_thermal"].attributes == {
            "hw.id": UUID,
            "hw.name": "gpu0",
            "gpu.throttle.reason": "sw_thermal",
        }
        assert "gpu_idle" not in points
        assert all(p.value == 0 for reason, p in points.items() if reason != "sw_thermal")
        assert set(points) == {
            "sw_power_cap",
            "hw_slowdown",
            "sync_boost",
            "sw_thermal",
            "hw_thermal",
            "hw_power_brake",
            "board_limit",
            "reliability",
        }

    def test_driver_without_clock_calls(self, fake_gpu: FakeGpu) -> None:
        """When NVML cannot read clocks or reasons (old GPU, MIG), the attributes and the metric are absent."""
        fake_gpu.nvml.sm_clock_mhz = None
        fake_gpu.nvml.clock_event_reasons = None
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                fake_gpu.cuda.run(0.001)
            span = captured.span("inference")
            assert span.attributes["gpu.time"] == pytest.approx(0.001)
            assert not {"gpu.clock.sm", "gpu.throttle.reasons"} & set(span.attributes)
            assert "vision.gpu.throttle.time" not in captured.metric_names()

    def test_unknown_reason_name_is_refused(self) -> None:
        """FakeNvml.throttle names the reason it does not know."""
        with pytest.raises(ValueError, match="'too_hot'"):
            FakeNvml().throttle("too_hot")


class TestEnergy:
    def test_energy_is_the_counter_difference_over_the_window(self, fake_gpu: FakeGpu) -> None:
        """gpu.energy is what the energy counter gained during the span: 300 W for the span's duration."""
        fake_gpu.nvml.draw(300.0)
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                time.sleep(0.02)
            span = captured.span("inference")
            assert span.attributes["gpu.energy"] == pytest.approx(300.0 * _seconds(span), rel=1e-3)

    def test_stale_counter_falls_back_to_power(self, fake_gpu: FakeGpu) -> None:
        """A counter that did not advance around a short span never yields 0 J: power times duration is used."""
        fake_gpu.nvml.draw(200.0)
        fake_gpu.nvml.energy_update_period = 3600.0
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                time.sleep(0.01)
            span = captured.span("inference")
            assert span.attributes["gpu.energy"] == pytest.approx(200.0 * _seconds(span), rel=1e-3)

    def test_no_counter_and_no_power_means_no_energy(self, fake_gpu: FakeGpu) -> None:
        """Without an energy counter and power readings, gpu.energy is absent; the other attributes remain."""
        fake_gpu.nvml.energy_joules = None
        fake_gpu.nvml.power_watts = None  # a driver that reads no power
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            with otel_vision.stage("inference"):
                fake_gpu.cuda.run(0.002)
            span = captured.span("inference")
            assert "gpu.energy" not in span.attributes and span.attributes["gpu.clock.sm"] == pytest.approx(1980.0)

    def test_request_energy_histogram(self, fake_gpu: FakeGpu) -> None:
        """vision.request.energy records each request's gpu.energy by operation and model; stages do not record."""
        fake_gpu.nvml.draw(250.0)
        with capture_telemetry(fake_gpu=fake_gpu, gpu_sample_interval=3600) as captured:
            for _ in range(2):
                with otel_vision.request("predict", attributes={"vision.model.name": "yolov8n"}):
                    with otel_vision.stage("inference"):
                        time.sleep(0.01)
            requests = captured.spans("predict")
            (point,) = captured.points("vision.request.energy")
        assert point.attributes == {"vision.operation": "predict", "vision.model.name": "yolov8n"}
        assert point.count == 2
        assert point.sum == pytest.approx(sum(s.attributes["gpu.energy"] for s in requests))
        assert point.sum == pytest.approx(250.0 * sum(_seconds(s) for s in requests), rel=1e-3)


class _StubNvmlError(Exception):
    pass


class _StubNotSupported(_StubNvmlError):
    pass


class _StubFunctionNotFound(_StubNvmlError):
    pass


class _StubNotFound(_StubNvmlError):
    pass


def _old_driver_pynvml() -> object:
    """A stand-in for nvidia-ml-py on an old driver: no SM clock (not supported), clock event reasons only under
    their deprecated name (the new call is missing from the driver), sw_thermal throttling."""
    from types import SimpleNamespace

    def missing(*args: object) -> int:
        raise _StubFunctionNotFound("Function Not Found")

    def not_supported(*args: object) -> int:
        raise _StubNotSupported("Not Supported")

    def no_samples(*args: object) -> object:
        raise _StubNotFound("Not Found")

    memory = SimpleNamespace(total=80 * 2**30, used=2**30)
    return SimpleNamespace(
        NVMLError=_StubNvmlError,
        NVMLError_NotSupported=_StubNotSupported,
        NVMLError_FunctionNotFound=_StubFunctionNotFound,
        NVMLError_NotFound=_StubNotFound,
        NVML_DEVICE_MIG_ENABLE=1,
        NVML_TEMPERATURE_GPU=0,
        NVML_CLOCK_SM=1,
        NVML_GPU_UTILIZATION_SAMPLES=1,
        nvmlMemory_v2=2,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "470.00",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: "handle",
        nvmlDeviceGetUUID=lambda handle: UUID,
        nvmlDeviceGetName=lambda handle: "Tesla V100",
        nvmlDeviceGetMemoryInfo=lambda handle, version=None: memory,
        nvmlDeviceGetMigMode=not_supported,
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=50),
        nvmlDeviceGetPowerUsage=lambda handle: 250_000,
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: 9_000_000,
        nvmlDeviceGetTemperature=lambda handle, sensor: 60,
        nvmlDeviceGetSamples=no_samples,
        nvmlDeviceGetClockInfo=not_supported,
        nvmlDeviceGetCurrentClocksEventReasons=missing,
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda handle: 0x20 | 0x1,
    )


class TestRealBackendDegradation:
    def test_old_driver_keeps_reasons_and_drops_the_clock(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """On a driver without the new reasons call and without SM clocks, PynvmlBackend falls back to the old
        call, leaves gpu.clock.sm out and says so in one debug line, however often it polls."""
        import sys

        from otel_vision.gpu import PynvmlBackend

        monkeypatch.setitem(sys.modules, "pynvml", _old_driver_pynvml())
        gpu = FakeGpu(nvml=PynvmlBackend())  # type: ignore[arg-type]  # the real backend over the stand-in
        with (
            caplog.at_level(logging.DEBUG, logger="otel_vision.gpu"),
            capture_telemetry(fake_gpu=gpu, gpu_sample_interval=3600) as captured,
        ):
            _poll(captured)
            with otel_vision.stage("inference"):
                gpu.cuda.run(0.001)
            span = captured.span("inference")
            _poll(captured)
        assert list(span.attributes["gpu.throttle.reasons"]) == ["sw_thermal"]
        assert "gpu.clock.sm" not in span.attributes
        assert span.attributes["gpu.energy"] == pytest.approx(250.0 * _seconds(span), rel=1e-3)  # counter stood still
        lines = [r for r in caplog.records if "SM clock" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
