"""Overhead of `instrument_module` in the default configuration: per instrumented call, and on ResNet-18.

Two measurements, both in the default configuration unless ``--config null-exporter`` (see ``_ab.py``):

1. Per instrumented module call, isolated: forwards of a tiny ``Linear``, instrumented versus not, next to bare SDK
   spans with the same five attributes (``start_as_current_span``, as the model span is the current span during the
   forward) in the same rounds. The cost we add is per span, not per FLOP: it shows here, where nothing hides it.
2. ResNet-18: samples of ``--calls`` forwards without hooks and with them alternate one by one
   (``uninstrument_module`` removes every hook, so "not instrumented" is torch's hook-free fast path).

    python benchmarks/bench_module.py --samples 60
    python benchmarks/bench_module.py --submodules layer1 layer2 layer3 layer4 fc
    python benchmarks/bench_module.py --device cuda --batch 8 --size 224
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torchvision
from _ab import CONFIGS, Variant, bare_spans, configured, describe, report, report_added, rounds

import otel_vision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--tiny-calls", type=int, default=500, help="forwards per sample of the isolated measurement")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--submodules", nargs="*", default=None)
    parser.add_argument("--config", choices=CONFIGS, default="default")
    args = parser.parse_args()
    print(f"configuration: {describe(args.config)}\n")

    with configured("bench-module", args.config) as handle:
        settle = lambda: handle.force_flush(timeout_millis=30000)  # noqa: E731

        tiny = torch.nn.Linear(4, 4).to(args.device)
        y = torch.randn(1, 4, device=args.device)
        n = args.tiny_calls

        def run_tiny() -> None:
            with torch.inference_mode():
                for _ in range(n):
                    tiny(y)

        span_attributes = {
            "vision.stage": "inference",
            "vision.model.name": "Linear",
            "vision.device": str(y.device),
            "vision.batch.size": 1,
            "vision.input.shapes": ["float32[1,4]"],
        }
        isolated = rounds(
            {
                "plain": Variant(run_tiny),
                "traced": Variant(
                    run_tiny, lambda: otel_vision.instrument_module(tiny), lambda: otel_vision.uninstrument_module(tiny)
                ),
                "bare": Variant(bare_spans(handle, "inference", span_attributes, n)),
            },
            args.samples,
            settle,
        )
        report_added(
            f"Per instrumented module call, isolated (tiny Linear, {args.samples} rounds x {n} calls; Python "
            f"{platform.python_version()}, torch {torch.__version__}):",
            "call",
            isolated,
            {"plain": n, "traced": n, "bare": n},
            1,
        )
        print()

        model = torchvision.models.resnet18(weights=None).eval().to(args.device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        cuda = args.device.startswith("cuda")

        def run() -> None:
            with torch.inference_mode():
                for _ in range(args.calls):
                    model(x)
                if cuda:
                    torch.cuda.synchronize()

        results = rounds(
            {
                "plain": Variant(run),
                "traced": Variant(
                    run,
                    lambda: otel_vision.instrument_module(model, name="resnet18", submodules=args.submodules),
                    lambda: otel_vision.uninstrument_module(model),
                ),
            },
            args.samples,
            settle,
        )
        spans = 1 + len(args.submodules or [])
        title = (
            f"ResNet-18 {args.device} batch={args.batch} {args.size}x{args.size}, {spans} span(s) per forward; "
            f"{args.samples} alternating samples of {args.calls} call(s)"
        )
        report(title, "forward", results["plain"], results["traced"], args.calls)
        added = statistics.median(isolated["traced"].wall) / n - statistics.median(isolated["plain"].wall) / n
        forward = statistics.median(results["plain"].wall) / args.calls
        print(
            f"\nderived: {spans} span(s) x {added * 1e6:.1f} µs (isolated, wall) = "
            f"{spans * added / forward * 100:.2f} % of a {forward * 1e3:.2f} ms ResNet-18 forward"
        )


if __name__ == "__main__":
    main()
