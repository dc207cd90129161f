"""Overhead of the ultralytics instrumentation: YOLOv8n predict, instrumented versus not, in one process.

Samples of ``--calls`` predicts without instrumentation and with it alternate one by one (``uninstrument()`` removes
every wrapper and callback, so "not instrumented" is ultralytics' own code path); the figures are medians, wall and
process CPU time. Spans go through a BatchSpanProcessor to an exporter that drops them, metrics to
an in-memory reader.

    python benchmarks/bench_ultralytics.py --batch 1 --samples 60
    python benchmarks/bench_ultralytics.py --batch 8 --samples 24
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

os.environ.setdefault("YOLO_OFFLINE", "1")

from _ab import NullExporter, alternate, report
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel_vision
from otel_vision.instrumentation.ultralytics import UltralyticsInstrumentor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="yolov8n.yaml")
    parser.add_argument("--compare-profiler", action="store_true")
    args = parser.parse_args()
    if args.compare_profiler:
        compare_profiler(args)
        return

    import numpy as np
    from ultralytics import YOLO

    otel_vision.configure(
        service_name="bench-ultralytics", exporter="none", logs=False,
        additional_span_processors=[BatchSpanProcessor(NullExporter())],
    )  # fmt: skip
    model = YOLO(args.weights)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(args.batch)]
    source = frames if args.batch > 1 else frames[0]
    kwargs = {"imgsz": args.imgsz, "device": args.device, "verbose": False}
    instrumentor = UltralyticsInstrumentor()

    def run() -> None:
        for _ in range(args.calls):
            model.predict(source, **kwargs)  # ultralytics synchronizes CUDA at each stage boundary itself

    plain, traced = alternate(run, instrumentor.instrument, instrumentor.uninstrument, args.samples)
    otel_vision.shutdown()
    title = (
        f"YOLOv8n ({args.weights}) {args.device} imgsz={args.imgsz} batch={args.batch}; "
        f"Python {platform.python_version()}; {args.samples} alternating samples of {args.calls} call(s)"
    )
    report(title, "predict", plain, traced, args.calls)


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
