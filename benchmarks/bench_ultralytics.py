"""Overhead of the ultralytics instrumentation in the default configuration: fixed cost per predict, and YOLOv8n.

Two measurements, both in the default configuration unless ``--config null-exporter`` (see ``_ab.py``):

1. Fixed cost per predict, isolated: YOLOv8n predicts at ``--small-imgsz`` (64 px: a few milliseconds each, so the
   fixed cost is not lost in the model's time), instrumented versus not, next to bare SDK spans in the same rounds;
   wall time, process CPU time (all threads, export work included) and the inference thread's own CPU time.
   What a predict of batch 1 makes: five spans (predict, batch, preprocess, inference, postprocess), one ``image``
   event, the ``vision.detections`` and ``vision.images`` metrics.
2. The model: samples of ``--calls`` predicts at ``--imgsz`` without instrumentation and with it alternate one by one
   (``uninstrument()`` removes every wrapper and callback, so "not instrumented" is ultralytics' own code path).

    python benchmarks/bench_ultralytics.py --batch 1 --samples 40
    python benchmarks/bench_ultralytics.py --batch 8 --samples 30
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --samples 200
    python benchmarks/bench_ultralytics.py --device cuda --imgsz 640 --batch 1 --compare-profiler

``--compare-profiler`` runs instrumented predicts under torch.profiler with the predictor's ``inference`` wrapped in
a ``record_function`` range, and compares the CUDA kernel time the profiler attributes to that range with the
``gpu.time`` of our ``inference`` span for the same calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

from _ab import CONFIGS, Variant, bare_spans, configured, describe, report, report_added, rounds

import otel_vision
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor

SPANS_PER_PREDICT = 5
"""predict, batch, preprocess, inference, postprocess (batch 1)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--small-imgsz", type=int, default=64, help="input size of the fixed-cost measurement")
    parser.add_argument("--small-calls", type=int, default=20, help="predicts per sample of the fixed-cost run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--config", choices=CONFIGS, default="default")
    parser.add_argument("--compare-profiler", action="store_true")
    args = parser.parse_args()
    if args.compare_profiler:
        compare_profiler(args)
        return

    import numpy as np
    from ultralytics import YOLO

    print(f"configuration: {describe(args.config)}\n")
    with configured("bench-ultralytics", args.config) as handle:
        settle = lambda: handle.force_flush(timeout_millis=30000)  # noqa: E731
        model = YOLO(args.weights)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(args.batch)]
        source = frames if args.batch > 1 else frames[0]
        instrumentor = UltralyticsInstrumentor()
        fixed_cost(args, handle, model, source, instrumentor, settle)
        kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}

        def run() -> None:
            for _ in range(args.calls):
                model.predict(source, **kwargs)  # ultralytics synchronizes CUDA at each stage boundary itself

        results = rounds(
            {"plain": Variant(run), "traced": Variant(run, instrumentor.instrument, instrumentor.uninstrument)},
            args.samples,
            settle,
        )
        title = (
            f"YOLOv8n ({args.weights}) {args.device} imgsz={args.imgsz} batch={args.batch}; "
            f"Python {platform.python_version()}; {args.samples} alternating samples of {args.calls} call(s)"
        )
        report(title, "predict", results["plain"], results["traced"], args.calls)


def fixed_cost(args: argparse.Namespace, handle: Any, model: Any, source: Any, instrumentor: Any, settle: Any) -> None:
    kwargs = {"imgsz": args.small_imgsz, "device": args.device, "verbose": False}
    n = args.small_calls

    def run() -> None:
        for _ in range(n):
            model.predict(source, **kwargs)

    attributes = {"vision.stage": "inference", "vision.model.name": "yolov8n"}
    thread_cpu: dict[str, list[float]] = {"plain": [], "traced": [], "bare": []}

    def on_thread(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn``, also timing the CPU time of the calling thread (the inference thread) alone."""

        def timed() -> None:
            start = time.thread_time()
            fn()
            thread_cpu[name].append(time.thread_time() - start)

        return timed

    results = rounds(
        {
            "plain": Variant(on_thread("plain", run)),
            "traced": Variant(on_thread("traced", run), instrumentor.instrument, instrumentor.uninstrument),
            "bare": Variant(on_thread("bare", bare_spans(handle, "inference", attributes, SPANS_PER_PREDICT * n))),
        },
        args.samples,
        settle,
    )
    per = {"plain": n, "traced": n, "bare": SPANS_PER_PREDICT * n}
    report_added(
        f"Fixed cost per predict, isolated (imgsz={args.small_imgsz} batch={args.batch}, {args.samples} rounds x {n} "
        f"predicts; Python {platform.python_version()}):",
        "predict",
        results,
        per,
        SPANS_PER_PREDICT,
    )
    # The calling thread's own CPU time: what the inference thread pays, without the export threads' work (which
    # the process CPU row includes) and without time the VM gave to other tenants (which the wall row includes).
    median = {name: statistics.median(samples[2:]) / per[name] * 1e6 for name, samples in thread_cpu.items()}
    added, bare = median["traced"] - median["plain"], median["bare"]
    print(f"| inference thread CPU | {added:.1f} | {bare:.1f} | {added / bare:.2f} | {SPANS_PER_PREDICT} |")
    print()


def compare_profiler(args: argparse.Namespace, calls: int = 20) -> None:
    import statistics

    import numpy as np
    import torch
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from torch.profiler import ProfilerActivity, profile, record_function
    from ultralytics import YOLO

    if not args.device.startswith("cuda"):
        raise SystemExit("--compare-profiler needs --device cuda")
    memory = InMemorySpanExporter()
    otel_vision.configure(
        service_name="bench-ultralytics", exporter="none", logs=False,
        additional_span_processors=[SimpleSpanProcessor(memory)],
    )  # fmt: skip
    model = YOLO(args.weights)
    otel_vision.instrument_ultralytics(model)
    frames = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(args.batch)]
    kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}
    for _ in range(3):
        model.predict(frames, **kwargs)
    traced_inference = model.predictor.inference  # our wrapper (an instance attribute of the predictor)

    def ranged(*a: object, **k: object) -> object:
        with record_function("bench.inference"):
            return traced_inference(*a, **k)

    model.predictor.inference = ranged
    memory.clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            model.predict(frames, **kwargs)
        torch.cuda.synchronize()
    otel_vision.shutdown()
    kernels = [e.device_time_total / 1e6 for e in prof.events() if e.name == "bench.inference"]
    spans = [s.attributes["gpu.time"] for s in memory.get_finished_spans() if s.name == "inference"]
    print(f"YOLOv8n {args.device} imgsz={args.imgsz} batch={args.batch}; {len(spans)} inference spans")
    kernel_ms = statistics.median(kernels) * 1e3
    print(f"| CUDA kernel time in the inference range (torch.profiler), median | {kernel_ms:.3f} ms |")
    print(f"| inference span gpu.time (otel_vision), median | {statistics.median(spans) * 1e3:.3f} ms |")
    print(f"| ratio | {statistics.median(spans) / statistics.median(kernels):.3f} |")


if __name__ == "__main__":
    main()
