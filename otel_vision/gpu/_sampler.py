"""The NVML sampler thread: polls every interval and keeps a bounded, timestamped history per GPU."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from typing import NamedTuple

from otel_vision import _threads
from otel_vision._errors import our_logger, report_internal_error
from otel_vision.gpu._backends import (
    CLOCK_EVENT_REASONS,
    NOT_THROTTLING,
    THROTTLE_REASONS,
    DeviceInfo,
    DeviceReading,
    NvmlBackend,
)

logger = our_logger("otel_vision.gpu")

_MAX_SAMPLES_PER_SECOND = 10
"""Drivers buffer utilization samples every 1/6 s to 1 s; the history is sized for the fastest plus headroom."""
_CLOCK_TOLERANCE_US = 3600 * 1_000_000


class Window:
    """Result of joining a time window with the history."""

    PENDING = "pending"
    """The sample that covers the window's end has not arrived yet."""


class _Poll(NamedTuple):
    """What one poll of one device saw, for joining span windows (epoch ns)."""

    ts: int
    sm_clock: float | None
    reasons: int | None
    energy: float | None
    power: float | None


class DeviceWindow(NamedTuple):
    """Clocks, throttling and energy of one device over a span's window (see docs/gpu.md for the method)."""

    throttle_reasons: tuple[str, ...]
    """Throttle reasons seen from the last poll before the window to the first after it; empty when none."""
    sm_clock_mhz: float | None
    """Time-weighted mean SM clock over the window, the clock interpolated linearly between polls."""
    energy_joules: float | None
    """Energy counter difference over the window (interpolated between polls), else power integrated over it."""


@lru_cache(maxsize=256)
def throttle_names(mask: int) -> tuple[str, ...]:
    """The short names of the throttling bits in an NVML clock event reasons mask (idle and settings left out)."""
    return tuple(name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit and not bit & NOT_THROTTLING)


def _linear(points: list[tuple[int, float]], at: int) -> float:
    """Value at ``at`` of the polyline through ``points`` (chronological), held flat beyond its ends."""
    if at <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in pairwise(points):
        if at <= t1:
            return v0 + (v1 - v0) * (at - t0) / (t1 - t0) if t1 > t0 else v1
    return points[-1][1]


