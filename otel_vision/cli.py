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
        description="Runs a small CNN (random weights) through preprocess, inference and postprocess, prints the "
        "trace as a waterfall and a per-stage summary, and exports over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.",
    )
    demo.add_argument("--images", type=_positive, default=4, help="how many images (default 4)")
    demo.add_argument("--size", type=_positive, default=224, help="image side in pixels (default 224)")
    demo.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
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
        return _demo.run(images=args.images, device=args.device, size=args.size)
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        print(f"otel-vision demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
