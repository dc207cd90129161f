"""Overhead of `instrument_module` in the default configuration: per instrumented call, and on ResNet-18.

Two measurements, both in the default configuration unless ``--config null-exporter`` (see ``_ab.py``):

1. Per instrumented module call, isolated: forwards of a tiny ``Linear``, instrumented versus not, next to bare SDK
   spans with the same five attributes (``start_as_current_span``, as the model span is the current span during the
   forward) in the same rounds. The cost we add is per span, not per FLOP: it shows here, where nothing hides it.
   Two more variants in the same rounds say where the time goes: torch's hook dispatch alone (an empty pre-hook and
   an empty always-called forward hook, registered and excluded from ``torch.compile`` as ours are), and a
   hand-written span around the call (the same bare span with the forward inside it). A bare span under
   otel_vision's instrumentation scope shows what the export path adds to every span of ours (the duration metric).
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
from typing import Any

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

        tracer = handle.tracer_provider.get_tracer("bench")
        empty: list[Any] = []

        @torch.compiler.disable  # type: ignore[untyped-decorator]  # as our hooks are
        def empty_pre(module: Any, args: Any, kwargs: Any) -> None:
            return None

        @torch.compiler.disable  # type: ignore[untyped-decorator]
        def empty_post(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            return None

        def empty_on() -> None:
            empty.append(tiny.register_forward_pre_hook(empty_pre, with_kwargs=True))
            empty.append(tiny.register_forward_hook(empty_post, with_kwargs=True, always_call=True))

        def empty_off() -> None:
            while empty:
                empty.pop().remove()

        span_attributes = {
            "vision.stage": "inference",
            "vision.model.name": "Linear",
            "vision.device": str(y.device),
            "vision.batch.size": 1,
            "vision.input.shapes": ["float32[1,4]"],
        }

        ours = handle.tracer_provider.get_tracer("otel_vision")  # our scope: the export path adds duration metrics

        def bare_ours() -> None:
            for _ in range(n):
                with ours.start_as_current_span("inference", attributes=span_attributes):
                    pass

        def span_around() -> None:
            with torch.inference_mode():
                for _ in range(n):
                    with tracer.start_as_current_span("inference", attributes=span_attributes):
                        tiny(y)

        isolated = rounds(
            {
                "plain": Variant(run_tiny),
                "traced": Variant(
                    run_tiny, lambda: otel_vision.instrument_module(tiny), lambda: otel_vision.uninstrument_module(tiny)
                ),
                "bare": Variant(bare_spans(handle, "inference", span_attributes, n)),
                "empty hooks": Variant(run_tiny, empty_on, empty_off),
                "span around call": Variant(span_around),
                "bare, our scope": Variant(bare_ours),
            },
            args.samples,
            settle,
        )
        report_added(
            f"Per instrumented module call, isolated (tiny Linear, {args.samples} rounds x {n} calls; Python "
            f"{platform.python_version()}, torch {torch.__version__}):",
            "call",
            {name: isolated[name] for name in ("plain", "traced", "bare")},
            {"plain": n, "traced": n, "bare": n},
            1,
        )
        breakdown(isolated, n)
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


def breakdown(results: dict[str, Any], n: int) -> None:
    """Where an instrumented call's added time goes, from the medians of the same rounds (µs and bare spans)."""
    print("\nWhere the added time goes (medians of the same rounds, minus plain calls; = in bare spans):")
    print(
        "| clock | torch hook dispatch (empty hooks) | hand-written span around the call | instrumented "
        "| instrumented − dispatch − span around the call | bare span under otel_vision's scope − bare span |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for clock in ("wall", "cpu"):
        median = {name: statistics.median(getattr(s, clock)) / n * 1e6 for name, s in results.items()}
        bare = median["bare"]
        dispatch = median["empty hooks"] - median["plain"]
        around = median["span around call"] - median["plain"]
        traced = median["traced"] - median["plain"]
        scope = median["bare, our scope"] - bare
        parts = (dispatch, around, traced, traced - dispatch - around)
        cells = " | ".join(f"{v:.1f} µs = {v / bare:.2f}" for v in parts)
        print(f"| {'wall' if clock == 'wall' else 'process CPU'} | {cells} | {scope:.1f} µs = {scope / bare:.2f} |")


if __name__ == "__main__":
    main()
