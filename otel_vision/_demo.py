"""`otel-vision demo`: a small CNN, built in code with random weights, traced through every stage offline."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from otel_vision import attributes as a
from otel_vision._console import render_summary, render_waterfall
from otel_vision._setup import configure
from otel_vision._stage import request, stage

logger = logging.getLogger("otel_vision.demo")
# The demos' own records are part of what they show (exported with their trace ids), whatever the root level is.
logger.setLevel(logging.INFO)

LABELS = ("cat", "dog", "car", "bus", "person", "bicycle", "tree", "boat")
MODEL_NAME = "tiny-cnn"
_ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SystemExit("otel-vision demo needs torch: pip install 'otel-vision[torch]'") from None
    return torch


def build_model(torch: Any) -> Any:
    """A small classifier: three conv blocks and a linear head, random weights (nothing is downloaded)."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, len(LABELS)),
    )  # fmt: skip


@contextmanager
def _session(service_name: str, out: Any) -> Iterator[None]:
    """Configure otel_vision for a demo: spans kept in memory for the waterfall, OTLP too when an endpoint is set."""
    exporting = any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)
    memory = InMemorySpanExporter()
    handle = configure(
        service_name=None if os.environ.get("OTEL_SERVICE_NAME") else service_name,
        exporter=None if exporting else "none",
        additional_span_processors=[SimpleSpanProcessor(memory)],
    )
    try:
        yield
    finally:
        handle.force_flush()
        spans = memory.get_finished_spans()
        print(render_waterfall(spans), file=out)
        print("\nper-stage summary (host time; gpu = CUDA device time)", file=out)
        print(render_summary(spans), file=out)
        if exporting:
            print("\nexported over OTLP to the configured endpoint", file=out)
        handle.shutdown()


def run(images: int = 4, device: str = "auto", size: int = 224, out: Any = None) -> int:
    """Classify ``images`` synthetic frames with a small CNN and show the trace."""
    out = out or sys.stdout
    torch = _require_torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _session("otel-vision-demo", out):
        _classify(torch, images, device, size)
    return 0


def _classify(torch: Any, images: int, device: str, size: int) -> None:
    model = build_model(torch).to(device).eval()
    generator = torch.Generator().manual_seed(1)

    @stage("preprocess", attributes={a.VISION_MODEL_NAME: MODEL_NAME})
    def preprocess(frame: Any) -> Any:
        x = frame.permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.25

    @stage("inference", attributes={a.VISION_MODEL_NAME: MODEL_NAME})
    def inference(x: Any) -> Any:
        with torch.inference_mode():
            return model(x.to(device, non_blocking=True))

    @stage("postprocess", attributes={a.VISION_MODEL_NAME: MODEL_NAME})
    def postprocess(logits: Any) -> list[tuple[str, float]]:
        probs = logits.softmax(dim=-1)[0].cpu()
        top = probs.topk(3)
        return [(LABELS[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    root_attributes: dict[str, AttributeValue] = {
        a.VISION_MODEL_NAME: MODEL_NAME,
        a.VISION_TASK: "classify",
        a.VISION_BATCH_SIZE: 1,
        a.VISION_IMAGE_WIDTH: size,
        a.VISION_IMAGE_HEIGHT: size,
    }
    for index in range(images):
        frame = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
        with request("classify", attributes=root_attributes):
            top = postprocess(inference(preprocess(frame)))
            logger.info("image %d: %s (%.2f)", index, top[0][0], top[0][1])


def run_yolo(
    images: int = 2, weights: str | None = None, device: str = "auto", imgsz: int = 640, out: Any = None
) -> int:
    """Run YOLO (random ``yolov8n.yaml`` unless ``weights``) on the images ultralytics ships, and show the traces."""
    out = out or sys.stdout
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO  # type: ignore[attr-defined]  # a lazy attribute of the package
        from ultralytics.utils import ASSETS
    except ImportError:
        raise SystemExit("otel-vision demo yolo needs ultralytics: pip install 'otel-vision[ultralytics]'") from None
    from otel_vision._instrument import instrument_ultralytics

    if weights is not None and not os.path.exists(weights):
        raise SystemExit(f"otel-vision demo yolo: --weights {weights!r} does not exist (nothing is downloaded)")
    samples = sorted(ASSETS.glob("*.jpg"))
    sources = [samples[i % len(samples)] for i in range(images)]
    kwargs: dict[str, Any] = {"imgsz": imgsz, "verbose": False}
    if device != "auto":
        kwargs["device"] = device
    with _session("otel-vision-demo-yolo", out):
        model = YOLO(weights or "yolov8n.yaml")
        instrument_ultralytics(model)
        for source in sources:
            model.predict(source, **kwargs)  # one trace per image
        model.predict(sources, **kwargs)  # and one batch of all of them
    return 0


INSTRUCTIONS = ("make it snowy", "add fireworks in the sky", "turn the bus into a boat")


def run_pix2pix(images: int = 2, steps: int = 10, device: str = "auto", size: int = 64, out: Any = None) -> int:
    """Edit synthetic photos with a tiny random InstructPix2Pix pipeline (offline) and show the traces."""
    out = out or sys.stdout
    torch = _require_torch()
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("otel-vision demo pix2pix needs diffusers: pip install 'otel-vision[diffusers]'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from otel_vision._instrument import instrument_diffusers
    from otel_vision._tiny_pipelines import tiny_instruct_pix2pix

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _session("otel-vision-demo-pix2pix", out):
        pipe = tiny_instruct_pix2pix(device=device)
        instrument_diffusers(pipe)
        generator = torch.Generator().manual_seed(0)
        for index in range(images):
            pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
            instruction = INSTRUCTIONS[index % len(INSTRUCTIONS)]
            with request("edit", attributes={a.VISION_MODEL_NAME: type(pipe).__name__}):
                result = pipe(
                    instruction, image=Image.fromarray(pixels), num_inference_steps=steps, generator=generator
                )
                logger.info("edited image %d -> %s", index, result.images[0].size)
    return 0