def _mean(points: list[tuple[int, float]], start: int, end: int) -> float | None:
    """Time-weighted mean over ``[start, end]`` of the polyline through ``points`` (trapezoids)."""
    if not points:
        return None
    if end <= start or len(points) == 1:
        return _linear(points, start)
    cuts = [start, *(t for t, _ in points if start < t < end), end]
    values = [_linear(points, t) for t in cuts]
    area = sum((cuts[i + 1] - cuts[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(cuts) - 1))
    return area / (end - start)


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
        polls = max(16, int(history / interval) + 2) if interval > 0 else 16
        self._polls: dict[str, deque[_Poll]] = {d.uuid: deque(maxlen=polls) for d in self.devices}
        self._throttled: dict[str, dict[str, float]] = {}
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
        self._thread = _threads.start(threading.Thread(target=self._run, name="otel-vision-nvml", daemon=True))

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
            poll = _Poll(
                reading.timestamp_ns,
                reading.sm_clock_mhz,
                reading.clock_event_reasons,
                reading.energy_joules,
                reading.power_watts,
            )
            with self._lock:
                self._latest[device.uuid] = reading
                self._add_poll(device.uuid, poll)
                history = self._history[device.uuid]
                for ts_us, value in samples:
                    if ts_us > self._last_us[device.uuid]:
                        history.append((self._to_epoch_ns(ts_us), value))
                        self._last_us[device.uuid] = ts_us

    def _add_poll(self, uuid: str, poll: _Poll) -> None:
        """Keep the poll for window joins; add the time since the previous poll to the throttle counters (held)."""
        polls = self._polls[uuid]
        previous = polls[-1] if polls else None
        if previous is not None and poll.ts <= previous.ts:
            return  # a clock step backwards: keep the history ordered
        polls.append(poll)
        if poll.reasons is None:
            return
        totals = self._throttled.setdefault(uuid, dict.fromkeys(THROTTLE_REASONS, 0.0))
        if previous is None or previous.reasons is None:
            return
        # The state between two polls is unknown: each end's reasons get half of the interval (trapezoid rule).
        half = (poll.ts - previous.ts) / 2e9
        for name in throttle_names(previous.reasons):
            totals[name] += half
        for name in throttle_names(poll.reasons):
            totals[name] += half

    # --- readers ------------------------------------------------------------------------------------------------
    def throttle_seconds(self, uuid: str) -> dict[str, float]:
        """Seconds each throttle reason was active on one device since the sampler started (empty: not reported)."""
        with self._lock:
            return dict(self._throttled.get(uuid, {}))

    def window_device(
        self, uuid: str, start_ns: int, end_ns: int, *, partial: bool = False
    ) -> DeviceWindow | str | None:
        """Throttle reasons, mean SM clock and energy over ``[start_ns, end_ns]``: a `DeviceWindow`,
        `Window.PENDING` (no poll after the end yet), or ``None`` (unknown device, or history already dropped).

        With ``partial=True`` (flush, shutdown) the polls there are now are final: no `PENDING`.
        """
        with self._lock:
            polls = self._polls.get(uuid)
            if polls is None:
                return None
            if not polls or polls[-1].ts < end_ns:
                if self.running and not partial:
                    return Window.PENDING
                if not polls:
                    return None
            if polls[0].ts > start_ns and len(polls) == polls.maxlen:
                return None
            # Polls are ordered by time: find the first at or after the end, then walk back to the last before the
            # start (a span resolved soon after it ended is near the newest end, so the walk is short).
            index = len(polls)
            while index > 0 and polls[index - 1].ts >= end_ns and index > len(polls) - 4:
                index -= 1
            if index > 0 and polls[index - 1].ts >= end_ns:
                index = bisect_left(polls, end_ns, 0, index, key=_poll_ts)
            after = polls[index] if index < len(polls) else None
            before: _Poll | None = None
            inside: list[_Poll] = []
            index -= 1
            while index >= 0:
                poll = polls[index]
                if poll.ts <= start_ns:
                    before = poll
                    break
                inside.append(poll)
                index -= 1
        if not inside and before is not None and after is not None:
            return _bracketed(before, after, start_ns, end_ns)
        inside.reverse()
        chosen = [p for p in (before, *inside, after) if p is not None]
        mask = 0
        for poll in chosen:
            mask |= poll.reasons or 0
        clock = _mean([(p.ts, p.sm_clock) for p in chosen if p.sm_clock is not None], start_ns, end_ns)
        return DeviceWindow(throttle_names(mask), clock, _energy(chosen, before, after, start_ns, end_ns))

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


def _poll_ts(poll: _Poll) -> int:
    return poll.ts


def _bracketed(before: _Poll, after: _Poll, start: int, end: int) -> DeviceWindow:
    """The common case, a span between two consecutive polls: `window_device` without lists (same results)."""
    mask = (before.reasons or 0) | (after.reasons or 0)
    span = after.ts - before.ts
    mid = (start + end) / 2  # the mean of a straight line over the window is its value at the window's middle
    if before.sm_clock is not None and after.sm_clock is not None:
        clock: float | None = before.sm_clock + (after.sm_clock - before.sm_clock) * (mid - before.ts) / span
    else:
        clock = before.sm_clock if before.sm_clock is not None else after.sm_clock
    energy: float | None = None
    if before.energy is not None and after.energy is not None and after.energy > before.energy:
        energy = (after.energy - before.energy) * (end - start) / span
    elif end == start:
        energy = 0.0 if before.energy is not None or before.power is not None else None
    elif before.power is not None and after.power is not None:
        energy = (before.power + (after.power - before.power) * (mid - before.ts) / span) * (end - start) / 1e9
    elif before.power is not None or after.power is not None:
        energy = (before.power if before.power is not None else after.power or 0.0) * (end - start) / 1e9
    return DeviceWindow(throttle_names(mask), clock, energy)


def _energy(chosen: list[_Poll], before: _Poll | None, after: _Poll | None, start: int, end: int) -> float | None:
    """Joules over ``[start, end]``: the energy counter interpolated at both ends when polls bracket the window and
    the counter advanced; otherwise power integrated over the window (never a stale counter's 0 J)."""
    if before is not None and after is not None and before.energy is not None and after.energy is not None:
        counter = [(p.ts, p.energy) for p in chosen if p.energy is not None]
        joules = _linear(counter, end) - _linear(counter, start)
        if joules > 0 or (joules == 0 and end == start):
            return joules
    power = _mean([(p.ts, p.power) for p in chosen if p.power is not None], start, end)
    if power is None:
        return None
    return power * (end - start) / 1e9
