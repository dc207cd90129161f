"""Every span-attribute, resource-attribute and metric name that otel_vision emits.

This module is the single source of truth: no other module spells a name. Names under ``hw.*`` follow the
OpenTelemetry hardware semantic conventions (status: development); ``vision.*``, ``diffusion.*`` and ``gpu.*`` are
ours and documented in ``docs/names.md``.
"""

from __future__ import annotations

from typing import Final

# --- span attributes -------------------------------------------------------------------------------------------
VISION_OPERATION: Final = "vision.operation"
"""Root spans: ``predict``, ``track``, ``val``, ``pipeline``, ``request``, …"""
VISION_STAGE: Final = "vision.stage"
"""Stage spans: ``load``, ``preprocess``, ``inference``, ``postprocess``, … or the user's own name."""
VISION_MODEL_NAME: Final = "vision.model.name"
VISION_TASK: Final = "vision.task"
VISION_MODEL_ID: Final = "vision.model.id"
"""Where the model came from (a hub id or a path), when known; span only."""
VISION_BATCH_SIZE: Final = "vision.batch.size"
VISION_IMAGE_WIDTH: Final = "vision.image.width"
VISION_IMAGE_HEIGHT: Final = "vision.image.height"
VISION_DETECTIONS_COUNT: Final = "vision.detections.count"
VISION_DEVICE: Final = "vision.device"
"""Where the model runs: ``cpu``, ``cuda:0``, …"""
VISION_HALF: Final = "vision.half"
"""Whether inference runs in half precision."""
VISION_DTYPE: Final = "vision.dtype"
"""Parameter dtype of the main model (``float16``, ``float32``, …)."""
VISION_INPUT_SIZE: Final = "vision.input.size"
"""Inference input size in pixels as configured (``imgsz``): an int or ``[height, width]``."""
VISION_INPUT_SHAPES: Final = "vision.input.shapes"
"""Module spans: dtype and shape of the first input tensors, e.g. ``["float32[8,3,224,224]"]`` (never values)."""
VISION_MODULE_PATH: Final = "vision.module.path"
"""Submodule spans: the submodule's path in its model, e.g. ``backbone`` or ``layer4.1``."""
VISION_SOURCE_KIND: Final = "vision.source.kind"
"""What the images came from: ``image``, ``video``, ``stream``, ``tensor``, ``array``, …"""
VISION_STREAM_ID: Final = "vision.stream.id"
"""Which camera or stream a frame batch came from."""
VISION_IMAGE_INDEX: Final = "vision.image.index"
"""Position of an image in its batch (per-image events)."""
VISION_DETECTIONS_CLASSES: Final = "vision.detections.classes"
"""Per-image events: ``class:count`` for the most frequent classes (at most 5)."""
VISION_IMAGES_COUNT: Final = "vision.images.count"
"""Root spans: images processed by the whole call."""
VISION_BATCHES_COUNT: Final = "vision.batches.count"
"""Root spans: batches processed by the whole call."""
VISION_VAL_PREFIX: Final = "vision.val."
"""YOLO ``val`` roots: prefix of the validation metrics, e.g. ``vision.val.map50-95_b``."""
VISION_INSTRUCTION_CATEGORY: Final = "vision.instruction.category"
VISION_PROMPT: Final = "vision.prompt"
"""Recorded only when prompt capture is switched on."""
VISION_ITEMS: Final = "vision.items"
"""Generator stages: how many items the generator produced."""
VISION_ABANDONED: Final = "vision.abandoned"
"""Generator stages: ``True`` when the consumer stopped before exhaustion (``close()`` or garbage collection)."""

DIFFUSION_STEP_INDEX: Final = "diffusion.step.index"
DIFFUSION_STEP_TIMESTEP: Final = "diffusion.step.timestep"
DIFFUSION_NUM_INFERENCE_STEPS: Final = "diffusion.num_inference_steps"
DIFFUSION_GUIDANCE_SCALE: Final = "diffusion.guidance_scale"
DIFFUSION_IMAGE_GUIDANCE_SCALE: Final = "diffusion.image_guidance_scale"
DIFFUSION_SCHEDULER: Final = "diffusion.scheduler"
DIFFUSION_STEPS_COUNT: Final = "diffusion.steps.count"
"""Root: denoising step spans the call produced (``2N-1`` with a second-order scheduler)."""
DIFFUSION_NUM_TIMESTEPS: Final = "diffusion.num_timesteps"
"""Root: timesteps the pipeline actually iterated."""

