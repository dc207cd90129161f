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
import statistics

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

    # The cost we add is per span, not per FLOP: measure it where nothing else hides it (a tiny Linear), then
    # relate it to the model's own forward time. On a shared VM this is far steadier than the direct A/B above.
    tiny = torch.nn.Linear(4, 4).to(args.device)
    y = torch.randn(1, 4, device=args.device)

    def run_tiny() -> None:
        with torch.inference_mode():
            for _ in range(2000):
                tiny(y)

    tiny_plain, tiny_traced = alternate(
        run_tiny, lambda: otel_vision.instrument_module(tiny), lambda: otel_vision.uninstrument_module(tiny), 30
    )
    # Wall time here: torch's idle intra-op threads spin on the CPU, which makes process CPU time of tiny ops noisy.
    added = statistics.median(tiny_traced.wall) / 2000 - statistics.median(tiny_plain.wall) / 2000
    forward = statistics.median(plain.wall) / args.calls
    print(
        f"\nadded time per instrumented module call (tiny Linear, 30 samples x 2000 calls): {added * 1e6:.1f} µs; "
        f"{spans} span(s) per ResNet-18 forward -> {spans * added / forward * 100:.2f} % of its {forward * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
