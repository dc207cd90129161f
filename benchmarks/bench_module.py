"""Overhead of `instrument_module`: ResNet-18 forward on CPU, instrumented versus not, in one process.

Samples of ``--calls`` forwards without hooks and with them alternate one by one (``uninstrument_module`` removes every
hook, so "not instrumented" is torch's hook-free fast path); the figures are medians, wall and process CPU time.

    python benchmarks/bench_module.py --samples 100
    python benchmarks/bench_module.py --submodules layer1 layer2 layer3 layer4 fc
    python benchmarks/bench_module.py --device cuda --batch 8 --size 224
"""

from __future__ import annotations

import argparse
import platform

import torch
import torchvision
from _ab import NullExporter, alternate, report
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel_vision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--submodules", nargs="*", default=None)
    args = parser.parse_args()

    otel_vision.configure(
        service_name="bench-module", exporter="none", logs=False,
        additional_span_processors=[BatchSpanProcessor(NullExporter())],
    )  # fmt: skip
    model = torchvision.models.resnet18(weights=None).eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    cuda = args.device.startswith("cuda")

    def run() -> None:
        with torch.inference_mode():
            for _ in range(args.calls):
                model(x)
            if cuda:
                torch.cuda.synchronize()

    plain, traced = alternate(
        run,
        lambda: otel_vision.instrument_module(model, name="resnet18", submodules=args.submodules),
        lambda: otel_vision.uninstrument_module(model),
        args.samples,
    )
    otel_vision.shutdown()
    spans = 1 + len(args.submodules or [])
    title = (
        f"ResNet-18 {args.device} batch={args.batch} {args.size}x{args.size}, {spans} span(s) per forward; "
        f"Python {platform.python_version()}, torch {torch.__version__}; "
        f"{args.samples} alternating samples of {args.calls} call(s)"
    )
    report(title, "forward", plain, traced, args.calls)


if __name__ == "__main__":
    main()
