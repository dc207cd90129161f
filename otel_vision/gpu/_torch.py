"""The real `CudaBackend`: torch.cuda events and allocator counters, bound lazily to an already imported torch."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from otel_vision.gpu._backends import MemoryStats


class TorchCudaBackend:
    """`CudaBackend` over ``torch.cuda``. It never imports torch: it uses torch once the application has."""

    def __init__(self) -> None:
        self._torch: Any = None
        self._pools: defaultdict[int, list[Any]] = defaultdict(list)
        self._uuids: dict[int, str | None] = {}
        self._seen: set[int] = set()

    def _cuda(self) -> Any:
        torch = self._torch
        if torch is None:
            torch = sys.modules.get("torch")
            if torch is None or not hasattr(torch, "cuda"):
                return None
            self._torch = torch
        return torch.cuda

    def active_device(self) -> int | None:
        torch = self._torch  # read here: this runs at every span start
        cuda = torch.cuda if torch is not None else self._cuda()
        if cuda is None or not cuda.is_initialized():
            return None
        device: int = cuda.current_device()
        if device not in self._seen:
            self._seen.add(device)
        return device

    def record_event(self, device: int) -> object:
        pool = self._pools[device]
        try:
            event = pool.pop()
        except IndexError:
            event = self._torch.cuda.Event(enable_timing=True)
        event.record()  # on the current stream of the current device, i.e. where the stage enqueues its work
        return event

    def event_done(self, event: object) -> bool:
        return bool(event.query())  # type: ignore[attr-defined]  # a torch.cuda.Event

    def elapsed_seconds(self, start: object, end: object) -> float:
        return float(start.elapsed_time(end)) / 1000.0  # type: ignore[attr-defined]  # torch.cuda.Event, in ms

    def release_event(self, device: int, event: object) -> None:
        self._pools[device].append(event)

    def memory(self, device: int) -> MemoryStats:
        # One nested-dict call instead of memory_allocated()/max_memory_allocated(), which flatten and sort the
        # whole stats dict on every call.
        stats = self._torch.cuda.memory_stats_as_nested_dict(device)
        allocated = stats.get("allocated_bytes", {}).get("all", {})
        reserved = stats.get("reserved_bytes", {}).get("all", {})
        return MemoryStats(
            allocated=int(allocated.get("current", 0)),
            peak=int(allocated.get("peak", 0)),
            reserved=int(reserved.get("current", 0)),
        )

    def reset_peak(self, device: int) -> None:
        self._torch.cuda.reset_peak_memory_stats(device)

    def device_uuid(self, device: int) -> str | None:
        if device in self._uuids:
            return self._uuids[device]
        uuid: str | None = None
        try:
            raw = str(self._torch.cuda.get_device_properties(device).uuid)
            uuid = raw if raw.startswith(("GPU-", "MIG-")) else f"GPU-{raw}"
        except Exception:  # an old torch without .uuid: the spans then carry no hw.id
            uuid = None
        self._uuids[device] = uuid
        return uuid

    def initialized_devices(self) -> Sequence[int]:
        cuda = self._cuda()
        if cuda is None or not cuda.is_initialized():
            return ()
        return sorted(self._seen) or [cuda.current_device()]
