"""Hot-path cost of `stage()` versus a bare OpenTelemetry SDK span versus no instrumentation.

All variants run in one process against the same TracerProvider (BatchSpanProcessor in front of an exporter that
drops everything), alternating A/B/C in every round; the figure is the median over rounds of the per-call cost.

    python benchmarks/bench_stage.py [--rounds 30] [--calls 2000]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

from _ab import NullExporter

import otel_vision

ATTRIBUTES = {"vision.model.name": "yolov8n", "vision.batch.size": 8}


def work() -> int:
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    handle = otel_vision.configure(
        service_name="bench", exporter="none", gpu=False, logs=False,
        additional_span_processors=[BatchSpanProcessor(NullExporter())],
    )  # fmt: skip
    assert handle.tracer_provider is not None
    tracer = handle.tracer_provider.get_tracer("bench")
    stage_cm = otel_vision.stage("inference", attributes=ATTRIBUTES)
    decorated = otel_vision.stage("inference", attributes=ATTRIBUTES)(work)

    def none() -> None:
        for _ in range(args.calls):
            work()

    def bare_sdk() -> None:
        for _ in range(args.calls):
            with tracer.start_as_current_span("inference", attributes={"vision.stage": "inference", **ATTRIBUTES}):
                work()

    def stage_with() -> None:
        for _ in range(args.calls):
            with stage_cm:
                work()

    def stage_decorator() -> None:
        for _ in range(args.calls):
            decorated()

    variants: dict[str, Callable[[], None]] = {
        "no instrumentation": none,
        "bare SDK span (start_as_current_span, same attributes)": bare_sdk,
        "otel_vision.stage() as context manager": stage_with,
        "otel_vision.stage() as decorator": stage_decorator,
    }
    for fn in variants.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - start) / args.calls * 1e6)
    handle.shutdown()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    bare = medians["bare SDK span (start_as_current_span, same attributes)"]
    print(f"Python {platform.python_version()}, {platform.machine()}, {args.rounds} rounds x {args.calls} calls\n")
    print("| variant | µs per call (median) | ratio to bare SDK span |")
    print("|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} | {value / bare:.2f} |")


if __name__ == "__main__":
    main()
