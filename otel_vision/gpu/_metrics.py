"""Observable GPU instruments: ``hw.gpu.*`` per GPU from the sampler, ``gpu.memory.*`` per device from torch."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision.gpu._backends import CudaBackend, DeviceInfo, DeviceReading
from otel_vision.gpu._sampler import NvmlSampler

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _hw_attributes(device: DeviceInfo) -> dict[str, str]:
    return {a.HW_ID: device.uuid, a.HW_NAME: device.name, a.HW_VENDOR: "nvidia", a.HW_TYPE: "gpu"}


def register_nvml_instruments(meter: Meter, sampler: NvmlSampler) -> None:
    """Create the ``hw.*`` observables; each callback reads the sampler's latest reading (no NVML call)."""

    def per_device(
        read: Callable[[DeviceReading], float | int | None],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            for device in sampler.devices:
                reading = sampler.latest(device.uuid)
                value = read(reading) if reading is not None else None
                if value is not None:
                    observations.append(Observation(value, _hw_attributes(device)))
            return observations

        return callback

    def utilization(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for device in sampler.devices:
            value = sampler.latest_utilization(device.uuid)
            if value is not None:
                observations.append(Observation(value, {**_hw_attributes(device), a.HW_GPU_TASK: "general"}))
        return observations

    def memory_utilization(reading: DeviceReading) -> float | None:
        if reading.memory_used is None or not reading.memory_total:
            return None
        return reading.memory_used / reading.memory_total

    def temperature(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for device in sampler.devices:
            reading = sampler.latest(device.uuid)
            if reading is not None and reading.temperature_celsius is not None:
                attrs = {**_hw_attributes(device), a.HW_SENSOR_LOCATION: "gpu"}
                observations.append(Observation(reading.temperature_celsius, attrs))
        return observations

    meter.create_observable_gauge(
        a.METRIC_HW_GPU_UTILIZATION, [utilization], unit="1", description="Fraction of time the GPU was busy."
    )
    meter.create_observable_up_down_counter(
        a.METRIC_HW_GPU_MEMORY_USAGE, [per_device(lambda r: r.memory_used)], unit="By", description="GPU memory used."
    )
    meter.create_observable_up_down_counter(
        a.METRIC_HW_GPU_MEMORY_LIMIT, [per_device(lambda r: r.memory_total)], unit="By", description="GPU memory size."
    )
    meter.create_observable_gauge(
        a.METRIC_HW_GPU_MEMORY_UTILIZATION,
        [per_device(memory_utilization)],
        unit="1",
        description="Fraction of GPU memory used.",
    )
    meter.create_observable_gauge(
        a.METRIC_HW_POWER, [per_device(lambda r: r.power_watts)], unit="W", description="GPU power draw."
    )
    meter.create_observable_counter(
        a.METRIC_HW_ENERGY,
        [per_device(lambda r: r.energy_joules)],
        unit="J",
        description="GPU energy consumed since the driver was loaded.",
    )
    meter.create_observable_gauge(a.METRIC_HW_TEMPERATURE, [temperature], unit="Cel", description="GPU temperature.")


def register_allocator_instruments(meter: Meter, cuda: CudaBackend) -> None:
    """Create the torch allocator observables (``gpu.memory.allocated`` / ``gpu.memory.reserved``) per device."""

    def observe(field: str) -> _Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            try:
                for device in cuda.initialized_devices():
                    stats = cuda.memory(device)
                    attrs: dict[str, str | int] = {a.GPU_DEVICE: device}
                    uuid = cuda.device_uuid(device)
                    if uuid is not None:
                        attrs[a.HW_ID] = uuid
                    observations.append(Observation(getattr(stats, field), attrs))
            except Exception:
                report_internal_error("torch allocator metrics")
            return observations

        return callback

    meter.create_observable_up_down_counter(
        a.METRIC_GPU_MEMORY_ALLOCATED,
        [observe("allocated")],
        unit="By",
        description="Bytes allocated by tensors through the torch caching allocator of this process.",
    )
    meter.create_observable_up_down_counter(
        a.METRIC_GPU_MEMORY_RESERVED,
        [observe("reserved")],
        unit="By",
        description="Bytes held by the torch caching allocator of this process.",
    )
