"""Decorate your own pipeline with `otel_vision.stage()`: one trace per request, a span per stage.

    python examples/decorate_your_pipeline.py                 # draws each trace in the terminal
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 python examples/decorate_your_pipeline.py

Works on CPU and CUDA (GPU time and memory appear on the spans when CUDA is used).
"""

from __future__ import annotations

import logging
import os

import torch

import otel_vision

log = logging.getLogger("example.pipeline")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    torch.nn.Linear(8, 4),
).to(DEVICE).eval()  # fmt: skip


@otel_vision.stage("load")
def load_frames(count: int):
    """A generator stage: its span covers the whole iteration, however far the consumer goes."""
    for _ in range(count):
        yield torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8)


@otel_vision.stage("preprocess")
def preprocess(frame: torch.Tensor) -> torch.Tensor:
    x = frame.permute(2, 0, 1).float().div(255).unsqueeze(0)
    return torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear").to(DEVICE)


@otel_vision.stage("inference", attributes={"vision.model.name": "toy-cnn"})
def inference(x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return MODEL(x)


@otel_vision.stage("postprocess")
def postprocess(logits: torch.Tensor) -> int:
    return int(logits.argmax(dim=-1).cpu())


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    # No collector configured: draw each trace in the terminal (stderr). With an endpoint: export over OTLP.
    exporter = None if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "waterfall"
    otel_vision.configure(service_name="decorated-pipeline", exporter=exporter)
    for index, frame in enumerate(load_frames(3)):
        with otel_vision.request("classify", attributes={"vision.model.name": "toy-cnn", "frame.index": index}):
            label = postprocess(inference(preprocess(frame)))
            log.info("frame %d -> class %d", index, label)  # exported with this request's trace id
    otel_vision.shutdown()


if __name__ == "__main__":
    main()