GPU_TIME: Final = "gpu.time"
"""Seconds of device time between CUDA events recorded at the stage's start and end."""
GPU_MEMORY_ALLOCATED: Final = "gpu.memory.allocated"
"""Span attribute: torch allocator bytes at the stage's end. Also the name of the per-device observable metric."""
GPU_MEMORY_PEAK: Final = "gpu.memory.peak"
"""Peak torch allocator bytes during the stage (correct under nesting)."""
GPU_MEMORY_RESERVED: Final = "gpu.memory.reserved"
"""Metric: bytes held by the torch caching allocator, per device."""
GPU_UTILIZATION: Final = "gpu.utilization"
"""0–1, mean NVML utilization over the stage's own time window."""
GPU_DEVICE: Final = "gpu.device"
"""Metric attribute of the torch allocator metrics: the CUDA device index in this process."""

ERROR_TYPE: Final = "error.type"
CUDA_OOM: Final = "cuda_oom"
"""Value of ``error.type`` for CUDA out-of-memory errors."""

# --- hardware semantic conventions (metrics attributes; ``hw.id`` also on stage spans) ------------------------
# (semantic-conventions v1.44.0, model/hardware: ``hw.id`` required; the rest recommended where the metric lists it)
HW_ID: Final = "hw.id"
"""The GPU's UUID (``GPU-…``/``MIG-…``); a GPU's temperature sensor has its own id, ``<GPU uuid>/temperature``."""
HW_NAME: Final = "hw.name"
"""A short name: ``gpu0`` for the GPU with NVML index 0, ``gpu0 temperature`` for its sensor."""
HW_MODEL: Final = "hw.model"
"""The model string NVML reports, e.g. ``NVIDIA H100 80GB HBM3`` (``hw.gpu.*`` metrics)."""
HW_VENDOR: Final = "hw.vendor"
HW_DRIVER_VERSION: Final = "hw.driver_version"
HW_PARENT: Final = "hw.parent"
"""On a GPU's temperature sensor: the GPU's ``hw.id``."""
HW_TYPE: Final = "hw.type"
"""``gpu`` on ``hw.power``/``hw.energy`` (required there), ``temperature`` on ``hw.temperature``; never on hw.gpu.*."""
HW_GPU_TASK: Final = "hw.gpu.task"
HW_SENSOR_LOCATION: Final = "hw.sensor_location"

HW_TYPE_GPU: Final = "gpu"
HW_TYPE_TEMPERATURE: Final = "temperature"
HW_VENDOR_NVIDIA: Final = "NVIDIA"

# --- metrics ---------------------------------------------------------------------------------------------------
METRIC_STAGE_DURATION: Final = "vision.stage.duration"
METRIC_REQUEST_DURATION: Final = "vision.request.duration"
METRIC_REQUESTS: Final = "vision.requests"
METRIC_QUEUE_DURATION: Final = "vision.queue.duration"
METRIC_IMAGES: Final = "vision.images"
METRIC_DETECTIONS: Final = "vision.detections"
VISION_GPU_INCOMPLETE_SPANS: Final = "vision.gpu.incomplete_spans"
"""Counter: GPU spans exported without ``gpu.time`` (``error.type`` = ``timeout``: events not complete within the
GPU span processor's delay; ``waiting_full``: too many spans were waiting)."""

# The export path's own counters (OpenTelemetry SDK self-observability names; ``error.type`` when lost).
METRIC_SDK_SPANS_PROCESSED: Final = "otel.sdk.processor.span.processed"
METRIC_SDK_LOGS_PROCESSED: Final = "otel.sdk.processor.log.processed"
METRIC_SDK_SPANS_EXPORTED: Final = "otel.sdk.exporter.span.exported"
METRIC_SDK_LOGS_EXPORTED: Final = "otel.sdk.exporter.log.exported"
METRIC_SDK_POINTS_EXPORTED: Final = "otel.sdk.exporter.metric_data_point.exported"

METRIC_HW_GPU_UTILIZATION: Final = "hw.gpu.utilization"
METRIC_HW_GPU_MEMORY_USAGE: Final = "hw.gpu.memory.usage"
METRIC_HW_GPU_MEMORY_LIMIT: Final = "hw.gpu.memory.limit"
METRIC_HW_GPU_MEMORY_UTILIZATION: Final = "hw.gpu.memory.utilization"
METRIC_HW_POWER: Final = "hw.power"
METRIC_HW_ENERGY: Final = "hw.energy"
METRIC_HW_TEMPERATURE: Final = "hw.temperature"
METRIC_GPU_MEMORY_ALLOCATED: Final = GPU_MEMORY_ALLOCATED
METRIC_GPU_MEMORY_RESERVED: Final = GPU_MEMORY_RESERVED

# --- well-known values -----------------------------------------------------------------------------------------
OTHER: Final = "other"
"""Replaces a metric attribute value once its cardinality cap is reached."""
