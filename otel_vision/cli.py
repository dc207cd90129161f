"""The ``otel-vision`` command: ``demo`` runs an instrumented model offline, ``doctor`` says what was detected."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from otel_vision._version import __version__

_DESCRIPTION = "OpenTelemetry tracing for vision models: try it offline, and check this machine's setup."
_EPILOG = """examples:
  otel-vision demo                       a small CNN on the CPU or GPU, as a trace waterfall
  otel-vision demo pix2pix --steps 20    a tiny InstructPix2Pix pipeline, one span per denoising step
  otel-vision doctor                     GPUs, NVML, torch, exporter settings and collector reachability

Export the demo's telemetry by setting OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317)."""
_DEMO_DESCRIPTION = """Runs an instrumented model offline (random weights, nothing downloaded), prints each trace as
a waterfall and a per-stage summary, and exports over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

models:
  cnn      a small CNN: preprocess, inference, postprocess per image
  yolo     YOLOv8n on ultralytics' sample images (needs otel-vision[ultralytics])
  pix2pix  a tiny InstructPix2Pix pipeline with a span per denoising step (needs otel-vision[diffusers])"""
_DEFAULTS = {"cnn": (4, 224), "yolo": (2, 640), "pix2pix": (2, 64)}


class _UsageError(Exception):
    """A bad option: answered with one sentence and exit status 2."""


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        sdk = version("opentelemetry-sdk")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        sdk = "not installed"
    return f"otel-vision {__version__} (opentelemetry-sdk {sdk}, Python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-vision",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_versions())
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,doctor}")
    demo = commands.add_parser(
        "demo",
        help="run an instrumented model offline and show the trace waterfall",
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "model", nargs="?", choices=("cnn", "yolo", "pix2pix"), default="cnn", help="what to run (default: cnn)"
    )
    demo.add_argument("--images", type=_positive, help="how many images (default: cnn 4, yolo 2, pix2pix 2)")
    demo.add_argument("--size", type=_positive, help="image side in pixels (default: cnn 224, yolo 640, pix2pix 64)")
    demo.add_argument("--steps", type=_positive, help="pix2pix only: denoising steps (default: 10)")
    demo.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    demo.add_argument("--weights", help="yolo only: a local .pt file instead of random yolov8n.yaml weights")
    doctor = commands.add_parser(
        "doctor",
        help="show GPUs, NVML, torch, optional libraries and the exporter setup",
        description="Shows what otel_vision finds on this machine and in its configuration, and why something is "
        "off. Exit status: 2 when a variable is invalid, 1 when an endpoint does not accept OTLP, else 0.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--no-network", action="store_true", help="do not contact the configured endpoints")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from otel_vision import _config, _demo

    if args.steps is not None and args.model != "pix2pix":
        raise _UsageError(f"--steps applies to pix2pix only ({args.model} has no denoising steps)")
    if args.weights is not None and args.model != "yolo":
        raise _UsageError(f"--weights applies to yolo only, not {args.model}")
    if _config.resolve(environ=os.environ, warn=False).disabled:
        raise _UsageError(
            "OTEL_SDK_DISABLED is true, so otel_vision records nothing and there is no trace to show; "
            "unset it (or set it to false) to run the demo"
        )
    images, size = _DEFAULTS[args.model]
    images, size = args.images or images, args.size or size
    try:
        if args.model == "pix2pix":
            return _demo.run_pix2pix(images=images, steps=args.steps or 10, device=args.device, size=size)
        if args.model == "yolo":
            return _demo.run_yolo(images=images, weights=args.weights, device=args.device, imgsz=size)
        return _demo.run(images=images, device=args.device, size=size)
    except (_demo.DemoError, ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-vision`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            from otel_vision import _doctor

            return _doctor.main(as_json=args.json, check_endpoint=not args.no_network)
        return _demo(args)
    except _UsageError as exc:
        parser.exit(2, f"otel-vision {args.command}: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted\n")
    except Exception as exc:  # a failure inside a library: one sentence, not a traceback
        parser.exit(1, f"otel-vision {args.command} failed: {type(exc).__name__}: {exc}\n")
    return 0  # pragma: no cover - parser.exit() does not return


if __name__ == "__main__":
    sys.exit(main())
