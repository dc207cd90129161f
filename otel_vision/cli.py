"""The ``otel-vision`` command: ``demo`` runs an instrumented model offline, ``doctor`` says what was detected."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-vision", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run an instrumented model offline and show the trace waterfall",
        description="Runs an instrumented model offline (random weights, nothing downloaded), prints each trace as a "
        "waterfall and a per-stage summary, and exports over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set. "
        "cnn: a small CNN through preprocess, inference and postprocess. yolo: YOLOv8n on ultralytics' sample images. "
        "pix2pix: a tiny InstructPix2Pix pipeline, with a span per denoising step.",
    )
    demo.add_argument(
        "model", nargs="?", choices=("cnn", "yolo", "pix2pix"), default="cnn", help="what to run (default cnn)"
    )
    demo.add_argument("--images", type=_positive, default=None, help="how many images (cnn: 4, yolo: 2, pix2pix: 2)")
    demo.add_argument("--size", type=_positive, default=None, help="image side (cnn: 224, yolo: 640, pix2pix: 64)")
    demo.add_argument("--steps", type=_positive, default=10, help="pix2pix: denoising steps (default 10)")
    demo.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    demo.add_argument("--weights", default=None, help="yolo: a local .pt file instead of random yolov8n.yaml weights")
    doctor = commands.add_parser("doctor", help="show GPUs, NVML, torch, optional libraries and the exporter setup")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-vision`` command."""
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from otel_vision import _doctor

        return _doctor.main(as_json=args.json)
    from otel_vision import _demo

    try:
        if args.model == "pix2pix":
            return _demo.run_pix2pix(
                images=args.images or 2, steps=args.steps, device=args.device, size=args.size or 64
            )
        if args.model == "yolo":
            return _demo.run_yolo(
                images=args.images or 2, weights=args.weights, device=args.device, imgsz=args.size or 640
            )
        return _demo.run(images=args.images or 4, device=args.device, size=args.size or 224)
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        print(f"otel-vision demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
