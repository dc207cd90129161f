"""The NVML sampler thread: polls every interval and keeps a bounded, timestamped history per GPU."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from otel_vision._errors import report_internal_error
from otel_vision.gpu._backends import DeviceInfo, DeviceReading, NvmlBackend

logger = logging.getLogger("otel_vision.gpu")

_MAX_SAMPLES_PER_SECOND = 10
"""Drivers buffer utilization samples every 1/6 s to 1 s; the history is sized for the fastest plus headroom."""
_CLOCK_TOLERANCE_US = 3600 * 1_000_000


class Window:
    """Result of joining a time window with the history."""

    PENDING = "pending"
    """The sample that covers the window's end has not arrived yet."""


class NvmlSampler:
    """Polls NVML from one daemon thread; readers get the latest reading and windowed utilization means.

    The utilization samples come from ``nvmlDeviceGetSamples`` (the driver's own timestamped buffer), so one poll per
    interval still yields every sample the driver took. Each sample is the utilization over the period that *ends*
    at its timestamp, which is why a window's mean uses the samples inside it plus the first one after its end.
    """

    def __init__(self, backend: NvmlBackend, devices: Sequence[DeviceInfo], interval: float, history: float) -> None:
        self._backend = backend
        self.devices = tuple(devices)
        self.interval = interval
        size = max(16, int(history * _MAX_SAMPLES_PER_SECOND))
        self._history: dict[str, deque[tuple[int, float]]] = {d.uuid: deque(maxlen=size) for d in self.devices}
        self._latest: dict[str, DeviceReading] = {}
        self._last_us: dict[str, int] = {d.uuid: 0 for d in self.devices}
        self._clock_offset_ns: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = False

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take a first reading synchronously (so metrics exist at once), then poll in the background."""
        self.poll()
        self.running = True
        self._thread = threading.Thread(target=self._run, name="otel-vision-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and release NVML; the history stays readable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 2 * self.interval))
        self.running = False
        self._backend.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    # --- polling ------------------------------------------------------------------------------------------------
    def _to_epoch_ns(self, ts_us: int) -> int:
        offset = self._clock_offset_ns
        if offset is None:
            # NVML documents the sample timestamp only as a "CPU timestamp in microseconds". Calibrate once: wall
            # clock (the common case) or the monotonic clock.
            now_us = time.time_ns() // 1000
            offset = 0 if abs(now_us - ts_us) < _CLOCK_TOLERANCE_US else time.time_ns() - time.monotonic_ns()
            self._clock_offset_ns = offset
        return ts_us * 1000 + offset

    def poll(self) -> None:
        """Read every device once (also called by tests to step the sampler deterministically)."""
        for device in self.devices:
            try:
                reading = self._backend.read(device)
                samples = self._backend.utilization_samples(device, self._last_us[device.uuid])
            except Exception:
                report_internal_error(f"NVML poll of {device.uuid}")
                continue
            if not samples and reading.utilization is not None and not device.mig:
                # No driver sample buffer (old driver): the instantaneous rate stands in, stamped now.
                samples = [(reading.timestamp_ns // 1000, reading.utilization)]
            with self._lock:
                self._latest[device.uuid] = reading
                history = self._history[device.uuid]
                for ts_us, value in samples:
                    if ts_us > self._last_us[device.uuid]:
                        history.append((self._to_epoch_ns(ts_us), value))
                        self._last_us[device.uuid] = ts_us

    # --- readers ------------------------------------------------------------------------------------------------
    def latest(self, uuid: str) -> DeviceReading | None:
        """The newest reading of one device."""
        return self._latest.get(uuid)

    def latest_utilization(self, uuid: str) -> float | None:
        """The newest utilization sample of one device."""
        with self._lock:
            history = self._history.get(uuid)
            return history[-1][1] if history else None

    def _reports_utilization(self, uuid: str) -> bool:
        """Whether samples can still come: not MIG, and the last reading (if any) had a utilization value."""
        device = next((d for d in self.devices if d.uuid == uuid), None)
        if device is None or device.mig:
            return False
        reading = self._latest.get(uuid)
        return reading is None or reading.utilization is not None

    def window_mean(self, uuid: str, start_ns: int, end_ns: int, *, partial: bool = False) -> float | str | None:
        """Mean utilization over ``[start_ns, end_ns]`` (epoch ns): a float, `Window.PENDING`, or ``None``.

        ``None`` means no answer will come: unknown device, no samples (MIG, unsupported), or a window older than the
        kept history. With ``partial=True`` (flush, shutdown) the samples there are now are final: no `PENDING`.
        """
        with self._lock:
            history = self._history.get(uuid)
            if history is None:
                return None
            if not history:
                return Window.PENDING if self.running and not partial and self._reports_utilization(uuid) else None
            if history[0][0] > start_ns and len(history) == history.maxlen:
                return None  # the window's beginning has already been dropped from the bounded history
            inside: list[float] = []
            after: float | None = None
            for ts, value in reversed(history):
                if ts > end_ns:
                    after = value  # keeps the earliest sample after the end, since we walk backwards
                elif ts > start_ns:
                    inside.append(value)
                else:
                    break
        if after is None:
            if self.running and not partial:
                return Window.PENDING
            return sum(inside) / len(inside) if inside else None
        inside.append(after)
        return sum(inside) / len(inside)
