"""What one duration point costs the span hand-over: the SDK's ``Histogram.record`` against the `LightRecorder` that
`otel_vision._span_metrics` records with, into the same histogram of the default configuration's meter.

Both record one ``vision.stage.duration`` point with the stage attributes and a context holding the span (what the
exemplar names), as the hand-over does for every stage span; the two alternate in a shuffled order every round.
Figures are medians over rounds of this thread's CPU time per point, in a loop (warm: the hand-over meets them
cache-cold after the model's compute, and pays more for both).

    python benchmarks/bench_metrics.py [--rounds 30] [--points 5000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from _ab import configured, describe
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_vision import _runtime
from otel_vision._light import _SPAN_KEY
from otel_vision._light_metrics import LightRecorder, sdk_recording_known

ATTRIBUTES = {"vision.stage": "denoise_step", "vision.model.name": "StableDiffusionInstructPix2PixPipeline"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--points", type=int, default=5000)
    args = parser.parse_args()
    print(f"configuration: {describe('default')}\n")
    with configured("bench-metrics") as handle:
        handle.force_flush()  # the pipeline is complete: the runtime holds the SDK's instruments
        histogram = _runtime.current().instruments.stage_duration
        recorder = LightRecorder(histogram)
        key = tuple(ATTRIBUTES.values())
        contexts = [
            Context({_SPAN_KEY: NonRecordingSpan(SpanContext(0x1000 + i, 0x10 + i, False, TraceFlags(1)))})
            for i in range(args.points)
        ]

        def sdk() -> None:
            for context in contexts:
                histogram.record(0.021, ATTRIBUTES, context=context)

        def light() -> None:
            for context in contexts:
                recorder.record(0.021, key, ATTRIBUTES, context)

        variants = {"Histogram.record (the SDK)": sdk, "LightRecorder.record": light}
        results: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for _ in range(args.rounds):
            random.shuffle(order)
            for name in order:
                start = time.thread_time_ns()
                variants[name]()
                results[name].append((time.thread_time_ns() - start) / args.points / 1e3)
    print(f"LightRecorder records directly: {recorder._direct} (the SDK's path checked: {sdk_recording_known()})")
    print(f"\n| one duration point, thread CPU ({args.rounds} rounds × {args.points}) | µs per point |")
    print("|---|---:|")
    for name, samples in results.items():
        print(f"| {name} | {statistics.median(samples):.2f} |")


if __name__ == "__main__":
    main()
