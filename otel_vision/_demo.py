"""`otel-vision demo`: an instrumented model run offline, shown as a waterfall and a per-stage summary.

Three models: a small CNN built in code (``cnn``), YOLOv8n with random weights on ultralytics' sample images
(``yolo``) and a tiny random InstructPix2Pix pipeline (``pix2pix``). Nothing is downloaded. Everything the demo
prints goes through `DemoUI`, which knows the terminal's width and encoding and shows progress on stderr.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from otel_vision import _config, _export
from otel_vision import attributes as a
from otel_vision._console import render_waterfall, stage_stats
from otel_vision._errors import our_logger
from otel_vision._setup import Handle, configure
from otel_vision._stage import request, stage

logger = our_logger("otel_vision.demo")
# The demos' own records are part of what they show (exported with their trace ids), whatever the root level is.
logger.setLevel(logging.INFO)

LABELS = ("cat", "dog", "car", "bus", "person", "bicycle", "tree", "boat")
MODEL_NAME = "tiny-cnn"
INSTRUCTIONS = ("make it snowy", "add fireworks in the sky", "turn the bus into a boat")


class DemoError(Exception):
    """A mistake the user can fix (a device this machine lacks, a missing file): one sentence, exit status 2."""


class DemoUI:
    """The demo's terminal: results on stdout, progress on stderr, sized to the terminal, ASCII where needed."""

    def __init__(self, out: Any = None, err: Any = None) -> None:
        from rich.console import Console

        self.console = Console(file=out, highlight=False, emoji=False)
        self.err = Console(file=err, stderr=err is None, highlight=False, emoji=False)

    @property
    def ascii(self) -> bool:
        return not self.console.encoding.lower().replace("-", "").startswith("utf")

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one plain line (no markup is interpreted in ``text``)."""
        self.console.print(text, style=style, markup=False, overflow="fold")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        """Show a progress bar on stderr while the block runs; the block calls the yielded function per item."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on stderr while a one-off step (building a model) runs."""
        with self.err.status(message, spinner="line"):
            yield

    def summary(self, spans: list[ReadableSpan]) -> None:
        """The per-stage table: the first call (warm-up) apart from the steady state."""
        from rich import box
        from rich.table import Table

        table = Table(box=box.ASCII if self.ascii else box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("span", overflow="fold")
        for title in ("count", "first ms", "p50 ms", "p95 ms", "mean ms", "gpu ms"):
            table.add_column(title, justify="right", no_wrap=True)

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        for s in stage_stats(spans):
            table.add_row(
                s.name, str(s.count), cell(s.first_ms), cell(s.p50_ms), cell(s.p95_ms), cell(s.mean_ms), cell(s.gpu_ms)
            )
        self.console.print(table)


@dataclass
class _Run:
    device: str
    device_line: str


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SystemExit("otel-vision demo needs torch: pip install 'otel-vision[torch]'") from None
    return torch


def resolve_device(requested: str) -> _Run:
    """The torch device to run on and one line saying which it is and why GPU columns are empty, if they are.

    Raises `DemoError` for a device this machine cannot provide (``cuda`` without CUDA, ``cuda:3`` on one GPU).
    """
    torch = _require_torch()
    cuda = bool(torch.cuda.is_available())
    count = torch.cuda.device_count() if cuda else 0
    wanted = requested.strip().lower()
    if wanted == "auto":
        wanted = "cuda" if cuda else "cpu"
    try:
        device = torch.device(wanted)
    except (RuntimeError, ValueError):
        raise DemoError(f"--device {requested!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DemoError(f"--device {requested!r}: the demo runs on cpu or cuda")
    if device.type == "cuda":
        if not cuda:
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "torch sees no CUDA device (driver missing, or CUDA_VISIBLE_DEVICES empty)"
            )
            raise DemoError(f"--device {requested}: {why}; use --device cpu (or auto)")
        index = device.index or 0
        if index >= count:
            raise DemoError(f"--device {requested}: there are {count} CUDA device(s), numbered 0 to {count - 1}")
    gpu_on = _config.resolve(environ=os.environ, warn=False).gpu
    if device.type == "cpu":
        reason = "no CUDA device" if not cuda else "--device cpu was chosen"
        line = f"device: cpu (torch {torch.__version__}) - gpu ms stays empty: {reason}"
    else:
        name = torch.cuda.get_device_name(device.index or 0)
        line = f"device: {device} {name} - gpu ms is CUDA event time per span"
        if not gpu_on:
            line = f"device: {device} {name} - gpu ms stays empty: OTEL_VISION_GPU=false turns GPU telemetry off"
    return _Run(str(device), line)


def _export_report(handle: Handle) -> list[str]:
    """The lines that say where the telemetry went and, per signal, what was delivered and what was lost (shown
    last, after the pipeline shut down, so the counts are final)."""
    settings = handle.settings
    kinds = {"traces": settings.traces_exporter, "metrics": settings.metrics_exporter, "logs": settings.logs_exporter}
    otlp = [signal for signal in _config.SIGNALS if kinds[signal] == "otlp"]
    if not otlp:
        return []
    destinations = sorted({_config.redact_endpoint(settings.endpoint_for(signal)) for signal in otlp})
    lines = [f"OTLP ({settings.protocol}) to {', '.join(destinations)}:"]
    lines += [f"  {line}" for line in _export.describe(handle.delivery(), otlp)]
    return lines


@contextmanager
def _session(service_name: str, ui: DemoUI, run: _Run) -> Iterator[None]:
    """Configure otel_vision for a demo: spans kept in memory for the waterfall, OTLP too when an endpoint is set."""
    exporting = any(os.environ.get(f"OTEL_EXPORTER_OTLP_{s}ENDPOINT") for s in ("", "TRACES_", "METRICS_", "LOGS_"))
    memory = InMemorySpanExporter()
    handle = configure(
        service_name=None if os.environ.get("OTEL_SERVICE_NAME") else service_name,
        exporter=None if exporting else "none",
        additional_span_processors=[SimpleSpanProcessor(memory)],
    )
    ui.line(run.device_line, style="bold")
    try:
        yield
    finally:
        handle.force_flush(timeout_millis=2000)  # GPU enrichment for the waterfall; a dead collector must not stall
        spans = list(memory.get_finished_spans())
        ui.line()
        ui.line(render_waterfall(spans, width=ui.console.width, ascii=ui.ascii))
        ui.line()
        ui.line("per-stage summary (host ms; first = warm-up call, p50/p95/mean = calls after it)")
        ui.summary(spans)
        handle.shutdown(timeout=5.0)
        report = _export_report(handle) if exporting else []
        if report:
            ui.line()
            for line in report:
                ui.line(line)


def run(images: int = 4, device: str = "auto", size: int = 224, ui: DemoUI | None = None) -> int:
    """Classify ``images`` synthetic frames with a small CNN and show the trace."""
    ui = ui or DemoUI()
    torch = _require_torch()
    chosen = resolve_device(device)
    with _session("otel-vision-demo", ui, chosen):
        _classify(torch, images, chosen.device, size, ui)
    return 0


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


def _classify(torch: Any, images: int, device: str, size: int, ui: DemoUI) -> None:
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
    with ui.progress("classifying", images) as advance:
        for index in range(images):
            frame = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
            with request("classify", attributes=root_attributes):
                top = postprocess(inference(preprocess(frame)))
                logger.info("image %d: %s (%.2f)", index, top[0][0], top[0][1])
            advance()


def run_yolo(
    images: int = 2, weights: str | None = None, device: str = "auto", imgsz: int = 640, ui: DemoUI | None = None
) -> int:
    """Run YOLO (random ``yolov8n.yaml`` unless ``weights``) on the images ultralytics ships, and show the traces."""
    ui = ui or DemoUI()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO  # type: ignore[attr-defined]  # a lazy attribute of the package
        from ultralytics.utils import ASSETS
    except ImportError:
        raise SystemExit("otel-vision demo yolo needs ultralytics: pip install 'otel-vision[ultralytics]'") from None
    from otel_vision._instrument import instrument_ultralytics

    if weights is not None and not os.path.exists(weights):
        raise DemoError(f"--weights {weights!r} does not exist (nothing is downloaded)")
    chosen = resolve_device(device)
    samples = sorted(ASSETS.glob("*.jpg"))
    sources = [samples[i % len(samples)] for i in range(images)]
    kwargs: dict[str, Any] = {"imgsz": imgsz, "verbose": False, "device": chosen.device}
    with _session("otel-vision-demo-yolo", ui, chosen):
        with ui.status("building YOLOv8n"):
            model = YOLO(weights or "yolov8n.yaml")
            instrument_ultralytics(model)
        with ui.progress("detecting", images + 1) as advance:
            for source in sources:
                model.predict(source, **kwargs)  # one trace per image
                advance()
            model.predict(sources, **kwargs)  # and one batch of all of them
            advance()
    return 0


def run_pix2pix(
    images: int = 2, steps: int = 10, device: str = "auto", size: int = 64, ui: DemoUI | None = None
) -> int:
    """Edit synthetic photos with a tiny random InstructPix2Pix pipeline (offline) and show the traces."""
    ui = ui or DemoUI()
    torch = _require_torch()
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("otel-vision demo pix2pix needs diffusers: pip install 'otel-vision[diffusers]'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from otel_vision._instrument import instrument_diffusers
    from otel_vision._tiny_pipelines import tiny_instruct_pix2pix

    chosen = resolve_device(device)
    with _session("otel-vision-demo-pix2pix", ui, chosen):
        with ui.status("building a tiny InstructPix2Pix pipeline"):
            pipe = tiny_instruct_pix2pix(device=chosen.device)
            instrument_diffusers(pipe)
        generator = torch.Generator().manual_seed(0)
        with ui.progress("denoising steps", images * steps) as advance:

            def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                advance()
                return kwargs

            for index in range(images):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
                instruction = INSTRUCTIONS[index % len(INSTRUCTIONS)]
                with request("edit", attributes={a.VISION_MODEL_NAME: type(pipe).__name__}):
                    result = pipe(
                        instruction,
                        image=Image.fromarray(pixels),
                        num_inference_steps=steps,
                        generator=generator,
                        callback_on_step_end=on_step_end,
                    )
                    logger.info("edited image %d -> %s", index, result.images[0].size)
    return 0
