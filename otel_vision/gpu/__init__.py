"""GPU telemetry: an NVML sampler thread, torch allocator and CUDA-event timing, and export-time span enrichment.

Everything here degrades to nothing: no GPU, no NVML, no torch, a MIG slice or an NVML error leave the GPU
attributes and metrics absent, log one debug line, and never raise into the application.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.metrics import Meter
from opentelemetry.sdk.trace import SpanProcessor

from otel_vision._errors import our_logger
from otel_vision.gpu._backends import (
    CudaBackend,
    DeviceInfo,
    DeviceReading,
    GpuUnavailable,
    MemoryStats,
    NvmlBackend,
)
from otel_vision.gpu._metrics import register_allocator_instruments, register_nvml_instruments
from otel_vision.gpu._nvml import PynvmlBackend
from otel_vision.gpu._sampler import NvmlSampler
from otel_vision.gpu._spans import GpuSpanProcessor, SpanGpuProbe
from otel_vision.gpu._torch import TorchCudaBackend

__all__ = [
    "CudaBackend",
    "DeviceInfo",
    "DeviceReading",
    "GpuTelemetry",
    "GpuUnavailable",
    "MemoryStats",
    "NvmlBackend",
    "NvmlSampler",
    "PynvmlBackend",
    "TorchCudaBackend",
]

logger = our_logger("otel_vision.gpu")


class GpuTelemetry:
    """The GPU half of one telemetry pipeline: detection, sampler, span probe and instruments.

    Args:
        interval: seconds between NVML polls.
        history: seconds of utilization history kept for joining span windows.
        track_peak: whether spans get ``gpu.memory.peak`` (resets torch's process-wide peak counter).
        cuda: the CUDA backend; default `TorchCudaBackend` (binds to torch once the application imports it).
        nvml: the NVML backend; default `PynvmlBackend`, or nothing when NVML cannot be initialized.
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        history: float = 300.0,
        track_peak: bool = True,
        cuda: CudaBackend | None = None,
        nvml: NvmlBackend | None = None,
    ) -> None:
        self.devices: Sequence[DeviceInfo] = ()
        self.nvml_error: str | None = None
        backend = nvml
        if backend is None:
            try:
                backend = PynvmlBackend()
            except GpuUnavailable as exc:
                self.nvml_error = str(exc)
        if backend is not None:
            try:
                self.devices = tuple(backend.devices())
            except GpuUnavailable as exc:
                self.nvml_error = str(exc)
                backend.close()
                backend = None
        if self.nvml_error is not None:
            logger.debug("otel_vision: no NVML GPU telemetry: %s", self.nvml_error)
        self.cuda: CudaBackend = cuda if cuda is not None else TorchCudaBackend()
        self.probe = SpanGpuProbe(self.cuda, track_peak=track_peak)
        self.sampler = NvmlSampler(backend, self.devices, interval, history) if backend is not None else None
        self._processor: GpuSpanProcessor | None = None

    def resource_attributes(self) -> dict[str, str | int]:
        """Nothing: the semantic conventions define no resource attributes for GPUs. The model and driver of each GPU
        travel as ``hw.model`` and ``hw.driver_version`` on its ``hw.gpu.*`` metrics (docs/names.md)."""
        return {}

    def start(self, meter: Meter) -> None:
        """Start the sampler thread and create the observable instruments."""
        if self.sampler is not None:
            self.sampler.start()
            register_nvml_instruments(meter, self.sampler)
        register_allocator_instruments(meter, self.cuda)

    def span_processor(self, processors: Sequence[SpanProcessor]) -> SpanProcessor:
        """Wrap ``processors`` so that spans reach them with ``gpu.time`` and ``gpu.utilization`` completed."""
        self._processor = GpuSpanProcessor(self.probe, self.cuda, self.sampler, processors)
        return self._processor

    def stop(self) -> None:
        """Stop the sampler (the span processor is shut down with its provider)."""
        if self.sampler is not None:
            self.sampler.stop()
