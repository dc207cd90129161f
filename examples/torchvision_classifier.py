"""A torchvision classifier served in a loop: `stage()` for preprocessing, `instrument_module` for the model.

    python examples/torchvision_classifier.py --requests 5
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 python examples/torchvision_classifier.py --device cuda
    OTEL_VISION_NVTX=true nsys profile -t cuda,nvtx python examples/torchvision_classifier.py --device cuda

Weights are random (nothing is downloaded). Each request is one trace: classify > preprocess, inference (> layer4,
fc), postprocess. With OTEL_VISION_NVTX=true the same names appear as NVTX ranges on the Nsight Systems timeline.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
import torchvision

import otel_vision

log = logging.getLogger("example.classifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    # No collector configured: draw each trace in the terminal (stderr). With an endpoint: export over OTLP.
    exporter = None if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "waterfall"
    otel_vision.configure(service_name="resnet-classifier", exporter=exporter)

    model = torchvision.models.resnet18(weights=None).eval().to(args.device)
    otel_vision.instrument_module(model, name="resnet18", submodules=["layer4", "fc"])
    mean = torch.tensor([0.485, 0.456, 0.406], device=args.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=args.device).view(1, 3, 1, 1)

    @otel_vision.stage("preprocess", attributes={"vision.model.name": "resnet18"})
    def preprocess(frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(args.device, non_blocking=True).permute(0, 3, 1, 2).float().div(255)
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        return (x - mean) / std

    @otel_vision.stage("postprocess", attributes={"vision.model.name": "resnet18"})
    def postprocess(logits: torch.Tensor) -> list[int]:
        return logits.argmax(dim=1).tolist()

    for index in range(args.requests):
        frames = torch.randint(0, 256, (args.batch, 256, 320, 3), dtype=torch.uint8)
        attributes = {"vision.model.name": "resnet18", "vision.batch.size": args.batch, "request.index": index}
        with otel_vision.request("classify", attributes=attributes), torch.inference_mode():
            labels = postprocess(model(preprocess(frames)))
            log.info("request %d: classes %s", index, labels)
    otel_vision.shutdown()


if __name__ == "__main__":
    main()
