"""Observable GPU instruments: ``hw.*`` and ``vision.gpu.throttle.time`` per GPU from the sampler, ``gpu.memory.*``
per device from torch.

Names and attributes follow the hardware semantic conventions (v1.44.0, ``model/hardware``); docs/names.md has the
table and maps each to DCGM and Triton.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_vision import attributes as a
from otel_vision._errors import report_internal_error
from otel_vision.gpu._backends import CudaBackend, DeviceInfo, DeviceReading
from otel_vision.gpu._sampler import NvmlSampler

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _short_name(device: DeviceInfo) -> str:
    return f"gpu{device.index}"


def _gpu_attributes(device: DeviceInfo) -> dict[str, str]:
    """Attributes of the ``hw.gpu.*`` metrics: the GPU component (``hw.type`` is not one of them)."""
    return {
        a.HW_ID: device.uuid,
        a.HW_NAME: _short_name(device),
        a.HW_MODEL: device.name,
        a.HW_VENDOR: a.HW_VENDOR_NVIDIA,
        a.HW_DRIVER_VERSION: device.driver_version,
    }


def _common_attributes(device: DeviceInfo) -> dict[str, str]:
    """Attributes of the common ``hw.power``/``hw.energy`` metrics for a GPU: ``hw.type`` is required there."""
    return {a.HW_ID: device.uuid, a.HW_NAME: _short_name(device), a.HW_TYPE: a.HW_TYPE_GPU}


def _temperature_attributes(device: DeviceInfo) -> dict[str, str]:
    """The GPU's temperature sensor is a component of its own, whose parent is the GPU."""
    return {
        a.HW_ID: f"{device.uuid}/temperature",
        a.HW_NAME: f"{_short_name(device)} temperature",
        a.HW_TYPE: a.HW_TYPE_TEMPERATURE,
        a.HW_PARENT: device.uuid,
        a.HW_SENSOR_LOCATION: "gpu",
    }


def register_nvml_instruments(meter: Meter, sampler: NvmlSampler) -> None:
    """Create the ``hw.*`` observables; each callback reads the sampler's latest reading (no NVML call)."""

    def per_device(
        read: Callable[[DeviceReading], float | int | None],
        attributes: Callable[[DeviceInfo], dict[str, str]] = _gpu_attributes,
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            for device in sampler.devices:
                reading = sampler.latest(device.uuid)
                value = read(reading) if reading is not None else None
                if value is not None:
                    observations.append(Observation(value, attributes(device)))
            return observations

        return callback

    def utilization(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for device in sampler.devices:
            value = sampler.latest_utilization(device.uuid)
            if value is not None:
                observations.append(Observation(value, {**_gpu_attributes(device), a.HW_GPU_TASK: "general"}))
        return observations

    def memory_utilization(reading: DeviceReading) -> float | None:
        if reading.memory_used is None or not reading.memory_total:
            return None
        return reading.memory_used / reading.memory_total

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
        a.METRIC_HW_POWER,
        [per_device(lambda r: r.power_watts, _common_attributes)],
        unit="W",
        description="GPU power draw.",
    )
    meter.create_observable_counter(
        a.METRIC_HW_ENERGY,
        [per_device(lambda r: r.energy_joules, _common_attributes)],
        unit="J",
        description="GPU energy consumed since the driver was loaded.",
    )

    def throttle_time(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for device in sampler.devices:
            for reason, seconds in sampler.throttle_seconds(device.uuid).items():
                attributes = {a.HW_ID: device.uuid, a.HW_NAME: _short_name(device), a.GPU_THROTTLE_REASON: reason}
                observations.append(Observation(seconds, attributes))
        return observations

    meter.create_observable_counter(
        a.METRIC_GPU_THROTTLE_TIME,
        [throttle_time],
        unit="s",
        description="Time the GPU ran throttled, per reason (NVML clock event reasons, sampled at each poll).",
    )
    meter.create_observable_gauge(
        a.METRIC_HW_TEMPERATURE,
        [per_device(lambda r: r.temperature_celsius, _temperature_attributes)],
        unit="Cel",
        description="Temperature of the GPU's sensor.",
    )


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
