"""The two small interfaces behind which NVML and torch live, so tests can inject a fake device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class GpuUnavailable(Exception):
    """NVML or CUDA cannot be used here; the message says why (shown by ``otel-vision doctor``)."""


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU as NVML sees it."""

    index: int
    uuid: str
    """``GPU-…`` (or ``MIG-…``): the value of ``hw.id``."""
    name: str
    driver_version: str
    memory_total: int
    mig: bool = False
    """MIG mode is on: device utilization is not available from NVML (the attribute and metric are then absent)."""


@dataclass(frozen=True)
class DeviceReading:
    """One poll of one device; a field is ``None`` when the device or driver does not support it."""

    timestamp_ns: int
    memory_used: int | None = None
    memory_total: int | None = None
    utilization: float | None = None
    power_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    sm_clock_mhz: float | None = None
    """Current SM clock (``nvmlDeviceGetClockInfo(NVML_CLOCK_SM)``)."""
    clock_event_reasons: int | None = None
    """Bitmask of the current clock event (throttle) reasons, as NVML returns it (`CLOCK_EVENT_REASONS`)."""


CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
    0x200: "board_limit",
    0x400: "reliability",
}
"""NVML's clock event reason bits (``nvmlClocksEventReason*``) and the short names otel_vision exports."""
NOT_THROTTLING: int = 0x1 | 0x2 | 0x100
"""Bits that lower the clocks without slowing work down (idle, configured application or display clocks)."""
THROTTLE_REASONS: tuple[str, ...] = tuple(name for bit, name in CLOCK_EVENT_REASONS.items() if not bit & NOT_THROTTLING)
"""The short names that count as throttling, in bit order."""


@dataclass(frozen=True)
class MemoryStats:
    """The torch caching allocator's counters for one device, in bytes."""

    allocated: int
    peak: int
    reserved: int


class NvmlBackend(Protocol):
    """Read-only access to NVML, called from the sampler thread only."""

    def devices(self) -> Sequence[DeviceInfo]:
        """List the GPUs; raise `GpuUnavailable` with the reason when NVML is not usable."""
        ...

    def read(self, device: DeviceInfo) -> DeviceReading:
        """Poll memory, utilization, power, energy, temperature, SM clock and clock event reasons; unsupported fields
        are ``None``."""
        ...

    def utilization_samples(self, device: DeviceInfo, since_us: int) -> list[tuple[int, float]]:
        """Driver-buffered utilization samples newer than ``since_us``: (NVML timestamp in µs, value in 0–1)."""
        ...

    def close(self) -> None:
        """Release NVML."""
        ...


class CudaBackend(Protocol):
    """What the hot path needs from torch.cuda: events, allocator counters, device identity. Nothing synchronizes."""

    def active_device(self) -> int | None:
        """The current CUDA device index when CUDA is initialized in this process, else ``None`` (cheap)."""
        ...

    def record_event(self, device: int) -> object:
        """Record a timing event on the device's current stream (from a pool; no synchronization)."""
        ...

    def event_done(self, event: object) -> bool:
        """Whether all work captured by ``event`` has completed (non-blocking query)."""
        ...

    def elapsed_seconds(self, start: object, end: object) -> float:
        """Device time between two completed events."""
        ...

    def release_event(self, device: int, event: object) -> None:
        """Return an event to the pool once its time has been read."""
        ...

    def memory(self, device: int) -> MemoryStats:
        """Allocator counters of ``device`` (no synchronization)."""
        ...

    def reset_peak(self, device: int) -> None:
        """Reset the allocator's peak counter of ``device`` (process-wide)."""
        ...

    def device_uuid(self, device: int) -> str | None:
        """``GPU-…`` identity of a CUDA device index, matching NVML's UUID."""
        ...

    def initialized_devices(self) -> Sequence[int]:
        """Device indices this process has touched (for the allocator metrics)."""
        ...
