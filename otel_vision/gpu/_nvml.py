"""The real `NvmlBackend` over nvidia-ml-py (``import pynvml``)."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Sequence
from typing import Any

from otel_vision._errors import our_logger
from otel_vision.gpu._backends import DeviceInfo, DeviceReading, GpuUnavailable

logger = our_logger("otel_vision.gpu")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_LINUX_LIBRARY = "libnvidia-ml.so.1"


def _require_driver_library() -> None:
    """On Linux, fail fast when the driver's NVML library is absent (a machine without an NVIDIA driver): a failed
    ``dlopen`` costs microseconds, importing the bindings first about 30 ms of ``configure()``."""
    if not sys.platform.startswith("linux") or "pynvml" in sys.modules:
        return  # elsewhere, or the bindings are loaded already (nothing to save)
    try:
        ctypes.CDLL(_LINUX_LIBRARY)
    except OSError:
        why = f"NVML could not be initialized: NVML Shared Library Not Found ({_LINUX_LIBRARY})"
        raise GpuUnavailable(why) from None


class PynvmlBackend:
    """`NvmlBackend` over the official NVML bindings. Construction initializes NVML or raises `GpuUnavailable`."""

    def __init__(self) -> None:
        _require_driver_library()
        try:
            import pynvml
        except ImportError as exc:
            raise GpuUnavailable(f"nvidia-ml-py is not installed ({exc}): pip install nvidia-ml-py") from None
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML could not be initialized: {exc}") from None
        self._handles: dict[str, Any] = {}
        self._unsupported: set[tuple[str, str]] = set()

    def devices(self) -> Sequence[DeviceInfo]:
        nvml = self._nvml
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML could not list devices: {exc}") from None
        found = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
                total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            except nvml.NVMLError:  # a device we may not query (permissions, fallen off the bus): skip it
                continue
            mig = False
            try:
                mig = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
            except nvml.NVMLError:  # pre-Ampere devices have no MIG mode
                pass
            self._handles[uuid] = handle
            found.append(DeviceInfo(index, uuid, name, driver, total, mig))
        if not found:
            raise GpuUnavailable("NVML sees no GPU")
        return found

    def _field(self, device: DeviceInfo, what: str, read: Any) -> Any:
        key = (device.uuid, what)
        if key in self._unsupported:
            return None
        nvml = self._nvml
        try:
            return read()
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, AttributeError) as exc:
            # An older GPU or driver, a MIG slice, or bindings without the call: the value stays absent for good.
            self._unsupported.add(key)
            logger.debug("otel_vision: NVML cannot read %s of %s (%s); it is left out", what, device.uuid, exc)
        except nvml.NVMLError:
            pass
        return None

    def _clock_event_reasons(self, handle: Any) -> int:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
        except (AttributeError, nvml.NVMLError_FunctionNotFound):  # bindings or driver older than the new name
            return int(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))

    def read(self, device: DeviceInfo) -> DeviceReading:
        nvml = self._nvml
        handle = self._handles[device.uuid]
        memory = self._field(device, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2))
        if memory is None:
            memory = self._field(device, "memory_v1", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        util = None if device.mig else self._field(device, "util", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        power = self._field(device, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        energy = self._field(device, "energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        temperature = self._field(
            device, "temperature", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        )
        clock = self._field(device, "SM clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        reasons = self._field(device, "clock event reasons", lambda: self._clock_event_reasons(handle))
        return DeviceReading(
            timestamp_ns=time.time_ns(),
            memory_used=int(memory.used) if memory is not None else None,
            memory_total=int(memory.total) if memory is not None else None,
            utilization=util.gpu / 100.0 if util is not None else None,
            power_watts=power / 1000.0 if power is not None else None,
            energy_joules=energy / 1000.0 if energy is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            clock_event_reasons=int(reasons) if reasons is not None else None,
        )

    def utilization_samples(self, device: DeviceInfo, since_us: int) -> list[tuple[int, float]]:
        nvml = self._nvml
        if device.mig or (device.uuid, "samples") in self._unsupported:
            return []
        try:
            _, samples = nvml.nvmlDeviceGetSamples(
                self._handles[device.uuid], nvml.NVML_GPU_UTILIZATION_SAMPLES, since_us
            )
        except nvml.NVMLError_NotFound:  # no sample newer than since_us
            return []
        except nvml.NVMLError_NotSupported:
            self._unsupported.add((device.uuid, "samples"))
            return []
        return [(int(s.timeStamp), s.sampleValue.uiVal / 100.0) for s in samples if s.timeStamp > since_us]

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:  # already shut down
            pass
